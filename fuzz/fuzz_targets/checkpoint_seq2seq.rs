//! An encoder–decoder checkpoint from untrusted bytes: header, the attention kind,
//! vocabularies and token splits of the metadata, shapes, greedy and beam decoding of
//! one source, the training state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::checkpoint::TensorFile;
use rnnkit::seq2seq::{DecodeOptions, Seq2seq};
use rnnkit::train::TrainState;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors".into(), data.to_vec()) else {
        return;
    };
    let Ok((mut model, file)) = Seq2seq::load(file) else {
        return;
    };
    // The first source tokens of the vocabulary, as a source.
    let source: Vec<usize> = (0..model.source_vocab.len().min(4)).collect();
    for beam in [1, 2] {
        let opts = DecodeOptions {
            beam,
            length_penalty: 1.0,
        };
        let _ = model.decode(std::slice::from_ref(&source), &opts);
    }
    let fingerprint = file
        .metadata()
        .get("train.data_fingerprint")
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let _ = TrainState::load(file, fingerprint);
});
