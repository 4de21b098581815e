//! An HMM checkpoint from untrusted bytes (`tag-hmm` or `classify-hmm`): header, the
//! tag, word and suffix lists and configuration of the metadata, shapes, every
//! probability row; then one sentence tagged or one series classified.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::checkpoint::TensorFile;
use rnnkit::data::Series;
use rnnkit::hmm::{HmmClassifier, HmmTagger};

fuzz_target!(|data: &[u8]| {
    let Ok(file) = TensorFile::from_bytes("fuzz.safetensors".into(), data.to_vec()) else {
        return;
    };
    if HmmTagger::is_checkpoint(&file) {
        if let Ok(model) = HmmTagger::load(file) {
            let _ = model.tag_words(&["The", "naïve", "cat", "sees", "2", "Birds", "."]);
        }
    } else if let Ok(model) = HmmClassifier::load(file) {
        let d = model.channels();
        let series = Series {
            values: (0..5 * d).map(|i| i as f32 * 0.1).collect(),
            len: 5,
            label: 0,
        };
        let _ = model.predict(&series);
    }
});
