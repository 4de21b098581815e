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
    if !parallel(m.len()) {
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
    if !parallel(m.len()) || n < 32 {
        return sum(acc, 0);
    }
    // Columns split between the threads, each summed over every row in order: the
    // same sums as on one thread.
    let cols = n.div_ceil(rayon::current_num_threads()).div_ceil(16) * 16;
    acc.par_chunks_mut(cols)
        .enumerate()
        .for_each(|(k, acc)| sum(acc, k * cols));
}

/// Whether work on `len` elements should be split between the threads.
pub(crate) fn parallel(len: usize) -> bool {
    parallel_from(len, PARALLEL_MIN)
}

/// Whether work on `len` elements, worth splitting from `min` elements up, should
/// be split between the threads (none where this thread runs serial work).
pub(crate) fn parallel_from(len: usize, min: usize) -> bool {
    len >= min && !super::is_serial() && rayon::current_num_threads() > 1
}

/// `dst.copy_from_slice(src)`, split between the threads when large (a layer's
/// outputs are tens of megabytes, which one thread copies at a fraction of the
/// machine's bandwidth while the other waits).
pub(crate) fn copy<T: Real>(dst: &mut [T], src: &[T]) {
    assert_eq!(dst.len(), src.len(), "copy lengths");
    if !parallel(dst.len()) {
        return dst.copy_from_slice(src);
    }
    dst.par_chunks_mut(PARALLEL_MIN)
        .zip(src.par_chunks(PARALLEL_MIN))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

/// Sets every element of `dst` to `v`, split between the threads when large.
pub(crate) fn fill<T: Real>(dst: &mut [T], v: T) {
    if !parallel(dst.len()) {
        return dst.fill(v);
    }
    dst.par_chunks_mut(PARALLEL_MIN).for_each(|d| d.fill(v));
}

/// Row `ids[r]` of `acc [·, w]` += row `r` of the `[ids.len(), w]` matrix `rows`: the
/// gradient of a lookup of rows by id. Split between the threads by id, each id's
/// rows summed in their order, so the sums are those of one thread.
pub(crate) fn scatter_add_rows<T: Real>(acc: &mut [T], rows: &[T], ids: &[usize], w: usize) {
    if w == 0 {
        return;
    }
    if !parallel(ids.len() * w) {
        for (row, &id) in rows.chunks_exact(w).zip(ids) {
            acc[id * w..][..w]
                .iter_mut()
                .zip(row)
                .for_each(|(a, &d)| *a += d);
        }
        return;
    }
    // Taken out while the threads work: a job stolen meanwhile may call this too.
    let (mut start, mut order) = ROW_ORDER.take();
    // The rows of each id in order (a counting sort): `start[id]` counts the rows
    // of the ids before id, then serves as id's next free slot in `order`...
    let v = acc.len() / w;
    start.clear();
    start.resize(v + 1, 0);
    for &id in ids {
        start[id + 1] += 1;
    }
    for i in 0..v {
        start[i + 1] += start[i];
    }
    order.clear();
    order.resize(ids.len(), 0);
    for (r, &id) in ids.iter().enumerate() {
        order[start[id]] = r;
        start[id] += 1;
    }
    // ...so id's rows end at `start[id]` and begin where id − 1's end.
    acc.par_chunks_exact_mut(w).enumerate().for_each(|(id, a)| {
        let first = if id == 0 { 0 } else { start[id - 1] };
        for &r in &order[first..start[id]] {
            a.iter_mut()
                .zip(&rows[r * w..][..w])
                .for_each(|(a, &d)| *a += d);
        }
    });
    ROW_ORDER.set((start, order));
}

thread_local! {
    /// [`scatter_add_rows`]' counting sort, kept between calls (no allocation a step).
    static ROW_ORDER: std::cell::Cell<(Vec<usize>, Vec<usize>)> = Default::default();
}

/// The largest of `init` and `f(v)` for every `v` of `x` (a NaN is never the
/// largest), by sixteen running maxima so that the loop vectorises; inlined into its
/// callers' SIMD variants.
#[inline(always)]
pub(crate) fn largest(x: &[f32], init: f32, f: impl Fn(f32) -> f32) -> f32 {
    let mut top = [init; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (t, &v) in top.iter_mut().zip(c) {
            let v = f(v);
            *t = if v > *t { v } else { *t };
        }
    }
    let rest = chunks.remainder().iter().map(|&v| f(v));
    rest.chain(top).fold(init, |m, v| if v > m { v } else { m })
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

    #[test]
    fn split_scatters_copies_and_fills_match_one_thread() {
        // Ids with repeats and skew (most rows one id), rows large enough to split.
        let (v, w, n) = (37, 300, 900);
        let ids: Vec<usize> = (0..n)
            .map(|r| if r % 3 == 0 { 5 } else { (r * 7919) % v })
            .collect();
        let rows: Vec<f32> = (0..n * w).map(|i| ((i * 13) % 1009) as f32 / 3.0).collect();
        let run = || {
            let mut acc = vec![0.25f32; v * w];
            scatter_add_rows(&mut acc, &rows, &ids, w);
            let mut copied = vec![0.0f32; n * w];
            copy(&mut copied, &rows);
            let mut filled = rows.clone();
            fill(&mut filled, 2.0);
            (acc, copied, filled)
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let (acc, copied, filled) = pool.install(run);
        let one = super::super::serial(run);
        assert_eq!(acc, one.0);
        // Id 5's row holds the sum of its rows in their order.
        let mut want = vec![0.25f32; w];
        for (r, _) in ids.iter().enumerate().filter(|(_, &id)| id == 5) {
            want.iter_mut()
                .zip(&rows[r * w..])
                .for_each(|(a, &d)| *a += d);
        }
        assert_eq!(acc[5 * w..][..w], want[..]);
        assert_eq!(copied, rows);
        assert!(filled.iter().all(|&x| x == 2.0));
    }
}
