//! The lab's measurements are exact: RTRL's per-step gradients sum to BPTT's, online
//! learning sees the same stream either way, and the gradient flow matches finite differences.

use rnnkit::layer::Parameters;
use rnnkit::online::{train_online, OnlineConfig, OnlineMethod};
use rnnkit::rtrl::Rtrl;
use rnnkit::{CellKind, RecurrentConfig, Rng, Tensor};

fn random(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()).unwrap()
}

fn max_rel(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

#[test]
fn rtrl_gradient_equals_bptt_for_every_cell() {
    let (steps, input, hidden) = (9, 3, 5);
    for kind in [
        CellKind::RnnTanh,
        CellKind::RnnRelu,
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::GruResetBefore,
    ] {
        let mut rng = Rng::new(7);
        let mut layer = RecurrentConfig::new(kind, input, hidden)
            .init::<f64>(&mut rng)
            .unwrap();
        let x = random(&[steps, 1, input], &mut rng);
        let dy = random(&[steps, 1, hidden], &mut rng);
        let (y, _) = layer.forward_train(&x, None, None, &mut rng).unwrap();
        layer.backward(&dy, None).unwrap();

        let mut rtrl = Rtrl::new(kind, &layer.cells()[0]).unwrap();
        for t in 0..steps {
            let h = rtrl.step(&x.data()[t * input..][..input]).unwrap();
            let want = &y.data()[t * hidden..][..hidden];
            assert!(max_rel(h, want) < 1e-12, "{kind:?} step {t}: state differs");
            rtrl.accumulate(&dy.data()[t * hidden..][..hidden]).unwrap();
        }
        let mut names = Vec::new();
        rtrl.visit_params(&mut |n, _| names.push(n.to_string()));
        assert_eq!(names.len(), if kind.has_bias_hh() { 4 } else { 3 });
        for name in names {
            let bptt = layer.grad(&name).unwrap();
            let got = rtrl.grad(name.trim_end_matches("_l0")).unwrap();
            let err = max_rel(got.data(), bptt.data());
            eprintln!("{kind:?} {name}: relative error {err:.1e}");
            assert!(err <= 1e-10, "{kind:?} {name}: relative error {err:e}");
        }
    }
}

#[test]
fn rtrl_refuses_wrong_sizes_and_resets() {
    let mut rng = Rng::new(1);
    let layer = RecurrentConfig::new(CellKind::Lstm, 2, 3)
        .init::<f64>(&mut rng)
        .unwrap();
    let mut rtrl = Rtrl::new(CellKind::Lstm, &layer.cells()[0]).unwrap();
    assert!(rtrl.step(&[1.0]).is_err());
    let first = rtrl.step(&[0.5, -0.5]).unwrap().to_vec();
    assert!(rtrl.accumulate(&[1.0]).is_err());
    rtrl.reset();
    assert_eq!(rtrl.step(&[0.5, -0.5]).unwrap(), &first[..]);
    assert_eq!(
        Rtrl::<f64>::count(CellKind::Lstm, 2, 3),
        12 * 2 + 12 * 3 + 24
    );
}

fn stream(n: usize) -> Vec<usize> {
    // A repeating pattern with a long-range part: "abcab" then a digit that repeats
    // the one five characters back.
    (0..n)
        .map(|i| [0, 1, 2, 0, 1, 3 + (i / 6) % 2][i % 6])
        .collect()
}

fn config(cell: CellKind, lr: f32) -> OnlineConfig {
    OnlineConfig {
        cell,
        hidden: 8,
        lr,
        clip: 1.0,
        steps: 1200,
        report_every: 200,
        seed: 3,
    }
}

#[test]
fn online_rtrl_and_tbptt_see_the_same_losses_without_learning_and_both_learn() {
    let ids = stream(1201);
    for cell in [CellKind::RnnTanh, CellKind::Lstm, CellKind::Gru] {
        // lr 0: the same weights score the same stream, so the curves agree.
        let a = train_online(&config(cell, 0.0), OnlineMethod::Rtrl, &ids, 5).unwrap();
        let b = train_online(&config(cell, 0.0), OnlineMethod::Tbptt(7), &ids, 5).unwrap();
        assert_eq!(a.curve.len(), 6);
        for (p, q) in a.curve.iter().zip(&b.curve) {
            assert_eq!(p.step, q.step);
            assert!(
                (p.loss - q.loss).abs() < 1e-5,
                "{cell:?}: {} vs {}",
                p.loss,
                q.loss
            );
        }
        assert_eq!(a.params, b.params);
        for m in [OnlineMethod::Rtrl, OnlineMethod::Tbptt(10)] {
            let r = train_online(&config(cell, 0.1), m, &ids, 5).unwrap();
            let (first, last) = (r.curve[0].loss, r.curve.last().unwrap().loss);
            eprintln!("{cell:?} {m:?}: {first:.3} → {last:.3}");
            assert!(last < 0.75 * first, "{cell:?} {m:?}: {first} → {last}");
            assert!(r.state_bytes > 0 && r.seconds > 0.0);
        }
    }
}

#[test]
fn online_learning_refuses_bad_streams_and_settings() {
    let ids = stream(100);
    let cfg = config(CellKind::RnnTanh, 0.1);
    assert!(train_online(&cfg, OnlineMethod::Rtrl, &ids, 5).is_err()); // too short
    let cfg = OnlineConfig { steps: 50, ..cfg };
    assert!(train_online(&cfg, OnlineMethod::Rtrl, &ids, 4).is_err()); // id 4 ≥ vocab
    assert!(train_online(&cfg, OnlineMethod::Tbptt(0), &ids, 5).is_err());
    let cfg = OnlineConfig {
        report_every: 0,
        ..cfg
    };
    assert!(train_online(&cfg, OnlineMethod::Rtrl, &ids, 5).is_err());
}

/// ‖∂L/∂s_{T−k}‖ agrees with central differences on the state at T−k, for every cell.
#[test]
fn gradient_flow_matches_finite_differences() {
    use rnnkit::gradflow::gradient_flow;
    use rnnkit::layer::RecurrentState;
    let (steps, input, hidden) = (6, 3, 4);
    for kind in [CellKind::RnnTanh, CellKind::Lstm, CellKind::Gru] {
        let mut rng = Rng::new(11);
        let mut layer = RecurrentConfig::new(kind, input, hidden)
            .with_layers(2)
            .init::<f64>(&mut rng)
            .unwrap();
        let x = random(&[steps, 1, input], &mut rng);
        let dy = random(&[1, 1, hidden], &mut rng).into_vec();
        let flow = gradient_flow(&mut layer, &x, &dy).unwrap();
        assert_eq!(flow.len(), steps);
        for k in [1, 3, steps] {
            let start = steps - k;
            let head = Tensor::from_vec(&[start, 1, input], x.data()[..start * input].to_vec());
            let s = match head {
                Ok(h) if start > 0 => layer.forward(&h, None, None).unwrap().1,
                _ => RecurrentState::zeros(layer.config(), 1),
            };
            let tail =
                Tensor::from_vec(&[k, 1, input], x.data()[start * input..].to_vec()).unwrap();
            let mut loss = |s: &RecurrentState<f64>| {
                let (y, _) = layer.forward(&tail, None, Some(s)).unwrap();
                let last = &y.data()[(k - 1) * hidden..];
                last.iter().zip(&dy).map(|(a, b)| a * b).sum::<f64>()
            };
            let mut sq = 0.0;
            let n_c = s.c.as_ref().map_or(0, |c| c.len());
            for i in 0..s.h.len() + n_c {
                let eps = 1e-6;
                let bump = |d: f64| {
                    let mut p = s.clone();
                    match p.c.as_mut() {
                        Some(c) if i >= s.h.len() => c.data_mut()[i - s.h.len()] += d,
                        _ => p.h.data_mut()[i] += d,
                    }
                    p
                };
                let g = (loss(&bump(eps)) - loss(&bump(-eps))) / (2.0 * eps);
                sq += g * g;
            }
            let fd = sq.sqrt();
            let err = (flow[k - 1] - fd).abs() / fd.max(1e-12);
            assert!(err < 1e-6, "{kind:?} k {k}: {} vs {fd}", flow[k - 1]);
        }
    }
}
