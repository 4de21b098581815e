//! `rnnkit classify` and `rnnkit tag` end to end: the real binary in a temporary folder.

use crate::common::*;

use rnnkit::checkpoint::TensorFile;
use std::path::Path;
use std::process::Output;

fn last_json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().expect("a JSON line")).unwrap()
}

/// Two classes of 2-channel series of lengths 5–12: rising vs falling first channel.
fn write_ts(dir: &Path, name: &str, n: usize) {
    let mut s = String::from(
        "# synthetic\n@problemName Toy\n@timeStamps false\n@missing false\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true up down\n@data\n",
    );
    for i in 0..n {
        let len = 5 + i % 8;
        let up = i % 2 == 0;
        let a: Vec<String> = (0..len)
            .map(|t| {
                format!(
                    "{:.3}",
                    if up { t as f64 } else { -(t as f64) } * 0.3 + (i as f64 * 0.7).sin() * 0.1
                )
            })
            .collect();
        let b: Vec<String> = (0..len)
            .map(|t| format!("{:.3}", (t as f64 + i as f64).cos()))
            .collect();
        s.push_str(&format!(
            "{}:{}:{}\n",
            a.join(","),
            b.join(","),
            if up { "up" } else { "down" }
        ));
    }
    std::fs::write(dir.join(name), s).unwrap();
}

const CLASSIFY: &[&str] = &[
    "classify",
    "train",
    "--train",
    "train.ts",
    "--test",
    "test.ts",
    "--hidden",
    "8",
    "--threads",
    "2",
    "--eval-every",
    "5",
    "--batch",
    "8",
    "--val-frac",
    "0.1",
];

#[test]
fn classify_trains_evaluates_and_predicts() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 60);
    write_ts(dir.path(), "test.ts", 20);
    let mut args = CLASSIFY.to_vec();
    args.extend_from_slice(&["--epochs", "15", "--out", "c", "--json"]);
    let o = rnnkit(&args, dir.path());
    ok(&o);
    let j = last_json(&o);
    assert!(j["test_accuracy"].as_f64().unwrap() >= 0.9, "{j}");
    let f = TensorFile::open(dir.path().join("c/best.safetensors")).unwrap();
    assert_eq!(f.metadata()["rnnkit.task"], "classify");
    assert_eq!(f.shape("norm.mean"), Some(vec![2]));
    assert_eq!(f.shape("head.weight"), Some(vec![2, 16]));
    let o = rnnkit(
        &[
            "classify",
            "eval",
            "--checkpoint",
            "c/best.safetensors",
            "--data",
            "test.ts",
            "--json",
            "--confusion-svg",
            "cm.svg",
        ],
        dir.path(),
    );
    ok(&o);
    let j = last_json(&o);
    assert_eq!(j["cases"], 20);
    assert!(j["accuracy"].as_f64().is_some() && j["macro_f1"].as_f64().is_some());
    assert!(dir.path().join("cm.svg").exists());
    let o = rnnkit(
        &[
            "classify",
            "predict",
            "--checkpoint",
            "c/best.safetensors",
            "--data",
            "test.ts",
            "--proba",
        ],
        dir.path(),
    );
    ok(&o);
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(lines.len(), 20);
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert!(
        ["up", "down"].contains(&fields[0]) && fields.len() == 3,
        "{}",
        lines[0]
    );
}

#[test]
fn classify_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 40);
    write_ts(dir.path(), "test.ts", 10);
    let mut whole = CLASSIFY.to_vec();
    whole.extend_from_slice(&["--steps", "12", "--out", "whole"]);
    ok(&rnnkit(&whole, dir.path()));
    let mut first = CLASSIFY.to_vec();
    first.extend_from_slice(&["--steps", "5", "--out", "split"]);
    ok(&rnnkit(&first, dir.path()));
    ok(&rnnkit(
        &[
            "classify",
            "train",
            "--resume",
            "split/latest.safetensors",
            "--steps",
            "12",
        ],
        dir.path(),
    ));
    let a = TensorFile::open(dir.path().join("whole/latest.safetensors")).unwrap();
    let b = TensorFile::open(dir.path().join("split/latest.safetensors")).unwrap();
    for n in a.names() {
        assert_eq!(
            a.get::<f32>(&n, None).unwrap(),
            b.get::<f32>(&n, None).unwrap(),
            "{n}"
        );
    }
}

#[test]
fn weight_averaging_resumes_bit_for_bit_and_best_holds_the_average() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 40);
    write_ts(dir.path(), "test.ts", 10);
    let run = |extra: &[&str]| {
        let mut args = CLASSIFY.to_vec();
        args.extend_from_slice(&["--average", "0.9", "--eval-every", "12"]);
        args.extend_from_slice(extra);
        rnnkit(&args, dir.path())
    };
    ok(&run(&["--steps", "12", "--out", "whole"]));
    ok(&run(&["--steps", "5", "--out", "split"]));
    let resume = |extra: &[&str]| {
        let mut args = vec!["classify", "train", "--resume", "split/latest.safetensors"];
        args.extend_from_slice(extra);
        rnnkit(&args, dir.path())
    };
    // The average is part of the run: it cannot be changed on resume.
    fails_with(&resume(&["--average", "0.5", "--steps", "12"]), "--average");
    ok(&resume(&["--steps", "12"]));
    let open = |p: &str| TensorFile::open(dir.path().join(p)).unwrap();
    let (a, b) = (
        open("whole/latest.safetensors"),
        open("split/latest.safetensors"),
    );
    let names = a.names();
    assert!(names.iter().any(|n| n.starts_with("train.average.")));
    for n in &names {
        assert_eq!(
            a.get::<f32>(n, None).unwrap(),
            b.get::<f32>(n, None).unwrap(),
            "{n}"
        );
    }
    // The only validation was at step 12: `best` holds the average as its model
    // and the trained weights beside it, `latest` the other way round.
    let best = open("whole/best.safetensors");
    assert_eq!(best.metadata()["train.average_in_model"], "true");
    assert_eq!(a.metadata()["train.average_in_model"], "false");
    let mut compared = 0;
    // Every parameter has its average (fixed tensors such as the input scaling do not).
    let averaged = names
        .iter()
        .filter(|n| names.contains(&format!("train.average.{n}")));
    for n in averaged {
        let avg = format!("train.average.{n}");
        let w = a.get::<f32>(n, None).unwrap();
        assert_eq!(
            best.get::<f32>(n, None).unwrap(),
            a.get::<f32>(&avg, None).unwrap(),
            "{n}"
        );
        assert_eq!(best.get::<f32>(&avg, None).unwrap(), w, "{n}");
        assert_ne!(
            a.get::<f32>(&avg, None).unwrap(),
            w,
            "{n}: the average trails"
        );
        compared += 1;
    }
    assert!(compared > 0);
    fails_with(
        &run(&["--average", "1.5", "--out", "bad"]),
        "--average must be in (0, 1)",
    );
}

#[test]
fn classify_refuses_bad_files_with_line_numbers_and_wrong_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 20);
    let good = std::fs::read_to_string(dir.path().join("train.ts")).unwrap();
    std::fs::write(
        dir.path().join("bad.ts"),
        good.replacen(":up\n", ":sideways\n", 1),
    )
    .unwrap();
    let o = rnnkit(
        &["classify", "train", "--train", "bad.ts", "--out", "x"],
        dir.path(),
    );
    fails_with(&o, "bad.ts:10");
    std::fs::write(dir.path().join("cp.safetensors"), b"not a checkpoint").unwrap();
    let o = rnnkit(
        &[
            "classify",
            "eval",
            "--checkpoint",
            "cp.safetensors",
            "--data",
            "train.ts",
        ],
        dir.path(),
    );
    assert!(!o.status.success() && !stderr(&o).contains("panicked"));
}

const CONLLU: &str = "# sent_id = 1\n1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_\n2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_\n3\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_\n\n# sent_id = 2\n1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_\n2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_\n3\tsleeps\tsleep\tVERB\tVBZ\t_\t0\troot\t_\t_\n\n";

#[test]
fn tag_trains_evaluates_and_predicts_conllu_from_plain_text() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.conllu"), CONLLU.repeat(10)).unwrap();
    let o = rnnkit(
        &[
            "tag",
            "train",
            "--train",
            "t.conllu",
            "--dev",
            "t.conllu",
            "--epochs",
            "30",
            "--hidden",
            "16",
            "--word-embed",
            "8",
            "--char-hidden",
            "8",
            "--batch",
            "4",
            "--eval-every",
            "20",
            "--out",
            "tg",
            "--threads",
            "2",
            "--json",
            "--lr",
            "0.01",
        ],
        dir.path(),
    );
    ok(&o);
    // The tagger's recipe multiplies in bf16 unless `--f32` is given.
    let f = TensorFile::open(dir.path().join("tg/best.safetensors")).unwrap();
    let recipe = &f.metadata()["train.recipe"];
    assert!(recipe.contains(r#""precision":"bf16""#), "{recipe}");
    let o = rnnkit(
        &[
            "tag",
            "eval",
            "--checkpoint",
            "tg/best.safetensors",
            "--data",
            "t.conllu",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let j = last_json(&o);
    assert_eq!(j["tokens"], 60);
    assert!(j["accuracy"].as_f64().unwrap() > 0.9, "{j}");
    assert!(j.get("oov_accuracy").is_some());
    let o = rnnkit_with_stdin(
        &["tag", "predict", "--checkpoint", "tg/best.safetensors"],
        dir.path(),
        "The cat runs\n",
    );
    ok(&o);
    let out = stdout(&o);
    let tags: Vec<&str> = out
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').nth(3).unwrap())
        .collect();
    assert_eq!(tags, ["DET", "NOUN", "VERB"], "{out}");
}

#[test]
fn tag_refuses_malformed_conllu_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.conllu"),
        CONLLU.replacen("\tdog\tdog\tNOUN", "\tdog\tNOUN", 1),
    )
    .unwrap();
    let o = rnnkit(
        &["tag", "train", "--train", "bad.conllu", "--out", "x"],
        dir.path(),
    );
    fails_with(&o, "bad.conllu:3");
}

/// A NaN loss in a task other than the char LM stops training the same way: the
/// step is named and the last good checkpoint still loads and scores.
#[test]
fn classify_divergence_stops_with_the_last_good_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    write_ts(dir.path(), "train.ts", 60);
    write_ts(dir.path(), "test.ts", 20);
    let mut args = CLASSIFY.to_vec();
    args.extend_from_slice(&[
        "--lr",
        "3e38",
        "--grad-clip",
        "0",
        "--checkpoint-every",
        "1",
        "--epochs",
        "5",
        "--out",
        "c",
    ]);
    let o = rnnkit(&args, dir.path());
    fails_with(&o, "training diverged: the loss became");
    let e = stderr(&o);
    let step: u64 = e
        .split("at step ")
        .nth(1)
        .and_then(|t| t.split(';').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no step in {e}"));
    let f = TensorFile::open(dir.path().join("c/latest.safetensors")).unwrap();
    assert_eq!(f.metadata()["train.step"], (step - 1).to_string());
    ok(&rnnkit(
        &[
            "classify",
            "eval",
            "--checkpoint",
            "c/latest.safetensors",
            "--data",
            "train.ts",
        ],
        dir.path(),
    ));
}
