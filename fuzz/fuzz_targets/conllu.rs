//! A CoNLL-U treebank from untrusted text: sentences, comments, ranges, empty nodes
//! and word IDs; what is read writes back and reads again the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::data::{looks_like_conllu, parse_conllu, sentences_from_plain};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = looks_like_conllu(text);
    let _ = sentences_from_plain(text);
    let Ok(sentences) = parse_conllu(text, "fuzz.conllu") else {
        return;
    };
    let written: String = sentences.iter().map(|s| s.to_conllu()).collect();
    let again = parse_conllu(&written, "written.conllu").expect("what was read writes back");
    assert_eq!(again.len(), sentences.len());
});
