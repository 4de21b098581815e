//! `y (+)= x·B` for a single row `x`, in AVX-512: the batch-1 path (sampling, and
//! evaluating or training one stream). With one row there is nothing to reuse, so
//! the product is a stream through `B`; the `gemm` crate's generic path for it reaches
//! a third of the bandwidth that these loops do. Both cores take a share of the
//! columns of large products. Columns never mix, so the result does not depend on
//! the thread count.

use super::matmul::{MatRef, SERIAL};
use rayon::prelude::*;

/// Below this many multiply-adds the product runs on the calling thread.
const PARALLEL_MIN: usize = 1 << 16;

/// `y = x·b` (or `y += x·b`) when the CPU has AVX-512 and `b` has unit stride along
/// one axis; returns false, having done nothing, otherwise.
pub(crate) fn gemv_f32(y: &mut [f32], x: &[f32], b: MatRef<'_, f32>, accumulate: bool) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let (k, n) = (b.rows, b.cols);
        debug_assert!(x.len() == k && y.len() == n);
        let by_rows = b.cs == 1;
        if !(by_rows || b.rs == 1) || !std::arch::is_x86_feature_detected!("avx512f") {
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
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
            let mask = (1u16 << (n - j)) - 1;
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
            let mask = (1u16 << (k - p)) - 1;
            let xv = unsafe { _mm512_maskz_loadu_ps(mask, x.as_ptr().add(p)) };
            for (c, s) in s.iter_mut().enumerate() {
                let w = unsafe { _mm512_maskz_loadu_ps(mask, b.add(c * ld + p)) };
                *s = _mm512_fmadd_ps(w, xv, *s);
            }
        }
        s.map(|s| _mm512_reduce_add_ps(s))
    }
}
