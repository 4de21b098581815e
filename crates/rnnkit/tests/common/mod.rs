//! Helpers shared by the f64 comparison tests of the recurrent layer.

use rnnkit::{Parameters, Recurrent, Rng, Tensor};

/// A tensor of `shape` with values uniform in [−1, 1).
pub fn random(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
    let n = shape.iter().product();
    Tensor::from_vec(shape, (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()).unwrap()
}

/// Every parameter gradient of `layer`, in visiting order; the gradients are zeroed.
pub fn grads(layer: &mut Recurrent<f64>) -> Vec<f64> {
    let mut all = Vec::new();
    layer.visit_params_mut(&mut |_, _, g| {
        all.extend_from_slice(g.data());
        g.data_mut().fill(0.0);
    });
    all
}

/// `a` equals `b` elementwise to `tol` relative (plus `tol` absolute).
pub fn assert_close(what: &str, a: &[f64], b: &[f64], tol: f64) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "{what}[{i}]: {x} vs {y}"
        );
    }
}
