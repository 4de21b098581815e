//! The CTC decoders on one utterance's log-probabilities: best path, and prefix beam
//! search at the widths `rnnkit ctc eval --beam` takes. The frames are shaped like a
//! trained recogniser's (12 classes: 10 digits, space, blank; most frames confident
//! blanks, a label every few frames, some frames in doubt between two classes).
//! Run: `cargo bench -p rnnkit --bench ctc_decode`; throughput is in frames.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rnnkit::decode::ctc::{best_path, prefix_beam_search, BeamOptions};
use rnnkit::task::ctc::NoLm;
use rnnkit::Rng;

const FRAMES: usize = 300;
const CLASSES: usize = 12;
const BLANK: usize = 0;

/// `FRAMES` rows of log-probabilities over `CLASSES`.
fn frames(rng: &mut Rng) -> Vec<f32> {
    let mut out = Vec::with_capacity(FRAMES * CLASSES);
    for t in 0..FRAMES {
        let mut row: Vec<f64> = (0..CLASSES).map(|_| rng.uniform_in(-8.0, -4.0)).collect();
        let label = 1 + rng.below(CLASSES - 1);
        match t % 4 {
            0 => row[label] = -0.05,
            1 => {
                // In doubt between a label and the blank.
                row[label] = -0.8;
                row[BLANK] = -0.6;
            }
            _ => row[BLANK] = -0.02,
        }
        let lse = row.iter().map(|v| v.exp()).sum::<f64>().ln();
        out.extend(row.iter().map(|v| (v - lse) as f32));
    }
    out
}

fn decoders(c: &mut Criterion) {
    let lp = frames(&mut Rng::new(3));
    let mut group = c.benchmark_group(format!("CTC decode T{FRAMES} C{CLASSES}"));
    group.throughput(Throughput::Elements(FRAMES as u64));
    group.bench_function("best path", |b| {
        b.iter(|| best_path(&lp, FRAMES, CLASSES, BLANK))
    });
    for beam in [1, 8, 32] {
        let opts = BeamOptions {
            beam,
            ..Default::default()
        };
        group.bench_function(format!("prefix beam {beam}"), |b| {
            b.iter(|| prefix_beam_search::<NoLm>(&lp, FRAMES, CLASSES, BLANK, &opts, None).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, decoders);
criterion_main!(benches);
