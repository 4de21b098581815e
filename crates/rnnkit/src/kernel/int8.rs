//! Matrix–vector products with 8-bit integer weights, for batch-1 inference: a
//! quarter of f32's bytes to stream. Weights are quantised symmetrically per row
//! (`w ≈ s_i·q_ij`, `q ∈ [−127, 127]`); the vector asymmetrically per call
//! (`x ≈ s_x·(u_j − 128)`, `u ∈ [1, 255]`), so that AVX-512 VNNI's `vpdpbusd`
//! (unsigned × signed bytes, four products summed into each i32 lane) does 64
//! multiply-adds per instruction. Then
//! `w_i·x ≈ s_i·s_x·(Σ_j q_ij·u_j − 128·Σ_j q_ij)`, the row sums kept with the rows.

/// Rows of a matrix quantised to int8, one scale per row.
#[derive(Clone, Debug, Default)]
pub(crate) struct Int8Rows {
    q: Vec<i8>,
    scale: Vec<f32>,
    sum: Vec<i32>,
    cols: usize,
}

/// A vector quantised for [`Int8Rows::dot`]: `x_j ≈ scale·(u_j − 128)`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Int8Vector {
    u: Vec<u8>,
    scale: f32,
}

impl Int8Rows {
    /// Quantises the row-major `[w.len() / cols, cols]` matrix `w`, rounding each
    /// weight to the nearest of 255 levels spanning its row's largest magnitude.
    pub(crate) fn new(w: &[f32], cols: usize) -> Int8Rows {
        let cols = cols.max(1);
        let rows = w.len() / cols;
        let mut out = Int8Rows {
            q: Vec::with_capacity(rows * cols),
            scale: Vec::with_capacity(rows),
            sum: Vec::with_capacity(rows),
            cols,
        };
        for row in w.chunks_exact(cols) {
            let scale = scale_of(row);
            let start = out.q.len();
            out.q.extend(
                row.iter()
                    .map(|&v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
            out.sum
                .push(out.q[start..].iter().map(|&q| i32::from(q)).sum());
            out.scale.push(scale);
        }
        out
    }

    /// `y[i] = row(r0 + i)·x` for `y.len()` rows from `r0`.
    ///
    /// # Panics
    /// If the rows run past the matrix or `x` has another length than a row.
    pub(crate) fn dot(&self, r0: usize, x: &Int8Vector, y: &mut [f32]) {
        let k = self.cols;
        assert_eq!(x.u.len(), k, "int8 vector of another length than the rows");
        assert!(
            r0 + y.len() <= self.scale.len(),
            "int8 rows outside their matrix"
        );
        let q = &self.q[r0 * k..(r0 + y.len()) * k];
        dot_raw(y, q, &x.u);
        let rows = r0..r0 + y.len();
        for ((y, &s), &sum) in y
            .iter_mut()
            .zip(&self.scale[rows.clone()])
            .zip(&self.sum[rows])
        {
            *y = s * x.scale * (*y - 128.0 * sum as f32);
        }
    }
}

impl Int8Vector {
    /// Quantises `x` in place of what this vector held (no allocation once it has
    /// held a vector as long).
    pub(crate) fn set(&mut self, x: &[f32]) {
        self.scale = scale_of(x);
        let inv = 1.0 / self.scale;
        self.u.clear();
        // v·inv lies in [−127, 127]: + 128.5 truncated is the nearest level (ties
        // up), and the saturating cast keeps rounding slips inside [1, 255].
        self.u
            .extend(x.iter().map(|&v| (v * inv + 128.5).clamp(1.0, 255.0) as u8));
    }
}

/// The step between levels that maps the largest magnitude of `x` to 127 (1 for an
/// all-zero or non-finite `x`). Written to vectorise: it runs before every product
/// of a sampled character.
fn scale_of(x: &[f32]) -> f32 {
    let top = x
        .iter()
        .fold(0.0f32, |m, v| if v.abs() > m { v.abs() } else { m });
    if top > 0.0 && top.is_finite() {
        top / 127.0
    } else {
        1.0
    }
}

/// `y[i] = Σ_j q[i·k + j]·u[j]` (exact in i32, returned as f32), `k = u.len()`.
fn dot_raw(y: &mut [f32], q: &[i8], u: &[u8]) {
    let k = u.len();
    assert!(
        y.len().checked_mul(k).is_some_and(|n| n <= q.len()),
        "int8 rows outside their buffer"
    );
    #[cfg(target_arch = "x86_64")]
    if has_vnni() {
        // SAFETY: the features are present; every row read lies inside `q` (asserted).
        unsafe { avx512::dot_rows_vnni(y, q, u) };
        return;
    }
    dot_raw_ref(y, q, u);
}

/// The portable loop of [`dot_raw`].
fn dot_raw_ref(y: &mut [f32], q: &[i8], u: &[u8]) {
    let k = u.len();
    for (y, row) in y.iter_mut().zip(q.chunks_exact(k.max(1))) {
        let s: i32 = row
            .iter()
            .zip(u)
            .map(|(&q, &u)| i32::from(q) * i32::from(u))
            .sum();
        *y = s as f32;
    }
}

/// Whether int8 products run on AVX-512 VNNI (elsewhere a portable loop, slower than f32).
pub fn int8_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_vnni()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
fn has_vnni() -> bool {
    use std::arch::is_x86_feature_detected as has;
    has!("avx512f") && has!("avx512bw") && has!("avx512vnni")
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::super::gemv::eight_rows_at_a_time;
    use std::arch::x86_64::*;

    /// Rows of int8 weights, 8 at a time, by `vpdpbusd` on 64 weights at once.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn dot_rows_vnni(y: &mut [f32], q: &[i8], u: &[u8]) {
        let w = q.as_ptr();
        // SAFETY: every row offset handed out lies inside `q` (asserted by the caller).
        eight_rows_at_a_time(
            y,
            u.len(),
            |at| unsafe { dots::<8>(u, w.add(at)) },
            |at| unsafe { dots::<1>(u, w.add(at)) }[0],
        );
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn dots<const C: usize>(u: &[u8], w: *const i8) -> [f32; C] {
        let k = u.len();
        let mut s = [_mm512_setzero_si512(); C];
        let mut p = 0;
        while p < k {
            let left = k - p;
            let mask = if left >= 64 {
                u64::MAX
            } else {
                (1u64 << left) - 1
            };
            // SAFETY: masked lanes are not read; p < k, so the pointers lie inside.
            let uv = unsafe { _mm512_maskz_loadu_epi8(mask, u.as_ptr().add(p).cast()) };
            for (c, s) in s.iter_mut().enumerate() {
                let wv = unsafe { _mm512_maskz_loadu_epi8(mask, w.add(c * k + p)) };
                *s = _mm512_dpbusd_epi32(*s, uv, wv);
            }
            p += 64;
        }
        s.map(|s| _mm512_reduce_add_epi32(s) as f32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn int8_rows_match_the_exact_sums_and_the_f32_product() {
        let mut rng = Rng::new(9);
        let sizes: &[(usize, usize)] = if cfg!(miri) {
            &[(1, 1), (3, 63), (9, 65)]
        } else {
            &[
                (1, 1),
                (3, 63),
                (9, 64),
                (9, 65),
                (17, 130),
                (64, 512),
                (8, 40),
            ]
        };
        for &(rows, k) in sizes {
            let w: Vec<f32> = (0..rows * k)
                .map(|_| rng.uniform_in(-0.5, 0.5) as f32)
                .collect();
            let x: Vec<f32> = (0..k).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect();
            let m = Int8Rows::new(&w, k);
            let mut v = Int8Vector::default();
            v.set(&x);
            // The integer sums are exact on every path.
            let mut got = vec![0.0; rows];
            dot_raw(&mut got, &m.q, &v.u);
            let mut want = vec![0.0; rows];
            dot_raw_ref(&mut want, &m.q, &v.u);
            assert_eq!(got, want, "rows {rows} k {k}");
            // And the scaled result is the f32 product to within the rounding of
            // both operands (half a level each).
            for r0 in [0, rows / 2] {
                let mut y = vec![0.0; rows - r0];
                m.dot(r0, &v, &mut y);
                for (i, &got) in y.iter().enumerate() {
                    let row = &w[(r0 + i) * k..][..k];
                    let exact: f64 = row.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                    let bound: f64 = row
                        .iter()
                        .zip(&x)
                        .map(|(&a, &b)| {
                            let (sw, sx) = (m.scale[r0 + i] as f64, v.scale as f64);
                            (sw * b.abs() as f64 + sx * a.abs() as f64) / 2.0 + sw * sx / 4.0
                        })
                        .sum::<f64>()
                        + 1e-5;
                    assert!(
                        (got as f64 - exact).abs() <= bound,
                        "rows {rows} k {k} row {}: {got} vs {exact} (bound {bound})",
                        r0 + i
                    );
                }
            }
        }
    }

    #[test]
    fn zero_rows_and_vectors_quantise_to_zero() {
        let m = Int8Rows::new(&[0.0; 8], 4);
        let mut v = Int8Vector::default();
        v.set(&[0.0; 4]);
        let mut y = [1.0; 2];
        m.dot(0, &v, &mut y);
        assert_eq!(y, [0.0, 0.0]);
        v.set(&[1.0, -1.0, 0.5, 0.0]);
        m.dot(0, &v, &mut y);
        assert_eq!(y, [0.0, 0.0]);
    }
}
