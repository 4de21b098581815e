//! A classifier checkpoint from untrusted bytes: header, shapes, labels, pooling,
//! normalisation, one prediction, the training state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::checkpoint::TensorFile;
use rnnkit::data::Series;
use rnnkit::task::classifier::Classifier;
use rnnkit::train::TrainState;

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors".into(), data.to_vec()) else {
        return;
    };
    let Ok((mut model, file)) = Classifier::load(file) else {
        return;
    };
    let c = model.channels();
    let case = Series {
        values: vec![0.5; 3 * c],
        len: 3,
        label: 0,
    };
    if let Ok(batch) = model.batch(&[&case]) {
        let _ = model.predict(&batch);
    }
    let fingerprint = file
        .metadata()
        .get("train.data_fingerprint")
        .and_then(|s| u64::from_str_radix(s, 16).ok())
        .unwrap_or(0);
    let _ = TrainState::load(file, fingerprint);
});
