//! One LSTM layer, forward + backward through time, at B 64, T 100, I = H 512.
//! Run: `cargo bench -p rnnkit --bench lstm_layer`. Throughput is reported in
//! elements/s where one element is one floating-point operation, i.e. GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};

fn lstm_forward_backward(c: &mut Criterion) {
    let (t, b, i, h) = (100, 64, 512, 512);
    let mut layer: Recurrent<f32> = RecurrentConfig::new(CellKind::Lstm, i, h)
        .init(&mut Rng::new(0))
        .unwrap();
    let mut rng = Rng::new(1);
    let x = Tensor::from_vec(
        &[t, b, i],
        (0..t * b * i)
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect(),
    )
    .unwrap();
    let dy = Tensor::from_vec(
        &[t, b, h],
        (0..t * b * h)
            .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
            .collect(),
    )
    .unwrap();
    // Forward: 2·(I + H)·4H per token; backward: twice that (weight and input gradients).
    let flops = 3 * 2 * (t * b) as u64 * ((i + h) * 4 * h) as u64;
    let mut group = c.benchmark_group("lstm_layer");
    group
        .sample_size(10)
        .throughput(Throughput::Elements(flops));
    group.bench_function(
        format!("fwd+bwd B{b} T{t} I{i} H{h} (elements = FLOP)"),
        |bench| {
            bench.iter(|| {
                layer.zero_grad();
                layer
                    .forward_train(&x, None, None, &mut Rng::new(0))
                    .unwrap();
                layer.backward(&dy, None).unwrap()
            })
        },
    );
    group.finish();
}

criterion_group!(benches, lstm_forward_backward);
criterion_main!(benches);
