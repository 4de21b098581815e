//! RTRL is exact: with the parameters frozen, the sum over steps of its per-step
//! gradients equals BPTT's gradient of the summed loss, for every cell (f64).

use rnnkit::layer::Parameters;
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
