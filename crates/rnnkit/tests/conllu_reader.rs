//! The bundled UD English EWT r2.16 files (`data/ud-english-ewt/`, made by
//! `tools/slim_conllu.py`) read with the published sentence and word counts, and
//! write back byte for byte.

use rnnkit::data::{read_conllu, Sentence, TagColumn};
use std::path::PathBuf;

fn ewt(split: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../data/ud-english-ewt")
        .join(format!("en_ewt-ud-{split}.conllu"))
}

/// Reads one split and checks sentences, words, multiword ranges and empty nodes.
fn check(split: &str, sentences: usize, words: usize, ranges: usize, empty: usize) {
    let path = ewt(split);
    let s = read_conllu(&path).unwrap_or_else(|e| panic!("{e}"));
    let got_words: usize = s.iter().map(Sentence::len).sum();
    let got_ranges = s
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r[0].contains('-'))
        .count();
    let got_empty = s
        .iter()
        .flat_map(|s| &s.rows)
        .filter(|r| r[0].contains('.'))
        .count();
    assert_eq!(
        (s.len(), got_words, got_ranges, got_empty),
        (sentences, words, ranges, empty),
        "{split}: (sentences, words, multiword ranges, empty nodes)"
    );
    // Every word has a UPOS and an XPOS tag: the tagger trains on both.
    for sent in &s {
        for i in 0..sent.len() {
            for col in [TagColumn::Upos, TagColumn::Xpos] {
                assert_ne!(
                    sent.tag(i, col),
                    "_",
                    "{split}, line {}: word {} has no {}",
                    sent.line,
                    i + 1,
                    col.name()
                );
            }
        }
    }
    let written: String = s.iter().map(Sentence::to_conllu).collect();
    let original = std::fs::read_to_string(&path).unwrap();
    assert!(
        written == original,
        "{split}: written text differs from the file"
    );
}

#[test]
fn ewt_train() {
    check("train", 12_544, 204_577, 2_614, 37);
}

#[test]
fn ewt_dev() {
    check("dev", 2_001, 25_147, 359, 4);
}

#[test]
fn ewt_test() {
    check("test", 2_077, 25_094, 354, 2);
}
