//! `rnnkit ctc` end to end: the real binary in a temporary folder, on tone sequences
//! written as WAV files (each label a pitch, with pauses), which a small recogniser
//! learns in seconds; and every bad-input path.

use crate::common::*;

use std::process::Output;

fn last_json(o: &Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().expect("a JSON line")).unwrap()
}

const TRAIN: &[&str] = &[
    "ctc",
    "train",
    "--data",
    "train.tsv",
    "--dev",
    "dev.tsv",
    "--test",
    "test.tsv",
    "--hidden",
    "32",
    "--layers",
    "1",
    "--dropout",
    "0",
    "--batch",
    "8",
    "--lr",
    "0.01",
    "--threads",
    "2",
    "--eval-every",
    "50",
    "--steps",
    "400",
    "--beam",
    "4",
    "--json",
];

#[test]
fn learns_tone_sequences_then_evaluates_and_transcribes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tones(d, "train", 120, 1);
    write_tones(d, "dev", 20, 2);
    write_tones(d, "test", 30, 3);
    let o = rnnkit(TRAIN, d);
    ok(&o);
    let j = last_json(&o);
    let acc = j["test_string_accuracy_greedy"].as_f64().unwrap();
    assert!(acc >= 0.9, "string accuracy {acc}: {}", stderr(&o));
    assert!(j["test_string_accuracy_beam"].as_f64().unwrap() >= 0.9);
    assert!(stderr(&o).contains("test, best path"), "{}", stderr(&o));

    let best = d.join("runs/ctc/best.safetensors");
    let best = best.to_str().unwrap();
    let o = rnnkit(
        &[
            "ctc",
            "eval",
            "--checkpoint",
            best,
            "--data",
            "test.tsv",
            "--by-speaker",
            "--json",
        ],
        d,
    );
    ok(&o);
    let j = last_json(&o);
    assert_eq!(j["utterances"], 30);
    assert!(j["cer"].as_f64().unwrap() <= 0.05, "{j}");
    assert_eq!(j["speakers"]["speaker0"]["utterances"], 15);

    let o = rnnkit(
        &[
            "ctc",
            "transcribe",
            "--checkpoint",
            best,
            "test-0.wav",
            "test-1.wav",
        ],
        d,
    );
    ok(&o);
    let manifest = std::fs::read_to_string(d.join("test.tsv")).unwrap();
    let want: Vec<&str> = manifest
        .lines()
        .take(2)
        .map(|l| l.split('\t').nth(1).unwrap())
        .collect();
    let out = stdout(&o);
    let got: Vec<&str> = out.lines().collect();
    assert_eq!(got.len(), 2);
    let right = got.iter().zip(&want).filter(|(g, w)| g == w).count();
    assert!(right >= 1, "{got:?} vs {want:?}");
}

#[test]
fn bad_input_gets_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tones(d, "train", 6, 1);
    // A manifest line pointing at a missing file names the line.
    std::fs::write(d.join("missing.tsv"), "train-0.wav\ta\nnope.wav\tb\n").unwrap();
    let o = rnnkit(
        &["ctc", "train", "--data", "missing.tsv", "--steps", "1"],
        d,
    );
    fails_with(&o, "missing.tsv:2");
    // No tab.
    std::fs::write(d.join("notab.tsv"), "train-0.wav a\n").unwrap();
    let o = rnnkit(&["ctc", "train", "--data", "notab.tsv", "--steps", "1"], d);
    fails_with(&o, "notab.tsv:1");
    // Not a WAV file.
    std::fs::write(d.join("text.wav"), "this is not audio").unwrap();
    std::fs::write(d.join("notwav.tsv"), "text.wav\ta\n").unwrap();
    let o = rnnkit(&["ctc", "train", "--data", "notwav.tsv", "--steps", "1"], d);
    fails_with(&o, "text.wav");
    // Too short for one frame.
    write_wav(&d.join("short.wav"), &[0.1; 100], 16_000);
    std::fs::write(d.join("short.tsv"), "short.wav\ta\n").unwrap();
    let o = rnnkit(&["ctc", "train", "--data", "short.tsv", "--steps", "1"], d);
    fails_with(&o, "short");
    // --beam 0 and --lm without a beam.
    let o = rnnkit(&["ctc", "train", "--data", "train.tsv", "--beam", "0"], d);
    fails_with(&o, "--beam 0");
    let o = rnnkit(
        &[
            "ctc",
            "train",
            "--data",
            "train.tsv",
            "--lm",
            "x.safetensors",
        ],
        d,
    );
    fails_with(&o, "--lm needs a beam");

    // A trained checkpoint meets a transcript with a character outside its labels.
    let o = rnnkit(
        &[
            "ctc",
            "train",
            "--data",
            "train.tsv",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--steps",
            "2",
            "--threads",
            "1",
            "--val-frac",
            "0.2",
        ],
        d,
    );
    ok(&o);
    let ck = d.join("runs/ctc/latest.safetensors");
    let ck = ck.to_str().unwrap();
    std::fs::write(d.join("other.tsv"), "train-0.wav\tabz\n").unwrap();
    let o = rnnkit(
        &["ctc", "eval", "--checkpoint", ck, "--data", "other.tsv"],
        d,
    );
    let e = fails_with(&o, "'z'");
    assert!(e.contains("other.tsv line 1"), "{e}");
    // --by-speaker needs the third column.
    std::fs::write(d.join("nospk.tsv"), "train-0.wav\ta\n").unwrap();
    let o = rnnkit(
        &[
            "ctc",
            "eval",
            "--checkpoint",
            ck,
            "--data",
            "nospk.tsv",
            "--by-speaker",
        ],
        d,
    );
    fails_with(&o, "third (speaker) column");
    // A checkpoint of another task; a missing WAV to transcribe.
    let o = rnnkit(&["ctc", "transcribe", "--checkpoint", ck, "nothere.wav"], d);
    fails_with(&o, "nothere.wav");
    let lm = crate::common::repo().join("tests/fixtures/tasks/ctc/lstm_bi_2l_stack3.safetensors");
    let o = rnnkit(
        &[
            "ctc",
            "eval",
            "--checkpoint",
            lm.to_str().unwrap(),
            "--data",
            "train.tsv",
        ],
        d,
    );
    fails_with(&o, "rnnkit.features");
}

/// `tools/make_digits.py` (espeak-ng) makes a small held-out-voice set whose manifests
/// `ctc train` reads, speaker column included; skipped where espeak-ng is missing
/// (CI installs it and sets `RNNKIT_REQUIRE_ESPEAK`).
#[test]
fn synthesised_digits_train_and_score_per_speaker() {
    let found = std::process::Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var_os("RNNKIT_REQUIRE_ESPEAK").is_none(),
            "RNNKIT_REQUIRE_ESPEAK is set but espeak-ng was not found"
        );
        eprintln!("skipped: no espeak-ng installed (apt-get install espeak-ng)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let script = crate::common::repo().join("tools/make_digits.py");
    let made = std::process::Command::new("python3")
        .arg(&script)
        .args([
            "--out", "digits", "--train", "12", "--dev", "4", "--test", "6", "--jobs", "2",
        ])
        .current_dir(d)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let manifest = std::fs::read_to_string(d.join("digits/test.tsv")).unwrap();
    assert_eq!(manifest.lines().count(), 6);
    for line in manifest.lines() {
        let cols: Vec<&str> = line.split('\t').collect();
        assert_eq!(cols.len(), 3, "{line}");
        assert!(
            cols[1].chars().all(|c| c.is_ascii_digit() || c == ' '),
            "{line}"
        );
    }
    let o = rnnkit(
        &[
            "ctc",
            "train",
            "--data",
            "digits/train.tsv",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--steps",
            "3",
            "--threads",
            "2",
            "--json",
        ],
        d,
    );
    ok(&o);
    assert!(last_json(&o)["test_utterances"] == 6, "{}", stdout(&o));
    let best = d.join("runs/ctc/best.safetensors");
    let o = rnnkit(
        &[
            "ctc",
            "eval",
            "--checkpoint",
            best.to_str().unwrap(),
            "--data",
            "digits/test.tsv",
            "--by-speaker",
            "--json",
        ],
        d,
    );
    ok(&o);
    let speakers = last_json(&o)["speakers"].as_object().unwrap().len();
    assert!(speakers >= 1);
}

/// A run stopped and resumed (augmentation on, so the random draws must be restored
/// too) ends with the same weights as one run straight through; --bands cannot change.
#[test]
fn ctc_resumes_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_tones(d, "train", 24, 5);
    let run = |steps: &str, out: &str| {
        rnnkit(
            &[
                "ctc",
                "train",
                "--data",
                "train.tsv",
                "--hidden",
                "8",
                "--layers",
                "1",
                "--batch",
                "4",
                "--val-frac",
                "0.25",
                "--eval-every",
                "3",
                "--threads",
                "2",
                "--steps",
                steps,
                "--out",
                out,
            ],
            d,
        )
    };
    ok(&run("9", "whole"));
    ok(&run("4", "split"));
    let resume = |extra: &[&str]| {
        let mut args = vec!["ctc", "train", "--resume", "split/latest.safetensors"];
        args.extend_from_slice(extra);
        rnnkit(&args, d)
    };
    fails_with(&resume(&["--bands", "60", "--steps", "9"]), "--bands");
    ok(&resume(&["--steps", "9"]));
    let a = rnnkit::checkpoint::TensorFile::open(d.join("whole/latest.safetensors")).unwrap();
    let b = rnnkit::checkpoint::TensorFile::open(d.join("split/latest.safetensors")).unwrap();
    for n in a.names() {
        assert_eq!(
            a.get::<f32>(&n, None).unwrap(),
            b.get::<f32>(&n, None).unwrap(),
            "{n}"
        );
    }
}
