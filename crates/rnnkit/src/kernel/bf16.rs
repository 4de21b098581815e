//! Matrix products with bfloat16 operands and f32 sums (`vdpbf16ps`, AVX-512 BF16):
//! one instruction does 32 multiply-adds, twice as many as an f32 FMA. Operands are
//! rounded to bfloat16 (8-bit mantissa) when packed; every sum stays in f32.
//!
//! Layout: `B [k, n]` is packed into panels of [`NR`] columns, each `[k/2][NR][2]`
//! (pairs of consecutive k per column, as the instruction reads them); `A [m, k]`
//! into panels of [`MR`] rows, each `[k/2][MR]` pairs. A micro-tile of `MR × NR`
//! outputs lives in 24 registers for a whole block of k.

use super::matmul::{MatMut, MatRef, SERIAL};
use rayon::prelude::*;
use std::cell::RefCell;

/// Rows of `A` per micro-tile.
const MR: usize = 8;
/// 16-lane vectors of `C` per micro-tile row.
const NV: usize = 3;
/// Columns of `B` per micro-tile.
const NR: usize = 16 * NV;
/// Pairs of k per cache block: a packed `B` panel block is `KC·NR·4` bytes (48 KiB).
const KC: usize = 256;
/// Rows of `A` per cache block (`MC·KC·4` bytes = 192 KiB, kept in L2).
const MC: usize = 192;

/// Whether this CPU runs [`gemm_bf16`] (AVX-512 with BF16).
pub fn bf16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
            && std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Two f32 rounded to bfloat16 (to nearest, ties to even) in one 32-bit lane, `lo`
/// in the low half as `vdpbf16ps` pairs them. Branch-free so packing loops
/// vectorise; a NaN may round to an infinity, which keeps a diverged run visible.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    let round = |b: u32| b.wrapping_add(0x7fff + ((b >> 16) & 1));
    (round(lo.to_bits()) >> 16) | (round(hi.to_bits()) & 0xffff_0000)
}

/// A right operand `B [k, n]` rounded to bfloat16 and packed once, for products
/// that reuse it (a recurrent weight matrix over every timestep).
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    /// Panels of `NR` columns, `[k/2][NR]` pairs each (zero-padded).
    data: Vec<u32>,
    k: usize,
    n: usize,
}

impl PackedB {
    /// Packs `b`, reusing this buffer.
    pub fn pack(&mut self, b: MatRef<'_, f32>) {
        let (k, n) = (b.rows, b.cols);
        let (kp, panels) = (k.div_ceil(2), n.div_ceil(NR));
        self.k = k;
        self.n = n;
        self.data.clear();
        self.data.resize(panels * kp * NR, 0);
        // SAFETY (both arms): AVX-512F is part of what gemm_bf16 needs; the loops
        // stay within the operand (MatRef checked its extent) and the buffer.
        if b.cs == 1 && bf16_supported() {
            unsafe { pack_rows(&mut self.data, b, kp) }
        } else {
            pack_any(&mut self.data, b, kp)
        }
    }

    /// Rows k of the packed matrix.
    pub fn rows(&self) -> usize {
        self.k
    }

    /// Columns n of the packed matrix.
    pub fn cols(&self) -> usize {
        self.n
    }
}

/// `B` with unit column stride: pairs of rows, a panel's width at a time.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_rows(out: &mut [u32], b: MatRef<'_, f32>, kp: usize) {
    let (k, n) = (b.rows, b.cols);
    let zeros = [0.0f32; NR];
    for (q, panel) in out.chunks_exact_mut(kp * NR).enumerate() {
        let (j0, w) = (q * NR, NR.min(n - q * NR));
        for (pp, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let row = |p: usize| {
                if p < k {
                    &b.data[p * b.rs + j0..][..w]
                } else {
                    &zeros[..w]
                }
            };
            let (lo, hi) = (row(2 * pp), row(2 * pp + 1));
            for ((d, &l), &h) in dst[..w].iter_mut().zip(lo).zip(hi) {
                *d = pair(l, h);
            }
        }
    }
}

/// `B` with any strides (a transposed view: pairs lie next to each other).
fn pack_any(out: &mut [u32], b: MatRef<'_, f32>, kp: usize) {
    let (k, n) = (b.rows, b.cols);
    for (q, panel) in out.chunks_exact_mut(kp * NR).enumerate() {
        for jj in 0..NR.min(n - q * NR) {
            let col = (q * NR + jj) * b.cs;
            for pp in 0..kp {
                let (p0, p1) = (2 * pp, 2 * pp + 1);
                let lo = b.data[col + p0 * b.rs];
                let hi = if p1 < k { b.data[col + p1 * b.rs] } else { 0.0 };
                panel[pp * NR + jj] = pair(lo, hi);
            }
        }
    }
}

thread_local! {
    /// Packing buffers reused between calls on one thread: `A` panels, and `B`
    /// for products that pack it on the fly.
    static SCRATCH: RefCell<(Vec<u32>, PackedB)> = RefCell::default();
}

/// Packs rows `rows` of `a [m, k]` into panels of `MR` rows, `[k/2][MR]` pairs each.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_a(a: MatRef<'_, f32>, rows: std::ops::Range<usize>, out: &mut Vec<u32>) {
    let k = a.cols;
    let kp = k.div_ceil(2);
    let panels = rows.len().div_ceil(MR);
    out.clear();
    out.resize(panels * kp * MR, 0);
    for (r, panel) in out.chunks_exact_mut(kp * MR).enumerate() {
        let i0 = rows.start + r * MR;
        let mi = MR.min(rows.end - i0);
        if a.cs == 1 {
            // Row-major: each row's pairs are adjacent floats.
            for ii in 0..mi {
                let row = &a.data[(i0 + ii) * a.rs..][..k];
                let mut pairs = row.chunks_exact(2);
                for (pp, two) in pairs.by_ref().enumerate() {
                    panel[pp * MR + ii] = pair(two[0], two[1]);
                }
                if let [last] = pairs.remainder() {
                    panel[(kp - 1) * MR + ii] = pair(*last, 0.0);
                }
            }
        } else {
            // Transposed: the rows of one k lie next to each other.
            for (pp, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let col = |p: usize| (p < k).then(|| &a.data[p * a.cs + i0 * a.rs..]);
                match (col(2 * pp), col(2 * pp + 1)) {
                    (Some(lo), Some(hi)) if a.rs == 1 => {
                        for ((d, &l), &h) in dst[..mi].iter_mut().zip(lo).zip(hi) {
                            *d = pair(l, h);
                        }
                    }
                    (lo, hi) => {
                        for (ii, d) in dst[..mi].iter_mut().enumerate() {
                            let at = |c: Option<&[f32]>| c.map_or(0.0, |c| c[ii * a.rs]);
                            *d = pair(at(lo), at(hi));
                        }
                    }
                }
            }
        }
    }
}

/// `C = A·B` (or `C += A·B`) with `B` packed; `A` is packed here. Both operands
/// are rounded to bfloat16, the sums are f32. Large products split their rows
/// between the cores unless the caller is already one task per core.
///
/// # Panics
/// If the shapes disagree or the CPU lacks AVX-512 BF16 (see [`bf16_supported`]).
pub fn gemm_bf16(c: MatMut<'_, f32>, a: MatRef<'_, f32>, b: &PackedB, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(a.rows == m && b.k == k && b.n == n, "gemm_bf16 shapes");
    assert!(bf16_supported(), "gemm_bf16 needs AVX-512 BF16");
    if m == 0 || n == 0 {
        return;
    }
    let ld = c.ld;
    let threads = rayon::current_num_threads();
    if threads > 1 && !SERIAL.get() && m >= 2 * MR && m * n * k >= 1 << 20 {
        // Row blocks in whole micro-tiles; each thread writes only its own rows.
        let share = m.div_ceil(threads).div_ceil(MR) * MR;
        c.data
            .par_chunks_mut(share * ld)
            .enumerate()
            .for_each(|(t, cd)| {
                let rows = t * share..((t + 1) * share).min(m);
                run_rows(cd, ld, a, rows, b, accumulate);
            });
    } else {
        run_rows(c.data, ld, a, 0..m, b, accumulate);
    }
}

/// `C = A·B` (or `+=`), packing both operands on the fly (for products whose
/// operands change every call).
pub fn matmul_bf16(c: MatMut<'_, f32>, a: MatRef<'_, f32>, b: MatRef<'_, f32>, accumulate: bool) {
    let mut packed = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().1));
    packed.pack(b);
    gemm_bf16(c, a, &packed, accumulate);
    SCRATCH.with(|s| s.borrow_mut().1 = packed);
}

/// Rows `rows` of the product into `cd`, whose row 0 is C's row `rows.start`.
fn run_rows(
    cd: &mut [f32],
    ld: usize,
    a: MatRef<'_, f32>,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    accumulate: bool,
) {
    let (n, k) = (b.n, b.k);
    let kp = k.div_ceil(2);
    let mut apack = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().0));
    for r0 in (rows.start..rows.end).step_by(MC) {
        let r1 = (r0 + MC).min(rows.end);
        // SAFETY: AVX-512F is present (the caller asserted BF16 support).
        unsafe { pack_a(a, r0..r1, &mut apack) };
        let a_panels = (r1 - r0).div_ceil(MR);
        for p0 in (0..kp).step_by(KC) {
            let p1 = (p0 + KC).min(kp);
            let acc = accumulate || p0 > 0;
            for q in 0..n.div_ceil(NR) {
                let bp = &b.data[(q * kp + p0) * NR..(q * kp + p1) * NR];
                for ra in 0..a_panels {
                    let ap = &apack[(ra * kp + p0) * MR..(ra * kp + p1) * MR];
                    let mut tile = [[0.0f32; NR]; MR];
                    // SAFETY: bf16_supported() was asserted by the caller; both
                    // panels hold (p1 − p0) pairs (sliced above).
                    unsafe { avx512::tile(ap, bp, &mut tile) };
                    let (i0, j0) = (r0 - rows.start + ra * MR, q * NR);
                    let (mi, nj) = (MR.min(r1 - r0 - ra * MR), NR.min(n - j0));
                    for (i, t) in tile.iter().enumerate().take(mi) {
                        let dst = &mut cd[(i0 + i) * ld + j0..][..nj];
                        if acc {
                            dst.iter_mut().zip(t).for_each(|(d, &v)| *d += v);
                        } else {
                            dst.copy_from_slice(&t[..nj]);
                        }
                    }
                }
            }
        }
    }
    SCRATCH.with(|s| s.borrow_mut().0 = apack);
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, NV};
    use std::arch::x86_64::*;

    /// 16 lanes of 32 bits seen as 32 bfloat16.
    #[inline(always)]
    fn bh(v: __m512) -> __m512bh {
        // SAFETY: both are 64-byte plain vectors; every bit pattern is valid in both.
        unsafe { std::mem::transmute::<__m512, __m512bh>(v) }
    }

    /// `tile = Σ_p A[p]·B[p]` over the pairs of one block: `a` is `[pairs][MR]`,
    /// `b` is `[pairs][NR]`.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile(a: &[u32], b: &[u32], tile: &mut [[f32; NR]; MR]) {
        let pairs = a.len() / MR;
        debug_assert!(b.len() == pairs * NR);
        let mut acc = [[_mm512_setzero_ps(); NV]; MR];
        for p in 0..pairs {
            let bp = unsafe { b.as_ptr().add(p * NR) };
            let mut bv = [bh(_mm512_setzero_ps()); NV];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = bh(unsafe { _mm512_loadu_ps(bp.add(16 * v).cast()) });
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                let av = bh(_mm512_castsi512_ps(_mm512_set1_epi32(a[p * MR + i] as i32)));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
        }
        for (i, acc) in acc.iter().enumerate() {
            for (v, acc) in acc.iter().enumerate() {
                unsafe { _mm512_storeu_ps(tile[i].as_mut_ptr().add(16 * v), *acc) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    #[test]
    fn bf16_products_agree_with_f64_within_bf16_rounding() {
        if !bf16_supported() {
            return;
        }
        let mut rng = Rng::new(4);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 48, 512),
            (33, 100, 515),
            (200, 49, 3),
        ] {
            for (ta, tb) in [(false, false), (true, true)] {
                let a: Vec<f32> = (0..m * k)
                    .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                    .collect();
                let am = if ta {
                    MatRef::dense(&a, k, m).t()
                } else {
                    MatRef::dense(&a, m, k)
                };
                let bm = if tb {
                    MatRef::dense(&b, n, k).t()
                } else {
                    MatRef::dense(&b, k, n)
                };
                for accumulate in [false, true] {
                    let mut c = vec![1.0f32; m * n];
                    matmul_bf16(MatMut::dense(&mut c, m, n), am, bm, accumulate);
                    for i in 0..m {
                        for j in 0..n {
                            let (mut want, mut scale) = (0.0f64, 0.0f64);
                            for p in 0..k {
                                let v = am.data[i * am.rs + p * am.cs] as f64
                                    * bm.data[p * bm.rs + j * bm.cs] as f64;
                                want += v;
                                scale += v.abs();
                            }
                            if accumulate {
                                want += 1.0;
                            }
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 + scale / 128.0,
                                "m{m} n{n} k{k} ta{ta} [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }
}
