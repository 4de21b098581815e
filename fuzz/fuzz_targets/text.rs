//! A training or evaluation text from untrusted bytes: the UTF-8 and binary checks,
//! the vocabulary (also from its JSON form), encoding, and batching into streams.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::data::{text_from_bytes, Streams, UnknownPolicy, Vocab};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = Vocab::from_json(&String::from_utf8_lossy(data));
    let Ok(text) = text_from_bytes(data.to_vec(), Path::new("fuzz.txt")) else {
        return;
    };
    let Ok(vocab) = Vocab::from_text(&text) else {
        return;
    };
    assert_eq!(
        Vocab::from_json(&vocab.to_json()).ok().as_ref(),
        Some(&vocab)
    );
    let ids = vocab
        .encode(&text)
        .expect("a text's own vocabulary encodes it");
    // Half the vocabulary: the other half is unknown.
    let half = Vocab::from_chars(vocab.chars()[..vocab.len().div_ceil(2)].to_vec()).unwrap();
    let _ = half.encode_with(&text, UnknownPolicy::Skip);
    let _ = half.encode_with(&text, UnknownPolicy::Replace(half.char(0)));
    let _ = half.encode_with(&text, UnknownPolicy::Error);
    let batch = 1 + data.len() % 3;
    let seq_len = 1 + data.first().copied().unwrap_or(0) as usize % 5;
    if let Ok(streams) = Streams::new(ids, batch, seq_len, "fuzz text") {
        let (mut inputs, mut targets) = (Vec::new(), Vec::new());
        for k in 0..streams.batches() {
            streams.batch(k, &mut inputs, &mut targets);
        }
    }
});
