//! `rnnkit seq2seq` end to end: the real binary in a temporary folder.

use crate::common::*;

use rnnkit::checkpoint::TensorFile;
use std::path::Path;
use std::process::Output;

fn last_json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().expect("a JSON line")).unwrap()
}

/// Words of 2–6 letters from `a`–`f` → their letters upper-cased and reversed,
/// space-separated (`abc` → `C B A`); `n` distinct words from `seed`.
fn write_pairs(dir: &Path, name: &str, n: usize, seed: u64) {
    let mut rng = rnnkit::Rng::new(seed);
    let mut seen = std::collections::HashSet::new();
    let mut s = String::new();
    while seen.len() < n {
        let len = 2 + rng.below(5);
        let w: String = (0..len)
            .map(|_| (b'a' + rng.below(6) as u8) as char)
            .collect();
        if seen.insert(w.clone()) {
            let t: Vec<String> = w
                .chars()
                .rev()
                .map(|c| c.to_ascii_uppercase().to_string())
                .collect();
            s.push_str(&format!("{w}\t{}\n", t.join(" ")));
        }
    }
    std::fs::write(dir.join(name), s).unwrap();
}

const TRAIN: &[&str] = &[
    "seq2seq",
    "train",
    "--data",
    "train.tsv",
    "--dev",
    "dev.tsv",
    "--test",
    "test.tsv",
    "--target-tokens",
    "space",
    "--embed",
    "16",
    "--hidden",
    "48",
    "--dropout",
    "0",
    "--batch",
    "16",
    "--threads",
    "2",
    "--eval-every",
    "100",
    "--beam",
    "3",
];

fn predict(dir: &Path, extra: &[&str], input: &str) -> Output {
    let mut args = vec!["seq2seq", "predict", "--checkpoint", "s/best.safetensors"];
    args.extend_from_slice(extra);
    rnnkit_with_stdin(&args, dir, input)
}

#[test]
fn seq2seq_trains_evaluates_predicts_and_draws_attention() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pairs(d, "train.tsv", 1200, 1);
    write_pairs(d, "dev.tsv", 60, 2);
    write_pairs(d, "test.tsv", 60, 3);
    let mut args = TRAIN.to_vec();
    args.extend_from_slice(&["--steps", "600", "--out", "s", "--json"]);
    let o = rnnkit(&args, d);
    ok(&o);
    let j = last_json(&o);
    assert!(j["test_wer_greedy"].as_f64().unwrap() < 0.2, "{j}");
    assert!(j["test_wer_beam"].as_f64().unwrap() < 0.2, "{j}");
    assert!(stderr(&o).contains("test, beam 3"), "{}", stderr(&o));
    let f = TensorFile::open(d.join("s/best.safetensors")).unwrap();
    assert_eq!(f.metadata()["rnnkit.task"], "seq2seq");
    assert_eq!(f.metadata()["rnnkit.attention"], "general");
    assert_eq!(f.metadata()["rnnkit.target_tokens"], "space");
    assert_eq!(f.shape("attn.weight"), Some(vec![48, 48]));
    assert_eq!(f.shape("encoder.weight_hh_l0_reverse"), Some(vec![96, 24]));

    // Scores test.tsv greedily with the trained checkpoint.
    let eval = |extra: &[&str]| {
        let mut args = vec!["seq2seq", "eval", "--checkpoint", "s/best.safetensors"];
        args.extend_from_slice(&["--data", "test.tsv", "--beam", "1", "--json"]);
        args.extend_from_slice(extra);
        let o = rnnkit(&args, d);
        ok(&o);
        last_json(&o)
    };
    let e = eval(&[]);
    assert_eq!(e["sources"], 60);
    assert_eq!(e["beam"], 1);
    assert!((e["wer"].as_f64().unwrap() - j["test_wer_greedy"].as_f64().unwrap()).abs() < 1e-12);
    assert!(e["per"].as_f64().unwrap() <= e["wer"].as_f64().unwrap());
    assert_eq!(e["ignore_digits"], false);
    // These tokens have no digits: ignoring them scores the same.
    let n = eval(&["--ignore-digits"]);
    assert_eq!(n["ignore_digits"], true);
    assert_eq!((&n["wer"], &n["per"]), (&e["wer"], &e["per"]));

    let o = predict(d, &["--attention-plots", "att"], "abc\nfed\r\n");
    ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(lines, ["C B A", "D E F"]);
    for (k, output) in [("1.svg", "C"), ("2.svg", "F")] {
        let svg = std::fs::read_to_string(d.join("att").join(k)).unwrap();
        let label = format!("\n{output}\n</text>");
        assert!(svg.starts_with("<svg") && svg.contains(&label), "{k}");
    }
}

#[test]
fn a_resumed_run_ends_where_an_uninterrupted_one_does() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_pairs(d, "train.tsv", 200, 1);
    write_pairs(d, "dev.tsv", 20, 2);
    write_pairs(d, "test.tsv", 20, 3);
    let run = |steps: &str, out: &str, extra: &[&str]| {
        let mut args = TRAIN.to_vec();
        // Dropout and label smoothing both come back from the checkpoint's recipe.
        args.extend_from_slice(&["--dropout", "0.3", "--label-smoothing", "0.1"]);
        args.extend_from_slice(&["--steps", steps, "--out", out]);
        args.extend_from_slice(extra);
        rnnkit(&args, d)
    };
    ok(&run("30", "whole", &[]));
    ok(&run("15", "part", &[]));
    ok(&rnnkit(
        &[
            "seq2seq",
            "train",
            "--resume",
            "part/latest.safetensors",
            "--steps",
            "30",
        ],
        d,
    ));
    let a = TensorFile::open(d.join("whole/latest.safetensors")).unwrap();
    let b = TensorFile::open(d.join("part/latest.safetensors")).unwrap();
    for name in a.names().into_iter().filter(|n| !n.starts_with("train.")) {
        let (x, y) = (
            a.get::<f32>(&name, None).unwrap(),
            b.get::<f32>(&name, None).unwrap(),
        );
        assert_eq!(x.data(), y.data(), "{name}");
    }
    assert!(
        a.metadata()["train.recipe"].contains(r#""label_smoothing":0.1"#),
        "{}",
        a.metadata()["train.recipe"]
    );
}

#[test]
fn bad_input_gets_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let cases: &[(&str, &str)] = &[
        ("a\tA\n\nb\tB\n", "bad.tsv:2: empty line"),
        ("a\tA\nb B\n", "bad.tsv:2: no tab"),
        ("a\t\n", "bad.tsv:1: the target is empty"),
    ];
    for (text, msg) in cases {
        std::fs::write(d.join("bad.tsv"), text).unwrap();
        let o = rnnkit(&["seq2seq", "train", "--data", "bad.tsv", "--out", "x"], d);
        fails_with(&o, msg);
    }
    std::fs::write(d.join("bad.tsv"), format!("{}\tA\n", "a".repeat(501))).unwrap();
    let o = rnnkit(&["seq2seq", "train", "--data", "bad.tsv", "--out", "x"], d);
    fails_with(&o, "501 tokens, more than the limit of 500");
    let o = rnnkit(&["seq2seq", "train", "--beam", "0", "--out", "x"], d);
    fails_with(&o, "--beam 0");
    let o = rnnkit(&["seq2seq", "train", "--hidden", "7", "--out", "x"], d);
    fails_with(&o, "must be even");
    let o = rnnkit(
        &["seq2seq", "train", "--label-smoothing", "1", "--out", "x"],
        d,
    );
    fails_with(&o, "--label-smoothing 1 must be in [0, 1)");
    let o = rnnkit(&["seq2seq", "eval", "--checkpoint", "none.safetensors"], d);
    fails_with(&o, "none.safetensors");

    // A small trained model for the predict-time errors.
    write_pairs(d, "train.tsv", 100, 1);
    write_pairs(d, "dev.tsv", 10, 2);
    write_pairs(d, "test.tsv", 10, 3);
    let mut args = TRAIN.to_vec();
    args.extend_from_slice(&["--steps", "5", "--out", "s"]);
    ok(&rnnkit(&args, d));
    let o = predict(d, &[], "abc\nabz\n");
    fails_with(&o, "stdin line 2: \"z\" is not in the model's vocabulary");
    let o = predict(d, &[], "abc\n\nabc\n");
    fails_with(&o, "stdin line 2: empty");
    let o = predict(d, &["--beam", "0"], "abc\n");
    fails_with(&o, "--beam 0");
    std::fs::write(d.join("unknown.tsv"), "abc\tC B A\nabc\tQ\n").unwrap();
    let o = rnnkit(
        &[
            "seq2seq",
            "eval",
            "--checkpoint",
            "s/best.safetensors",
            "--data",
            "unknown.tsv",
        ],
        d,
    );
    fails_with(
        &o,
        "unknown.tsv:2: target: \"Q\" is not in the model's vocabulary",
    );
    // A checkpoint of another task is named as such.
    let o = rnnkit(
        &[
            "tag",
            "eval",
            "--checkpoint",
            "s/best.safetensors",
            "--data",
            "test.tsv",
        ],
        d,
    );
    fails_with(&o, "checkpoint of the `seq2seq` task");
}
