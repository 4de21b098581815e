//! Finite-difference gradient checks in f64 of every backward pass: each cell kind
//! (both GRU forms, tanh and relu), stacked and bidirectional with every merge,
//! dropout, equal and variable lengths, saturated pre-activations, and gradients
//! flowing in from the outputs and from the final states; linear maps, embeddings and
//! pooling over time.

use rnnkit::layer::{Embedding, Linear, Pool, PoolKind};
use rnnkit::{
    CellKind, Merge, Parameters, Recurrent, RecurrentConfig, RecurrentState, Rng, Tensor,
};

const EPS: f64 = 1e-6;

/// Perturbs one number of (layer, input, initial state) by the given step.
type Bump<'a> = dyn Fn(&mut Recurrent<f64>, &mut Tensor<f64>, &mut RecurrentState<f64>, f64) + 'a;

fn random(shape: &[usize], scale: f64, rng: &mut Rng) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::from_vec(
        shape,
        (0..n).map(|_| scale * rng.uniform_in(-1.0, 1.0)).collect(),
    )
    .unwrap()
}

fn dot(a: &Tensor<f64>, b: &Tensor<f64>) -> f64 {
    a.data().iter().zip(b.data()).map(|(x, y)| x * y).sum()
}

fn assert_close(what: &str, analytic: f64, numeric: f64) {
    let err = (analytic - numeric).abs();
    assert!(
        err <= 1e-5 * analytic.abs().max(numeric.abs()) + 1e-7,
        "{what}: analytic {analytic:e} vs numeric {numeric:e} (|Δ| {err:e})"
    );
}

/// Compares every `analytic[i]` with the central difference of `loss_at(i, ±EPS)`.
fn check_all(what: &str, analytic: &[f64], loss_at: impl Fn(usize, f64) -> f64) {
    for (i, &a) in analytic.iter().enumerate() {
        assert_close(
            &format!("{what}[{i}]"),
            a,
            (loss_at(i, EPS) - loss_at(i, -EPS)) / (2.0 * EPS),
        );
    }
}

struct Case {
    cfg: RecurrentConfig,
    steps: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    input_scale: f64,
    /// Gradient reaches the outputs (else only the final state).
    from_outputs: bool,
}

impl Case {
    fn new(cfg: RecurrentConfig) -> Self {
        Case {
            cfg,
            steps: 5,
            batch: 3,
            lengths: None,
            input_scale: 1.0,
            from_outputs: true,
        }
    }
}

/// Checks d loss / d (input, initial state, every parameter) against central differences,
/// with loss = Σ y ⊙ dy + Σ h_n ⊙ dh_n (+ Σ c_n ⊙ dc_n).
fn gradcheck(case: Case) {
    let name = format!(
        "{} L{} bi={} merge={:?} dropout={} lengths={:?} scale={}",
        case.cfg.cell,
        case.cfg.num_layers,
        case.cfg.bidirectional,
        case.cfg.merge,
        case.cfg.dropout,
        case.lengths,
        case.input_scale
    );
    let mut rng = Rng::new(42);
    let mut layer: Recurrent<f64> = case.cfg.init(&mut rng).unwrap();
    // Larger weights than the default init, so every path carries a visible gradient.
    layer.visit_params_mut(&mut |_, t, _| {
        t.data_mut()
            .iter_mut()
            .for_each(|v| *v = rng.uniform_in(-0.8, 0.8))
    });
    let (t, b) = (case.steps, case.batch);
    let x = random(&[t, b, case.cfg.input_size], case.input_scale, &mut rng);
    let st = [
        case.cfg.num_layers * case.cfg.directions(),
        b,
        case.cfg.hidden_size,
    ];
    let init = RecurrentState {
        h: random(&st, 0.5, &mut rng),
        c: case
            .cfg
            .cell
            .has_cell_state()
            .then(|| random(&st, 0.5, &mut rng)),
    };
    let mut dy = random(
        &[t, b, case.cfg.output_size()],
        if case.from_outputs { 1.0 } else { 0.0 },
        &mut rng,
    );
    if let Some(l) = &case.lengths {
        // Padded outputs are constant zero; torch's upstream gradient is zero there too.
        for ti in 0..t {
            for (bi, &len) in l.iter().enumerate() {
                if ti >= len {
                    let w = case.cfg.output_size();
                    dy.data_mut()[(ti * b + bi) * w..][..w].fill(0.0);
                }
            }
        }
    }
    let d_final = RecurrentState {
        h: random(&st, 1.0, &mut rng),
        c: case
            .cfg
            .cell
            .has_cell_state()
            .then(|| random(&st, 1.0, &mut rng)),
    };
    let lengths = case.lengths.clone();

    // The same dropout masks on every evaluation: a fresh generator with one seed.
    let loss = |layer: &mut Recurrent<f64>, x: &Tensor<f64>, init: &RecurrentState<f64>| {
        let (y, fin) = layer
            .forward_train(x, lengths.as_deref(), Some(init), &mut Rng::new(7))
            .unwrap();
        dot(&y, &dy)
            + dot(&fin.h, &d_final.h)
            + fin
                .c
                .as_ref()
                .map_or(0.0, |c| dot(c, d_final.c.as_ref().unwrap()))
    };
    loss(&mut layer, &x, &init);
    layer.zero_grad();
    let (dx, d_init) = layer.backward(&dy, Some(&d_final)).unwrap();

    let numeric = |layer: &mut Recurrent<f64>,
                   x: &Tensor<f64>,
                   init: &RecurrentState<f64>,
                   bump: &Bump<'_>| {
        let (mut l2, mut x2, mut i2) = (layer.clone(), x.clone(), init.clone());
        bump(&mut l2, &mut x2, &mut i2, EPS);
        let up = loss(&mut l2, &x2, &i2);
        let (mut l2, mut x2, mut i2) = (layer.clone(), x.clone(), init.clone());
        bump(&mut l2, &mut x2, &mut i2, -EPS);
        let down = loss(&mut l2, &x2, &i2);
        (up - down) / (2.0 * EPS)
    };

    for i in 0..x.len() {
        let n = numeric(&mut layer, &x, &init, &|_, x, _, e| x.data_mut()[i] += e);
        assert_close(&format!("{name}: d input[{i}]"), dx.data()[i], n);
    }
    for i in 0..init.h.len() {
        let n = numeric(&mut layer, &x, &init, &|_, _, s, e| s.h.data_mut()[i] += e);
        assert_close(&format!("{name}: d h0[{i}]"), d_init.h.data()[i], n);
        if let Some(c) = &d_init.c {
            let n = numeric(&mut layer, &x, &init, &|_, _, s, e| {
                s.c.as_mut().unwrap().data_mut()[i] += e
            });
            assert_close(&format!("{name}: d c0[{i}]"), c.data()[i], n);
        }
    }
    let mut names = Vec::new();
    layer.visit_params(&mut |n, t| names.push((n.to_string(), t.len())));
    for (pname, len) in names {
        let grad = layer.grad(&pname).unwrap().clone();
        for i in 0..len {
            let n = numeric(&mut layer, &x, &init, &|l, _, _, e| {
                l.visit_params_mut(&mut |n2, t, _| {
                    if n2 == pname {
                        t.data_mut()[i] += e;
                    }
                })
            });
            assert_close(&format!("{name}: d {pname}[{i}]"), grad.data()[i], n);
        }
    }
}

#[test]
fn every_cell_single_layer() {
    for cell in CellKind::ALL {
        gradcheck(Case::new(RecurrentConfig::new(cell, 3, 4)));
    }
}

#[test]
fn every_cell_saturated() {
    for cell in CellKind::ALL {
        // Pre-activations around ±10.
        gradcheck(Case {
            input_scale: 8.0,
            ..Case::new(RecurrentConfig::new(cell, 3, 4))
        });
    }
}

#[test]
fn every_cell_stacked_bidirectional_variable_lengths() {
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, 3, 4)
            .with_layers(2)
            .with_bidirectional(true);
        gradcheck(Case {
            lengths: Some(vec![5, 2, 4]),
            ..Case::new(cfg)
        });
    }
}

#[test]
fn every_merge_mode() {
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        for merge in [Merge::Concat, Merge::Sum, Merge::Mul, Merge::Average] {
            let cfg = RecurrentConfig::new(cell, 3, 4)
                .with_layers(2)
                .with_bidirectional(true)
                .with_merge(merge);
            gradcheck(Case {
                lengths: Some(vec![5, 3, 1]),
                ..Case::new(cfg)
            });
        }
    }
}

#[test]
fn dropout_between_layers() {
    for cell in [CellKind::Lstm, CellKind::GruResetBefore] {
        let cfg = RecurrentConfig::new(cell, 3, 4)
            .with_layers(3)
            .with_dropout(0.4);
        gradcheck(Case::new(cfg));
    }
}

#[test]
fn gradient_from_final_state_only_and_an_empty_sequence() {
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, 2, 3)
            .with_layers(2)
            .with_bidirectional(true);
        gradcheck(Case {
            from_outputs: false,
            lengths: Some(vec![4, 0, 2]),
            steps: 4,
            ..Case::new(cfg)
        });
    }
}

#[test]
fn linear_and_embedding() {
    let mut rng = Rng::new(5);
    let (rows, fin, fout) = (4, 3, 5);
    let lin: Linear<f64> = Linear::new(fin, fout, &mut rng);
    let x = random(&[rows, fin], 1.0, &mut rng);
    let dy = random(&[rows, fout], 1.0, &mut rng);
    let loss = |l: &Linear<f64>, x: &Tensor<f64>| {
        let mut y = vec![0.0; rows * fout];
        l.forward(x.data(), rows, &mut y);
        y.iter().zip(dy.data()).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut l = lin.clone();
    let mut dx = vec![0.0; rows * fin];
    l.backward(x.data(), dy.data(), rows, Some(&mut dx));
    check_all("linear dx", &dx, |i, e| {
        let mut x2 = x.clone();
        x2.data_mut()[i] += e;
        loss(&lin, &x2)
    });
    check_all("linear dW", l.grad_weight.data(), |i, e| {
        let mut l2 = lin.clone();
        l2.weight.data_mut()[i] += e;
        loss(&l2, &x)
    });
    check_all("linear db", l.grad_bias.data(), |i, e| {
        let mut l2 = lin.clone();
        l2.bias.data_mut()[i] += e;
        loss(&l2, &x)
    });

    let emb: Embedding<f64> = Embedding::new(6, 3, &mut rng);
    let ids = [2usize, 5, 2, 0];
    let dout = random(&[4, 3], 1.0, &mut rng);
    let loss = |e: &Embedding<f64>| {
        let mut out = vec![0.0; 12];
        e.forward(&ids, &mut out).unwrap();
        out.iter().zip(dout.data()).map(|(a, b)| a * b).sum::<f64>()
    };
    let mut e = emb.clone();
    e.backward(&ids, dout.data());
    check_all("embedding dW", e.grad_weight.data(), |i, d| {
        let mut e2 = emb.clone();
        e2.weight.data_mut()[i] += d;
        loss(&e2)
    });
    assert!(
        emb.forward(&[6], &mut [0.0; 3]).is_err(),
        "an id outside the table is an error"
    );
}

#[test]
fn pooling_every_kind_variable_lengths_one_and_two_directions() {
    let mut rng = Rng::new(11);
    let dims @ (steps, batch, width) = (5, 4, 6);
    let lengths = [5, 1, 3, 4];
    for kind in PoolKind::ALL {
        for directions in [1, 2] {
            // Padding is large so that reading it would show in the loss.
            let mut y = random(&[steps, batch, width], 1.0, &mut rng);
            for (i, v) in y.data_mut().iter_mut().enumerate() {
                let (t, b) = (i / (batch * width), i / width % batch);
                if t >= lengths[b] {
                    *v = 100.0;
                }
            }
            let dout = random(&[batch, width], 1.0, &mut rng);
            let loss = |y: &Tensor<f64>| {
                let out = Pool::new(kind)
                    .forward(y.data(), dims, &lengths, directions)
                    .unwrap();
                dot(&out, &dout)
            };
            let mut pool = Pool::new(kind);
            pool.forward(y.data(), dims, &lengths, directions).unwrap();
            let dy = pool.backward(dout.data()).unwrap();
            assert_eq!(dy.shape(), [steps, batch, width]);
            check_all(
                &format!("pool {kind} directions={directions} dy"),
                dy.data(),
                |i, e| {
                    let mut y2 = y.clone();
                    y2.data_mut()[i] += e;
                    loss(&y2)
                },
            );
        }
    }
}
