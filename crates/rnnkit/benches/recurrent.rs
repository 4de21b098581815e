//! Recurrent layers forward and backward through time, one layer, B 64, T 100,
//! input = hidden = 512, for every cell kind (and the LSTM in bf16 mode); and the
//! products inside the time loop: one thread's per-step product in f32 and bf16,
//! the whole batch's over 100 timesteps on all threads, and the batch-1
//! matrix–vector product; the weight gradients `dgᵀ·x` of LSTM 2×512, LSTM 1×128 and
//! a 65-letter output layer, and LSTM 2×512's input projection and input gradient over
//! the whole batch, on all threads, in f32 and (where the CPU has it) bf16. Run:
//! `cargo bench -p rnnkit --bench recurrent`.
//! Throughput is reported in elements/s where one element is one floating-point
//! operation, so "Gelem/s" reads as GFLOP/s.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use rayon::prelude::*;
use rnnkit::kernel::{
    bf16_supported, gemm_packed, matmul, on_pool, serial, with_precision, MatMut, MatRef, PackedB,
    Precision,
};
use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
        if cell == CellKind::Lstm {
            group.bench_function("forward+backward bf16", |b| {
                b.iter(|| {
                    with_precision(Precision::Bf16, || {
                        layer.zero_grad();
                        layer
                            .forward_train(&x, None, None, &mut Rng::new(0))
                            .unwrap();
                        layer.backward(&dy, None).unwrap()
                    })
                })
            });
        }
        group.finish();
    }
}

/// The products inside the time loop of an LSTM layer with H = 512.
fn products(c: &mut Criterion) {
    let (m, k, n) = (B / 2, H, 4 * H);
    let mut rng = Rng::new(2);
    let h = random(&[m, k], &mut rng);
    let w_t = random(&[k, n], &mut rng);
    let mut out = vec![0.0f32; m * n];
    let mut group = c.benchmark_group(format!("per-step product {m}×{k} · {k}×{n}, one thread"));
    group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
    group.bench_function("f32 (gemm crate)", |b| {
        b.iter(|| {
            serial(|| {
                matmul(
                    MatMut::dense(&mut out, m, n),
                    MatRef::dense(h.data(), m, k),
                    MatRef::dense(w_t.data(), k, n),
                    false,
                )
            })
        })
    });
    for (name, precision) in [
        ("f32, weights packed", Precision::F32),
        ("bf16, weights packed", Precision::Bf16),
    ] {
        if precision == Precision::Bf16 && !bf16_supported() {
            continue;
        }
        let mut packed = PackedB::default();
        packed.pack(MatRef::dense(w_t.data(), k, n), precision);
        group.bench_function(name, |b| {
            b.iter(|| {
                serial(|| {
                    gemm_packed(
                        MatMut::dense(&mut out, m, n),
                        MatRef::dense(h.data(), m, k),
                        &packed,
                        false,
                    )
                })
            })
        });
    }
    group.finish();
    // As a training step runs them: each thread its own block of the batch's rows
    // against the whole of W_hh, adding to the projected inputs, T timesteps.
    let threads = rayon::current_num_threads();
    let rows = B.div_ceil(threads);
    let h = random(&[B, k], &mut rng);
    let mut gates = vec![0.0f32; B * n];
    let mut packed = PackedB::default();
    packed.pack(MatRef::dense(w_t.data(), k, n), Precision::F32);
    let mut group = c.benchmark_group(format!(
        "{T} per-step products {B}×{k} · {k}×{n}, {rows} rows on each of {threads} threads"
    ));
    group.sample_size(20);
    group.throughput(Throughput::Elements(2 * (T * B * n * k) as u64));
    group.bench_function("f32, weights packed", |b| {
        b.iter(|| {
            on_pool(|| {
                gates
                    .par_chunks_mut(rows * n)
                    .zip(h.data().par_chunks(rows * k))
                    .for_each(|(g, x)| {
                        let m = x.len() / k;
                        serial(|| {
                            for _ in 0..T {
                                gemm_packed(
                                    MatMut::dense(&mut *g, m, n),
                                    MatRef::dense(x, m, k),
                                    &packed,
                                    true,
                                )
                            }
                        })
                    })
            })
        })
    });
    // The alternative not taken: each thread all of the batch's rows against its
    // share of W_hh's columns (its own packed copy, its own outputs), a spinning
    // barrier after each timestep.
    let cols = n.div_ceil(threads).div_ceil(16) * 16;
    let shares: Vec<(PackedB, Mutex<Vec<f32>>)> = (0..n.div_ceil(cols))
        .map(|t| {
            let width = cols.min(n - t * cols);
            let mut p = PackedB::default();
            p.pack(
                MatRef::new(&w_t.data()[t * cols..], k, width, n),
                Precision::F32,
            );
            (p, Mutex::new(vec![0.0f32; B * width]))
        })
        .collect();
    let barrier = SpinBarrier::new(shares.len());
    group.bench_function("f32, weights packed, columns split (not used)", |b| {
        b.iter(|| {
            rayon::broadcast(|ctx| {
                let Some((p, out)) = shares.get(ctx.index()) else {
                    return;
                };
                let mut out = out.lock().unwrap();
                let width = out.len() / B;
                serial(|| {
                    for _ in 0..T {
                        gemm_packed(
                            MatMut::dense(&mut out, B, width),
                            MatRef::dense(h.data(), B, k),
                            p,
                            false,
                        );
                        barrier.wait();
                    }
                })
            })
        })
    });
    group.finish();
    let mut group = c.benchmark_group(format!(
        "batch-1 product 1×{k} · {k}×{n}, all threads, handed to the pool per call"
    ));
    group.throughput(Throughput::Elements(2 * (n * k) as u64));
    let w = random(&[n, k], &mut rng);
    group.bench_function("f32", |b| {
        b.iter(|| {
            on_pool(|| {
                matmul(
                    MatMut::dense(&mut out[..n], 1, n),
                    MatRef::dense(&h.data()[..k], 1, k),
                    MatRef::dense(w.data(), n, k).t(),
                    false,
                )
            })
        })
    });
    group.finish();
}

/// A barrier whose threads spin (a timestep is too short to sleep through).
struct SpinBarrier {
    threads: usize,
    arrived: AtomicUsize,
    round: AtomicUsize,
}

impl SpinBarrier {
    fn new(threads: usize) -> Self {
        let (arrived, round) = (AtomicUsize::new(0), AtomicUsize::new(0));
        SpinBarrier {
            threads,
            arrived,
            round,
        }
    }

    /// Returns once all `threads` have called it in this round.
    fn wait(&self) {
        let round = self.round.load(Ordering::Acquire);
        if self.arrived.fetch_add(1, Ordering::AcqRel) + 1 == self.threads {
            self.arrived.store(0, Ordering::Release);
            self.round.fetch_add(1, Ordering::Release);
        } else {
            while self.round.load(Ordering::Acquire) == round {
                std::hint::spin_loop();
            }
        }
    }
}

/// Weight gradients `dgᵀ·x` (`dg` is `[depth, m]`, read transposed) on all threads, in
/// f32 and, where the CPU has AVX-512 BF16, in bf16 mode.
fn weight_gradients(c: &mut Criterion) {
    let mut rng = Rng::new(3);
    for (label, precision) in precisions() {
        let mut group = c.benchmark_group(format!("weight gradient dgᵀ·x, {label}, all threads"));
        group.sample_size(10);
        for (name, m, n, depth) in [
            ("LSTM 2×512 dW_hh", 4 * H, H, B * T),
            ("LSTM 1×128 dW_hh", 4 * 128, 128, 32 * 64),
            ("65-letter head", 65, 128, 32 * 64),
        ] {
            let dg = random(&[depth, m], &mut rng);
            let x = random(&[depth, n], &mut rng);
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements(2 * (m * n * depth) as u64));
            group.bench_function(format!("{name}: {m}×{depth} · {depth}×{n}"), |b| {
                b.iter(|| {
                    on_pool(|| {
                        with_precision(precision, || {
                            matmul(
                                MatMut::dense(&mut out, m, n),
                                MatRef::dense(dg.data(), depth, m).t(),
                                MatRef::dense(x.data(), depth, n),
                                false,
                            )
                        })
                    })
                })
            });
        }
        group.finish();
    }
}

/// f32, and bf16 where the CPU has AVX-512 BF16.
fn precisions() -> impl Iterator<Item = (&'static str, Precision)> {
    [("f32", Precision::F32), ("bf16", Precision::Bf16)]
        .into_iter()
        .filter(|&(_, p)| p == Precision::F32 || bf16_supported())
}

/// LSTM 2×512's products over the whole batch with `W` packed, on all threads (f32,
/// and bf16 where the CPU has it): the input projection `x·W_ihᵀ` and the input
/// gradient `dg·W_ih`.
fn batch_products(c: &mut Criterion) {
    let mut rng = Rng::new(4);
    for (label, precision) in precisions() {
        let mut group = c.benchmark_group(format!(
            "whole-batch product, {label}, weights packed, all threads"
        ));
        group.sample_size(10);
        for (name, k, n) in [("input projection", H, 4 * H), ("input gradient", 4 * H, H)] {
            let m = B * T;
            let a = random(&[m, k], &mut rng);
            let w = random(&[k, n], &mut rng);
            let mut packed = PackedB::default();
            packed.pack(MatRef::dense(w.data(), k, n), precision);
            let mut out = vec![0.0f32; m * n];
            group.throughput(Throughput::Elements(2 * (m * n * k) as u64));
            group.bench_function(format!("{name}: {m}×{k} · {k}×{n}"), |b| {
                b.iter(|| {
                    on_pool(|| {
                        gemm_packed(
                            MatMut::dense(&mut out, m, n),
                            MatRef::dense(a.data(), m, k),
                            &packed,
                            false,
                        )
                    })
                })
            });
        }
        group.finish();
    }
}

criterion_group!(benches, cells, products, weight_gradients, batch_products);
criterion_main!(benches);
