//! Matrix products whose right operand is packed once and reused: a recurrent
//! weight matrix over every timestep (the `gemm` crate packs it again on every
//! call, which halves its speed once `W_hh` outgrows the L2 cache), and the
//! products of the bf16 mode, where packing also rounds to bfloat16 and the
//! micro-kernel is `vdpbf16ps` (AVX-512 BF16: 32 multiply-adds per instruction,
//! twice an f32 FMA's; sums stay f32), or on CPUs with AMX the tiles of [`amx`].
//!
//! Layout: `B [k, n]` is packed into panels of [`NR`] columns, each `[depth][NR]`
//! 32-bit lanes, where a lane is one f32 (depth = k) or a pair of bfloat16 of
//! consecutive k (depth = k/2, as `vdpbf16ps` reads them); `A [m, k]` into panels
//! of [`MR`] rows, `[depth][MR]` lanes each. A micro-tile of `MR × NR` outputs lives
//! in 24 registers for a whole block of depth. For the AMX tiles `B`'s panels are
//! [`amx::PANEL`] columns wide and `A` is packed row by row.
//!
//! The kernels are x86-64's alone: elsewhere [`packed_supported`] is false, the
//! products go to the `gemm` crate, and this module's blocking and helpers go unused.
#![cfg_attr(
    not(target_arch = "x86_64"),
    allow(dead_code, unused_imports, unused_variables)
)]

use super::lanes::{Lanes, LINE_LANES};
use super::matmul::{MatMut, MatRef, Precision, SERIAL};
use super::{to_bf16, Sweep};
use rayon::prelude::*;
use std::cell::RefCell;
use std::ops::Range;

#[cfg(target_arch = "x86_64")]
mod amx;

/// Rows of `A` per micro-tile.
const MR: usize = 8;
/// 16-lane vectors of `C` per micro-tile row.
const NV: usize = 3;
/// Columns of `B` per micro-tile.
const NR: usize = 16 * NV;
/// Lanes of depth per cache block where `A` is packed: a packed `B` panel block is
/// `KC·NR·4` bytes (48 KiB).
const KC: usize = 256;
/// Lanes of depth per block where f32 `A` is read in place (nothing to keep in L2
/// but `B`'s panel, 768 KiB at most): a tile's sums go to C once per block, and
/// each block past the first read C back and wrote it again, a pass over C that
/// for an input projection (6400 × 2048, 52 MB) is a pass over memory. From
/// [`KC`] to this, paired runs on an Ice Lake Xeon: input projection and input
/// gradient of LSTM 2×512 +10 %, its per-step products +5 % (forward) and +8 %
/// (backward), LSTM 1×1024's backward per-step product +12 %.
const IN_PLACE_KC: usize = 4096;
/// Depth of `B` that [`matmul_packed`] packs and uses at a time (even: bf16 lanes
/// pair consecutive depths): 2 MiB of a 512-wide `B`, within the L3 cache.
const DEPTH_BLOCK: usize = 1024;
/// Rows of `A` per cache block (`MC·KC·4` bytes = 192 KiB, kept in L2).
const MC: usize = 192;

/// Whether this CPU runs the packed products in `precision` (AVX-512F, and BF16
/// for [`Precision::Bf16`]).
pub fn packed_supported(precision: Precision) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        crate::kernel::avx512_enabled()
            && (precision == Precision::F32
                || (has!("avx512bf16") && has!("avx512vl") && has!("avx512bw")))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = precision;
        false
    }
}

/// Whether this CPU runs bfloat16 products (AVX-512 BF16).
pub fn bf16_supported() -> bool {
    packed_supported(Precision::Bf16)
}

/// Whether bf16 products run on AMX tiles here (the CPU has AMX BF16, the OS
/// allows it, and `RNNKIT_AMX` is not `0`) rather than on `vdpbf16ps`.
pub fn amx_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        amx::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// One thread's `tdpbf16ps` throughput probe: `iters` rounds of independent tile
/// products; the FLOPs done (0 where [`amx_supported`] is false).
pub(crate) fn amx_dot_chains(iters: u64) -> f64 {
    #[cfg(target_arch = "x86_64")]
    if amx::supported() {
        return amx::dot_chains(iters);
    }
    let _ = iters;
    0.0
}

/// Two f32 rounded to bfloat16 in one 32-bit lane, `lo` in the low half as
/// `vdpbf16ps` pairs them.
#[inline(always)]
fn pair(lo: f32, hi: f32) -> u32 {
    to_bf16(lo) as u32 | (to_bf16(hi) as u32) << 16
}

/// The 32-bit lane of depth `d` from the values at k = `d` (f32) or k = 2d, 2d + 1 (bf16).
#[inline(always)]
fn lane(precision: Precision, lo: f32, hi: f32) -> u32 {
    match precision {
        Precision::F32 => lo.to_bits(),
        Precision::Bf16 => pair(lo, hi),
    }
}

/// Values of k per lane.
fn per_lane(precision: Precision) -> usize {
    match precision {
        Precision::F32 => 1,
        Precision::Bf16 => 2,
    }
}

/// A right operand `B [k, n]` packed once (and in bf16 rounded), for products
/// that reuse it.
#[derive(Clone, Debug, Default)]
pub struct PackedB {
    /// Panels of `width` columns, `[depth][width]` lanes each (zero-padded).
    data: Lanes,
    /// Columns per panel: [`NR`], or the AMX tiles' [`amx::PANEL`].
    width: usize,
    k: usize,
    n: usize,
    precision: Precision,
}

impl PackedB {
    /// Packs `b` for products in `precision`, reusing this buffer.
    pub fn pack(&mut self, b: MatRef<'_, f32>, precision: Precision) {
        let (k, n) = (b.rows, b.cols);
        let width = match precision {
            #[cfg(target_arch = "x86_64")]
            Precision::Bf16 if amx::supported() => amx::PANEL,
            _ => NR,
        };
        let (depth, panels) = (k.div_ceil(per_lane(precision)), n.div_ceil(width));
        self.k = k;
        self.n = n;
        self.precision = precision;
        self.width = width;
        // Not cleared: every lane of the real columns is written below, and whatever
        // the padding columns of the last panel hold only reaches outputs never stored.
        // Grown, never shrunk: the thread's buffer for operands packed on the fly
        // serves products of every size, and each regrowth zero-filled it (a weight
        // gradient's `B` is megabytes).
        let len = panels * depth * width;
        if self.data.len() < len {
            self.data.resize(len, 0);
        }
        let data = &mut self.data[..len];
        let avx512 = packed_supported(Precision::F32);
        let by_rows = b.cs == 1 && avx512;
        let by_columns = b.rs == 1 && b.cs != 1 && precision == Precision::F32 && avx512;
        let one = |(q, panel): (usize, &mut [u32])| {
            if by_rows {
                // SAFETY: AVX-512F is present; the loops stay within the operand
                // (MatRef checked its extent) and the panel.
                unsafe { pack_rows(panel, (q, width), b, precision) }
            } else if by_columns {
                // SAFETY: as above.
                unsafe { pack_columns(panel, q, b) }
            } else {
                pack_any(panel, (q, width), b, depth, precision)
            }
        };
        // Large operands packed on the fly are packed by every thread, a panel each.
        if rayon::current_num_threads() > 1 && !SERIAL.get() && k * n >= 1 << 18 {
            data.par_chunks_exact_mut(depth * width)
                .enumerate()
                .for_each(one);
        } else {
            data.chunks_exact_mut(depth * width)
                .enumerate()
                .for_each(one);
        }
    }

    /// The precision the operand was packed for.
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

/// Panel `q` (of `width` ≤ [`NR`] columns) of `B` with unit column stride: a
/// panel's width of one row (f32) or two (bf16) per lane row.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_rows(
    panel: &mut [u32],
    (q, width): (usize, usize),
    b: MatRef<'_, f32>,
    precision: Precision,
) {
    let (k, n, step) = (b.rows, b.cols, per_lane(precision));
    let zeros = [0.0f32; NR];
    let (j0, w) = (q * width, width.min(n - q * width));
    let bf16_vectors = precision == Precision::Bf16 && bf16_supported();
    for (d, dst) in panel.chunks_exact_mut(width).enumerate() {
        let row = |p: usize| {
            if p < k {
                &b.data[p * b.rs + j0..][..w]
            } else {
                &zeros[..w]
            }
        };
        let (lo, hi) = (row(step * d), row(step * d + 1));
        match precision {
            Precision::F32 => {
                for (dst, &l) in dst[..w].iter_mut().zip(lo) {
                    *dst = l.to_bits();
                }
            }
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512 BF16 is present (checked above).
            Precision::Bf16 if bf16_vectors => unsafe {
                avx512::bf16_pairs_of_two_rows(lo, hi, dst)
            },
            Precision::Bf16 => {
                for ((dst, &l), &h) in dst[..w].iter_mut().zip(lo).zip(hi) {
                    *dst = pair(l, h);
                }
            }
        }
    }
}

/// Panel `q` of an f32 `B` whose columns are contiguous (`Wᵀ` of a row-major
/// `W`): 8 columns at a time transposed 16 depths at once (element by element, a
/// hoisted input product of a few hundred rows spent a third of its time here).
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_columns(panel: &mut [u32], q: usize, b: MatRef<'_, f32>) {
    let (k, n) = (b.rows, b.cols);
    let whole = if cfg!(target_arch = "x86_64") {
        k / 16 * 16
    } else {
        0
    };
    for g in 0..NR / MR {
        let j0 = q * NR + g * MR;
        let cols: [&[f32]; MR] = std::array::from_fn(|i| match j0 + i < n {
            true => &b.data[(j0 + i) * b.cs..][..k],
            false => &[],
        });
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX-512F is present (the caller's feature); every column is `k`
        // long or empty, and the panel holds `k` depths of NR lanes from lane g·MR.
        unsafe {
            avx512::transpose_rows(&cols, whole, &mut panel[g * MR..], NR)
        };
        for (i, col) in cols.iter().enumerate() {
            for (d, &v) in (whole..).zip(col.get(whole..).unwrap_or(&[])) {
                panel[d * NR + g * MR + i] = v.to_bits();
            }
        }
    }
}

/// Panel `q` (of `width` columns) of `B` with any strides (a transposed view:
/// values of one column lie together).
fn pack_any(
    panel: &mut [u32],
    (q, width): (usize, usize),
    b: MatRef<'_, f32>,
    depth: usize,
    precision: Precision,
) {
    let (k, n, step) = (b.rows, b.cols, per_lane(precision));
    let at = |p: usize, col: usize| if p < k { b.data[col + p * b.rs] } else { 0.0 };
    for jj in 0..width.min(n - q * width) {
        let col = (q * width + jj) * b.cs;
        for d in 0..depth {
            panel[d * width + jj] = lane(precision, at(step * d, col), at(step * d + 1, col));
        }
    }
}

thread_local! {
    /// Packing buffers reused between calls on one thread: `A` panels, and `B`
    /// for products that pack it on the fly.
    static SCRATCH: RefCell<(Lanes, PackedB)> = RefCell::default();
    /// The direction of this thread's last sweep over `B`'s panels (see [`run_rows`]).
    static SWEEP: std::cell::Cell<Sweep> = const { std::cell::Cell::new(Sweep::Forward) };
}

/// Runs `f` on this thread's packing buffer for `A`, taken out of [`SCRATCH`] while
/// `f` runs (so that `f` may take the other) and put back after.
#[cfg(target_arch = "x86_64")]
fn with_scratch_a<R>(f: impl FnOnce(&mut Lanes) -> R) -> R {
    let mut buf = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().0));
    let r = f(&mut buf);
    SCRATCH.with(|s| s.borrow_mut().0 = buf);
    r
}

/// [`with_scratch_a`] for the buffer of `B` packed on the fly.
fn with_scratch_b<R>(f: impl FnOnce(&mut PackedB) -> R) -> R {
    let mut packed = SCRATCH.with(|s| std::mem::take(&mut s.borrow_mut().1));
    let r = f(&mut packed);
    SCRATCH.with(|s| s.borrow_mut().1 = packed);
    r
}

/// Packs rows `rows` of `a [m, k]` into panels of `MR` rows, `[depth][MR]` lanes each.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f"))]
unsafe fn pack_a(
    a: MatRef<'_, f32>,
    rows: std::ops::Range<usize>,
    precision: Precision,
    out: &mut Lanes,
) {
    let (k, step) = (a.cols, per_lane(precision));
    let depth = k.div_ceil(step);
    let panels = rows.len().div_ceil(MR);
    // Not cleared: every lane of the real rows is written below, and whatever the
    // padding rows of the last panel hold only reaches outputs never stored.
    out.resize(panels * depth * MR, 0);
    if a.rs == 1 && a.cs != 1 && precision == Precision::Bf16 && cfg!(target_arch = "x86_64") {
        // Column-major bf16: the rows of k = 2d and 2d + 1 are two runs, paired lane by
        // lane.
        // SAFETY: bf16 products run only where AVX-512 BF16 is present (asserted by
        // the caller); `out` holds the block's panels.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::bf16_panels_of_columns(a.data, a.cs, rows, k, out)
        };
        return;
    }
    if a.rs == 1 && a.cs != 1 && precision == Precision::F32 && cfg!(target_arch = "x86_64") {
        // Column-major f32 (a transposed row-major operand, as `dgᵀ` in a weight
        // gradient): at each depth the block's rows are one run, dealt out to the
        // panels in order (panel by panel, every depth was a new page).
        // SAFETY: AVX-512F is present (this function's feature).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            avx512::deal_runs::<MR>(k, |p| &a.data[p * a.cs + rows.start..][..rows.len()], out)
        };
        return;
    }
    for (r, panel) in out.chunks_exact_mut(depth * MR).enumerate() {
        let i0 = rows.start + r * MR;
        let mi = MR.min(rows.end - i0);
        if a.cs == 1 && precision == Precision::F32 {
            // Row-major f32: each value is a lane; 16 values of 8 rows transposed at once.
            let rows: [&[f32]; MR] = std::array::from_fn(|ii| {
                if ii < mi {
                    &a.data[(i0 + ii) * a.rs..][..k]
                } else {
                    &[]
                }
            });
            // Whole runs of 16 go to the vector transpose (x86-64 only: elsewhere the
            // packed products never run, but the loop below would still be right).
            let whole = if cfg!(target_arch = "x86_64") {
                k / 16 * 16
            } else {
                0
            };
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX-512F is present (the caller's feature); every row is `k` long
            // or empty, and the panel holds `k` lanes of MR.
            unsafe {
                avx512::transpose_rows(&rows, whole, panel, MR)
            };
            for (ii, row) in rows.iter().enumerate() {
                let tail = row.get(whole..).unwrap_or(&[]);
                for (d, &v) in (whole..).zip(tail) {
                    panel[d * MR + ii] = v.to_bits();
                }
            }
        } else if a.cs == 1 && cfg!(target_arch = "x86_64") {
            // Row-major bf16: a row's values pair up in order; 8 rows of 32 values
            // converted and transposed at once.
            let rows: [&[f32]; MR] = std::array::from_fn(|ii| {
                if ii < mi {
                    &a.data[(i0 + ii) * a.rs..][..k]
                } else {
                    &[]
                }
            });
            // SAFETY: bf16 products run only where AVX-512 BF16 is present (asserted
            // by the caller); the panel holds `depth` lanes of MR.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                avx512::bf16_pairs_of_rows(&rows, k, panel)
            };
        } else {
            // Any other strides.
            for (d, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let col = |p: usize| (p < k).then(|| &a.data[p * a.cs + i0 * a.rs..]);
                let (lo, hi) = (col(step * d), col(step * d + 1));
                for (ii, dst) in dst[..mi].iter_mut().enumerate() {
                    let at = |c: Option<&[f32]>| c.map_or(0.0, |c| c[ii * a.rs]);
                    *dst = lane(precision, at(lo), at(hi));
                }
            }
        }
    }
}

/// `C = A·B` (or `C += A·B`) with `B` packed; `A` is packed here, in `B`'s
/// precision (bf16: both operands rounded, the sums f32). Large products split
/// their rows between the cores unless the caller is already one task per core.
///
/// # Panics
/// If the shapes disagree or the CPU cannot (see [`packed_supported`]).
pub fn gemm_packed(c: MatMut<'_, f32>, a: MatRef<'_, f32>, b: &PackedB, accumulate: bool) {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(a.rows == m && b.k == k && b.n == n, "gemm_packed shapes");
    assert!(
        packed_supported(b.precision),
        "gemm_packed needs AVX-512 (and BF16 for bf16)"
    );
    // Only x86-64 gets here (`packed_supported`): the kernels are its own.
    #[cfg(target_arch = "x86_64")]
    {
        if m == 0 || n == 0 {
            return;
        }
        split_rows(c, a, b, None, accumulate);
    }
}

/// Runs [`run_rows`] over C's rows: large products split their rows between the
/// cores, in whole micro-tiles, each thread writing only its own rows.
#[cfg(target_arch = "x86_64")]
fn split_rows(
    c: MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: &PackedB,
    ready: Option<&[u32]>,
    accumulate: bool,
) {
    let (m, n, k, ld) = (c.rows, c.cols, b.k, c.ld);
    let threads = rayon::current_num_threads();
    if threads > 1 && !SERIAL.get() && m >= 2 * MR && m * n * k >= 1 << 20 {
        let share = m.div_ceil(threads).div_ceil(MR) * MR;
        c.data
            .par_chunks_mut(share * ld)
            .enumerate()
            .for_each(|(t, cd)| {
                let rows = t * share..((t + 1) * share).min(m);
                run_rows(cd, ld, a, rows, b, ready, accumulate);
            });
    } else {
        run_rows(c.data, ld, a, 0..m, b, ready, accumulate);
    }
}

/// Whether bf16 weight gradients can take `dgᵀ` as [`DgPanels`]: the AVX-512 BF16
/// tiles (the AMX tiles read `A` row by row instead).
pub(crate) fn dg_panels_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        packed_supported(Precision::Bf16) && !amx::supported()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The left operand `dgᵀ` of a bf16 weight gradient `dgᵀ·x`, packed as the tiles'
/// `A` panels over its whole depth (bf16 pairs of consecutive rows of `dg`) while
/// `dg` is computed, a few rows at a time and still in cache. Packed by the product
/// instead, `dgᵀ` is read back from memory a short run of each row at every depth,
/// which the hardware does not prefetch: a seventh of the product's time.
#[derive(Clone, Debug, Default)]
pub(crate) struct DgPanels {
    data: Lanes,
    /// Columns of `dg` (rows of `dgᵀ`), and its rows (the depth).
    m: usize,
    k: usize,
}

impl DgPanels {
    /// Makes room for a `dg` of `k` rows × `m` columns (`k` even); the lanes are
    /// written by [`DgWriter::write`].
    pub(crate) fn prepare(&mut self, k: usize, m: usize) -> DgWriter<'_> {
        assert!(k.is_multiple_of(2), "dg panels pair rows");
        let kp = k / 2;
        let len = m.div_ceil(MR) * kp * MR;
        if self.data.len() < len {
            self.data.resize(len, 0);
        }
        (self.m, self.k) = (m, k);
        DgWriter {
            ptr: self.data.as_mut_ptr(),
            len,
            m,
            kp,
            _borrow: std::marker::PhantomData,
        }
    }
}

/// Writes rows of `dg` into [`DgPanels`], from every thread at once (each its own rows).
pub(crate) struct DgWriter<'a> {
    ptr: *mut u32,
    len: usize,
    m: usize,
    kp: usize,
    _borrow: std::marker::PhantomData<&'a mut [u32]>,
}

// SAFETY: writes go through `write`, whose contract keeps threads on disjoint lanes.
unsafe impl Send for DgWriter<'_> {}
unsafe impl Sync for DgWriter<'_> {}

impl DgWriter<'_> {
    /// Rows `first..` of `dg` (`rows`, row-major, an even number of `m`-wide rows;
    /// `first` even): their pairs become depths `first / 2..` of every panel.
    ///
    /// # Safety
    /// No two threads may write the same rows at once.
    pub(crate) unsafe fn write(&self, rows: &[f32], first: usize) {
        let count = rows.len() / self.m.max(1);
        assert!(count.is_multiple_of(2) && first.is_multiple_of(2) && rows.len() == count * self.m);
        assert!(
            first / 2 + count / 2 <= self.kp,
            "dg rows outside the panels"
        );
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `prepare` made `len` lanes at `ptr`; the kernel stays within depths
        // first/2.. of each panel (asserted above), which this caller alone writes.
        unsafe {
            let out = std::slice::from_raw_parts_mut(self.ptr, self.len);
            avx512::bf16_panels_of_row_pairs(rows, self.m, self.kp, first / 2, out)
        }
    }
}

/// `C (+)= dgᵀ·B` in bf16 with `dgᵀ` already packed (see [`DgPanels`]).
///
/// # Panics
/// If the shapes disagree or the CPU cannot (see [`dg_panels_supported`]).
pub(crate) fn matmul_dg_panels(
    c: MatMut<'_, f32>,
    a: &DgPanels,
    b: MatRef<'_, f32>,
    accumulate: bool,
) {
    assert!(
        c.rows == a.m && b.rows == a.k && c.cols == b.cols,
        "matmul_dg_panels shapes"
    );
    assert!(
        dg_panels_supported(),
        "dg panels need AVX-512 BF16 without AMX"
    );
    #[cfg(target_arch = "x86_64")]
    {
        if c.rows == 0 || c.cols == 0 {
            return;
        }
        with_scratch_b(|packed| {
            packed.pack(b, Precision::Bf16);
            // Never read: the panels stand for A (its shape only, for the split).
            let shape = MatRef {
                data: &[],
                rows: a.m,
                cols: a.k,
                rs: 1,
                cs: 0,
            };
            split_rows(c, shape, packed, Some(&a.data), accumulate);
        });
    }
}

/// `C = A·B` (or `+=`) in `precision`, packing both operands on the fly (for
/// products whose operands change every call) into buffers kept per thread.
pub fn matmul_packed(
    c: MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    accumulate: bool,
    precision: Precision,
) {
    with_scratch_b(|packed| {
        // A deep B (a weight gradient sums over every timestep) is packed and used a
        // block of depth at a time, so the packed block stays in cache between its
        // packing and its use (packed whole, it went to memory and back).
        // (bf16 packs B whole: its blocks were not measured to gain.)
        let (k, ld) = (a.cols, c.ld);
        let block = match precision {
            Precision::F32 => DEPTH_BLOCK,
            Precision::Bf16 => k.max(1),
        };
        let (cd, rows, cols) = (c.data, c.rows, c.cols);
        for p0 in (0..k).step_by(block) {
            let p1 = (p0 + block).min(k);
            let bb = MatRef {
                data: &b.data[p0 * b.rs..],
                rows: p1 - p0,
                ..b
            };
            let ab = MatRef {
                data: &a.data[p0 * a.cs..],
                cols: p1 - p0,
                ..a
            };
            packed.pack(bb, precision);
            let c = MatMut::new(&mut *cd, rows, cols, ld);
            gemm_packed(c, ab, packed, accumulate || p0 > 0);
        }
    });
}

/// Largest `B` (elements) that [`gemm_rows_f32`] reads in place: beyond it `B`
/// outgrows the L2 cache and the per-step products read it packed instead.
const ROWS_B_MAX: usize = 1 << 20;
/// Depth per block of [`gemm_rows_f32`]: its `A` panels are few (a block of 8 rows
/// is 32 KiB), so deeper blocks than [`KC`] spare C's reloads between blocks.
const ROWS_KC: usize = 1024;

/// `c (+)= a·b` in f32 (the thread's precision) for two rows of `a` or more and a
/// row-major `b` of at most [`ROWS_B_MAX`] elements (as `W_hh` in the backward
/// per-step product `dg·W_hh`, or its transposed copy in the forward's), read in
/// place: only `A` is packed, per cache block, into the thread's buffer, so nothing
/// is allocated per call (the `gemm` crate allocates its packing buffers on every
/// call, which was once per timestep). Returns false, having done nothing, where it
/// does not apply.
pub(crate) fn gemm_rows_f32(
    c: &mut MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    accumulate: bool,
) -> bool {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm_rows shapes"
    );
    if m < 2
        || n == 0
        || k == 0
        || b.cs != 1
        || k * n > ROWS_B_MAX
        || super::precision() != Precision::F32
        || !packed_supported(Precision::F32)
    {
        return false;
    }
    // Only x86-64 gets here (`packed_supported`): the kernels are its own.
    #[cfg(target_arch = "x86_64")]
    {
        let ld = c.ld;
        let threads = rayon::current_num_threads();
        // Column strips, or row blocks for a narrow B.
        let by_rows = n < 2 * NR * threads;
        in_parts(c, m * n * k, (by_rows, (MR, NR)), |cd, rows, cols| {
            let a = MatRef {
                data: &a.data[rows.start * a.rs..],
                rows: rows.len(),
                ..a
            };
            rows_b_columns(&mut cd[rows.start * ld..], ld, a, b, cols, accumulate);
        });
    }
    true
}

/// Runs `part(c, rows, cols)` on parts of C, one per thread: row blocks of whole
/// `tile.0` rows when `by_rows` (and C has two per thread), else column strips of
/// whole `tile.1` columns (when it has two per thread); all of C on this thread
/// when the product (`work` multiply-adds) is small or the caller is already one
/// task per core. Each part writes only its own rows or columns of C.
#[cfg(target_arch = "x86_64")]
fn in_parts(
    c: &mut MatMut<'_, f32>,
    work: usize,
    (by_rows, (mr, nr)): (bool, (usize, usize)),
    part: impl Fn(&mut [f32], Range<usize>, Range<usize>) + Sync,
) {
    let (m, n) = (c.rows, c.cols);
    let threads = rayon::current_num_threads();
    let enough = if by_rows {
        m >= 2 * mr * threads
    } else {
        n >= 2 * nr * threads
    };
    if threads < 2 || SERIAL.get() || work < 1 << 20 || !enough {
        return part(c.data, 0..m, 0..n);
    }
    let (out, len) = (c.data.as_mut_ptr() as usize, c.data.len());
    // SAFETY: the parts are disjoint row or column ranges of C, each written by one
    // thread alone; no other reference to C is used meanwhile.
    let c_of = || unsafe { std::slice::from_raw_parts_mut(out as *mut f32, len) };
    let (whole, tile) = if by_rows { (m, mr) } else { (n, nr) };
    let share = whole.div_ceil(threads).div_ceil(tile) * tile;
    (0..whole.div_ceil(share)).into_par_iter().for_each(|t| {
        let range = t * share..((t + 1) * share).min(whole);
        match by_rows {
            true => part(c_of(), range, 0..n),
            false => part(c_of(), 0..m, range),
        }
    });
}

/// Columns `cols` of [`gemm_rows_f32`]'s product, C's row 0 at `cd[0]`.
#[cfg(target_arch = "x86_64")]
fn rows_b_columns(
    cd: &mut [f32],
    ld: usize,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    cols: std::ops::Range<usize>,
    accumulate: bool,
) {
    let (m, k) = (a.rows, a.cols);
    with_scratch_a(|apack| {
        for r0 in (0..m).step_by(MC) {
            let r1 = (r0 + MC).min(m);
            for p0 in (0..k).step_by(ROWS_KC) {
                let p1 = (p0 + ROWS_KC).min(k);
                let block = MatRef {
                    data: &a.data[p0 * a.cs..],
                    cols: p1 - p0,
                    ..a
                };
                // SAFETY: AVX-512F is present (checked by the caller).
                unsafe { pack_a(block, r0..r1, Precision::F32, apack) };
                let depth = p1 - p0;
                for j0 in cols.clone().step_by(NR) {
                    let nj = NR.min(cols.end - j0);
                    // B's rows p0..p1 of this strip; the last ends at column j0 + nj.
                    assert!(
                        (p1 - 1) * b.rs + j0 + nj <= b.data.len(),
                        "B strip outside B"
                    );
                    let bp = b.data[p0 * b.rs + j0..].as_ptr();
                    for (ra, ap) in apack.chunks_exact(depth * MR).enumerate() {
                        let (i0, mi) = (r0 + ra * MR, MR.min(r1 - r0 - ra * MR));
                        let tile =
                            avx512::Tile::at(cd, ld, (i0, j0), (mi, nj), accumulate || p0 > 0);
                        // SAFETY: AVX-512F is present; B's rows p0..p1 hold `nj` columns
                        // from j0 (asserted), and the tile's elements lie in C (`Tile::at`).
                        // A narrow last strip runs a narrower tile: no multiply-adds on
                        // columns past B's (n = H = 128 would waste a ninth of them).
                        unsafe {
                            match nj.div_ceil(16) {
                                1 => avx512::tile_f32_rows::<1>(ap, bp, b.rs, tile),
                                2 => avx512::tile_f32_rows::<2>(ap, bp, b.rs, tile),
                                _ => avx512::tile_f32_rows::<NV>(ap, bp, b.rs, tile),
                            }
                        };
                    }
                }
            }
        }
    });
}

/// 16-lane vectors of C's rows per [`gemm_depth_major_f32`] tile.
const TN_V: usize = 4;
/// Rows of C per [`gemm_depth_major_f32`] tile.
const TN_MR: usize = 16 * TN_V;
/// Columns of C per [`gemm_depth_major_f32`] tile (24 accumulators with [`TN_V`]).
const TN_NR: usize = 6;
/// Depth per block of [`gemm_depth_major_f32`], between which a tile's sums go
/// to memory and back: its copied strip of A (32 KiB) stays in L1 (256 measured
/// as fast in the large products, slower in LSTM 1×128's).
const TN_KC: usize = 128;

/// `c (+)= a·b` in f32 (the thread's precision) for a column-major `a` and a
/// row-major `b`, as in a weight gradient `dgᵀ·x`, whose operands both run along
/// the depth (the timesteps). Neither is transposed: a tile's 64 rows of C are
/// four vectors of one row of `dg`, and its 6 columns values of one row of `x`
/// broadcast (our row tiles transposed `dgᵀ` into panels, a quarter of the time at
/// a narrow `x`; the `gemm` crate allocates its buffers on every call).
/// The tiles sum into `Cᵀ` (their vectors run along C's columns) in the thread's
/// buffer, added to C once at the end. Returns false, having done nothing, where
/// it does not apply.
pub(crate) fn gemm_depth_major_f32(
    c: &mut MatMut<'_, f32>,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    accumulate: bool,
) -> bool {
    let (m, n, k) = (c.rows, c.cols, a.cols);
    assert!(
        a.rows == m && b.rows == k && b.cols == n,
        "gemm_depth_major shapes"
    );
    if a.rs != 1
        || b.cs != 1
        || m == 0
        || n == 0
        || k == 0
        || super::precision() != Precision::F32
        || !packed_supported(Precision::F32)
    {
        return false;
    }
    // Only x86-64 gets here (`packed_supported`): the kernels are its own.
    #[cfg(target_arch = "x86_64")]
    {
        let ld = c.ld;
        let threads = rayon::current_num_threads();
        // Row blocks, or column strips for few rows.
        let by_rows = m >= 2 * TN_MR * threads;
        in_parts(c, m * n * k, (by_rows, (TN_MR, TN_NR)), |cd, rows, cols| {
            depth_major_block(cd, ld, a, b, (rows, cols), accumulate)
        });
    }
    true
}

/// Rows and columns `part` of [`gemm_depth_major_f32`]'s product, into `cd` (C's
/// row 0 at `cd[0]`). Each strip of A's rows is copied, per block of depth, into
/// `[depth][TN_MR]`: in place its depths lie a row of `dg` apart (8 KiB at 2048
/// gates), all in the same few L1 sets, so every tile read the strip from L2
/// (LSTM 2×512's `dW_hh`, 2048 × 6400 · 6400 × 512: 166 → 219 GFLOP/s on 2 threads),
/// and B's block into groups of columns ([`pack_b_groups`]: 214 → 241).
#[cfg(target_arch = "x86_64")]
fn depth_major_block(
    cd: &mut [f32],
    ld: usize,
    a: MatRef<'_, f32>,
    b: MatRef<'_, f32>,
    (rows, cols): (std::ops::Range<usize>, std::ops::Range<usize>),
    accumulate: bool,
) {
    let k = a.cols;
    // The part's `Cᵀ`: column j's rows at `ct[j·ldt..]`, each column (and so the
    // strip after them) starting a cache line, as the tiles' vectors do.
    let ldt = rows.len().next_multiple_of(LINE_LANES);
    with_scratch_a(|buf| {
        // Not cleared: the first block of depth writes every element of `Cᵀ`, and the
        // tiles read only the strip's lanes copied for them.
        let groups = cols.len().div_ceil(TN_NR);
        buf.resize(ldt * cols.len() + TN_KC * TN_MR + groups * TN_KC * TN_NR, 0);
        let (ct, rest) = buf.split_at_mut(ldt * cols.len());
        let (strip, bpack) = rest.split_at_mut(TN_KC * TN_MR);
        // Once per part: the tiles' reads stay within these (A's rows and B's columns
        // of the part, at every depth).
        assert!(
            rows.end - 1 + (k - 1) * a.cs < a.data.len(),
            "A outside its data"
        );
        assert!(
            cols.end - 1 + (k - 1) * b.rs < b.data.len(),
            "B outside its data"
        );
        for p0 in (0..k).step_by(TN_KC) {
            let depth = TN_KC.min(k - p0);
            pack_b_groups(
                b,
                p0..p0 + depth,
                cols.clone(),
                &mut bpack[..groups * depth * TN_NR],
            );
            for i0 in rows.clone().step_by(TN_MR) {
                let height = TN_MR.min(rows.end - i0);
                // SAFETY: AVX-512F is present (checked by the caller); the strip's rows
                // of A lie in it at every depth (asserted above), and the strip holds
                // `depth` rows of TN_MR lanes.
                unsafe {
                    avx512::copy_strip(
                        (a.data.as_ptr().add(p0 * a.cs + i0), a.cs),
                        height,
                        &mut strip[..depth * TN_MR],
                    )
                };
                let strip = &strip[..depth * TN_MR];
                for j0 in cols.clone().step_by(TN_NR) {
                    let shape = (height, TN_NR.min(cols.end - j0));
                    let at = (j0 - cols.start) * ldt + i0 - rows.start;
                    // SAFETY: AVX-512F is present (checked by the caller); the tile's
                    // columns of B lie in B at every depth of the strip (asserted
                    // above), and its elements of Cᵀ in `ct` (sized above).
                    unsafe {
                        avx512::tile_f32_depth_major(
                            strip,
                            (bpack.as_ptr().add((j0 - cols.start) * depth).cast(), TN_NR),
                            (ct.as_mut_ptr().add(at).cast(), ldt),
                            shape,
                            p0 > 0,
                        )
                    };
                }
            }
        }
        // `Cᵀ` into C, 16 columns at a time: a row of C then reads 16 lines of `Cᵀ`, which
        // serve the next 15 rows too. (A whole row at a time read a line per column, all
        // `ldt` floats apart in the same few cache sets, each a miss: 2.4 % of LSTM
        // 2×512's `dW_hh` in `perf`, now 1.3 %.)
        for j0 in cols.clone().step_by(16) {
            let j1 = cols.end.min(j0 + 16);
            let sums = &ct[(j0 - cols.start) * ldt..];
            for i in rows.clone() {
                let row = &mut cd[i * ld + j0..i * ld + j1];
                let sums = sums[i - rows.start..].iter().step_by(ldt);
                for (dst, &v) in row.iter_mut().zip(sums) {
                    let v = f32::from_bits(v);
                    *dst = if accumulate { *dst + v } else { v };
                }
            }
        }
    });
}

/// Columns `cols` of B's rows `depths` into groups of [`TN_NR`] columns, each
/// `[depth][TN_NR]`: read in place, a tile's column values lie a row of B apart at
/// every depth (2 KiB at 512 columns), all in the same two L1 sets, so each one was
/// a miss. (The last group's lanes past `cols` are left as they were: the tiles
/// never read them.)
#[cfg(target_arch = "x86_64")]
fn pack_b_groups(b: MatRef<'_, f32>, depths: Range<usize>, cols: Range<usize>, out: &mut [u32]) {
    let run = |d: usize| &b.data[(depths.start + d) * b.rs + cols.start..][..cols.len()];
    // SAFETY: AVX-512F is present (checked by the caller of the product).
    unsafe { avx512::deal_runs::<TN_NR>(depths.len(), run, out) };
}

/// Rows `rows` of the product into `cd`, whose row 0 is C's row `rows.start`.
///
/// A per-step product (a block of rows or fewer, `A` read in place) takes `B`'s
/// panels one at a time over their whole depth, in the direction opposite to the
/// thread's previous such product: at every timestep a thread reads all of `W_hh`
/// (4 MB for LSTM 512, twice its L2), and starting where the last timestep ended
/// finds part of it still in L2 (as the stepper's sweeps do). Each tile sums the
/// same depths in the same order either way, so the results are the same.
#[cfg(target_arch = "x86_64")]
fn run_rows(
    cd: &mut [f32],
    ld: usize,
    a: MatRef<'_, f32>,
    rows: std::ops::Range<usize>,
    b: &PackedB,
    ready: Option<&[u32]>,
    accumulate: bool,
) {
    let (n, precision) = (b.n, b.precision);
    #[cfg(target_arch = "x86_64")]
    if b.width == amx::PANEL {
        return amx::run_rows(cd, ld, a, rows, (&b.data, n), accumulate);
    }
    let step = per_lane(precision);
    let kp = b.k.div_ceil(step);
    // Row-major f32 A is read in place by the tiles (each row a stream that stays
    // in L1 over a block of depth): packing it would cost a pass over A, which for
    // an input gradient is 4× the size of B. (A column-major A read in place lost to
    // packing it on a narrow B: 120 against 177 GFLOP/s.)
    let in_place = precision == Precision::F32 && a.cs == 1;
    // The tile of A's rows from `i` (C's from `i - rows.start`) by B's panel `q` at
    // depths p0..p1, A read in place.
    let in_place_tile = |cd: &mut [f32], i: usize, q: usize, (p0, p1): (usize, usize)| {
        let (i0, j0) = (i - rows.start, q * NR);
        let (mi, nj) = (MR.min(rows.end - i), NR.min(n - j0));
        let bp = &b.data[(q * kp + p0) * NR..(q * kp + p1) * NR];
        let tile = avx512::Tile::at(cd, ld, (i0, j0), (mi, nj), accumulate || p0 > 0);
        // Rows i.. of A from depth p0; each of the tile's rows holds p1 − p0 values
        // there.
        let (a, strides) = (&a.data[i * a.rs + p0 * a.cs..], (a.rs, a.cs));
        // SAFETY: AVX-512F is present (the caller asserted it); the tile kernel
        // asserts that the rows lie in A; the panel holds p1 − p0 lanes, the tile
        // lies in C (`Tile::at`). The last panel of a narrow B runs a narrower tile
        // (a vocabulary of 65 would waste half the multiply-adds of its last tile, a
        // width of 512 a third of its last).
        unsafe {
            match nj.div_ceil(16) {
                1 => avx512::tile_f32_a_rows::<1>(a, strides, bp, tile),
                2 => avx512::tile_f32_a_rows::<2>(a, strides, bp, tile),
                _ => avx512::tile_f32_a_rows::<NV>(a, strides, bp, tile),
            }
        };
    };
    if in_place && rows.len() <= MC {
        let sweep = SWEEP.with(|s| {
            s.set(s.get().flip());
            s.get()
        });
        for q in sweep.order(n.div_ceil(NR)) {
            for p0 in (0..kp).step_by(IN_PLACE_KC) {
                for i in rows.clone().step_by(MR) {
                    in_place_tile(cd, i, q, (p0, (p0 + IN_PLACE_KC).min(kp)));
                }
            }
        }
        return;
    }
    with_scratch_a(|apack| {
        // The same blocks of depth as the per-step path above, so that its rows of C
        // get the same bits.
        let kc = if in_place { IN_PLACE_KC } else { KC };
        for r0 in (rows.start..rows.end).step_by(MC) {
            let r1 = (r0 + MC).min(rows.end);
            let a_panels = (r1 - r0).div_ceil(MR);
            for p0 in (0..kp).step_by(kc) {
                let p1 = (p0 + kc).min(kp);
                let depth = p1 - p0;
                // A's block of depth alone is packed (MC·KC lanes, in L2): packing the
                // whole depth at once outgrows the caches when k is large (a weight
                // gradient sums over every timestep).
                if !in_place && ready.is_none() {
                    let ks = p0 * step..(p1 * step).min(b.k);
                    let block = MatRef {
                        data: &a.data[ks.start * a.cs..],
                        cols: ks.len(),
                        ..a
                    };
                    // SAFETY: AVX-512F is present (the caller asserted it).
                    unsafe { pack_a(block, r0..r1, precision, apack) };
                }
                let acc = accumulate || p0 > 0;
                for q in 0..n.div_ceil(NR) {
                    if in_place {
                        for i in (r0..r1).step_by(MR) {
                            in_place_tile(cd, i, q, (p0, p1));
                        }
                        continue;
                    }
                    let bp = &b.data[(q * kp + p0) * NR..(q * kp + p1) * NR];
                    for ra in 0..a_panels {
                        let (i0, j0) = (r0 - rows.start + ra * MR, q * NR);
                        let (mi, nj) = (MR.min(r1 - r0 - ra * MR), NR.min(n - j0));
                        let tile = avx512::Tile::at(cd, ld, (i0, j0), (mi, nj), acc);
                        let ap = match ready {
                            // Panel r0/MR + ra of the whole depth's panels, depths p0..p1.
                            Some(panels) => {
                                let panel = r0 / MR + ra;
                                &panels[(panel * kp + p0) * MR..(panel * kp + p1) * MR]
                            }
                            None => &apack[ra * depth * MR..(ra + 1) * depth * MR],
                        };
                        // SAFETY: the caller asserted the CPU features of `precision`;
                        // both panels hold `depth` lanes (sliced above) and the tile's
                        // elements lie in C (`Tile::at`). Narrow last tiles as above.
                        unsafe {
                            match precision {
                                Precision::F32 => match nj.div_ceil(16) {
                                    1 => avx512::tile_f32::<1>(ap, bp, tile),
                                    2 => avx512::tile_f32::<2>(ap, bp, tile),
                                    _ => avx512::tile_f32::<NV>(ap, bp, tile),
                                },
                                Precision::Bf16 => match nj.div_ceil(16) {
                                    1 => avx512::tile_bf16::<1>(ap, bp, tile),
                                    2 => avx512::tile_bf16::<2>(ap, bp, tile),
                                    _ => avx512::tile_bf16::<NV>(ap, bp, tile),
                                },
                            }
                        };
                    }
                }
            }
        }
    });
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{MR, NR, TN_MR, TN_NR, TN_V};
    use crate::kernel::lanes::first_lanes;
    use std::arch::x86_64::*;

    /// Lanes `dst[d·stride]` = bfloat16 pairs (`row[2d]`, `row[2d + 1]`) of one row
    /// of `A`, rounded to nearest even (as `vcvtne2ps2bf16` does; subnormals become
    /// zero).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs_of_row(row: &[f32], dst: &mut [u32], stride: usize) {
        let k = row.len();
        let mut lanes = [0u32; 16];
        for c in (0..k).step_by(32) {
            let left = k - c;
            let lo_mask = first_lanes(left);
            // SAFETY: lanes c.. within `row`, under the mask.
            let lo = unsafe { _mm512_maskz_loadu_ps(lo_mask, row.as_ptr().add(c)) };
            // The upper half starts past the end of `row` when 16 or fewer are left:
            // no pointer may be formed there, so it is zero without a load.
            let hi = match left {
                0..=16 => _mm512_setzero_ps(),
                17..=31 => {
                    let mask = first_lanes(left - 16);
                    // SAFETY: lanes c + 16.. within `row`, under the mask.
                    unsafe { _mm512_maskz_loadu_ps(mask, row.as_ptr().add(c + 16)) }
                }
                _ => unsafe { _mm512_loadu_ps(row.as_ptr().add(c + 16)) },
            };
            let pairs: __m512i = unsafe { std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo)) };
            let count = left.min(32).div_ceil(2);
            if stride == 1 {
                let dst = &mut dst[c / 2..][..count];
                let mask = first_lanes(count);
                // SAFETY: `count` lanes into as many of `dst`, under the mask.
                unsafe { _mm512_mask_storeu_epi32(dst.as_mut_ptr().cast(), mask, pairs) };
                continue;
            }
            // SAFETY: 64 bytes into a 64-byte array.
            unsafe { _mm512_storeu_si512(lanes.as_mut_ptr().cast(), pairs) };
            for (j, &v) in lanes[..count].iter().enumerate() {
                dst[(c / 2 + j) * stride] = v;
            }
        }
    }

    /// Lanes `dst[j]` = the bfloat16 pair (`lo[j]`, `hi[j]`), 16 at a time: a `B`
    /// panel's depth from two rows of `B`, rounded by `vcvtneps2bf16` as `A`'s lanes
    /// are (instead of one scalar rounding per value).
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs_of_two_rows(lo: &[f32], hi: &[f32], dst: &mut [u32]) {
        let w = lo.len();
        assert!(hi.len() == w && dst.len() >= w);
        for j in (0..w).step_by(16) {
            let mask = first_lanes(w - j);
            // SAFETY: lanes j.. of each slice, under the mask.
            unsafe {
                let load = |row: &[f32]| _mm512_maskz_loadu_ps(mask, row.as_ptr().add(j));
                let lanes = pairs(load(lo), load(hi));
                _mm512_mask_storeu_epi32(dst.as_mut_ptr().add(j).cast(), mask, lanes);
            }
        }
    }

    /// Depths `d0 + i` of the `MR`-row panels (`[kp][MR]` lanes each, panel after
    /// panel) of `dgᵀ`, from rows `2i` and `2i + 1` of `rows` (row-major, `m` wide):
    /// lane `j mod MR` of panel `j / MR` is the bfloat16 pair of column `j` of the two
    /// rows, rounded as [`bf16_panels_of_columns`] rounds them. Sixteen columns (two
    /// panels) at a time.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_panels_of_row_pairs(
        rows: &[f32],
        m: usize,
        kp: usize,
        d0: usize,
        out: &mut [u32],
    ) {
        let count = rows.len() / m.max(1);
        assert!(out.len() >= m.div_ceil(MR) * kp * MR && d0 + count / 2 <= kp);
        // Two depths of a panel fill a cache line: where the lines start on one (even
        // depths, `out` on a line), each is written whole by a streaming store, which
        // spares reading it first. The panels lie `kp · 32` bytes apart, so the lines
        // of one depth all fall in a few sets of L1, and a store of half a line missed
        // there and read the line back from memory.
        let whole = m / 16 * 16;
        let lined = d0.is_multiple_of(2)
            && kp.is_multiple_of(2)
            && (out.as_ptr() as usize).is_multiple_of(64);
        let quads = if lined { count / 4 } else { 0 };
        for (i, four) in rows.chunks_exact(4 * m).take(quads).enumerate() {
            let d = d0 + 2 * i;
            for j in (0..whole).step_by(2 * MR) {
                // SAFETY: 16 lanes from j < whole in each of the four rows.
                let (first, second) = unsafe {
                    let load = |r: usize| _mm512_loadu_ps(four.as_ptr().add(r * m + j));
                    (pairs(load(0), load(1)), pairs(load(2), load(3)))
                };
                let panel = j / MR;
                // Columns j..j + 8 of both depths, and j + 8..j + 16.
                let lines = [
                    _mm512_shuffle_i64x2::<0x44>(first, second),
                    _mm512_shuffle_i64x2::<0xEE>(first, second),
                ];
                for (q, line) in lines.into_iter().enumerate() {
                    let at = ((panel + q) * kp + d) * MR;
                    let dst = &mut out[at..at + 2 * MR];
                    // SAFETY: 16 lanes of the panel, on a line (`lined`).
                    unsafe { _mm512_stream_si512(dst.as_mut_ptr().cast(), line) };
                }
            }
        }
        if quads > 0 {
            // The streaming stores are weakly ordered: done before the product reads.
            _mm_sfence();
        }
        for (i, pair) in rows.chunks_exact(2 * m).enumerate() {
            let columns = if i < 2 * quads { whole } else { 0 };
            let (lo, hi) = pair.split_at(m);
            let d = d0 + i;
            for j in (columns..m).step_by(2 * MR) {
                let mask = first_lanes(m - j);
                // SAFETY: lanes j.. of each row, under the mask.
                let lanes = unsafe {
                    let load = |row: &[f32]| _mm512_maskz_loadu_ps(mask, row.as_ptr().add(j));
                    pairs(load(lo), load(hi))
                };
                let panel = j / MR;
                let at = (panel * kp + d) * MR;
                // SAFETY: lanes at..at + MR lie in panel `panel` (asserted above).
                unsafe {
                    _mm256_storeu_si256(
                        out[at..at + MR].as_mut_ptr().cast(),
                        _mm512_castsi512_si256(lanes),
                    )
                };
                if m - j > MR {
                    let at = ((panel + 1) * kp + d) * MR;
                    // SAFETY: as above, in the next panel.
                    unsafe {
                        _mm256_storeu_si256(
                            out[at..at + MR].as_mut_ptr().cast(),
                            _mm512_extracti64x4_epi64::<1>(lanes),
                        )
                    };
                }
            }
        }
    }

    /// Lane i = the bfloat16 pair (`lo[i]`, `hi[i]`), rounded by `vcvtneps2bf16`.
    /// Inlined into the AVX-512 BF16 packers.
    #[inline(always)]
    pub(super) fn pairs(lo: __m512, hi: __m512) -> __m512i {
        // SAFETY (every intrinsic): inlined only into AVX-512 BF16 functions; the
        // transmutes are between 32-byte plain vectors. No closure: one would not
        // be inlined into them, and would run without their features.
        unsafe {
            let lo = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(lo));
            let hi = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(hi));
            _mm512_or_si512(
                _mm512_cvtepu16_epi32(lo),
                _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(hi)),
            )
        }
    }

    /// Depths ahead whose runs [`bf16_panels_of_columns`] prefetches (2 to 16 measured
    /// alike within the noise, 4 the fastest).
    const PREFETCH: usize = 4;

    /// The `MR`-row panels of rows `rows` of a column-major `A` whose column p (all
    /// rows of depth p) starts at `a[p·cs]`, `[depth][MR]` lanes each: lane `d` of
    /// row `i` is the bfloat16 pair (`A[i][2d]`, `A[i][2d + 1]`), zero past depth `k`.
    /// Depth by depth, each a run of the block's rows, 16 (a cache line) at a time,
    /// the runs [`PREFETCH`] depths ahead requested early: the runs lie a row of `dg`
    /// apart, which the hardware does not prefetch (without it this was a sixth of a
    /// weight gradient's time; with it, a tenth).
    #[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16")]
    pub(super) unsafe fn bf16_panels_of_columns(
        a: &[f32],
        cs: usize,
        rows: std::ops::Range<usize>,
        k: usize,
        out: &mut [u32],
    ) {
        let depth = k.div_ceil(2);
        let panel = depth * MR;
        assert!(out.len() >= rows.len().div_ceil(MR) * panel);
        for d in 0..depth {
            for p in [2 * (d + PREFETCH), 2 * (d + PREFETCH) + 1] {
                if p < k {
                    let run = &a[p * cs + rows.start..][..rows.len()];
                    for line in run.chunks(16) {
                        _mm_prefetch::<_MM_HINT_T0>(line.as_ptr().cast());
                    }
                }
            }
            for g in (0..rows.len()).step_by(2 * MR) {
                let (i0, mi) = (rows.start + g, (2 * MR).min(rows.len() - g));
                let mask = first_lanes(mi);
                let load = |p: usize| {
                    if p < k {
                        let run = &a[p * cs + i0..][..mi];
                        // SAFETY: the first mi (≤ 16) values of `run`, under the mask.
                        unsafe { _mm512_maskz_loadu_ps(mask, run.as_ptr()) }
                    } else {
                        _mm512_setzero_ps()
                    }
                };
                // SAFETY: both are 32-byte plain vectors.
                let (l, h): (__m256i, __m256i) = unsafe {
                    (
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(load(2 * d))),
                        std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(load(
                            2 * d + 1,
                        ))),
                    )
                };
                // Within each 128-bit half: rows 0–3 | 8–11 (lo) and 4–7 | 12–15 (hi).
                let (lo, hi) = (_mm256_unpacklo_epi16(l, h), _mm256_unpackhi_epi16(l, h));
                let first = g / MR * panel + d * MR;
                let dst = &mut out[first..][..MR];
                // SAFETY: 2 × 16 bytes into the lane's MR = 8 values.
                unsafe {
                    _mm_storeu_si128(dst.as_mut_ptr().cast(), _mm256_castsi256_si128(lo));
                    _mm_storeu_si128(dst.as_mut_ptr().add(4).cast(), _mm256_castsi256_si128(hi));
                }
                if mi > MR {
                    let dst = &mut out[first + panel..][..MR];
                    // SAFETY: as above, in the next panel.
                    unsafe {
                        _mm_storeu_si128(
                            dst.as_mut_ptr().cast(),
                            _mm256_extracti128_si256::<1>(lo),
                        );
                        _mm_storeu_si128(
                            dst.as_mut_ptr().add(4).cast(),
                            _mm256_extracti128_si256::<1>(hi),
                        );
                    }
                }
            }
        }
    }

    /// Lanes `panel[d·ld + i]` = `rows[i][d]` for `d < whole` (a multiple of 16), 16
    /// depths of the MR = 8 rows at a time; an empty row (past the matrix) gives zeros.
    /// `ld` is the panel's lanes per depth: MR for an `A` panel, NR for a `B` panel
    /// (whose 8-column groups are written one call each).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn transpose_rows(
        rows: &[&[f32]; MR],
        whole: usize,
        panel: &mut [u32],
        ld: usize,
    ) {
        assert!(ld >= MR && rows.iter().all(|r| r.is_empty() || r.len() >= whole));
        assert!(whole == 0 || panel.len() >= (whole - 1) * ld + MR);
        let picks = transpose_picks();
        for d0 in (0..whole).step_by(16) {
            // SAFETY: 16 values from d0 < whole in every non-empty row.
            let r: [__m512; MR] = std::array::from_fn(|i| {
                if rows[i].is_empty() {
                    _mm512_setzero_ps()
                } else {
                    unsafe { _mm512_loadu_ps(rows[i].as_ptr().add(d0)) }
                }
            });
            // SAFETY: depths d0..d0 + 16 lie below `whole`, in the panel (asserted).
            unsafe { transpose_8x16(r, panel.as_mut_ptr().add(d0 * ld).cast(), ld, picks) };
        }
    }

    /// Lanes `panel[d·MR + i]` = the bfloat16 pair (`rows[i][2d]`, `rows[i][2d + 1]`)
    /// of MR = 8 rows of a row-major `A` (each `k` long, or empty past the matrix:
    /// zeros), 16 depths converted and transposed at once (row by row, the lanes
    /// were stored one at a time). `panel` holds `k.div_ceil(2)` depths.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn bf16_pairs_of_rows(rows: &[&[f32]; MR], k: usize, panel: &mut [u32]) {
        assert!(rows.iter().all(|r| r.is_empty() || r.len() == k));
        assert!(panel.len() >= k.div_ceil(2) * MR);
        // Depths of whole 32-value runs; the rest row by row.
        let whole = k / 32 * 16;
        let picks = transpose_picks();
        for d0 in (0..whole).step_by(16) {
            let r: [__m512; MR] = std::array::from_fn(|i| {
                if rows[i].is_empty() {
                    return _mm512_setzero_ps();
                }
                // SAFETY: 2·d0 + 32 ≤ k values in the row.
                let (lo, hi) = unsafe {
                    let at = rows[i].as_ptr().add(2 * d0);
                    (_mm512_loadu_ps(at), _mm512_loadu_ps(at.add(16)))
                };
                // SAFETY: both are 64-byte plain vectors.
                unsafe { std::mem::transmute::<__m512bh, __m512>(_mm512_cvtne2ps_pbh(hi, lo)) }
            });
            // SAFETY: depths d0..d0 + 16 ≤ whole lie in the panel (asserted).
            unsafe { transpose_8x16(r, panel.as_mut_ptr().add(d0 * MR).cast(), MR, picks) };
        }
        for (i, row) in rows.iter().enumerate() {
            if !row.is_empty() && 2 * whole < k {
                // SAFETY: the caller's features; the tail's lanes lie in the panel.
                unsafe { bf16_pairs_of_row(&row[2 * whole..], &mut panel[whole * MR + i..], MR) };
            }
        }
    }

    /// The two permutations of [`transpose_8x16`]'s last stage.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn transpose_picks() -> (__m512i, __m512i) {
        // Element j of the index picks lane j % 4 of 128-bit block (j / 4) / 2 of the
        // first source (even j / 4) or the second: blocks 0, 1 (lo) or 2, 3 (hi) of each.
        let pick = |half: i32| {
            let lane = |j: i32| (j % 4) + 4 * (2 * half + (j / 4) / 2) + 16 * ((j / 4) % 2);
            _mm512_set_epi32(
                lane(15),
                lane(14),
                lane(13),
                lane(12),
                lane(11),
                lane(10),
                lane(9),
                lane(8),
                lane(7),
                lane(6),
                lane(5),
                lane(4),
                lane(3),
                lane(2),
                lane(1),
                lane(0),
            )
        };
        (pick(0), pick(1))
    }

    /// Stores lane j of `r[i]` at `out[j·ld + i]`, for the 16 lanes of MR = 8 vectors.
    ///
    /// # Safety
    /// AVX-512F; `out` is valid for 8 lanes at each of the 16 offsets `j·ld`.
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn transpose_8x16(
        r: [__m512; MR],
        out: *mut f32,
        ld: usize,
        (lo, hi): (__m512i, __m512i),
    ) {
        // Within each 128-bit block: pairs of rows, then quads, by depth.
        let t: [__m512; MR] = std::array::from_fn(|i| {
            let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
            if i % 2 == 0 {
                _mm512_unpacklo_ps(a, b)
            } else {
                _mm512_unpackhi_ps(a, b)
            }
        });
        let pd = |v: __m512| _mm512_castps_pd(v);
        let u: [__m512; MR] = std::array::from_fn(|i| {
            // u[q + 4·half]: rows 4·half..4·half + 4 at depths q, q + 4, q + 8, q + 12.
            let (q, half) = (i % 4, i / 4);
            let (a, b) = (pd(t[4 * half + q / 2]), pd(t[4 * half + 2 + q / 2]));
            _mm512_castpd_ps(if q % 2 == 0 {
                _mm512_unpacklo_pd(a, b)
            } else {
                _mm512_unpackhi_pd(a, b)
            })
        });
        for q in 0..4 {
            // Depths q and q + 4 (lo), q + 8 and q + 12 (hi), all 8 rows each.
            for (idx, first) in [(lo, q), (hi, q + 8)] {
                let v = _mm512_permutex2var_ps(u[q], idx, u[q + 4]);
                // SAFETY: depths first and first + 4 are below 16 (the caller's bound).
                unsafe {
                    _mm256_storeu_ps(out.add(first * ld), _mm512_castps512_ps256(v));
                    _mm256_storeu_ps(
                        out.add((first + 4) * ld),
                        _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))),
                    );
                }
            }
        }
    }

    /// 16 lanes of 32 bits seen as 32 bfloat16.
    #[inline(always)]
    fn bh(v: __m512) -> __m512bh {
        // SAFETY: both are 64-byte plain vectors; every bit pattern is valid in both.
        unsafe { std::mem::transmute::<__m512, __m512bh>(v) }
    }

    /// Where a micro-tile's sums go: `rows × cols` (at most `MR × NR`) elements of a
    /// row-major C from `c`, rows `ld` apart, added to what C holds when `accumulate`.
    pub(super) struct Tile {
        pub(super) c: *mut f32,
        pub(super) ld: usize,
        pub(super) rows: usize,
        pub(super) cols: usize,
        pub(super) accumulate: bool,
    }

    impl Tile {
        /// The `rows × cols` elements from (i0, j0) of the row-major C in `cd`, rows
        /// `ld` apart. Panics unless they all lie in `cd`, so the kernels need not check.
        pub(super) fn at(
            cd: &mut [f32],
            ld: usize,
            (i0, j0): (usize, usize),
            (rows, cols): (usize, usize),
            accumulate: bool,
        ) -> Tile {
            let c = &mut cd[i0 * ld + j0..];
            assert!((rows - 1) * ld + cols <= c.len(), "tile outside C");
            let c = c.as_mut_ptr();
            Tile {
                c,
                ld,
                rows,
                cols,
                accumulate,
            }
        }
    }

    /// `C (+)= Σ_p A[p]·B[p]` over one block of f32 lanes: `a` is `[depth][MR]`,
    /// `b` is `[depth][NR]`. The caller guarantees the tile's elements lie in C.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32<const V: usize>(a: &[u32], b: &[u32], tile: Tile) {
        let depth = a.len() / MR;
        // Once per tile, not per element: the loads below trust it.
        assert!(b.len() == depth * NR);
        assert!(a.len() == depth * MR);
        prefetch::<V>(tile.c, tile.rows, tile.ld);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..depth {
            let bp = unsafe { b.as_ptr().add(p * NR) };
            let ap = unsafe { a.as_ptr().add(p * MR) };
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = unsafe { _mm512_loadu_ps(bp.add(16 * v).cast()) };
            }
            fma_rows(&mut acc, &bv, |i| f32::from_bits(unsafe { *ap.add(i) }));
        }
        unsafe { store(&acc, tile) };
    }

    /// As [`tile_f32`] with `A` read in place: the value of row i at depth p is
    /// `a[i·rs + p·cs]` (rows past `tile.rows` read row 0 again; their sums are
    /// never stored).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32_a_rows<const V: usize>(
        a: &[f32],
        (rs, cs): (usize, usize),
        b: &[u32],
        tile: Tile,
    ) {
        let depth = b.len() / NR;
        // Once per tile: the loads below trust it.
        assert!(tile.rows >= 1 && depth >= 1 && (tile.rows - 1) * rs + (depth - 1) * cs < a.len());
        let rows: [*const f32; MR] =
            std::array::from_fn(|i| a[if i < tile.rows { i * rs } else { 0 }..].as_ptr());
        prefetch::<V>(tile.c, tile.rows, tile.ld);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..depth {
            let bp = unsafe { b.as_ptr().add(p * NR) };
            // B's lines some depths ahead: in a per-step product B is `W_hh`, read
            // from L3 at every timestep once larger than L2 (4 MB at LSTM 512, 16
            // MB at 1024), and the hardware did not fetch it far enough ahead.
            // Training steps (all f32 products with a row-major A run here): LSTM
            // 1×1024 e256 983 → 849 ms, 2×512 632 → 591, 1×128 7.7 → 6.7 (Ice Lake
            // Xeon, alternating runs). Past the panel's end it fetches the next
            // panel's first lines, or nothing (a prefetch never faults).
            prefetch::<V>(bp.wrapping_add(PF_DEPTH * NR).cast(), 1, 0);
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = unsafe { _mm512_loadu_ps(bp.add(16 * v).cast()) };
            }
            fma_rows(&mut acc, &bv, |i| unsafe { *rows[i].add(p * cs) });
        }
        unsafe { store(&acc, tile) };
    }

    /// As [`tile_f32`] with `B` read in place: row p of the tile's `B` at
    /// `b + p·ldb`, its `tile.cols` columns loaded under masks (nothing past them is read).
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32_rows<const V: usize>(
        a: &[u32],
        b: *const f32,
        ldb: usize,
        tile: Tile,
    ) {
        let depth = a.len() / MR;
        assert!(a.len() == depth * MR && tile.cols <= 16 * V);
        let masks: [u16; V] = lane_masks(tile.cols);
        prefetch::<V>(tile.c, tile.rows, tile.ld);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..depth {
            // Never dereferenced past the masks: a masked-off lane is not read.
            let bp = b.wrapping_add(p * ldb);
            let ap = unsafe { a.as_ptr().add(p * MR) };
            let mut bv = [_mm512_setzero_ps(); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                // SAFETY: the lanes under the mask lie in row p of the strip (the
                // caller's guarantee); the others are not accessed.
                *bv = unsafe { _mm512_maskz_loadu_ps(masks[v], bp.wrapping_add(16 * v)) };
            }
            fma_rows(&mut acc, &bv, |i| f32::from_bits(unsafe { *ap.add(i) }));
        }
        unsafe { store(&acc, tile) };
    }

    /// Masks of the first `n` lanes of `V` vectors of 16: full, partial, then empty.
    fn lane_masks<const V: usize>(n: usize) -> [u16; V] {
        std::array::from_fn(|v| first_lanes(n.saturating_sub(16 * v)))
    }

    /// The first `height` (≤ [`TN_MR`]) values of each row of `A` at `a + p·lda`
    /// into lanes `p·TN_MR..` of `strip`, for every depth p the strip holds (the
    /// loop outside this function copied 16 bytes at a time). The caller
    /// guarantees that those values lie in A's data.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn copy_strip(
        (a, lda): (*const f32, usize),
        height: usize,
        strip: &mut [u32],
    ) {
        let masks: [u16; TN_V] = lane_masks(height);
        for (p, lanes) in strip.chunks_exact_mut(TN_MR).enumerate() {
            for (v, &mask) in masks.iter().enumerate() {
                // SAFETY: the lanes under the mask are values of A (the caller's
                // guarantee); the chunk holds TN_MR lanes.
                unsafe {
                    let row = _mm512_maskz_loadu_ps(mask, a.add(p * lda + 16 * v));
                    _mm512_storeu_ps(lanes.as_mut_ptr().add(16 * v).cast(), row);
                }
            }
        }
    }

    /// `ct[j·ldt + i] (+)= Σ_p a[p·TN_MR + i]·b[p·ldb + j]` for `i < rows` (at
    /// most [`TN_MR`]) and `j < cols` (at most [`TN_NR`]), over the depths p of the
    /// strip `a` ([`copy_strip`]'s): a tile of `Cᵀ`, `A`'s rows in vectors, `B`'s
    /// values broadcast. Columns past `cols` read column 0 again; their sums are
    /// never stored. The caller guarantees that the columns of B at those depths
    /// and the elements of `Cᵀ` lie in their data. Dispatches on the vectors that
    /// `rows` fill: a product's last strip of rows (65 rows for a 65-letter output
    /// layer) costs its own vectors, not four.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn tile_f32_depth_major(
        a: &[u32],
        b: (*const f32, usize),
        ct: (*mut f32, usize),
        shape: (usize, usize),
        accumulate: bool,
    ) {
        // SAFETY: the caller's guarantees, passed on.
        unsafe {
            match shape.0.div_ceil(16) {
                1 => tile_depth_major::<1>(a, b, ct, shape, accumulate),
                2 => tile_depth_major::<2>(a, b, ct, shape, accumulate),
                3 => tile_depth_major::<3>(a, b, ct, shape, accumulate),
                _ => tile_depth_major::<TN_V>(a, b, ct, shape, accumulate),
            }
        }
    }

    /// [`tile_f32_depth_major`] with `V` vectors of rows (`rows` ≤ 16·V).
    #[target_feature(enable = "avx512f")]
    unsafe fn tile_depth_major<const V: usize>(
        a: &[u32],
        (b, ldb): (*const f32, usize),
        (ct, ldt): (*mut f32, usize),
        (rows, cols): (usize, usize),
        accumulate: bool,
    ) {
        let depth = a.len() / TN_MR;
        // Once per tile, not per element: the loads below trust it.
        assert!(a.len() == depth * TN_MR && rows <= 16 * V);
        let masks: [u16; V] = lane_masks(rows);
        let col: [usize; TN_NR] = std::array::from_fn(|j| if j < cols { j } else { 0 });
        prefetch::<V>(ct, cols, ldt);
        let mut acc = [[_mm512_setzero_ps(); V]; TN_NR];
        for p in 0..depth {
            // SAFETY: depth p's lanes lie in the strip (asserted above).
            let (ap, bp) = (
                unsafe { a.as_ptr().add(p * TN_MR) },
                b.wrapping_add(p * ldb),
            );
            let mut av = [_mm512_setzero_ps(); V];
            for (v, av) in av.iter_mut().enumerate() {
                // SAFETY: V ≤ TN_V vectors of depth p's TN_MR lanes (asserted
                // above); lanes past `rows` hold zeros.
                *av = unsafe { _mm512_loadu_ps(ap.add(16 * v).cast()) };
            }
            for (acc, &j) in acc.iter_mut().zip(&col) {
                // SAFETY: column j < cols of B at depth p.
                let bj = unsafe { _mm512_set1_ps(*bp.add(j)) };
                for (acc, &av) in acc.iter_mut().zip(&av) {
                    *acc = _mm512_fmadd_ps(av, bj, *acc);
                }
            }
        }
        for (j, acc) in acc.iter().enumerate().take(cols) {
            for (v, &sum) in acc.iter().enumerate() {
                // SAFETY: the lanes under the mask are elements of Cᵀ's column j.
                unsafe {
                    let p = ct.add(j * ldt + 16 * v);
                    let sum = if accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(masks[v], p), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(p, masks[v], sum);
                }
            }
        }
    }

    /// The same over bfloat16 pairs.
    #[target_feature(enable = "avx512f,avx512bf16")]
    pub(super) unsafe fn tile_bf16<const V: usize>(a: &[u32], b: &[u32], tile: Tile) {
        let pairs = a.len() / MR;
        // Once per tile, not per element: the loads below trust it.
        assert!(b.len() == pairs * NR && a.len() == pairs * MR);
        prefetch::<V>(tile.c, tile.rows, tile.ld);
        let mut acc = [[_mm512_setzero_ps(); V]; MR];
        for p in 0..pairs {
            let bp = unsafe { b.as_ptr().add(p * NR) };
            let mut bv = [bh(_mm512_setzero_ps()); V];
            for (v, bv) in bv.iter_mut().enumerate() {
                *bv = bh(unsafe { _mm512_loadu_ps(bp.add(16 * v).cast()) });
            }
            for (i, acc) in acc.iter_mut().enumerate() {
                // SAFETY: lane p·MR + i < a.len() (asserted above).
                let lane = unsafe { *a.as_ptr().add(p * MR + i) };
                let av = bh(_mm512_castsi512_ps(_mm512_set1_epi32(lane as i32)));
                for (acc, &bv) in acc.iter_mut().zip(&bv) {
                    *acc = _mm512_dpbf16_ps(*acc, av, bv);
                }
            }
        }
        unsafe { store(&acc, tile) };
    }

    /// `acc[i] += a(i) · bv` for every row i of the tile: one depth of an f32 tile.
    /// Inlined into the tile kernels, as [`store`] is.
    #[inline(always)]
    fn fma_rows<const V: usize>(
        acc: &mut [[__m512; V]; MR],
        bv: &[__m512; V],
        a: impl Fn(usize) -> f32,
    ) {
        for (i, acc) in acc.iter_mut().enumerate() {
            // SAFETY (both intrinsics): inlined only into the AVX-512F tile kernels.
            let av = unsafe { _mm512_set1_ps(a(i)) };
            for (acc, &bv) in acc.iter_mut().zip(bv) {
                *acc = unsafe { _mm512_fmadd_ps(av, bv, *acc) };
            }
        }
    }

    /// Runs of values, one per depth p < `depth` (`run(p)`, all of one length), dealt
    /// out to panels of `W` ≤ 16 lanes, each `[depth][W]`: lane i of panel r at depth
    /// p is value `r·W + i` of run p; the last panel's lanes past the runs' end are
    /// left as they were. Eight depths at a time, each panel's lanes at those depths
    /// (a few whole lines) written together, each part of a run moved by one masked
    /// load and one masked store. A depth at a time wrote a part to every panel,
    /// `depth·W` lanes apart: at a power of two (6 · 128 · 4 bytes is 48 lines) the
    /// panels fell in 4 of the 64 L1 sets, and nearly every store missed. Weight
    /// gradients on 2 threads (Ice Lake Xeon): a tanh RNN 2×512's `dW_hh` (512 × 6400
    /// · 6400 × 512) 244 → 265 GFLOP/s, LSTM 2×512's 265 → 274.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn deal_runs<'a, const W: usize>(
        depth: usize,
        run: impl Fn(usize) -> &'a [f32],
        out: &mut [u32],
    ) {
        const DEPTHS: usize = 8;
        assert!(W <= 16);
        for p0 in (0..depth).step_by(DEPTHS) {
            let p1 = depth.min(p0 + DEPTHS);
            let runs: [&[f32]; DEPTHS] =
                std::array::from_fn(|d| if p0 + d < p1 { run(p0 + d) } else { &[] });
            let len = runs[0].len();
            let panels = len.div_ceil(W);
            // Once per block of depths: the loads and stores below trust it.
            assert!(runs[..p1 - p0].iter().all(|r| r.len() == len));
            assert!(panels == 0 || ((panels - 1) * depth + p1 - 1) * W + W <= out.len());
            for r in 0..panels {
                let [mask]: [u16; 1] = lane_masks((len - r * W).min(W));
                for (d, run) in runs[..p1 - p0].iter().enumerate() {
                    // SAFETY: the lanes under the mask are values r·W.. of the run and
                    // lanes of panel r at depth p0 + d (asserted above).
                    unsafe {
                        let v = _mm512_maskz_loadu_ps(mask, run.as_ptr().add(r * W));
                        let at = out.as_mut_ptr().add((r * depth + p0 + d) * W);
                        _mm512_mask_storeu_ps(at.cast(), mask, v);
                    }
                }
            }
        }
    }

    /// How many depths ahead [`tile_f32_a_rows`] prefetches its panel of `B`.
    const PF_DEPTH: usize = 16;

    /// Prefetches `V` vectors on each of `lines` lines `ld` apart from `c`: a tile's
    /// elements of C (or `Cᵀ`), which the tile adds to or writes, while its sums run
    /// (a product's C is often larger than the L2 cache: the input projection of LSTM
    /// 2×512, 6400 × 512 · 512 × 2048, 213 → 248 GFLOP/s), or a panel of `B` ahead.
    #[inline(always)]
    fn prefetch<const V: usize>(c: *const f32, lines: usize, ld: usize) {
        for i in 0..lines {
            for v in 0..V {
                // SAFETY: a prefetch, never a fault.
                unsafe { _mm_prefetch::<_MM_HINT_T0>(c.wrapping_add(i * ld + 16 * v).cast()) };
            }
        }
    }

    /// Adds or writes the accumulators to the tile's elements of C, masked at its edges.
    /// Inlined into the tile kernels (their AVX-512 context): a call would spill the
    /// 24 accumulators to memory.
    #[inline(always)]
    unsafe fn store<const V: usize>(acc: &[[__m512; V]; MR], tile: Tile) {
        for (i, acc) in acc.iter().enumerate().take(tile.rows) {
            for (v, &sum) in acc.iter().enumerate() {
                let j0 = 16 * v;
                if j0 >= tile.cols {
                    break;
                }
                let mask = first_lanes(tile.cols - j0);
                // SAFETY: element (i, j0 + lane) of the tile for every lane in the mask.
                unsafe {
                    let p = tile.c.add(i * tile.ld + j0);
                    let sum = if tile.accumulate {
                        _mm512_add_ps(_mm512_maskz_loadu_ps(mask, p), sum)
                    } else {
                        sum
                    };
                    _mm512_mask_storeu_ps(p, mask, sum);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    /// A bf16 weight gradient `dgᵀ·x` from `dg`'s panels, written a few rows at a
    /// time as a backward pass writes them (blocks of a timestep in any order, from
    /// several threads), gives the bits of the product that packs `dgᵀ` itself: on
    /// streaming whole lines (even depths, rows in fours) and not (odd depths, a pair
    /// left over, a width that is not a multiple of 16 or of 8).
    #[test]
    fn dg_panels_give_the_packed_products_bits() {
        if !dg_panels_supported() {
            return;
        }
        let mut rng = Rng::new(8);
        // (columns of dg, rows of x's width, timesteps, rows per timestep, blocks).
        for &(m, n, steps, batch, blocks) in &[
            (2048, 512, 7, 64, 2),
            (37, 20, 9, 6, 3),
            (100, 49, 5, 2, 1),
            (64, 48, 3, 12, 2),
            (24, 33, 40, 4, 2),
        ] {
            let k = steps * batch;
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
            };
            let (dg, x) = (random(k * m), random(k * n));
            let mut panels = DgPanels::default();
            // A larger use first: stale lanes from it must not matter.
            let _ = panels.prepare(k + 2 * batch, m + 8);
            let writer = panels.prepare(k, m);
            let share = batch / blocks;
            (0..blocks).into_par_iter().for_each(|b| {
                for t in (0..steps).rev() {
                    let first = t * batch + b * share;
                    let rows = &dg[first * m..(first + share) * m];
                    // SAFETY: each block writes its own rows.
                    unsafe { writer.write(rows, first) };
                }
            });
            for accumulate in [false, true] {
                let (mut want, mut got) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
                let (dgm, xm) = (MatRef::dense(&dg, k, m).t(), MatRef::dense(&x, k, n));
                matmul_packed(
                    MatMut::dense(&mut want, m, n),
                    dgm,
                    xm,
                    accumulate,
                    Precision::Bf16,
                );
                matmul_dg_panels(MatMut::dense(&mut got, m, n), &panels, xm, accumulate);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                assert!(bits(&got) == bits(&want), "m{m} n{n} k{k} acc{accumulate}");
            }
        }
    }

    /// Panels of an odd depth, or rows outside them, are refused.
    #[test]
    fn dg_panels_refuse_odd_rows() {
        let mut panels = DgPanels::default();
        assert!(std::panic::catch_unwind(move || {
            let _ = panels.prepare(3, 8);
        })
        .is_err());
        let mut panels = DgPanels::default();
        let writer = panels.prepare(4, 8);
        let rows = [0.0f32; 16];
        // SAFETY: one thread.
        assert!(std::panic::catch_unwind(|| unsafe { writer.write(&rows, 1) }).is_err());
        assert!(std::panic::catch_unwind(|| unsafe { writer.write(&rows, 4) }).is_err());
    }

    /// Every shape and transpose, accumulating or not, against sums in f64 of the
    /// operands as the products see them (bf16: rounded), within `1e-5·√k`. f32
    /// packs `B` once; bf16 packs both on the fly.
    fn check(precision: Precision) {
        let seen = |v: f32| match precision {
            Precision::F32 => v as f64,
            Precision::Bf16 => f32::from_bits(u32::from(to_bf16(v)) << 16) as f64,
        };
        let mut rng = Rng::new(4);
        for &(m, n, k) in &[
            (1, 1, 1),
            (3, 5, 7),
            (8, 48, 512),
            (9, 48, 300),
            (33, 100, 515),
            (200, 49, 3),
            // A last panel of two vectors (a narrower tile).
            (17, 80, 40),
            // Two row blocks of MC, 16-wide transposes and a tail, several depth blocks.
            (401, 50, 293),
            // Several blocks of B packed on the fly (DEPTH_BLOCK); bf16 rows of
            // whole 32-value runs and an odd tail, column runs of 16 rows and a rest.
            (20, 50, 2100),
            (21, 17, 64),
            (37, 20, 97),
        ] {
            for (ta, tb) in [(false, false), (true, true)] {
                let mut random = |len: usize| -> Vec<f32> {
                    (0..len).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
                };
                let (a, b) = (random(m * k), random(k * n));
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
                    let out = MatMut::dense(&mut c, m, n);
                    // f32 both ways: B packed once, and packed on the fly.
                    if precision == Precision::Bf16 || (m + n + k) % 2 == 0 {
                        matmul_packed(out, am, bm, accumulate, precision);
                    } else {
                        let mut packed = PackedB::default();
                        packed.pack(bm, precision);
                        gemm_packed(out, am, &packed, accumulate);
                    }
                    for i in 0..m {
                        for j in 0..n {
                            let want = f64::from(accumulate)
                                + (0..k)
                                    .map(|p| {
                                        seen(am.data[i * am.rs + p * am.cs])
                                            * seen(bm.data[p * bm.rs + j * bm.cs])
                                    })
                                    .sum::<f64>();
                            let got = c[i * n + j] as f64;
                            assert!(
                                (got - want).abs() <= 1e-5 * (k as f64).sqrt(),
                                "{precision:?} m{m} n{n} k{k} ta{ta} acc{accumulate} [{i},{j}]: {got} vs {want}"
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn packed_f32_products_agree_with_f64() {
        if packed_supported(Precision::F32) {
            check(Precision::F32);
        }
    }

    /// A per-step product sweeps B's panels forward and backward in turn, and a
    /// product of more rows takes them block of depth by block: every tile sums the
    /// same depths in the same order, so all three give the same bits.
    #[test]
    fn sweeps_and_blocks_give_the_same_bits() {
        if !packed_supported(Precision::F32) {
            return;
        }
        // Past one block of depth read in place.
        let (m, n, k) = (40, 100, IN_PLACE_KC + 100);
        let mut rng = Rng::new(6);
        let mut random = |len: usize| -> Vec<f32> {
            (0..len).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
        };
        let (a, b, c0) = (random(5 * m * k), random(k * n), random(5 * m * n));
        let mut packed = PackedB::default();
        packed.pack(MatRef::dense(&b, k, n), Precision::F32);
        let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        for accumulate in [false, true] {
            let product = |rows: usize| {
                let mut c = c0[..rows * n].to_vec();
                let a = MatRef::dense(&a[..rows * k], rows, k);
                let out = MatMut::dense(&mut c, rows, n);
                crate::kernel::serial(|| gemm_packed(out, a, &packed, accumulate));
                c
            };
            let (first, second, blocks) = (product(m), product(m), product(5 * m));
            assert_eq!(bits(&first), bits(&second), "acc {accumulate}");
            assert_eq!(bits(&first), bits(&blocks[..m * n]), "acc {accumulate}");
        }
    }

    #[test]
    fn products_reading_b_in_place_agree_with_f64() {
        if !packed_supported(Precision::F32) {
            return;
        }
        let mut rng = Rng::new(5);
        // Tails of rows and columns (narrow last strips of 1 and 2 vectors), two row
        // and depth blocks; B the last columns of a wider matrix, so its last row ends
        // where the data does (masked loads).
        for &(m, n, k, wide) in &[
            (2, 1, 1, 1),
            (3, 5, 7, 9),
            (8, 48, 256, 48),
            (17, 100, 300, 130),
            (64, 49, 513, 97),
            (200, 113, 1030, 120),
        ] {
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
            };
            let (a, b) = (random(m * k), random(k * wide));
            let am = MatRef::dense(&a, m, k);
            let bm = MatRef::new(&b[wide - n..], k, n, wide);
            for accumulate in [false, true] {
                let mut c = vec![1.0f32; m * n];
                assert!(gemm_rows_f32(
                    &mut MatMut::dense(&mut c, m, n),
                    am,
                    bm,
                    accumulate
                ));
                for i in 0..m {
                    for j in 0..n {
                        let want = f64::from(accumulate)
                            + (0..k)
                                .map(|p| a[i * k + p] as f64 * b[p * wide + wide - n + j] as f64)
                                .sum::<f64>();
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f64).sqrt(),
                            "m{m} n{n} k{k} acc{accumulate} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn depth_major_products_agree_with_f64() {
        if !packed_supported(Precision::F32) {
            return;
        }
        let mut rng = Rng::new(6);
        // Tails of every tile dimension (64 rows in 1 to 4 vectors, 6 columns, 128
        // depths), row and column splits between threads, and both operands the
        // last columns of wider matrices (A's last element ends its data; B read
        // under its row stride).
        for &(m, n, k, extra) in &[
            (1, 1, 1, 0),
            (3, 5, 7, 2),
            (64, 6, 256, 0),
            (84, 7, 129, 1),
            (65, 13, 257, 3),
            (300, 50, 520, 5),
            (40, 700, 300, 1),
        ] {
            let mut random = |len: usize| -> Vec<f32> {
                (0..len).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect()
            };
            let (lda, ldb) = (m + extra, n + extra);
            let (a, b) = (random(k * lda), random(k * ldb));
            // A [m, k] column-major: element (i, p) at a[extra + p·lda + i].
            let am = MatRef::new(&a[extra..], k, m, lda).t();
            let bm = MatRef::new(&b[extra..], k, n, ldb);
            for accumulate in [false, true] {
                let mut c = vec![1.0f32; m * n];
                let mut out = MatMut::dense(&mut c, m, n);
                assert!(gemm_depth_major_f32(&mut out, am, bm, accumulate));
                for i in 0..m {
                    for j in 0..n {
                        let want = f64::from(accumulate)
                            + (0..k)
                                .map(|p| {
                                    a[extra + p * lda + i] as f64 * b[extra + p * ldb + j] as f64
                                })
                                .sum::<f64>();
                        let got = c[i * n + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-5 * (k as f64).sqrt(),
                            "m{m} n{n} k{k} acc{accumulate} [{i},{j}]: {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn bf16_products_agree_with_f64_sums_of_the_rounded_operands() {
        if bf16_supported() {
            check(Precision::Bf16);
        }
    }
}
