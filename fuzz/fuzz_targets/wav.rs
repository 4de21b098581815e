//! A WAV file from untrusted bytes, decoded and turned into log-mel features as the
//! CTC speech task does; a speech manifest from the same bytes read as text. Decoded
//! samples must be finite and in [−1, 1], features finite and `[frames, bands]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::audio::{log_mel, wav_from_bytes, FeatureConfig};
use rnnkit::data::parse_manifest;

fuzz_target!(|data: &[u8]| {
    if let Ok(audio) = wav_from_bytes(data, "fuzz.wav") {
        assert!(
            audio.samples.iter().all(|x| x.is_finite() && x.abs() <= 1.0),
            "samples are finite and in [-1, 1]"
        );
        for bands in [40, 80] {
            let cfg = FeatureConfig {
                bands,
                ..FeatureConfig::default()
            };
            if let Ok(f) = log_mel(&audio, &cfg) {
                assert_eq!(f.values.len(), f.frames * f.bands, "values are [frames, bands]");
                assert!(f.frames > 0 && f.values.iter().all(|v| v.is_finite()));
            }
        }
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(u) = parse_manifest(text, std::path::Path::new("base"), "fuzz.tsv") {
            assert!(u.iter().all(|u| !u.transcript.is_empty() && u.line > 0));
        }
    }
});
