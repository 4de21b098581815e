//! Elementwise helpers shared by the cells and layers.

use crate::tensor::Real;

/// The logistic function `1 / (1 + e^{-x})`, written to stay finite for large |x|.
#[inline]
pub fn sigmoid<T: Real>(x: T) -> T {
    if x >= T::zero() {
        T::one() / (T::one() + (-x).exp())
    } else {
        let e = x.exp();
        e / (T::one() + e)
    }
}

/// Adds `bias[j]` to every row of the row-major `[rows, bias.len()]` matrix `m`.
pub fn add_bias_rows<T: Real>(m: &mut [T], bias: &[T]) {
    let n = bias.len();
    if n == 0 {
        return;
    }
    for row in m.chunks_exact_mut(n) {
        for (x, &b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
}

/// `acc[j] += Σ_i m[i, j]` over the rows of the row-major `[rows, acc.len()]` matrix `m`.
pub fn sum_rows_into<T: Real>(acc: &mut [T], m: &[T]) {
    let n = acc.len();
    if n == 0 {
        return;
    }
    for row in m.chunks_exact(n) {
        for (a, &x) in acc.iter_mut().zip(row) {
            *a += x;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmoid_is_finite_and_symmetric() {
        for &x in &[-1000.0f32, -20.0, -1.0, 0.0, 1.0, 20.0, 1000.0] {
            let s = sigmoid(x);
            assert!(s.is_finite() && (0.0..=1.0).contains(&s));
            assert!((s + sigmoid(-x) - 1.0).abs() < 1e-6);
        }
        assert_eq!(sigmoid(0.0f64), 0.5);
    }

    #[test]
    fn bias_and_row_sums() {
        let mut m = vec![1.0f32, 2.0, 3.0, 4.0];
        add_bias_rows(&mut m, &[10.0, 20.0]);
        assert_eq!(m, [11.0, 22.0, 13.0, 24.0]);
        let mut acc = vec![1.0f32, 1.0];
        sum_rows_into(&mut acc, &m);
        assert_eq!(acc, [25.0, 47.0]);
    }
}
