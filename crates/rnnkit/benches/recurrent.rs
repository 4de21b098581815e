//! Recurrent layers forward and backward through time, one layer, B 64, T 100,
//! input = hidden = 512, for every cell kind. Run: `cargo bench -p rnnkit --bench recurrent`.
//! Throughput is reported in elements/s where one element is one floating-point
//! operation, so "Gelem/s" reads as GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};

const T: usize = 100;
const B: usize = 64;
const H: usize = 512;

fn random(shape: &[usize], rng: &mut Rng) -> Tensor<f32> {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect(),
    )
    .unwrap()
}

fn cells(c: &mut Criterion) {
    let mut rng = Rng::new(1);
    let x = random(&[T, B, H], &mut rng);
    let dy = random(&[T, B, H], &mut rng);
    for cell in CellKind::ALL {
        let mut layer: Recurrent<f32> = RecurrentConfig::new(cell, H, H)
            .init(&mut Rng::new(0))
            .unwrap();
        // Forward: 2·(I + H)·G·H per token; backward: twice that (weight and input gradients).
        let forward_flops = 2 * (T * B) as u64 * ((H + H) * cell.gates() * H) as u64;
        let mut group = c.benchmark_group(format!("{cell} B{B} T{T} I{H} H{H}"));
        group.sample_size(10);
        group.throughput(Throughput::Elements(forward_flops));
        group.bench_function("forward", |b| {
            b.iter(|| layer.forward(&x, None, None).unwrap())
        });
        layer
            .forward_train(&x, None, None, &mut Rng::new(0))
            .unwrap();
        group.throughput(Throughput::Elements(2 * forward_flops));
        group.bench_function("backward", |b| {
            b.iter(|| layer.backward(&dy, None).unwrap())
        });
        group.throughput(Throughput::Elements(3 * forward_flops));
        group.bench_function("forward+backward", |b| {
            b.iter(|| {
                layer.zero_grad();
                layer
                    .forward_train(&x, None, None, &mut Rng::new(0))
                    .unwrap();
                layer.backward(&dy, None).unwrap()
            })
        });
        group.finish();
    }
}

criterion_group!(benches, cells);
criterion_main!(benches);
