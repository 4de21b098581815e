//! `y (+)= x·B` for a single row `x`, in AVX-512: the batch-1 path (sampling, and
//! evaluating or training one stream). With one row there is nothing to reuse, so
//! the product is a stream through `B`; the `gemm` crate's generic path for it reaches
//! a third of the bandwidth that these loops do. Both cores take a share of the
//! columns of large products. Columns never mix, so the result does not depend on
//! the thread count.

use super::matmul::MatRef;
#[cfg(target_arch = "x86_64")]
use super::matmul::SERIAL;
#[cfg(target_arch = "x86_64")]
use rayon::prelude::*;

/// Below this many multiply-adds the product runs on the calling thread.
#[cfg(target_arch = "x86_64")]
const PARALLEL_MIN: usize = 1 << 16;

/// `y = x·b` (or `y += x·b`) when the CPU has AVX-512 and `b` has unit stride along
/// one axis; returns false, having done nothing, otherwise (also for an empty product).
///
/// # Panics
/// Unless `x.len() == b.rows` and `y.len() == b.cols`: the loops below read `b`
/// through raw pointers for as many rows and columns as `x` and `y` have.
pub(crate) fn gemv_f32(y: &mut [f32], x: &[f32], b: MatRef<'_, f32>, accumulate: bool) -> bool {
    let (k, n) = (b.rows, b.cols);
    assert!(
        x.len() == k && y.len() == n,
        "gemv shapes: x has {} elements for {k} rows, y {} for {n} columns",
        x.len(),
        y.len()
    );
    // With no row or no column, `MatRef` checked nothing about `b`'s strides.
    if k == 0 || n == 0 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        let by_rows = b.cs == 1;
        if !(by_rows || b.rs == 1) || !crate::kernel::avx512_enabled() {
            return false;
        }
        let ld = if by_rows { b.rs } else { b.cs };
        let run = |y: &mut [f32], j0: usize| {
            let col0 = if by_rows { j0 } else { j0 * ld };
            // SAFETY: AVX-512F is present (checked above); `MatRef` checked that every
            // element (p, j) with p < k, j < n lies inside `b.data`, and columns
            // j0..j0 + y.len() are a subset of them.
            unsafe {
                let base = b.data.as_ptr().add(col0);
                if by_rows {
                    avx512::by_rows(y, x, base, ld, accumulate);
                } else {
                    avx512::by_cols(y, x, base, ld, accumulate);
                }
            }
        };
        let threads = rayon::current_num_threads();
        if threads > 1 && !SERIAL.get() && n * k >= PARALLEL_MIN && n >= 32 * threads {
            // Shares in whole vectors, so every thread but the last runs unmasked.
            let share = n.div_ceil(threads).div_ceil(16) * 16;
            y.par_chunks_mut(share)
                .enumerate()
                .for_each(|(i, y)| run(y, i * share));
        } else {
            run(y, 0);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (y, x, b, accumulate);
        false
    }
}

/// Most rows [`few_rows_f32`] takes.
pub(crate) const FEW_ROWS: usize = 64;

/// `c (+)= a·b` for a few rows of `a` (≤ [`FEW_ROWS`]) when every column of `b` is
/// contiguous (`b` is a weight matrix `W [out, in]` read as `Wᵀ`, as in `x·Wᵀ`): the
/// `gemm` crate packs such a `b` on every call, which at a few rows costs several
/// times the product (a beam's hypotheses through `W_ih`: 160 µs against 40; a
/// decoder step's 64 rows through `W_c [256, 512]`: 420 µs against 170), while here
/// each block of 8 columns is read from memory once and reused from L1 for every row. Returns false, having done nothing, where it does not apply.
pub(crate) fn few_rows_f32(
    c: &mut super::MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    accumulate: bool,
) -> bool {
    let (m, k, n) = (a.rows, b.rows, b.cols);
    assert!(c.rows == m && c.cols == n && a.cols == k, "few-rows shapes");
    if m == 0 || m > FEW_ROWS || k == 0 || n == 0 || b.rs != 1 || a.cs != 1 {
        return false;
    }
    #[cfg(target_arch = "x86_64")]
    {
        if !crate::kernel::avx512_enabled() {
            return false;
        }
        let (ld, cld) = (b.cs, c.ld);
        let (rows, rs) = (a.data, a.rs);
        // Threads write disjoint columns of the same rows, so the output is shared as
        // a raw pointer (no two `&mut` slices of it overlap).
        let out = c.data.as_mut_ptr() as usize;
        let run = |j0: usize, cols: usize| {
            // SAFETY: AVX-512F is present (checked above); `MatRef` checked that every
            // column j < n of `b` lies inside `b.data` with k contiguous elements, and
            // `MatMut` that every (i, j) with i < m, j < n lies inside `c.data`;
            // columns j0..j0 + cols are a subset, written by this call alone.
            unsafe {
                avx512::few_rows(
                    (out as *mut f32).add(j0),
                    cld,
                    (rows, rs, m, k),
                    b.data.as_ptr().add(j0 * ld),
                    ld,
                    cols,
                    accumulate,
                )
            }
        };
        let threads = rayon::current_num_threads();
        if threads > 1 && !SERIAL.get() && m * n * k >= 4 * PARALLEL_MIN && n >= 32 * threads {
            let share = n.div_ceil(threads).div_ceil(8) * 8;
            (0..n.div_ceil(share))
                .into_par_iter()
                .for_each(|t| run(t * share, share.min(n - t * share)));
        } else {
            run(0, n);
        }
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (m, accumulate);
        false
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use crate::kernel::lanes::first_lanes;
    use std::arch::x86_64::*;

    /// `B` row-major: row `p` of the columns at hand starts at `b + p·ld`. Each
    /// register block of columns is accumulated over all rows, `x[p]` broadcast.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn by_rows(y: &mut [f32], x: &[f32], b: *const f32, ld: usize, acc: bool) {
        let n = y.len();
        let mut j = 0;
        // 16 accumulators (256 columns) keep the loads and FMAs of a row independent.
        while n - j >= 256 {
            unsafe { rows_block::<16>(&mut y[j..], x, b.add(j), ld, acc) };
            j += 256;
        }
        while n - j >= 16 {
            unsafe { rows_block::<1>(&mut y[j..], x, b.add(j), ld, acc) };
            j += 16;
        }
        if j < n {
            let mask = first_lanes(n - j);
            let y = &mut y[j..];
            let b = unsafe { b.add(j) };
            let mut s = if acc {
                unsafe { _mm512_maskz_loadu_ps(mask, y.as_ptr()) }
            } else {
                _mm512_setzero_ps()
            };
            for (p, &xp) in x.iter().enumerate() {
                let w = unsafe { _mm512_maskz_loadu_ps(mask, b.add(p * ld)) };
                s = _mm512_fmadd_ps(w, _mm512_set1_ps(xp), s);
            }
            unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr(), mask, s) };
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn rows_block<const R: usize>(
        y: &mut [f32],
        x: &[f32],
        b: *const f32,
        ld: usize,
        acc: bool,
    ) {
        let y = &mut y[..16 * R];
        let mut s = [_mm512_setzero_ps(); R];
        if acc {
            for (r, s) in s.iter_mut().enumerate() {
                *s = unsafe { _mm512_loadu_ps(y.as_ptr().add(16 * r)) };
            }
        }
        for (p, &xp) in x.iter().enumerate() {
            let xv = _mm512_set1_ps(xp);
            let row = unsafe { b.add(p * ld) };
            for (r, s) in s.iter_mut().enumerate() {
                *s = _mm512_fmadd_ps(unsafe { _mm512_loadu_ps(row.add(16 * r)) }, xv, *s);
            }
        }
        for (r, s) in s.iter().enumerate() {
            unsafe { _mm512_storeu_ps(y.as_mut_ptr().add(16 * r), *s) };
        }
    }

    /// `B` column-major: column `j` starts at `b + j·ld` and is contiguous, so each
    /// output is a dot product; 8 columns at a time share the loads of `x`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn by_cols(y: &mut [f32], x: &[f32], b: *const f32, ld: usize, acc: bool) {
        let n = y.len();
        let mut j = 0;
        while n - j >= 8 {
            let d = unsafe { dots::<8>(x, b.add(j * ld), ld) };
            store(&mut y[j..j + 8], &d, acc);
            j += 8;
        }
        while j < n {
            let d = unsafe { dots::<1>(x, b.add(j * ld), ld) };
            store(&mut y[j..j + 1], &d, acc);
            j += 1;
        }
    }

    /// Several rows against `B` column-major: each block of 8 columns, read once,
    /// serves every row from L1. Row `i` of `A` is `rows[i·rs..][..k]`; output row `i` starts at `c + i·cld`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn few_rows(
        c: *mut f32,
        cld: usize,
        (rows, rs, m, k): (&[f32], usize, usize, usize),
        b: *const f32,
        ld: usize,
        n: usize,
        acc: bool,
    ) {
        let put = |i: usize, j: usize, d: &[f32]| {
            for (t, &d) in d.iter().enumerate() {
                // SAFETY: the caller guarantees (i, j + t) is inside the output.
                let y = unsafe { &mut *c.add(i * cld + j + t) };
                *y = if acc { *y + d } else { d };
            }
        };
        let mut j = 0;
        while n - j >= 8 {
            for i in 0..m {
                let x = &rows[i * rs..][..k];
                put(i, j, &unsafe { dots::<8>(x, b.add(j * ld), ld) });
            }
            j += 8;
        }
        while j < n {
            for i in 0..m {
                let x = &rows[i * rs..][..k];
                put(i, j, &unsafe { dots::<1>(x, b.add(j * ld), ld) });
            }
            j += 1;
        }
    }

    fn store(y: &mut [f32], d: &[f32], acc: bool) {
        for (y, &d) in y.iter_mut().zip(d) {
            *y = if acc { *y + d } else { d };
        }
    }

    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn dots<const C: usize>(x: &[f32], b: *const f32, ld: usize) -> [f32; C] {
        let k = x.len();
        let mut s = [_mm512_setzero_ps(); C];
        let mut p = 0;
        while k - p >= 16 {
            let xv = unsafe { _mm512_loadu_ps(x.as_ptr().add(p)) };
            for (c, s) in s.iter_mut().enumerate() {
                let w = unsafe { _mm512_loadu_ps(b.add(c * ld + p)) };
                *s = _mm512_fmadd_ps(w, xv, *s);
            }
            p += 16;
        }
        if p < k {
            let mask = first_lanes(k - p);
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(p)) };
            for (c, s) in s.iter_mut().enumerate() {
                let w = unsafe { _mm512_maskz_loadu_ps(mask, b.add(c * ld + p)) };
                *s = _mm512_fmadd_ps(w, xv, *s);
            }
        }
        s.map(|s| _mm512_reduce_add_ps(s))
    }
}

/// Rounds to the nearest bfloat16 (ties to even): the top 16 bits of an f32. A
/// NaN stays a (quiet) NaN. Written as a select, not a branch, so that packing
/// loops vectorise.
#[inline(always)]
pub(crate) fn to_bf16(x: f32) -> u16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let quiet_nan = ((bits >> 16) | 0x40) as u16;
    if x.is_nan() {
        quiet_nan
    } else {
        rounded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounding() {
        assert_eq!(to_bf16(1.0), 0x3f80);
        assert_eq!(to_bf16(-2.0), 0xc000);
        // 1 + 2^-8 lies halfway between two bf16 values: ties go to the even one.
        assert_eq!(to_bf16(1.0 + 1.0 / 256.0), 0x3f80);
        assert_eq!(to_bf16(1.0 + 3.0 / 256.0), 0x3f82);
        assert!(f32::from_bits((to_bf16(f32::NAN) as u32) << 16).is_nan());
    }
}
