//! The real binary against hostile checkpoints, impossible flags and failing disks:
//! an error that says what is wrong, never a panic, an abort or a lost checkpoint.
//! Tests named for a crash pin the input that caused it.

use crate::common::*;

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::model::CharLm;
use rnnkit::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Failed with exit code 1 (not a signal: no abort), said `needle`, did not panic.
/// A clean failure: exit status 1, `needle` said, no panic.
fn fails_with(o: &Output, needle: &str) {
    assert_eq!(
        o.status.code(),
        Some(1),
        "expected a clean failure: {}",
        stderr(o)
    );
    crate::common::fails_with(o, needle);
}

/// A copy of fixture `rel` with tensors replaced, written to `dir/name`.
fn altered_fixture(dir: &Path, rel: &str, name: &str, replace: &[(&str, Tensor<f32>)]) -> PathBuf {
    let f = TensorFile::open(repo().join("tests/fixtures").join(rel)).unwrap();
    let mut tensors: Vec<(String, Tensor<f32>)> = f
        .names()
        .into_iter()
        .map(|n| {
            let t = f.get::<f32>(&n, None).unwrap();
            (n, t)
        })
        .collect();
    for (n, t) in replace {
        let slot = tensors
            .iter_mut()
            .find(|(m, _)| m == n)
            .expect("named tensor");
        slot.1 = t.clone();
    }
    let refs: Vec<(String, &Tensor<f32>)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let p = dir.join(name);
    checkpoint::save(&p, &refs, f.metadata()).unwrap();
    p
}

/// The checkpoint of issue 9: 16 MB, self-consistent as a file, whose
/// `rnn.weight_ih_l0 [4·2^20, 1]` says H = 2^20.
fn huge_hidden_checkpoint(dir: &Path) -> PathBuf {
    altered_fixture(
        dir,
        "charlm/rnnkit_charlm_lstm.safetensors",
        "huge.safetensors",
        &[("rnn.weight_ih_l0", Tensor::zeros(&[4 << 20, 1]))],
    )
}

#[test]
fn sample_of_a_checkpoint_implying_a_huge_hidden_size_fails_cleanly_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    huge_hidden_checkpoint(dir.path());
    let o = rnnkit(
        &[
            "sample",
            "--checkpoint",
            "huge.safetensors",
            "--length",
            "5",
        ],
        dir.path(),
    );
    fails_with(&o, "hidden_size must be at most 65536");
}

#[test]
fn eval_of_a_checkpoint_implying_a_huge_hidden_size_fails_cleanly_without_allocating() {
    let dir = tempfile::tempdir().unwrap();
    huge_hidden_checkpoint(dir.path());
    std::fs::write(dir.path().join("t.txt"), "the text").unwrap();
    let o = rnnkit(
        &[
            "eval",
            "--checkpoint",
            "huge.safetensors",
            "--text",
            "t.txt",
        ],
        dir.path(),
    );
    fails_with(&o, "hidden_size must be at most 65536");
}

#[test]
fn classify_eval_of_a_checkpoint_implying_a_huge_model_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    altered_fixture(
        dir.path(),
        "tasks/rnnkit_classify_lstm_1l_uni_last.safetensors",
        "c.safetensors",
        &[("rnn.weight_ih_l0", Tensor::zeros(&[4 * 65536, 1]))],
    );
    let data = repo().join("data/uea/JapaneseVowels/JapaneseVowels_TEST.ts");
    let o = rnnkit(
        &[
            "classify",
            "eval",
            "--checkpoint",
            "c.safetensors",
            "--data",
            data.to_str().unwrap(),
        ],
        dir.path(),
    );
    fails_with(&o, "tensor `rnn.weight_hh_l0` has shape");
}

#[test]
fn tag_predict_of_a_checkpoint_claiming_a_huge_model_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let f = TensorFile::open(repo().join("tests/fixtures/tasks/rnnkit_tag_lstm_1l.safetensors"))
        .unwrap();
    let mut meta = f.metadata().clone();
    let config = meta["rnnkit.config"].replace(
        r#""hidden_size":4,"num_layers":1"#,
        r#""hidden_size":60000,"num_layers":64"#,
    );
    meta.insert("rnnkit.config".into(), config);
    let tensors: Vec<(String, Tensor<f32>)> = f
        .names()
        .into_iter()
        .map(|n| {
            let t = f.get::<f32>(&n, None).unwrap();
            (n, t)
        })
        .collect();
    let refs: Vec<(String, &Tensor<f32>)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save(dir.path().join("t.safetensors"), &refs, &meta).unwrap();
    let o = rnnkit(
        &["tag", "predict", "--checkpoint", "t.safetensors"],
        dir.path(),
    );
    fails_with(&o, "tensor `rnn.weight_ih_l0` has shape");
}

/// `rnnkit bench --vocab 60000` panicked: token 0xD700 became U+D800, a surrogate.
#[test]
fn bench_vocab_60000_runs_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "bench",
            "--vocab",
            "60000",
            "--hidden",
            "4",
            "--layers",
            "1",
            "--embed",
            "2",
            "--batch",
            "1",
            "--seq-len",
            "2",
            "--steps",
            "1",
            "--sample-chars",
            "2",
            "--threads",
            "1",
            "--json",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `rnnkit train --time-limit 1e300` panicked in `Duration::from_secs_f64`.
#[test]
fn time_limit_1e300_is_refused_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.txt"), "abc ".repeat(500)).unwrap();
    for bad in ["1e300", "inf", "NaN", "-1", "0"] {
        let o = rnnkit(
            &[
                "train",
                "--data",
                "c.txt",
                "--time-limit",
                bad,
                "--out",
                "o",
            ],
            dir.path(),
        );
        fails_with(&o, "--time-limit must be a positive number of seconds");
    }
}

#[test]
fn out_of_range_numbers_are_refused_naming_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.txt"), "abc ".repeat(500)).unwrap();
    // `--flag=value`, so that values such as `-inf` are not read as flags.
    let train = |flag: &str, v: &str| {
        let arg = format!("{flag}={v}");
        rnnkit(
            &["train", "--data", "c.txt", &arg, "--out", "o"],
            dir.path(),
        )
    };
    for (flag, v, needle) in [
        ("--epochs", "1e300", "--epochs must be a positive number"),
        ("--lr", "NaN", "--lr must be a positive number"),
        ("--lr-decay", "inf", "--lr-decay must be in (0, 1]"),
        ("--val-frac", "NaN", "--val-frac must be in [0, 0.5)"),
        ("--momentum", "-inf", "--momentum must be in [0, 1)"),
        ("--grad-clip", "NaN", "--grad-clip must be ≥ 0"),
        ("--dropout", "NaN", "dropout must be in [0, 1)"),
    ] {
        let o = train(flag, v);
        fails_with(&o, needle);
    }
    // Integer flags out of range are clap's errors (exit code 2), never panics.
    for (flag, v) in [
        ("--hidden", "65537"),
        ("--layers", "65"),
        ("--seq-len", "100001"),
        ("--batch", "65537"),
        ("--steps", "1e12"),
    ] {
        let o = train(flag, v);
        assert_eq!(o.status.code(), Some(2), "{flag} {v}: {}", stderr(&o));
        assert!(stderr(&o).contains(flag), "{flag}: {}", stderr(&o));
    }
}

fn tiny_checkpoint(dir: &Path) {
    let model = CharLm::new(
        &rnnkit::model::CharLmConfig {
            cell: rnnkit::CellKind::Lstm,
            embed_size: 4,
            hidden_size: 8,
            num_layers: 1,
            dropout: 0.0,
        },
        rnnkit::data::Vocab::from_text("abc \n").unwrap(),
        &mut rnnkit::Rng::new(1),
    )
    .unwrap();
    model
        .save(&dir.join("m.safetensors"), &[], HashMap::new())
        .unwrap();
}

#[test]
fn sample_refuses_impossible_sampling_settings() {
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    for (flag, v, needle) in [
        (
            "--temperature",
            "NaN",
            "temperature must be a finite number ≥ 0",
        ),
        (
            "--temperature",
            "inf",
            "temperature must be a finite number ≥ 0",
        ),
        (
            "--temperature",
            "-1",
            "temperature must be a finite number ≥ 0",
        ),
        ("--top-p", "NaN", "top-p must be in (0, 1]"),
        ("--top-p", "0", "top-p must be in (0, 1]"),
        ("--top-p", "1.5", "top-p must be in (0, 1]"),
    ] {
        let o = rnnkit(
            &["sample", "--checkpoint", "m.safetensors", flag, v],
            dir.path(),
        );
        fails_with(&o, needle);
    }
    let o = rnnkit(
        &[
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--length",
            "1e12",
        ],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = rnnkit(
        &["sample", "--checkpoint", "m.safetensors", "--top-k", "0"],
        dir.path(),
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
}

/// The longest length there is streams: nothing is sized by it.
#[test]
fn sample_of_the_largest_length_streams_without_allocating_it() {
    use std::io::Read;
    let dir = tempfile::tempdir().unwrap();
    tiny_checkpoint(dir.path());
    let max = usize::MAX.to_string();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(["sample", "--checkpoint", "m.safetensors", "--length", &max])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 64];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

const TINY: &[&str] = &[
    "--hidden",
    "8",
    "--embed",
    "4",
    "--layers",
    "1",
    "--batch",
    "2",
    "--seq-len",
    "8",
    "--threads",
    "1",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--sample-length",
    "0",
];

/// `rnnkit train` of the tiny model on `corpus.txt` into `o` for `steps` steps, then `extra`.
fn tiny_run<'a>(steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "train",
        "--data",
        "corpus.txt",
        "--steps",
        steps,
        "--out",
        "o",
    ];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    args
}

fn corpus(dir: &Path) {
    let text = std::fs::read_to_string(repo().join("data/shakespeare.txt")).unwrap();
    let part: String = text.chars().take(5_000).collect();
    std::fs::write(dir.join("corpus.txt"), part).unwrap();
}

fn temporary_files(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect()
}

/// A disk that fills up (here: a file-size limit smaller than a checkpoint) makes the
/// next checkpoint write fail: a clear error, and the checkpoint before it is whole.
#[cfg(unix)]
#[test]
fn full_disk_while_writing_a_checkpoint_keeps_the_previous_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d);
    let args = tiny_run("2", &[]);
    let o = rnnkit(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    let latest = d.join("o/latest.safetensors");
    assert_eq!(step_of(&latest), 2);
    let size_kib = std::fs::metadata(&latest).unwrap().len() / 1024;
    // SIGXFSZ ignored, so that writing past the limit fails with EFBIG instead of
    // killing the process: what a full disk does (ENOSPC) as far as rnnkit can tell.
    let script = format!(
        "trap '' XFSZ; ulimit -f {}; exec \"$0\" \"$@\"",
        size_kib / 2
    );
    let mut resume = vec![
        "-c",
        &script,
        env!("CARGO_BIN_EXE_rnnkit"),
        "train",
        "--resume",
        "o/latest.safetensors",
        "--steps",
        "4",
    ];
    resume.extend_from_slice(&TINY[TINY.len() - 2..]);
    let o = Command::new("sh")
        .args(&resume)
        .current_dir(d)
        .output()
        .unwrap();
    fails_with(&o, "File too large");
    assert_eq!(step_of(&latest), 2, "the previous checkpoint is whole");
    assert!(CharLm::load(latest.as_path()).is_ok());
    assert_eq!(temporary_files(&d.join("o")), Vec::<String>::new());
    // With room again, the run resumes from it.
    let o = rnnkit(
        &["train", "--resume", "o/latest.safetensors", "--steps", "4"],
        d,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(step_of(&latest), 4);
}

/// An output folder that cannot be made (a file is in the way): a clear error.
#[test]
fn output_folder_that_cannot_be_made_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path());
    std::fs::write(dir.path().join("o"), "a file, not a folder").unwrap();
    let args = tiny_run("2", &[]);
    let o = rnnkit(&args, dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("o"), "{}", stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// Killed at any moment (SIGKILL: no handler runs), training never leaves a partial
/// checkpoint: what is there loads, and the run resumes from it.
#[cfg(unix)]
#[test]
fn kill_9_at_any_moment_leaves_a_loadable_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d);
    let latest = d.join("o/latest.safetensors");
    let args = tiny_run("1000000", &["--force", "--checkpoint-every", "1"]);
    // RNNKIT_KILL_ROUNDS=50 for a longer campaign; the waits are drawn from a fixed seed.
    let rounds: usize = std::env::var("RNNKIT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(6);
    let mut rng = rnnkit::Rng::new(9);
    for round in 0..rounds {
        let wait_ms = 100 + rng.below(1400) as u64;
        let run: Vec<&str> = if latest.exists() {
            vec![
                "train",
                "--resume",
                "o/latest.safetensors",
                "--steps",
                "1000000",
            ]
        } else {
            args.clone()
        };
        let mut child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
            .args(&run)
            .current_dir(d)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(wait_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        if latest.exists() {
            let (_, file) = CharLm::load(latest.as_path())
                .unwrap_or_else(|e| panic!("round {round}: the checkpoint does not load: {e}"));
            assert!(file.metadata().contains_key("train.step"), "round {round}");
        }
    }
    // Whatever is left resumes.
    if latest.exists() {
        let step = step_of(&latest);
        let target = (step + 2).to_string();
        let o = rnnkit(
            &[
                "train",
                "--resume",
                "o/latest.safetensors",
                "--steps",
                &target,
            ],
            d,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        assert_eq!(step_of(&latest), step + 2);
        // A write cut short by a kill leaves its temporary file; the next run clears it.
        assert_eq!(temporary_files(&d.join("o")), Vec::<String>::new());
    }
}

/// Starts a char-LM run in `dir` that trains until it is killed, writing into `o`
/// (a checkpoint every 5 steps); its stderr goes to `stderr`.
#[cfg(unix)]
fn endless_run(d: &Path, stderr: Stdio) -> std::process::Child {
    let args = tiny_run("1000000", &["--checkpoint-every", "5"]);
    Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(&args)
        .current_dir(d)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap()
}

/// Two runs on one `--out`: the second refuses (even with --force, which would delete
/// the first's files), naming the first; once the first is killed with `kill -9` the
/// folder is free again (the OS drops its lock) and the leftovers of an interrupted
/// atomic write are cleared.
#[cfg(unix)]
#[test]
fn a_second_run_on_the_same_out_is_refused_until_the_first_ends() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d);
    let mut first = endless_run(d, Stdio::null());
    let lock = d.join("o/.lock");
    let t0 = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|s| s.contains("process")) {
        assert!(t0.elapsed().as_secs() < 60, "the first run never locked o");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let args = tiny_run("2", &["--force"]);
    let o = rnnkit(&args, d);
    fails_with(&o, "o is in use by another run");
    let e = stderr(&o);
    assert!(e.contains(&format!("process {}", first.id())), "{e}");
    assert!(e.contains("--steps 1000000"), "{e}");
    first.kill().unwrap();
    first.wait().unwrap();
    std::fs::write(
        d.join("o/.latest.safetensors.4242.tmp"),
        b"half a checkpoint",
    )
    .unwrap();
    std::fs::write(d.join("o/.notes.1.tmp"), b"not ours").unwrap();
    let o = rnnkit(&args, d);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        temporary_files(&d.join("o")),
        vec![".notes.1.tmp".to_string()]
    );
}

/// The output folder taken away mid-run (moved aside: the run's paths no longer
/// exist): the next write fails with an error naming the file, no panic, exit 1.
#[cfg(unix)]
#[test]
fn output_folder_removed_during_training_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d);
    let child = endless_run(d, Stdio::piped());
    let t0 = std::time::Instant::now();
    while !d.join("o/latest.safetensors").exists() {
        assert!(t0.elapsed().as_secs() < 60, "no checkpoint was written");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    std::fs::rename(d.join("o"), d.join("gone")).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("o/") && e.contains("No such file"), "{e}");
    assert!(!e.contains("panicked"), "{e}");
}
