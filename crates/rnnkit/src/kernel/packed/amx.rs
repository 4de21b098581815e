//! bf16 products on Intel AMX tiles: `tdpbf16ps` multiplies a 16 × 32 tile of
//! bfloat16 `A` by a 32 × 16 tile of `B` (its pairs of depth interleaved, as a
//! packed `B` panel already holds them) into a 16 × 16 tile of f32 sums: 8,192
//! multiply-adds per instruction (on a Sapphire Rapids-class Xeon, 3.0 TFLOP/s per
//! core on tiles in registers, against about 0.1 for `vdpbf16ps`, which there runs
//! at half the f32 FMA rate). Used for every bf16 product where the CPU and the OS
//! allow.

use super::{pair, MatRef};
use crate::kernel::lanes::{first_lanes, Lanes};
use std::arch::asm;
use std::arch::x86_64::*;
use std::sync::OnceLock;

/// Rows of a tile, and pairs of depth per tile row (64 bytes).
const TILE: usize = 16;
/// Columns of a `B` panel packed for the tiles: two tiles wide, so that C's 2 × 2
/// tiles take the other four (tile loads, not products, set the pace: a 1 × 3
/// block over panels of 48 loaded 4 tiles per 3 products and ran at 0.7 of it).
pub(super) const PANEL: usize = 2 * TILE;
/// Rows of `A` per cache block.
const MC: usize = 128;
/// Pairs of depth per cache block: `A`'s block is `MC·KC·4` bytes (256 KiB) and a
/// `B` panel's `KC·PANEL·4` (64 KiB), both in L2; deeper blocks add to C fewer times.
const KC: usize = 512;

/// Whether this CPU has AMX BF16 tiles, the OS lets this process use them, and
/// `RNNKIT_AMX` is not `0` (which keeps the AVX-512 tiles, for comparisons).
pub(super) fn supported() -> bool {
    static SUPPORTED: OnceLock<bool> = OnceLock::new();
    #[cfg(test)]
    if OFF.get() {
        return false;
    }
    *SUPPORTED.get_or_init(|| {
        // CPUID leaf 7: EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
        let tiles = super::bf16_supported() && {
            let leaf = __cpuid_count(7, 0);
            leaf.edx >> 22 & 1 == 1 && leaf.edx >> 24 & 1 == 1
        };
        tiles && std::env::var("RNNKIT_AMX").map_or(true, |v| v != "0") && permitted()
    })
}

#[cfg(test)]
thread_local! {
    /// Set by [`without`]: this thread's products keep the AVX-512 tiles.
    static OFF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Runs `f` with this thread's products on the AVX-512 tiles (tests compare both).
#[cfg(test)]
pub(super) fn without<R>(f: impl FnOnce() -> R) -> R {
    let before = OFF.replace(true);
    let r = f();
    OFF.set(before);
    r
}

/// Asks Linux for the tile data state (`arch_prctl(ARCH_REQ_XCOMP_PERM,
/// XFEATURE_XTILEDATA)`): without it the first tile instruction faults.
#[cfg(target_os = "linux")]
fn permitted() -> bool {
    const SYS_ARCH_PRCTL: i64 = 158;
    const ARCH_REQ_XCOMP_PERM: i64 = 0x1023;
    const XFEATURE_XTILEDATA: i64 = 18;
    let status: i64;
    // SAFETY: a system call that only changes this process's permissions; the
    // kernel clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") SYS_ARCH_PRCTL => status,
            in("rdi") ARCH_REQ_XCOMP_PERM,
            in("rsi") XFEATURE_XTILEDATA,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
    }
    status == 0
}

/// Other systems: not asked (their tile support is not tested here).
#[cfg(not(target_os = "linux"))]
fn permitted() -> bool {
    false
}

/// The tile configuration (palette 1): tiles 0–3 are C's 2 × 2 tiles (rows
/// by columns), 4–5 `A`'s two and 6–7 `B`'s two, each 16 rows of 64 bytes.
#[repr(C, align(64))]
struct Config {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

const CONFIG: Config = {
    let mut config = Config {
        palette: 1,
        start_row: 0,
        reserved: [0; 14],
        colsb: [0; 16],
        rows: [0; 16],
    };
    let mut t = 0;
    while t < 8 {
        config.colsb[t] = 64;
        config.rows[t] = TILE as u8;
        t += 1;
    }
    config
};

/// Rows `rows` of `C (+)= A·B` into `cd` (whose row 0 is C's row `rows.start`),
/// `B` a bf16 [`super::PackedB`] of [`PANEL`]-wide panels (`[pairs][PANEL]` lanes).
pub(super) fn run_rows(
    cd: &mut [f32],
    ld: usize,
    a: MatRef<'_, f32>,
    rows: std::ops::Range<usize>,
    (b, n): (&[u32], usize),
    accumulate: bool,
) {
    let k = a.cols;
    let kp = k.div_ceil(2);
    let mut apack = SCRATCH.with(|s| std::mem::take(&mut *s.borrow_mut()));
    // SAFETY (the tile instructions below): `supported()` held when `B` was packed;
    // the configuration is this thread's and released before returning.
    unsafe { asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly)) };
    let mut out = [0.0f32; 2 * TILE * PANEL];
    let mut tail = [0u32; TILE * PANEL];
    for r0 in (rows.start..rows.end).step_by(MC) {
        let r1 = (r0 + MC).min(rows.end);
        for p0 in (0..kp).step_by(KC) {
            let p1 = (p0 + KC).min(kp);
            let (depth, steps) = ((p1 - p0), (p1 - p0) / TILE);
            let stride = depth.next_multiple_of(TILE);
            pack_a(a, r0..r1, p0..p1, stride, &mut apack);
            for q in 0..n.div_ceil(PANEL) {
                let panel = &b[(q * kp + p0) * PANEL..(q * kp + p1) * PANEL];
                // The last depths short of a whole tile go through a copy padded
                // with zeros (past them lies the next panel, or nothing).
                let rest = &panel[steps * TILE * PANEL..];
                if !rest.is_empty() {
                    tail[..rest.len()].copy_from_slice(rest);
                    tail[rest.len()..].fill(0);
                }
                let (j0, nj) = (q * PANEL, PANEL.min(n - q * PANEL));
                let tiles = nj.div_ceil(TILE);
                for i0 in (r0..r1).step_by(2 * TILE) {
                    let ap = &apack[(i0 - r0) * stride..][..2 * TILE * stride];
                    let mi = (2 * TILE).min(r1 - i0);
                    let first = (i0 - rows.start) * ld + j0;
                    assert!((mi - 1) * ld + nj <= cd.len() - first, "AMX tile outside C");
                    let acc = accumulate || p0 > 0;
                    // Whole tiles of C are loaded and stored in place; those at its
                    // edges go through `out`.
                    let whole = mi == 2 * TILE && nj == tiles * TILE;
                    let c = match whole {
                        true => (cd[first..].as_mut_ptr(), ld, acc),
                        false => (out.as_mut_ptr(), PANEL, false),
                    };
                    // SAFETY: `ap` holds 32 rows of `stride` lanes, `panel` `steps`
                    // whole tiles of depth and `tail` one; `c` holds 32 rows of the
                    // tiles' columns (asserted, or `out`).
                    unsafe {
                        match tiles {
                            1 => product::<1>(ap, stride, panel, steps, &tail, c),
                            _ => product::<2>(ap, stride, panel, steps, &tail, c),
                        }
                    }
                    if !whole {
                        // SAFETY: AVX-512F is present; the rows and columns lie in C
                        // (asserted).
                        unsafe { add_out(&out, &mut cd[first..], ld, (mi, nj), acc) };
                    }
                }
            }
        }
    }
    // SAFETY: as above.
    unsafe { asm!("tilerelease", options(nostack, nomem)) };
    SCRATCH.with(|s| *s.borrow_mut() = apack);
}

thread_local! {
    /// `A`'s packed block, reused between calls on one thread.
    static SCRATCH: std::cell::RefCell<Lanes> = std::cell::RefCell::default();
}

/// `C (+)=` 32 rows of `A` (`ap`, lanes `[row][stride]`) times `T` column tiles
/// of the panel: `steps` whole tiles of depth, then `tail` where `ap` holds more
/// than `steps` of them. `c` is `(first element, row length, add to what it
/// holds)`.
#[inline(always)]
unsafe fn product<const T: usize>(
    ap: &[u32],
    stride: usize,
    panel: &[u32],
    steps: usize,
    tail: &[u32; TILE * PANEL],
    (c, ldc, accumulate): (*mut f32, usize, bool),
) {
    let (lda, ldb) = (stride * 4, PANEL * 4);
    // C's tile (row r, column t) starts here.
    let at = |r: usize, t: usize| c.wrapping_add(r * TILE * ldc + t * TILE);
    let ldc = ldc * 4;
    // SAFETY (every tile instruction): the caller configured the tiles; each load
    // reads 16 rows of 64 bytes at the given stride inside `ap`, `panel`, `tail`
    // or C's 32 rows of the T tiles' columns, and the stores write there.
    unsafe {
        if accumulate {
            asm!(
                "tileloadd tmm0, [{c0} + {ldc}*1]",
                "tileloadd tmm2, [{c2} + {ldc}*1]",
                c0 = in(reg) at(0, 0), c2 = in(reg) at(1, 0), ldc = in(reg) ldc,
                options(nostack, readonly),
            );
            if T > 1 {
                asm!(
                    "tileloadd tmm1, [{c1} + {ldc}*1]",
                    "tileloadd tmm3, [{c3} + {ldc}*1]",
                    c1 = in(reg) at(0, 1), c3 = in(reg) at(1, 1), ldc = in(reg) ldc,
                    options(nostack, readonly),
                );
            }
        } else {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                options(nostack, nomem)
            );
        }
        let step = |a: *const u32, b: *const u32| {
            if T > 1 {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm7, [{b1} + {ldb}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a, a1 = in(reg) a.add(TILE * stride), lda = in(reg) lda,
                    b0 = in(reg) b, b1 = in(reg) b.add(TILE), ldb = in(reg) ldb,
                    options(nostack, readonly),
                );
            } else {
                asm!(
                    "tileloadd tmm4, [{a0} + {lda}*1]",
                    "tileloadd tmm6, [{b0} + {ldb}*1]",
                    "tileloadd tmm5, [{a1} + {lda}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    a0 = in(reg) a, a1 = in(reg) a.add(TILE * stride), lda = in(reg) lda,
                    b0 = in(reg) b, ldb = in(reg) ldb,
                    options(nostack, readonly),
                );
            }
        };
        for s in 0..steps {
            step(
                ap.as_ptr().add(s * TILE),
                panel.as_ptr().add(s * TILE * PANEL),
            );
        }
        if stride > steps * TILE {
            step(ap.as_ptr().add(steps * TILE), tail.as_ptr());
        }
        asm!(
            "tilestored [{c0} + {ldc}*1], tmm0",
            "tilestored [{c2} + {ldc}*1], tmm2",
            c0 = in(reg) at(0, 0), c2 = in(reg) at(1, 0), ldc = in(reg) ldc,
            options(nostack),
        );
        if T > 1 {
            asm!(
                "tilestored [{c1} + {ldc}*1], tmm1",
                "tilestored [{c3} + {ldc}*1], tmm3",
                c1 = in(reg) at(0, 1), c3 = in(reg) at(1, 1), ldc = in(reg) ldc,
                options(nostack),
            );
        }
    }
}

/// Adds (or writes) the first `mi` rows and `nj` columns of `out` to `c`.
#[target_feature(enable = "avx512f")]
unsafe fn add_out(
    out: &[f32; 2 * TILE * PANEL],
    c: &mut [f32],
    ld: usize,
    (mi, nj): (usize, usize),
    accumulate: bool,
) {
    for i in 0..mi {
        for j in (0..nj).step_by(16) {
            let mask = first_lanes(nj - j);
            // SAFETY: row i, columns j.. under the mask, lie in `c` (the caller's
            // assertion) and in `out`.
            unsafe {
                let p = c.as_mut_ptr().add(i * ld + j);
                let v = _mm512_loadu_ps(out.as_ptr().add(i * PANEL + j));
                let v = match accumulate {
                    true => _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), v),
                    false => v,
                };
                _mm512_mask_storeu_ps(p, mask, v);
            }
        }
    }
}

/// Packs rows `rows` of `a`, pairs of depth `pairs`, as bf16 lanes `[row][stride]`
/// (each row's pairs in order, zeros past the depth and in the rows that fill the
/// last tile).
fn pack_a(
    a: MatRef<'_, f32>,
    rows: std::ops::Range<usize>,
    pairs: std::ops::Range<usize>,
    stride: usize,
    out: &mut Lanes,
) {
    let padded = rows.len().next_multiple_of(2 * TILE);
    if out.len() < padded * stride {
        out.resize(padded * stride, 0);
    }
    let out = &mut out[..padded * stride];
    let ks = 2 * pairs.start..(2 * pairs.end).min(a.cols);
    let depth = pairs.len();
    if a.cs == 1 {
        for (i, dst) in rows.clone().zip(out.chunks_exact_mut(stride)) {
            // The next row's run is requested first: each run is a page or two
            // apart from the last, where the hardware's prefetch stops.
            if i + 1 < rows.end {
                let next = &a.data[(i + 1) * a.rs + ks.start..][..ks.len()];
                for line in next.chunks(16) {
                    // SAFETY: a hint about an address inside `a`.
                    unsafe { _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast()) };
                }
            }
            let row = &a.data[i * a.rs + ks.start..][..ks.len()];
            // SAFETY: AVX-512 BF16 is present (`supported`); `dst` holds a lane per pair.
            unsafe { super::avx512::bf16_pairs_of_row(row, dst, 1) };
            dst[depth..].fill(0);
        }
    } else if a.rs == 1 {
        // Column-major (`dgᵀ` of a weight gradient): 16 rows are two runs at each
        // pair of depths, paired lane by lane, and 16 pairs of them are transposed
        // into the rows at once.
        // SAFETY: AVX-512 BF16 is present (`supported`); `out` holds the block.
        unsafe { pairs_of_columns(a.data, a.cs, rows.clone(), ks, stride, out) };
    } else {
        for (i, dst) in rows.clone().zip(out.chunks_exact_mut(stride)) {
            let at = |p: usize| match p < ks.end {
                true => a.data[i * a.rs + p * a.cs],
                false => 0.0,
            };
            for (d, dst) in dst[..depth].iter_mut().enumerate() {
                let p = ks.start + 2 * d;
                *dst = pair(at(p), at(p + 1));
            }
            dst[depth..].fill(0);
        }
    }
    out[rows.len() * stride..].fill(0);
}

/// `iters` rounds of four independent `tdpbf16ps` (16 × 16 × 32 multiply-adds
/// each, on tiles of zeros) on this thread; returns the FLOPs done. Four
/// accumulator tiles cover the instruction's latency.
pub(super) fn dot_chains(iters: u64) -> f64 {
    // SAFETY: `supported()` held for the caller; the configuration is this
    // thread's and released before returning; no tile touches memory.
    unsafe {
        asm!("ldtilecfg [{0}]", in(reg) &CONFIG, options(nostack, readonly));
        asm!("tilezero tmm4", "tilezero tmm5", options(nostack, nomem));
        for _ in 0..iters {
            asm!(
                "tdpbf16ps tmm0, tmm4, tmm5",
                "tdpbf16ps tmm1, tmm4, tmm5",
                "tdpbf16ps tmm2, tmm4, tmm5",
                "tdpbf16ps tmm6, tmm4, tmm5",
                options(nostack, nomem),
            );
        }
        asm!("tilerelease", options(nostack, nomem));
    }
    (iters * 4 * (TILE * TILE * 32 * 2) as u64) as f64
}

/// `out[i·stride + d]` = the bf16 pair (`a[i + k·cs]`, `a[i + (k + 1)·cs]`) for
/// `k = ks.start + 2d` (zero past `ks.end`) and row `i` of `rows` (counted from
/// `rows.start`), every pair up to `stride` (zeros past the depth).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pairs_of_columns(
    a: &[f32],
    cs: usize,
    rows: std::ops::Range<usize>,
    ks: std::ops::Range<usize>,
    stride: usize,
    out: &mut [u32],
) {
    let depth = ks.len().div_ceil(2);
    for d0 in (0..depth).step_by(TILE) {
        // The next 16 pairs' runs are requested while these are read: they lie a
        // row of `dg` apart, which the hardware does not prefetch.
        for k in ks.start + 2 * (d0 + TILE)..(ks.start + 2 * (d0 + 2 * TILE)).min(ks.end) {
            for line in a[k * cs + rows.start..][..rows.len()].chunks(16) {
                _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
            }
        }
        for g in (0..rows.len()).step_by(TILE) {
            let (i0, mi) = (rows.start + g, TILE.min(rows.len() - g));
            let mask = first_lanes(mi);
            let load = |k: usize| match k < ks.end {
                // SAFETY: the first mi values of the run, under the mask.
                true => unsafe { _mm512_maskz_loadu_ps(mask, a[k * cs + i0..][..mi].as_ptr()) },
                false => _mm512_setzero_ps(),
            };
            let mut v = [_mm512_setzero_si512(); TILE];
            for (dd, v) in v.iter_mut().enumerate().take(depth - d0) {
                let k = ks.start + 2 * (d0 + dd);
                *v = super::avx512::pairs(load(k), load(k + 1));
            }
            transpose(&mut v);
            for (ii, v) in v.iter().enumerate().take(mi) {
                let dst = &mut out[(g + ii) * stride + d0..][..TILE];
                // SAFETY: 16 lanes into as many of `dst`.
                unsafe { _mm512_storeu_si512(dst.as_mut_ptr().cast(), *v) };
            }
        }
    }
}

/// Transposes 16 vectors of 16 lanes: lane j of `v[i]` goes to lane i of `v[j]`.
#[inline(always)]
fn transpose(v: &mut [__m512i; TILE]) {
    // SAFETY (every intrinsic): inlined only into AVX-512F functions.
    unsafe {
        let mut t = [_mm512_setzero_si512(); TILE];
        for i in (0..TILE).step_by(2) {
            t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
            t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
        }
        for i in (0..TILE).step_by(4) {
            v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
            v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
            v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
            v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
        }
        for h in [0, 8] {
            for j in 0..4 {
                t[h + j] = _mm512_shuffle_i32x4::<0x88>(v[h + j], v[h + j + 4]);
                t[h + j + 4] = _mm512_shuffle_i32x4::<0xdd>(v[h + j], v[h + j + 4]);
            }
        }
        for j in 0..8 {
            v[j] = _mm512_shuffle_i32x4::<0x88>(t[j], t[j + 8]);
            v[j + 8] = _mm512_shuffle_i32x4::<0xdd>(t[j], t[j + 8]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::{matmul_packed, MatMut, Precision};
    use crate::rng::Rng;

    #[test]
    fn transpose_moves_lane_j_of_vector_i_to_lane_i_of_vector_j() {
        if !crate::kernel::packed_supported(Precision::F32) {
            return;
        }
        let mut v = [[0u32; TILE]; TILE];
        for (i, row) in v.iter_mut().enumerate() {
            for (j, x) in row.iter_mut().enumerate() {
                *x = (100 * i + j) as u32;
            }
        }
        // SAFETY: AVX-512F is present; both sides are 64-byte plain arrays.
        let t: [[u32; TILE]; TILE] = unsafe {
            let mut w: [__m512i; TILE] = std::mem::transmute(v);
            transpose(&mut w);
            std::mem::transmute(w)
        };
        for i in 0..TILE {
            for j in 0..TILE {
                assert_eq!(t[j][i], v[i][j], "[{i},{j}]");
            }
        }
    }

    /// The tiles give the AVX-512 kernels' sums (both in f32 over the same rounded
    /// operands, in another order) for every layout of `A`, edges of C, depths
    /// short of a tile and blocks of depth and rows.
    #[test]
    fn amx_products_agree_with_the_avx512_tiles() {
        if !supported() {
            return;
        }
        let mut rng = Rng::new(9);
        for &(m, n, k) in &[
            (1, 1, 1),
            (16, 48, 32),
            (17, 65, 33),
            (64, 2048, 512),
            (130, 100, 1100),
            (300, 48, 2050),
            (31, 16, 7),
        ] {
            for ta in [false, true] {
                let a: Vec<f32> = (0..m * k)
                    .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                    .collect();
                let b: Vec<f32> = (0..k * n)
                    .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                    .collect();
                let am = match ta {
                    true => MatRef::dense(&a, k, m).t(),
                    false => MatRef::dense(&a, m, k),
                };
                let bm = MatRef::dense(&b, k, n);
                for accumulate in [false, true] {
                    let product = || {
                        let mut c: Vec<f32> = (0..m * n).map(|i| (i % 7) as f32).collect();
                        let out = MatMut::dense(&mut c, m, n);
                        crate::kernel::serial(|| {
                            matmul_packed(out, am, bm, accumulate, Precision::Bf16)
                        });
                        c
                    };
                    let (tiles, avx) = (product(), without(product));
                    for (i, (x, y)) in tiles.iter().zip(&avx).enumerate() {
                        assert!(
                            (x - y).abs() <= 1e-5 * (k as f32).sqrt() * (1.0 + y.abs()),
                            "m{m} n{n} k{k} ta{ta} acc{accumulate} [{i}]: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}
