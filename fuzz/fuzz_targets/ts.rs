//! A UEA/UCR `.ts` time-series file from untrusted text: header, cases, labels,
//! then standardisation and batching as `classify` does them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rnnkit::data::{parse_ts, Series};
use rnnkit::task::classifier::Standardizer;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(d) = parse_ts(text, "fuzz.ts") else {
        return;
    };
    let _ = d.len_range();
    for s in &d.cases {
        assert_eq!(
            s.values.len(),
            s.len * d.channels,
            "values are [len, channels]"
        );
        assert!(
            d.labels.is_empty() || s.label < d.labels.len(),
            "label in range"
        );
    }
    let refs: Vec<&Series> = d.cases.iter().collect();
    let _ = Standardizer::fit(&refs, d.channels);
});
