//! A char-LM checkpoint from untrusted bytes: the safetensors header and offsets,
//! the model's shapes and metadata, a few sampled characters, the training state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::checkpoint::TensorFile;
use rnnkit::decode::{generate, SamplingConfig};
use rnnkit::model::CharLm;
use rnnkit::train::TrainState;
use rnnkit::Rng;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors".into(), data.to_vec()) else {
        return;
    };
    let _ = file.describe_tensors();
    let Ok((model, file)) = CharLm::load(file) else {
        return;
    };
    let greedy = SamplingConfig {
        temperature: 0.0,
        ..Default::default()
    };
    let _ = generate(&model, "", 3, &greedy, &mut Rng::new(0), &mut |_| Ok(()));
    let fingerprint = stored_fingerprint(&file);
    let _ = TrainState::load(file, fingerprint);
});

/// The data fingerprint the file claims, so that the rest of its training state is read.
fn stored_fingerprint(file: &TensorFile) -> u64 {
    file.metadata()
        .get("train.data_fingerprint")
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0)
}
