//! The bundled UEA/UCR `.ts` files (`data/uea/`, see `data/README`) read with the
//! published facts: case counts, channels, lengths, classes and per-class counts.

use rnnkit::data::{read_ts, TsDataset};
use std::path::PathBuf;

/// Reads `data/uea/{name}/{name}_{split}.ts`.
fn load(name: &str, split: &str) -> TsDataset {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "../../data/uea",
        name,
        &format!("{name}_{split}.ts"),
    ]
    .iter()
    .collect();
    read_ts(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// Checks one file's facts; `per_class[i]` is the number of cases of label `i`.
fn check(
    d: &TsDataset,
    problem: &str,
    channels: usize,
    labels: &[&str],
    lens: (usize, usize),
    per_class: &[usize],
) {
    assert_eq!(d.problem, problem);
    assert_eq!(d.channels, channels, "{problem}: channels");
    assert_eq!(d.labels, labels, "{problem}: labels");
    assert_eq!(
        d.cases.len(),
        per_class.iter().sum::<usize>(),
        "{problem}: cases"
    );
    assert_eq!(d.len_range(), lens, "{problem}: length range");
    let mut counts = vec![0; labels.len()];
    for (i, s) in d.cases.iter().enumerate() {
        assert_eq!(
            s.values.len(),
            s.len * channels,
            "{problem}: case {i} holds {} values for length {}",
            s.values.len(),
            s.len
        );
        assert!(
            s.values.iter().all(|v| v.is_finite()),
            "{problem}: case {i}"
        );
        counts[s.label] += 1;
    }
    assert_eq!(counts, per_class, "{problem}: cases per class");
}

const DIGITS: [&str; 9] = ["1", "2", "3", "4", "5", "6", "7", "8", "9"];

#[test]
fn japanese_vowels() {
    let train = load("JapaneseVowels", "TRAIN");
    // 30 utterances per speaker; lengths 7-26 here, 7-29 over both files.
    check(&train, "JapaneseVowels", 12, &DIGITS, (7, 26), &[30; 9]);
    let test = load("JapaneseVowels", "TEST");
    check(
        &test,
        "JapaneseVowels",
        12,
        &DIGITS,
        (7, 29),
        &[31, 35, 88, 44, 29, 24, 40, 50, 29],
    );
    // Time-major layout: the first case starts 1.860936 (channel 1), -0.207383
    // (channel 2) and ends -0.175986 (channel 12) after 20 steps; speaker 1.
    let first = &train.cases[0];
    assert_eq!((first.len, first.label), (20, 0));
    assert_eq!(first.values[0], 1.860936);
    assert_eq!(first.values[1], -0.207383);
    assert_eq!(first.values[20 * 12 - 1], -0.175986);
}

#[test]
fn gun_point() {
    let train = load("GunPoint", "TRAIN");
    check(&train, "GunPoint", 1, &["1", "2"], (150, 150), &[24, 26]);
    let test = load("GunPoint", "TEST");
    check(&test, "GunPoint", 1, &["1", "2"], (150, 150), &[76, 74]);
    let first = &test.cases[0];
    assert_eq!(first.values[0], -1.1250133);
    assert_eq!(first.values[149], -1.2184217);
}

#[test]
fn arrow_head() {
    let labels = ["0", "1", "2"];
    let train = load("ArrowHead", "TRAIN");
    check(&train, "ArrowHead", 1, &labels, (251, 251), &[12, 12, 12]);
    let test = load("ArrowHead", "TEST");
    check(&test, "ArrowHead", 1, &labels, (251, 251), &[69, 53, 53]);
    assert_eq!(train.cases[0].values[0], -1.9630089);
}
