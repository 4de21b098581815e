//! A tagger checkpoint from untrusted bytes: header, the configuration and word,
//! character and tag lists of the metadata, shapes, one tagged sentence, the training state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::checkpoint::TensorFile;
use rnnkit::data::sentences_from_plain;
use rnnkit::task::tagger::Tagger;
use rnnkit::train::TrainState;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors".into(), data.to_vec()) else {
        return;
    };
    let Ok((mut model, file)) = Tagger::load(file) else {
        return;
    };
    let sentences = sentences_from_plain("The naïve cat sees every bird .\n");
    let refs: Vec<_> = sentences.iter().collect();
    let _ = model.predict(&refs);
    let fingerprint = file
        .metadata()
        .get("train.data_fingerprint")
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let _ = TrainState::load(file, fingerprint);
});
