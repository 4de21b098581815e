//! `--model hmm` of `rnnkit classify` and `rnnkit tag` end to end: the real binary in a
//! temporary folder, on synthetic series and a slice of the bundled treebank.

use crate::common::*;

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::Tensor;
use std::path::Path;
use std::process::Output;

fn last_json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().expect("a JSON line")).unwrap()
}

/// Two classes of 2-channel series of lengths 6–13: rising vs falling first channel.
fn write_ts(dir: &Path, name: &str, n: usize, offset: usize) {
    let mut s = String::from(
        "@problemName Toy\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true up down\n@data\n",
    );
    for i in offset..offset + n {
        let len = 6 + i % 8;
        let up = i % 2 == 0;
        let a: Vec<String> = (0..len)
            .map(|t| {
                let v = if up { t as f64 } else { -(t as f64) };
                format!("{:.3}", v * 0.5 + (i as f64 * 0.7 + t as f64).sin() * 0.2)
            })
            .collect();
        let b: Vec<String> = (0..len)
            .map(|t| format!("{:.3}", (t as f64 + i as f64).cos()))
            .collect();
        let label = if up { "up" } else { "down" };
        s.push_str(&format!("{}:{}:{label}\n", a.join(","), b.join(",")));
    }
    std::fs::write(dir.join(name), s).unwrap();
}

#[test]
fn classify_hmm_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 40, 0);
    write_ts(dir.path(), "test.ts", 20, 40);
    let train = [
        "classify",
        "train",
        "--model",
        "hmm",
        "--train",
        "train.ts",
        "--test",
        "test.ts",
        "--states",
        "3",
        "--em-iters",
        "20",
        "--out",
        "h",
        "--json",
    ];
    let o = rnnkit(&train, dir.path());
    ok(&o);
    let j = last_json(&o);
    assert_eq!(j["model"], "hmm", "{j}");
    assert!(j["test_accuracy"].as_f64().unwrap() >= 0.9, "{j}");
    assert!(j["train_seconds"].as_f64().unwrap() >= 0.0, "{j}");
    let e = stderr(&o);
    assert!(
        e.contains("class   up:  20 cases") && e.contains("EM iterations"),
        "{e}"
    );
    let f = TensorFile::open(dir.path().join("h/hmm.safetensors")).unwrap();
    assert_eq!(f.metadata()["rnnkit.task"], "classify-hmm");
    assert_eq!(f.shape("means"), Some(vec![2, 3, 2]));

    // The same run again must not overwrite the checkpoint silently.
    fails_with(&rnnkit(&train, dir.path()), "already exists; pass --force");

    let o = rnnkit(
        &[
            "classify",
            "eval",
            "--checkpoint",
            "h/hmm.safetensors",
            "--data",
            "test.ts",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let e = last_json(&o);
    assert_eq!(e["accuracy"], j["test_accuracy"], "{e}");
    assert_eq!(e["cases"], 20);
    assert_eq!(e["labels"], serde_json::json!(["up", "down"]));
    let o = rnnkit(
        &[
            "classify",
            "predict",
            "--checkpoint",
            "h/hmm.safetensors",
            "--data",
            "test.ts",
            "--proba",
        ],
        dir.path(),
    );
    ok(&o);
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 20);
    for l in &lines {
        let f: Vec<&str> = l.split('\t').collect();
        assert!(f.len() == 3 && ["up", "down"].contains(&f[0]), "{l}");
        let p: f64 = f[1].parse::<f64>().unwrap() + f[2].parse::<f64>().unwrap();
        assert!((p - 1.0).abs() < 1e-5, "{l}");
    }
}

#[test]
fn classify_hmm_refuses_network_flags_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 10, 0);
    let base = ["classify", "train", "--model", "hmm", "--train", "train.ts"];
    for (flag, value) in [
        ("--hidden", "8"),
        ("--lr", "0.1"),
        ("--epochs", "2"),
        ("--val-frac", "0.1"),
    ] {
        let mut args = base.to_vec();
        args.extend_from_slice(&[flag, value]);
        fails_with(
            &rnnkit(&args, dir.path()),
            &format!("{flag} applies to --model rnn only"),
        );
    }
    fails_with(
        &rnnkit(
            &["classify", "train", "--train", "train.ts", "--states", "3"],
            dir.path(),
        ),
        "--states applies to --model hmm only",
    );
    // More states than frames of a class.
    let mut args = base.to_vec();
    args.extend_from_slice(&["--states", "200", "--out", "o"]);
    fails_with(&rnnkit(&args, dir.path()), "cannot initialise 200 states");
    // An infinite feature is refused by the reader, naming the line.
    std::fs::write(
        dir.path().join("inf.ts"),
        "@problemName T\n@univariate true\n@equalLength false\n@classLabel true a b\n@data\n1,inf:a\n1,2:b\n",
    )
    .unwrap();
    let e = fails_with(
        &rnnkit(
            &[
                "classify", "train", "--model", "hmm", "--train", "inf.ts", "--out", "i",
            ],
            dir.path(),
        ),
        "infinite",
    );
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
}

#[test]
fn hmm_checkpoints_with_bad_probabilities_are_refused_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 20, 0);
    ok(&rnnkit(
        &[
            "classify", "train", "--model", "hmm", "--train", "train.ts", "--states", "2", "--out",
            "h",
        ],
        dir.path(),
    ));
    let p = dir.path().join("h/hmm.safetensors");
    let f = TensorFile::open(&p).unwrap();
    let mut tensors: Vec<(String, Tensor<f64>)> = f
        .names()
        .into_iter()
        .map(|n| (n.clone(), f.get(&n, None).unwrap()))
        .collect();
    for (n, t) in tensors.iter_mut() {
        if n == "transition" {
            t.data_mut()[1] += 0.5;
        }
    }
    let refs: Vec<(String, &Tensor<f64>)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save(&p, &refs, f.metadata()).unwrap();
    for cmd in ["eval", "predict"] {
        let o = rnnkit(
            &[
                "classify",
                cmd,
                "--checkpoint",
                "h/hmm.safetensors",
                "--data",
                "train.ts",
            ],
            dir.path(),
        );
        let e = fails_with(&o, "transition row 0: probabilities sum to 1.5");
        assert_eq!(e.trim_end().lines().count(), 1, "{e}");
        assert!(!e.contains("panicked"), "{e}");
    }
    // A tag checkpoint given to classify names its task.
    fails_with(
        &rnnkit(
            &[
                "tag",
                "eval",
                "--checkpoint",
                "h/hmm.safetensors",
                "--data",
                "x",
            ],
            dir.path(),
        ),
        "`classify-hmm` task",
    );
}

/// The first `n` sentences of a bundled treebank file, written into `dir`.
fn slice(dir: &Path, name: &str, split: &str, n: usize) {
    let text = std::fs::read_to_string(
        repo().join(format!("data/ud-english-ewt/en_ewt-ud-{split}.conllu")),
    )
    .unwrap();
    let part: Vec<&str> = text.split("\n\n").take(n).collect();
    std::fs::write(dir.join(name), part.join("\n\n") + "\n\n").unwrap();
}

#[test]
fn tag_hmm_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    slice(dir.path(), "train.conllu", "train", 600);
    slice(dir.path(), "dev.conllu", "dev", 100);
    let o = rnnkit(
        &[
            "tag",
            "train",
            "--model",
            "hmm",
            "--train",
            "train.conllu",
            "--dev",
            "dev.conllu",
            "--test",
            "dev.conllu",
            "--out",
            "t",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let j = last_json(&o);
    let acc = j["test_accuracy"].as_f64().unwrap();
    assert!(acc > 0.8, "{j}");
    assert_eq!(j["dev_accuracy"], j["test_accuracy"]);
    assert!(stderr(&o).contains("interpolation λ"), "{}", stderr(&o));
    let f = TensorFile::open(dir.path().join("t/hmm.safetensors")).unwrap();
    assert_eq!(f.metadata()["rnnkit.task"], "tag-hmm");
    assert_eq!(
        f.shape("transition"),
        Some(vec![18, 18, 18]),
        "17 UPOS tags and the boundary"
    );

    let o = rnnkit(
        &[
            "tag",
            "eval",
            "--checkpoint",
            "t/hmm.safetensors",
            "--data",
            "dev.conllu",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let e = last_json(&o);
    assert_eq!(e["accuracy"].as_f64().unwrap(), acc);
    for key in ["tokens", "oov_tokens", "oov_accuracy", "loss", "column"] {
        assert!(e.get(key).is_some(), "{key} missing: {e}");
    }
    assert_eq!(e["column"], "upos");

    let o = rnnkit_with_stdin(
        &["tag", "predict", "--checkpoint", "t/hmm.safetensors"],
        dir.path(),
        "The old man saw the boats .\n\nquickly\n",
    );
    ok(&o);
    let out = stdout(&o);
    let tags: Vec<&str> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').nth(3).unwrap())
        .collect();
    assert_eq!(tags.len(), 8, "{out}");
    assert_eq!((tags[0], tags[6]), ("DET", "PUNCT"), "{out}");
    // CoNLL-U in, the column filled in, everything else kept.
    let o = rnnkit_with_stdin(
        &["tag", "predict", "--checkpoint", "t/hmm.safetensors"],
        dir.path(),
        "# sent_id = x\n1\tDogs\t_\t_\t_\t_\t_\t_\t_\t_\n2\tbark\t_\t_\t_\t_\t_\t_\t_\t_\n\n",
    );
    ok(&o);
    assert!(
        stdout(&o).starts_with("# sent_id = x\n1\tDogs\t_\t"),
        "{}",
        stdout(&o)
    );
}

#[test]
fn tag_hmm_refuses_network_flags() {
    let dir = tempfile::tempdir().unwrap();
    slice(dir.path(), "train.conllu", "train", 20);
    for (flag, value) in [
        ("--hidden", "8"),
        ("--cell", "gru"),
        ("--batch", "4"),
        ("--resume", "x"),
    ] {
        let o = rnnkit(
            &[
                "tag",
                "train",
                "--model",
                "hmm",
                "--train",
                "train.conllu",
                flag,
                value,
            ],
            dir.path(),
        );
        fails_with(&o, &format!("{flag} applies to --model rnn only"));
    }
    fails_with(
        &rnnkit(
            &["tag", "train", "--train", "train.conllu", "--order", "2"],
            dir.path(),
        ),
        "--order applies to --model hmm only",
    );
    fails_with(
        &rnnkit(
            &["tag", "train", "--model", "hmm", "--order", "4"],
            dir.path(),
        ),
        "--order",
    );
}
