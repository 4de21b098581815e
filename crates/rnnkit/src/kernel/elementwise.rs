//! Elementwise helpers shared by the cells and layers.

use crate::tensor::Real;
use rayon::prelude::*;

/// Below this many elements the helpers below run on the calling thread. Above it
/// they would be the serial part of a step (LSTM 2×512: 13 M elements a bias).
const PARALLEL_MIN: usize = 1 << 16;

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
    let add = |rows: &mut [T]| {
        for row in rows.chunks_exact_mut(n) {
            for (x, &b) in row.iter_mut().zip(bias) {
                *x += b;
            }
        }
    };
    if m.len() < PARALLEL_MIN || super::is_serial() {
        return add(m);
    }
    // Whole rows per task: each element gets the same addition either way.
    let rows = (PARALLEL_MIN / 4).div_ceil(n).max(1);
    m.par_chunks_mut(rows * n).for_each(add);
}

/// `acc[j] += Σ_i m[i, j]` over the rows of the row-major `[rows, acc.len()]` matrix `m`.
pub fn sum_rows_into<T: Real>(acc: &mut [T], m: &[T]) {
    let n = acc.len();
    if n == 0 {
        return;
    }
    let sum = |acc: &mut [T], j0: usize| {
        for row in m.chunks_exact(n) {
            for (a, &x) in acc.iter_mut().zip(&row[j0..]) {
                *a += x;
            }
        }
    };
    let threads = rayon::current_num_threads();
    if m.len() < PARALLEL_MIN || threads < 2 || n < 32 || super::is_serial() {
        return sum(acc, 0);
    }
    // Columns split between the threads, each summed over every row in order: the
    // same sums as on one thread.
    let cols = n.div_ceil(threads).div_ceil(16) * 16;
    acc.par_chunks_mut(cols)
        .enumerate()
        .for_each(|(k, acc)| sum(acc, k * cols));
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

    #[test]
    fn split_bias_and_row_sums_match_one_thread() {
        // Large enough to be split between threads: the results are the same sums.
        let (rows, n) = (700, 300);
        let m: Vec<f64> = (0..rows * n)
            .map(|i| ((i * 7919) % 1013) as f64 / 97.0)
            .collect();
        let bias: Vec<f64> = (0..n).map(|j| j as f64 * 0.25).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (mut split, mut acc) = (m.clone(), vec![0.5; n]);
        pool.install(|| {
            add_bias_rows(&mut split, &bias);
            sum_rows_into(&mut acc, &split);
        });
        // The same calls on the calling thread alone.
        let (mut want, mut want_acc) = (m.clone(), vec![0.5; n]);
        super::super::serial(|| {
            add_bias_rows(&mut want, &bias);
            sum_rows_into(&mut want_acc, &want);
        });
        assert_eq!(split, want);
        assert_eq!(acc, want_acc);
    }
}
