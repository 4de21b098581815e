//! The trainer's workflow as users live it (resume, output folders, logs), each test
//! named for the fault it pins; the real binary in a temporary folder.

use crate::common::*;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn corpus(dir: &Path) {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../data/shakespeare.txt"),
    )
    .unwrap();
    std::fs::write(
        dir.join("corpus.txt"),
        text.chars().take(20_000).collect::<String>(),
    )
    .unwrap();
}

const TINY: &[&str] = &[
    "--data",
    "corpus.txt",
    "--hidden",
    "16",
    "--embed",
    "8",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--threads",
    "2",
    "--sample-length",
    "0",
];

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    rnnkit(&args, dir)
}

fn metrics(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[cfg(unix)]
#[test]
fn resume_hint_is_a_complete_command_that_works_from_another_folder() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let mut args = vec!["train"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(&[
        "--steps",
        "1000000",
        "--out",
        "rB",
        "--checkpoint-every",
        "2",
    ]);
    let child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(&args)
        .current_dir(dir.path())
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let latest = dir.path().join("rB/latest.safetensors");
    for _ in 0..600 {
        if latest.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    let e = stderr(&o);
    let hint = e
        .lines()
        .find_map(|l| l.split("continue with: ").nth(1))
        .unwrap_or_else(|| panic!("no hint: {e}"));
    let words: Vec<&str> = hint.split_whitespace().collect();
    assert_eq!(&words[..3], ["rnnkit", "train", "--resume"], "{hint}");
    let stopped = step_of(&latest);
    // Followed from another folder, with only a new bound added: it continues the same
    // run in its own folder on its own data.
    let elsewhere = tempfile::tempdir().unwrap();
    let more = (stopped + 3).to_string();
    let mut args: Vec<&str> = words[1..].to_vec();
    args.extend_from_slice(&["--steps", &more]);
    let o = rnnkit(&args, elsewhere.path());
    ok(&o);
    assert_eq!(step_of(&latest), stopped + 3);
    assert!(!elsewhere.path().join("runs").exists());
}

#[test]
fn resuming_an_earlier_checkpoint_rewinds_the_log_and_latest() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    ok(&train(
        dir.path(),
        &["--steps", "4", "--out", "o", "--eval-every", "2"],
    ));
    std::fs::copy(
        dir.path().join("o/latest.safetensors"),
        dir.path().join("o/step4.safetensors"),
    )
    .unwrap();
    ok(&rnnkit(
        &[
            "train",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "12",
            "--sample-length",
            "0",
        ],
        dir.path(),
    ));
    assert_eq!(step_of(&dir.path().join("o/latest.safetensors")), 12);
    let o = rnnkit(
        &[
            "train",
            "--resume",
            "o/step4.safetensors",
            "--steps",
            "8",
            "--sample-length",
            "0",
        ],
        dir.path(),
    );
    ok(&o);
    assert!(stderr(&o).contains("rewinding"), "{}", stderr(&o));
    assert_eq!(step_of(&dir.path().join("o/latest.safetensors")), 8);
    let m = metrics(&dir.path().join("o/metrics.jsonl"));
    assert_eq!(m.last().unwrap()["step"], 8);
    assert!(m.iter().all(|l| l["step"].as_u64().unwrap() <= 8));
    assert!(step_of(&dir.path().join("o/best.safetensors")) <= 8);
}

#[test]
fn eval_and_checkpoint_cadences_are_restored_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    ok(&train(
        dir.path(),
        &[
            "--steps",
            "6",
            "--out",
            "o",
            "--eval-every",
            "3",
            "--checkpoint-every",
            "3",
        ],
    ));
    ok(&rnnkit(
        &[
            "train",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "12",
            "--sample-length",
            "0",
        ],
        dir.path(),
    ));
    let vals: Vec<u64> = metrics(&dir.path().join("o/metrics.jsonl"))
        .iter()
        .filter(|l| l.get("val_nats_per_char").is_some())
        .map(|l| l["step"].as_u64().unwrap())
        .collect();
    assert_eq!(vals, [3, 6, 9, 12]);
}

#[test]
fn resume_accepts_a_lower_learning_rate_and_names_refused_flags_as_typed() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    ok(&train(dir.path(), &["--steps", "4", "--out", "o"]));
    let o = rnnkit(
        &[
            "train",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "6",
            "--lr",
            "0.001",
            "--sample-length",
            "0",
        ],
        dir.path(),
    );
    ok(&o);
    let e = stderr(&o);
    assert!(
        e.contains("--lr 0.003 → 0.001") && e.contains("no longer identical"),
        "{e}"
    );
    let o = rnnkit(
        &[
            "train",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "8",
            "--cell",
            "gru",
            "--grad-clip",
            "0",
        ],
        dir.path(),
    );
    fails_with(&o, "--cell is lstm in the checkpoint but gru was asked");
    assert!(!stderr(&o).contains("0.0030000"), "{}", stderr(&o));
}

#[test]
fn a_new_run_refuses_a_used_folder_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    ok(&train(
        dir.path(),
        &["--steps", "20", "--out", "o", "--eval-every", "5"],
    ));
    fails_with(
        &train(dir.path(), &["--steps", "4", "--out", "o"]),
        "already holds a run",
    );
    ok(&train(
        dir.path(),
        &["--steps", "4", "--out", "o", "--force", "--val-frac", "0"],
    ));
    let m = metrics(&dir.path().join("o/metrics.jsonl"));
    assert_eq!(m.last().unwrap()["step"], 4);
    assert!(m.iter().all(|l| l["step"].as_u64().unwrap() <= 4));
    assert!(!dir.path().join("o/best.safetensors").exists());
}

#[test]
fn divergence_says_truthfully_that_no_checkpoint_exists() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    let o = train(
        dir.path(),
        &[
            "--steps",
            "50",
            "--lr",
            "100",
            "--grad-clip",
            "0",
            "--optimizer",
            "sgd",
            "--cell",
            "rnn_relu",
            "--out",
            "o",
        ],
    );
    fails_with(&o, "no checkpoint was written yet");
}

#[test]
fn a_short_run_logs_training_loss_and_its_final_validation() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    ok(&train(
        dir.path(),
        &[
            "--steps",
            "7",
            "--out",
            "o",
            "--eval-every",
            "100",
            "--log-every",
            "2",
        ],
    ));
    let m = metrics(&dir.path().join("o/metrics.jsonl"));
    let steps: Vec<u64> = m.iter().map(|l| l["step"].as_u64().unwrap()).collect();
    assert_eq!(steps, [2, 4, 6, 7]);
    assert!(m.iter().all(|l| l.get("train_nats_per_char").is_some()));
    assert!(m.last().unwrap().get("val_nats_per_char").is_some());
    let svg = std::fs::read_to_string(dir.path().join("o/loss.svg")).unwrap();
    assert!(
        svg.contains("smoothed") && !svg.contains(".0<"),
        "step ticks are integers"
    );
}
