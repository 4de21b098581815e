//! Transduction pairs (`source<TAB>target` lines) and the CMU Pronouncing Dictionary
//! from untrusted text, split into characters and into space-separated tokens; every
//! example read has a source and as many lines as references.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::data::{parse_cmudict, parse_pairs, Split, TokenVocab};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    for split in [(Split::Chars, Split::Space), (Split::Space, Split::Chars)] {
        if let Ok(examples) = parse_pairs(text, "fuzz.tsv", split) {
            for e in &examples {
                assert!(!e.source.is_empty() && !e.targets.is_empty());
                assert_eq!(e.lines.len(), e.targets.len());
            }
            let (s, t) = (TokenVocab::of_sources(&examples), TokenVocab::of_targets(&examples));
            for e in &examples {
                s.encode(&e.source, "fuzz").expect("every source token is in the vocabulary");
                for r in &e.targets {
                    t.encode(r, "fuzz").expect("every target token is in the vocabulary");
                }
            }
        }
    }
    if let Ok((examples, stats)) = parse_cmudict(text, "fuzz.dict") {
        assert!(examples.len() + stats.commented + stats.non_letter <= stats.entries);
    }
});
