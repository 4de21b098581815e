//! End-to-end tests: the real `rnnkit` binary in a temporary folder.

use crate::common::*;

use rnnkit::checkpoint::TensorFile;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The first `n` characters of the bundled corpus, as `corpus.txt` in `dir`.
fn corpus(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("data/shakespeare.txt")).unwrap();
    let p = dir.join("corpus.txt");
    std::fs::write(&p, text.chars().take(n).collect::<String>()).unwrap();
    p
}

/// A small, fast model; every run uses the same thread count so results are bit-for-bit comparable.
const TINY: &[&str] = &[
    "--hidden",
    "16",
    "--embed",
    "8",
    "--layers",
    "2",
    "--batch",
    "4",
    "--seq-len",
    "16",
    "--threads",
    "2",
    "--eval-every",
    "4",
    "--checkpoint-every",
    "4",
    "--dropout",
    "0.1",
    "--sample-length",
    "0",
];

fn train(dir: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["train", "--data", "corpus.txt"];
    args.extend_from_slice(TINY);
    args.extend_from_slice(extra);
    rnnkit(&args, dir)
}

#[test]
fn train_writes_checkpoints_metrics_plot_and_json() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    let o = train(
        dir.path(),
        &[
            "--steps",
            "8",
            "--out",
            "out",
            "--json",
            "--sample-length",
            "50",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let last = out.lines().last().unwrap();
    let j: serde_json::Value = serde_json::from_str(last).unwrap();
    for k in [
        "steps",
        "epochs",
        "train_nats_per_char",
        "val_nats_per_char",
        "tokens_per_sec",
        "checkpoint",
    ] {
        assert!(j.get(k).is_some(), "missing {k} in {last}");
    }
    assert_eq!(j["steps"], 8);
    assert!(out.contains("--- sample (50 characters"), "{out}");
    let out_dir = dir.path().join("out");
    for f in [
        "latest.safetensors",
        "best.safetensors",
        "metrics.jsonl",
        "loss.svg",
    ] {
        assert!(out_dir.join(f).exists(), "{f} missing");
    }
    let metrics = std::fs::read_to_string(out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(
        metrics.lines().count(),
        2,
        "one line per eval at steps 4 and 8"
    );
    assert!(std::fs::read_to_string(out_dir.join("loss.svg"))
        .unwrap()
        .contains("<svg"));
    // The checkpoint follows the contract.
    let f = TensorFile::open(out_dir.join("latest.safetensors")).unwrap();
    assert_eq!(f.metadata()["rnnkit.cell"], "lstm");
    assert!(f.metadata()["rnnkit.vocab"].starts_with('['));
    assert_eq!(f.shape("rnn.weight_ih_l1"), Some(vec![64, 16]));
    assert!(f.shape("head.weight").is_some() && f.shape("embed.weight").is_some());
}

#[test]
fn resume_continues_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    let whole = train(dir.path(), &["--steps", "12", "--out", "whole"]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let first = train(
        dir.path(),
        &["--steps", "6", "--out", "split", "--checkpoint-every", "3"],
    );
    assert!(first.status.success(), "{}", stderr(&first));
    // Resume takes the recipe from the checkpoint; only the bound changes.
    let rest = rnnkit(
        &[
            "train",
            "--data",
            "corpus.txt",
            "--resume",
            "split/latest.safetensors",
            "--steps",
            "12",
            "--out",
            "split",
            "--threads",
            "2",
            "--sample-length",
            "0",
            "--eval-every",
            "4",
        ],
        dir.path(),
    );
    assert!(rest.status.success(), "{}", stderr(&rest));
    // The same validation losses, bit for bit (the split run also logged its own
    // end-of-run validation at step 6, which the uninterrupted run did not take).
    let vals = |run: &str| -> Vec<(u64, String)> {
        std::fs::read_to_string(dir.path().join(run).join("metrics.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["step"] != 6 && v.get("val_nats_per_char").is_some())
            .map(|v| {
                (
                    v["step"].as_u64().unwrap(),
                    v["val_nats_per_char"].to_string(),
                )
            })
            .collect()
    };
    assert_eq!(vals("whole"), vals("split"), "the same losses, bit for bit");
    assert_eq!(vals("whole").len(), 3);
    let a = TensorFile::open(dir.path().join("whole/latest.safetensors")).unwrap();
    let b = TensorFile::open(dir.path().join("split/latest.safetensors")).unwrap();
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        assert_eq!(
            a.get::<f32>(&n, None).unwrap(),
            b.get::<f32>(&n, None).unwrap(),
            "tensor {n}"
        );
    }
}

#[test]
fn resume_with_a_contradicting_flag_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    assert!(train(dir.path(), &["--steps", "4", "--out", "o"])
        .status
        .success());
    let o = rnnkit(
        &[
            "train",
            "--data",
            "corpus.txt",
            "--resume",
            "o/latest.safetensors",
            "--hidden",
            "32",
            "--steps",
            "8",
            "--out",
            "o",
        ],
        dir.path(),
    );
    fails_with(&o, "--hidden is 16 in the checkpoint but 32 was asked");
    std::fs::write(
        dir.path().join("other.txt"),
        "something else entirely. ".repeat(400),
    )
    .unwrap();
    let o = rnnkit(
        &[
            "train",
            "--data",
            "other.txt",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "8",
            "--out",
            "o",
        ],
        dir.path(),
    );
    fails_with(&o, "the training data differs");
}

#[test]
fn sample_streams_exactly_prime_plus_length_and_is_reproducible() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    assert!(train(dir.path(), &["--steps", "4", "--out", "o"])
        .status
        .success());
    let args = [
        "sample",
        "--checkpoint",
        "o/latest.safetensors",
        "--prime",
        "ROMEO:",
        "--length",
        "40",
        "--seed",
        "3",
    ];
    let a = rnnkit(&args, dir.path());
    assert!(a.status.success(), "{}", stderr(&a));
    let text = stdout(&a);
    assert!(text.starts_with("ROMEO:"));
    assert_eq!(text.chars().count(), 6 + 40, "{text:?}");
    assert_eq!(
        text,
        stdout(&rnnkit(&args, dir.path())),
        "same seed, same text"
    );
    let greedy = [
        "sample",
        "--checkpoint",
        "o/latest.safetensors",
        "--prime",
        "the",
        "--length",
        "30",
        "--temperature",
        "0",
    ];
    assert_eq!(
        stdout(&rnnkit(&greedy, dir.path())),
        stdout(&rnnkit(&greedy, dir.path()))
    );
    let mut int8 = args.to_vec();
    int8.push("--int8");
    let o = rnnkit(&int8, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).chars().count(), 6 + 40);
    for (flags, needle) in [
        (
            vec!["--prime", "ab\u{1F600}c"],
            "'\u{1F600}' (U+1F600) at position 2",
        ),
        (vec!["--temperature", "-1"], "temperature"),
        (vec!["--top-p", "1.5"], "top-p must be in (0, 1]"),
        (vec!["--top-p", "0"], "top-p must be in (0, 1]"),
        (vec!["--top-k", "0"], "--top-k"),
        (vec!["--bf16", "--int8"], "cannot be used with"),
    ] {
        let mut args = vec!["sample", "--checkpoint", "o/latest.safetensors"];
        args.extend(flags);
        let o = rnnkit(&args, dir.path());
        fails_with(&o, needle);
        assert!(o.stdout.is_empty(), "nothing printed on error");
    }
}

#[test]
fn eval_reports_chars_nats_and_bits() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    assert!(train(dir.path(), &["--steps", "4", "--out", "o"])
        .status
        .success());
    std::fs::write(
        dir.path().join("t.txt"),
        "To be, or not to be: that is the question.",
    )
    .unwrap();
    let eval = |flags: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            "o/latest.safetensors",
            "--text",
            "t.txt",
        ];
        args.extend_from_slice(flags);
        rnnkit(&args, dir.path())
    };
    let json = |flags: &[&str]| -> serde_json::Value {
        let o = eval(flags);
        assert!(o.status.success(), "{flags:?}: {}", stderr(&o));
        serde_json::from_str(stdout(&o).trim()).unwrap()
    };
    let j = json(&["--json"]);
    assert_eq!(j["chars"], 41);
    let (nats, bits) = (
        j["nats_per_char"].as_f64().unwrap(),
        j["bits_per_char"].as_f64().unwrap(),
    );
    assert!(nats > 0.5 && nats < 6.0 && (bits - nats / std::f64::consts::LN_2).abs() < 1e-12);
    // The weights of `sample --bf16` and `--int8`, one character at a time: close to f32.
    for (flag, within) in [("--bf16", 0.01), ("--int8", 0.02)] {
        let j = json(&["--json", flag]);
        assert_eq!(j["chars"], 41);
        let got = j["nats_per_char"].as_f64().unwrap();
        assert!((got - nats).abs() < within, "{flag}: {got} vs f32 {nats}");
    }
    fails_with(&eval(&["--bf16", "--int8"]), "cannot be used with");
}

#[test]
fn bad_data_files_get_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.txt"), "").unwrap();
    std::fs::write(d.join("binary.bin"), [0x7fu8, b'E', b'L', b'F', 0, 1, 2]).unwrap();
    std::fs::write(d.join("latin1.txt"), b"caf\xe9 au lait").unwrap();
    std::fs::write(d.join("short.txt"), "tiny text").unwrap();
    for (file, needle) in [
        ("missing.txt", "missing.txt"),
        ("empty.txt", "is empty"),
        ("binary.bin", "looks binary"),
        ("latin1.txt", "not valid UTF-8 (bad byte at offset 3)"),
        (
            "short.txt",
            "has 9 characters but one batch of 4 × 16 needs at least 65",
        ),
    ] {
        let mut args = vec!["train", "--data", file, "--out", "o"];
        args.extend_from_slice(TINY);
        let o = rnnkit(&args, d);
        fails_with(&o, needle);
        assert_eq!(
            stderr(&o).trim().lines().count(),
            1,
            "one line: {}",
            stderr(&o)
        );
        assert!(
            !d.join("o/latest.safetensors").exists(),
            "no checkpoint for bad data"
        );
    }
}

#[test]
fn impossible_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 5_000);
    for (flags, needle) in [
        (vec!["--hidden", "0"], "--hidden"),
        (vec!["--batch=-3"], "--batch"),
        (vec!["--layers", "0"], "--layers"),
        (vec!["--dropout", "1"], "--dropout must be in [0, 1)"),
        (vec!["--lr", "0"], "--lr must be a positive number"),
        (vec!["--lr-decay", "1.5"], "--lr-decay must be in (0, 1]"),
        (vec!["--val-frac", "0.7"], "--val-frac must be in [0, 0.5)"),
        (vec!["--epochs", "-1"], "--epochs must be a positive number"),
        (
            vec!["--time-limit", "0"],
            "--time-limit must be a positive number",
        ),
        (vec!["--cell", "transformer"], "--cell"),
        (vec!["--frobnicate"], "--frobnicate"),
    ] {
        let mut args = vec!["train", "--data", "corpus.txt", "--out", "o"];
        args.extend(flags.iter().copied());
        fails_with(&rnnkit(&args, dir.path()), needle);
    }
}

#[test]
fn broken_and_hostile_checkpoints_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    corpus(d, 20_000);
    assert!(train(d, &["--steps", "4", "--out", "o"]).status.success());
    let good = std::fs::read(d.join("o/latest.safetensors")).unwrap();
    std::fs::write(d.join("truncated.safetensors"), &good[..good.len() - 100]).unwrap();
    let mut absurd = good.clone();
    absurd[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    std::fs::write(d.join("absurd.safetensors"), absurd).unwrap();
    std::fs::write(d.join("text.safetensors"), "not a checkpoint").unwrap();
    // A well-formed file whose tensors do not fit together: head.weight for another vocabulary.
    let f = TensorFile::open(d.join("o/latest.safetensors")).unwrap();
    let mut tensors: Vec<(String, rnnkit::Tensor<f32>)> = f
        .names()
        .into_iter()
        .map(|n| (n.clone(), f.get(&n, None).unwrap()))
        .collect();
    let mut meta = f.metadata().clone();
    for (n, t) in tensors.iter_mut() {
        if n == "head.weight" {
            *t = rnnkit::Tensor::zeros(&[t.shape()[0] + 1, t.shape()[1]]);
        }
    }
    let refs: Vec<(String, &rnnkit::Tensor<f32>)> =
        tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    rnnkit::checkpoint::save(d.join("misfit.safetensors"), &refs, &meta).unwrap();
    meta.remove("rnnkit.vocab");
    let good_tensors: Vec<(String, rnnkit::Tensor<f32>)> = f
        .names()
        .into_iter()
        .map(|n| (n.clone(), f.get(&n, None).unwrap()))
        .collect();
    let refs: Vec<(String, &rnnkit::Tensor<f32>)> =
        good_tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    rnnkit::checkpoint::save(d.join("novocab.safetensors"), &refs, &meta).unwrap();
    for (file, needle) in [
        ("missing.safetensors", "missing.safetensors"),
        ("truncated.safetensors", "not a valid safetensors file"),
        ("absurd.safetensors", "not a valid safetensors file"),
        ("text.safetensors", "not a valid safetensors file"),
        ("misfit.safetensors", "`head.weight` has shape"),
        (
            "novocab.safetensors",
            "`rnnkit.vocab` (the vocabulary) is missing",
        ),
    ] {
        fails_with(
            &rnnkit(&["sample", "--checkpoint", file, "--length", "5"], d),
            needle,
        );
        std::fs::write(d.join("t.txt"), "To be, or not").unwrap();
        fails_with(
            &rnnkit(&["eval", "--checkpoint", file, "--text", "t.txt"], d),
            needle,
        );
        let o = rnnkit(
            &[
                "train",
                "--data",
                "corpus.txt",
                "--resume",
                file,
                "--steps",
                "8",
                "--out",
                "r",
            ],
            d,
        );
        assert!(
            !o.status.success() && !stderr(&o).contains("panicked"),
            "{file}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn divergence_stops_with_the_step_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    let o = train(
        dir.path(),
        &[
            "--steps",
            "50",
            "--lr",
            "1e30",
            "--grad-clip",
            "0",
            "--checkpoint-every",
            "1",
            "--out",
            "o",
        ],
    );
    fails_with(&o, "training diverged: the loss became");
    let e = stderr(&o);
    let step: u64 = e
        .split("at step ")
        .nth(1)
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let f = TensorFile::open(dir.path().join("o/latest.safetensors"))
        .expect("last good checkpoint intact");
    assert_eq!(f.metadata()["train.step"], (step - 1).to_string());
}

#[cfg(unix)]
#[test]
fn ctrl_c_stops_cleanly_with_a_checkpoint_and_resume_hint() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    let mut args = vec![
        "train",
        "--data",
        "corpus.txt",
        "--steps",
        "1000000",
        "--out",
        "o",
    ];
    args.extend_from_slice(TINY);
    let child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(&args)
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until training runs (the first periodic checkpoint exists), then interrupt.
    let latest = dir.path().join("o/latest.safetensors");
    for _ in 0..600 {
        if latest.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(latest.exists(), "training did not start");
    Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("continue with: rnnkit train --resume"),
        "{}",
        stderr(&o)
    );
    let f = TensorFile::open(&latest).unwrap();
    let step: u64 = f.metadata()["train.step"].parse().unwrap();
    assert!(step >= 4);
}

#[test]
fn a_model_too_large_for_memory_is_refused_before_allocating() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 5_000);
    let o = rnnkit(
        &[
            "train",
            "--data",
            "corpus.txt",
            "--hidden",
            "65536",
            "--layers",
            "64",
            "--out",
            "o",
        ],
        dir.path(),
    );
    fails_with(&o, "of memory is available; lower --hidden");
}

#[test]
fn bench_prints_the_documented_json_keys() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--hidden",
        "8",
        "--layers",
        "2",
        "--embed",
        "4",
        "--batch",
        "2",
        "--seq-len",
        "5",
        "--steps",
        "2",
        "--sample-chars",
        "5",
        "--json",
    ];
    let o = rnnkit(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    for k in [
        "train_tokens_per_sec",
        "train_gflops",
        "sample_us_per_char",
        "peak_rss_mb",
    ] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
    }
    // A model this small is stepped on one thread, and its sampling bounds are taken
    // with that thread's bandwidth.
    for k in [
        "sample_threads",
        "sample_bf16_threads",
        "sample_int8_threads",
    ] {
        assert_eq!(j[k].as_u64(), Some(1), "{k} in {j}");
    }
    let kernels = j["kernels"].as_str();
    assert!(
        matches!(kernels, Some("avx512" | "avx2" | "portable")),
        "kernels in {j}"
    );
    // RNNKIT_AVX512=0 takes the paths of a CPU without AVX-512, and says so.
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(args)
        .current_dir(dir.path())
        .env("RNNKIT_AVX512", "0")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let expected = if kernels == Some("portable") {
        "portable"
    } else {
        "avx2"
    };
    assert_eq!(j["kernels"].as_str(), Some(expected), "{j}");
}

#[test]
fn bench_measures_the_classifier_and_the_tagger() {
    let dir = tempfile::tempdir().unwrap();
    for args in [
        &[
            "bench",
            "--task",
            "classify",
            "--hidden",
            "8",
            "--channels",
            "3",
            "--classes",
            "4",
            "--min-len",
            "2",
            "--max-len",
            "5",
            "--batch",
            "3",
            "--steps",
            "2",
            "--pool",
            "mean",
            "--json",
        ][..],
        &[
            "bench",
            "--task",
            "tag",
            "--hidden",
            "8",
            "--word-vocab",
            "50",
            "--char-vocab",
            "10",
            "--tags",
            "3",
            "--words-per-sentence",
            "2-4",
            "--chars-per-word",
            "1-3",
            "--word-embed",
            "4",
            "--char-embed",
            "3",
            "--char-hidden",
            "5",
            "--batch",
            "3",
            "--steps",
            "2",
            "--json",
        ],
    ] {
        let o = rnnkit(args, dir.path());
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
        assert_eq!(j["task"], args[2], "{j}");
        for k in [
            "train_tokens_per_sec",
            "train_gflops",
            "step_seconds",
            "tokens_per_step",
            "peak_rss_mb",
            "threads",
        ] {
            assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
        }
    }
}

#[test]
fn bench_measures_the_ctc_recogniser_in_stacked_steps() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "bench",
        "--task",
        "ctc",
        "--hidden",
        "8",
        "--layers",
        "2",
        "--bands",
        "5",
        "--labels",
        "4",
        "--stack",
        "2",
        "--min-len",
        "8",
        "--max-len",
        "20",
        "--batch",
        "3",
        "--steps",
        "2",
        "--seed",
        "3",
        "--json",
    ];
    let o = rnnkit(&args, dir.path());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(j["task"], "ctc", "{j}");
    for k in [
        "train_tokens_per_sec",
        "train_gflops",
        "step_seconds",
        "tokens_per_step",
        "peak_rss_mb",
        "threads",
    ] {
        assert!(j[k].as_f64().is_some_and(|v| v > 0.0), "{k} in {j}");
    }
    // 3 utterances of 8 to 20 frames, 2 frames a step: 4 to 10 steps each.
    let per_step = j["tokens_per_step"].as_f64().unwrap();
    assert!(
        (12.0..=30.0).contains(&per_step),
        "tokens_per_step {per_step} in {j}"
    );
    let text = rnnkit(&args[..args.len() - 1], dir.path());
    assert!(text.status.success(), "{}", stderr(&text));
    assert!(
        stdout(&text).contains("steps/s")
            && stdout(&text).starts_with("ctc lstm 2x8 bidirectional"),
        "{}",
        stdout(&text)
    );
    let o = rnnkit(
        &["bench", "--task", "ctc", "--stack", "4", "--min-len", "12"],
        dir.path(),
    );
    fails_with(&o, "--min-len (12 frames) must be at least 4 × --stack (4)");
}

#[test]
fn bench_refuses_flags_of_another_task() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(&["bench", "--task", "tag", "--seq-len", "5"], dir.path());
    fails_with(&o, "--seq-len applies to --task char-lm only");
    let o = rnnkit(&["bench", "--channels", "5"], dir.path());
    fails_with(&o, "--channels applies to --task classify only");
    let o = rnnkit(&["bench", "--task", "tag", "--bands", "40"], dir.path());
    fails_with(&o, "--bands applies to --task ctc only");
    let o = rnnkit(&["bench", "--task", "ctc", "--embed", "4"], dir.path());
    fails_with(&o, "--embed applies to --task char-lm or seq2seq only");
    let o = rnnkit(
        &["bench", "--task", "tag", "--words-per-sentence", "9-3"],
        dir.path(),
    );
    fails_with(&o, "--words-per-sentence");
}

#[test]
fn bf16_training_resumes_in_bf16_and_refuses_a_change_of_precision() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    // Resumes the run in `out` to 8 steps, with `extra` flags.
    let resume = |out: &str, extra: &[&str]| {
        let latest = format!("{out}/latest.safetensors");
        let mut args = vec!["--steps", "8", "--out", out, "--resume", &latest];
        args.extend_from_slice(extra);
        train(dir.path(), &args)
    };
    let whole = train(dir.path(), &["--steps", "8", "--out", "whole", "--bf16"]);
    assert!(whole.status.success(), "{}", stderr(&whole));
    let first = train(dir.path(), &["--steps", "4", "--out", "split", "--bf16"]);
    assert!(first.status.success(), "{}", stderr(&first));
    // No --bf16 here: the checkpoint's recipe carries the precision.
    let rest = resume("split", &[]);
    assert!(rest.status.success(), "{}", stderr(&rest));
    let m1 = std::fs::read_to_string(dir.path().join("whole/metrics.jsonl")).unwrap();
    let m2 = std::fs::read_to_string(dir.path().join("split/metrics.jsonl")).unwrap();
    assert_eq!(m1, m2, "bf16 runs resume bit for bit too");
    let f = TensorFile::open(dir.path().join("whole/latest.safetensors")).unwrap();
    assert!(
        f.metadata()["train.recipe"].contains(r#""precision":"bf16""#),
        "{}",
        f.metadata()["train.recipe"]
    );
    let f32_run = train(dir.path(), &["--steps", "4", "--out", "f32"]);
    assert!(f32_run.status.success(), "{}", stderr(&f32_run));
    fails_with(
        &resume("f32", &["--bf16"]),
        "--bf16 is off in the checkpoint but on was asked",
    );
    // `--f32` turns off the bf16 of a recipe (the tagger's default), and only then.
    fails_with(
        &resume("split", &["--f32"]),
        "--bf16 is on in the checkpoint but off was asked",
    );
    let o = train(
        dir.path(),
        &["--steps", "4", "--out", "x", "--bf16", "--f32"],
    );
    fails_with(&o, "cannot be used with");
}

#[test]
fn one_hot_inputs_train_sample_and_store_no_embedding() {
    let dir = tempfile::tempdir().unwrap();
    corpus(dir.path(), 20_000);
    let o = train(dir.path(), &["--steps", "4", "--out", "o", "--embed", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let f = TensorFile::open(dir.path().join("o/latest.safetensors")).unwrap();
    let v: Vec<String> = serde_json::from_str(&f.metadata()["rnnkit.vocab"]).unwrap();
    assert!(f.shape("embed.weight").is_none());
    assert_eq!(f.shape("rnn.weight_ih_l0"), Some(vec![64, v.len()]));
    let o = rnnkit(
        &[
            "sample",
            "--checkpoint",
            "o/latest.safetensors",
            "--length",
            "20",
            "--prime",
            "The",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).chars().count(), 23);
    let o = rnnkit(
        &[
            "train",
            "--resume",
            "o/latest.safetensors",
            "--steps",
            "8",
            "--sample-length",
            "0",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", stderr(&o));
}
