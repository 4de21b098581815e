//! Weight matrices laid out for batch-1 products `y = W·x` (sampling, one stream):
//! rows in groups of 16, each group stored column after column, 64 bytes per
//! column step. A group is then one sequential stream from memory, read at the speed
//! of a plain sum, and its 16 results are the lanes of one register, with no
//! horizontal sums. A lane holds one f32 weight per step, two bfloat16 weights of
//! consecutive columns (the pairs `vdpbf16ps` sums), or four int8 weights (the
//! quads of `vpdpbusd`).
//!
//! int8 weights are quantised symmetrically per row (`w ≈ s_i·q_ij`, `q ∈ [−127,
//! 127]`), the vector asymmetrically per call (`x ≈ s_x·(u_j − 128)`, `u ∈ [1,
//! 255]`), so that `w_i·x ≈ s_i·s_x·(Σ_j q_ij·u_j − 128·Σ_j q_ij)`, the row sums kept
//! with the rows.

use super::lanes::{Line, LINE_LANES};
use super::{to_bf16, Precision};

mod lstm;
pub(crate) use lstm::LstmShare;

/// How batch-1 products hold the weight matrices they stream at every step.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Weights {
    /// As trained: logits match the model's forward pass to rounding.
    #[default]
    F32,
    /// bfloat16: half the bytes; logits within about 1 % of f32.
    Bf16,
    /// 8-bit integers with a scale per row, the vector quantised to 8 bits at each
    /// product (AVX-512 VNNI, or AVX2): a quarter of the bytes; slower than f32 on a
    /// CPU with neither.
    Int8,
}

impl From<Precision> for Weights {
    fn from(p: Precision) -> Weights {
        match p {
            Precision::F32 => Weights::F32,
            Precision::Bf16 => Weights::Bf16,
        }
    }
}

/// The order in which a product reads its groups of rows: first to last, or last to
/// first. Each group's sum is the same either way, so the results are identical.
///
/// Why it matters: a stepper whose weights are larger than its cores' caches evicts,
/// reading them in the same order at every character, each line just before it is
/// read again. Reading in alternate directions finds the lines read last still in
/// the cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Sweep {
    /// First group to last.
    #[default]
    Forward,
    /// Last group to first.
    Backward,
}

impl Sweep {
    /// The other direction.
    pub(crate) fn flip(self) -> Sweep {
        match self {
            Sweep::Forward => Sweep::Backward,
            Sweep::Backward => Sweep::Forward,
        }
    }

    /// `0..n` in this direction.
    pub(crate) fn order(self, n: usize) -> impl Iterator<Item = usize> {
        (0..n).map(move |i| match self {
            Sweep::Forward => i,
            Sweep::Backward => n - 1 - i,
        })
    }
}

/// How many groups of rows the AVX-512 f32 and int8 products stream at once.
///
/// Four groups share each step's broadcast of `x` (a line costs one instruction,
/// the multiply-add reading it, instead of two); one keeps a single stream of lines
/// in flight. Which is faster depends on the CPU and on where the weights come
/// from: on a Zen 4 (LSTM 2×512 from L3) four sampled 4 % faster in f32 and 3–10 %
/// in int8; on a Zen 5 one sampled 5 % faster in f32 and 2 % in int8 there, and
/// 17 % in f32 for LSTM 1×128, whose weights stream from L2. So a stepper times
/// both on its first characters. Each group's chains and sums are the same either
/// way, so the results are too. The bf16 and AVX2 kernels always stream one (bf16
/// ran 2–7 % slower with four on both CPUs; AVX2's chains of one group take half
/// of its registers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Streams {
    /// One group at a time.
    #[default]
    One,
    /// Four groups at a time, sharing each broadcast of `x` (for an f32 LSTM step,
    /// a group of every gate, with the cell's update between: `Panels::lstm_f32`).
    Four,
}

/// How a product reads its groups of rows: in which order, and how many at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Pass {
    /// The order of the groups.
    pub(crate) sweep: Sweep,
    /// How many groups stream at once.
    pub(crate) streams: Streams,
}

/// Whether [`Streams`] changes how this CPU's kernel for `weights` runs (AVX-512
/// f32, or int8 on VNNI); elsewhere a product streams one group at a time.
pub(crate) fn streams_matter(weights: Weights) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        group_kernel(weights).is_some_and(|k| k.four)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = weights;
        false
    }
}

/// Rows per group: the f32 lanes of one AVX-512 register (a column step of a group
/// is one [`Line`]).
pub(crate) const GROUP: usize = LINE_LANES;

impl Weights {
    /// Columns packed into one lane of a [`Line`].
    fn per_lane(self) -> usize {
        match self {
            Weights::F32 => 1,
            Weights::Bf16 => 2,
            Weights::Int8 => 4,
        }
    }
}

/// A matrix `[blocks · rows_per_block, cols]` in the panel layout, each block of rows
/// (a gate's rows) padded to whole groups so that every block starts a group.
#[derive(Clone, Debug)]
pub(crate) struct Panels {
    lines: Vec<Line>,
    weights: Weights,
    blocks: usize,
    block_rows: usize,
    groups_per_block: usize,
    /// Column steps per group: `cols` over the columns per lane, rounded up.
    steps: usize,
    /// int8: each row's scale and the sum of its quantised weights.
    scale: Vec<f32>,
    sum: Vec<i32>,
}

/// A vector prepared for [`Panels::dot`] in the panels' precision: the f32 values
/// padded to whole steps, and their bfloat16 roundings (where `vdpbf16ps` reads
/// them) or their 8-bit levels and scale. Kept in order, so that a lane's pair or
/// quad is 4 consecutive bytes.
#[derive(Clone, Debug, Default)]
pub(crate) struct PanelVector {
    values: Vec<f32>,
    half: Vec<u16>,
    levels: Vec<u8>,
    scale: f32,
    weights: Weights,
}

impl Panels {
    /// Lays out the row-major `w` of `cols` columns, whose rows form `blocks` equal
    /// blocks, in `weights`' precision.
    ///
    /// # Panics
    /// Unless `w.len()` is a multiple of `blocks · cols` (both nonzero).
    pub(crate) fn new(w: &[f32], cols: usize, blocks: usize, weights: Weights) -> Panels {
        assert!(
            cols > 0 && blocks > 0 && w.len().is_multiple_of(cols * blocks),
            "panels of {} weights in {blocks} blocks of {cols} columns",
            w.len()
        );
        let rows = w.len() / cols;
        let block_rows = rows / blocks;
        let groups_per_block = block_rows.div_ceil(GROUP);
        let steps = cols.div_ceil(weights.per_lane());
        let mut p = Panels {
            lines: vec![Line::default(); blocks * groups_per_block * steps],
            weights,
            blocks,
            block_rows,
            groups_per_block,
            steps,
            scale: Vec::new(),
            sum: Vec::new(),
        };
        if weights == Weights::Int8 {
            p.scale = w.chunks_exact(cols).map(scale_of).collect();
            p.sum = vec![0; rows];
        }
        for (r, row) in w.chunks_exact(cols).enumerate() {
            let (b, i) = (r / block_rows, r % block_rows);
            let first = (b * groups_per_block + i / GROUP) * steps;
            let lane = i % GROUP;
            let lines = &mut p.lines[first..first + steps];
            match weights {
                Weights::F32 => {
                    for (line, &v) in lines.iter_mut().zip(row) {
                        line.0[lane] = v.to_bits();
                    }
                }
                Weights::Bf16 => {
                    for (line, pair) in lines.iter_mut().zip(row.chunks(2)) {
                        let hi = pair.get(1).map_or(0, |&v| to_bf16(v));
                        line.0[lane] = u32::from(to_bf16(pair[0])) | u32::from(hi) << 16;
                    }
                }
                Weights::Int8 => {
                    let inv = 1.0 / p.scale[r];
                    let mut total = 0i32;
                    for (line, quad) in lines.iter_mut().zip(row.chunks(4)) {
                        let mut bytes = [0u8; 4];
                        for (b, &v) in bytes.iter_mut().zip(quad) {
                            let q = (v * inv).round().clamp(-127.0, 127.0) as i8;
                            total += i32::from(q);
                            *b = q as u8;
                        }
                        line.0[lane] = u32::from_le_bytes(bytes);
                    }
                    p.sum[r] = total;
                }
            }
        }
        p
    }

    /// The bytes the panels hold (those a product of all their rows reads).
    pub(crate) fn bytes(&self) -> usize {
        std::mem::size_of_val(&self.lines[..])
    }

    /// `y[i] = row(j0 + i) of block b · x` (+ `bias[i]`), for `y.len()` rows from a
    /// multiple of [`GROUP`], reading the groups of rows as `pass` says.
    ///
    /// # Panics
    /// If `j0` is not a multiple of [`GROUP`], the rows run past the block, or `x`
    /// was prepared for another precision or length.
    pub(crate) fn dot(
        &self,
        b: usize,
        j0: usize,
        x: &PanelVector,
        bias: Option<&[f32]>,
        y: &mut [f32],
        pass: Pass,
    ) {
        let m = y.len();
        assert!(
            j0.is_multiple_of(GROUP) && j0 + m <= self.block_rows && b < self.blocks,
            "rows {j0}..{} of block {b} outside the panels' blocks of {}",
            j0 + m,
            self.block_rows
        );
        let first = (b * self.groups_per_block + j0 / GROUP) * self.steps;
        self.dot_lines(first, b * self.block_rows + j0, x, bias, y, pass);
    }

    /// [`Panels::dot`] of rows `j0..j0 + m` of each block of `blocks`, into `y`
    /// (`[blocks.len(), m]`), with `bias` (if any) as long as the panels' rows, read
    /// at the rows taken. One pass over the rows where they are whole blocks of whole
    /// groups (a stepper on one thread: each call took about 17 ns, 5 % of LSTM
    /// 1×128's four gates), else one product a block; the blocks in the pass's order.
    ///
    /// # Panics
    /// As [`Panels::dot`], or if `y` is not `blocks.len()` rows of equal length.
    pub(crate) fn dot_blocks(
        &self,
        blocks: std::ops::Range<usize>,
        j0: usize,
        x: &PanelVector,
        bias: Option<&[f32]>,
        y: &mut [f32],
        pass: Pass,
    ) {
        let n = blocks.len();
        let m = y.len() / n.max(1);
        assert!(
            n > 0 && y.len() == n * m && blocks.end <= self.blocks,
            "{} outputs for blocks {blocks:?} of {}",
            y.len(),
            self.blocks
        );
        if j0 == 0 && m == self.block_rows && m.is_multiple_of(GROUP) {
            let r = blocks.start * m;
            let bias = bias.map(|b| &b[r..r + n * m]);
            self.dot_lines(
                blocks.start * self.groups_per_block * self.steps,
                r,
                x,
                bias,
                y,
                pass,
            );
            return;
        }
        for k in pass.sweep.order(n) {
            let (b, out) = (blocks.start + k, &mut y[k * m..][..m]);
            let r = b * self.block_rows + j0;
            self.dot(b, j0, x, bias.map(|v| &v[r..r + m]), out, pass);
        }
    }

    /// # Panics
    /// If `x` was prepared for another precision or length.
    fn check(&self, x: &PanelVector) {
        assert!(
            x.weights == self.weights && x.values.len() == self.steps * self.weights.per_lane(),
            "vector prepared for other panels"
        );
    }

    /// The product of the groups from line `first` on, for rows `r..r + y.len()`
    /// (`y.len().div_ceil(GROUP)` groups), finished (see [`finish_rows`]).
    ///
    /// # Panics
    /// If `x` was prepared for another precision or length.
    fn dot_lines(
        &self,
        first: usize,
        r: usize,
        x: &PanelVector,
        bias: Option<&[f32]>,
        y: &mut [f32],
        pass: Pass,
    ) {
        self.check(x);
        let m = y.len();
        let lines = &self.lines[first..first + m.div_ceil(GROUP) * self.steps];
        let centred = dot_groups(self.weights, lines, self.steps, x, y, pass);
        let offset = if centred { 0.0 } else { 128.0 };
        let int8 = (self.weights == Weights::Int8)
            .then(|| (&self.scale[r..r + m], &self.sum[r..r + m], x.scale, offset));
        finish_rows(y, int8, bias.unwrap_or(&[]));
    }
}

simd_variant! {
    /// `y`'s sums made outputs: int8 sums taken back to the scale of the rows and the
    /// vector (`int8`: the rows' scales and sums, the vector's scale, and the level the
    /// sums count from: 128 for `Σ q·u`, 0 for `Σ q·(u − 128)`), then `bias` added (as
    /// long as `y`, or empty). It runs after every product of a sampled character (in
    /// SSE, a tenth of a small int8 model's time).
    fn finish_rows(y: &mut [f32], int8: Option<(&[f32], &[i32], f32, f32)>, bias: &[f32]) {
        if let Some((scale, sum, x_scale, offset)) = int8 {
            for ((y, &s), &sum) in y.iter_mut().zip(scale).zip(sum) {
                *y = s * x_scale * (*y - offset * sum as f32);
            }
        }
        for (y, &b) in y.iter_mut().zip(bias) {
            *y += b;
        }
    }
}

impl PanelVector {
    /// Prepares `x` for panels of `weights` (no allocation once it has held a
    /// vector as long).
    pub(crate) fn set(&mut self, x: &[f32], weights: Weights) {
        let per = weights.per_lane();
        let steps = x.len().div_ceil(per);
        self.weights = weights;
        self.values.clear();
        self.values.extend_from_slice(x);
        self.values.resize(steps * per, 0.0);
        self.half.clear();
        self.levels.clear();
        match weights {
            Weights::F32 => {}
            // Rounded for `vdpbf16ps` alone: the other bf16 products widen the
            // weights and keep `x` in f32.
            Weights::Bf16 if super::bf16_supported() => {
                self.half.resize(self.values.len(), 0);
                halves_of(&self.values, &mut self.half);
            }
            Weights::Bf16 => {}
            Weights::Int8 => {
                self.scale = scale_of(x);
                self.levels.resize(self.values.len(), 0);
                levels_of(&self.values, 1.0 / self.scale, &mut self.levels);
            }
        }
    }
}

simd_variant! {
    /// The bfloat16 rounding of each value into `half`. Written to vectorise: it runs
    /// on every vector of a sampled character's bf16 products (scalar, 2 % of them).
    fn halves_of(values: &[f32], half: &mut [u16]) {
        for (h, &v) in half.iter_mut().zip(values) {
            *h = to_bf16(v);
        }
    }
}

simd_variant! {
    /// The int8 level `u` of each value (`v ≈ s·(u − 128)`, `inv` = 1/s) into `levels`.
    fn levels_of(values: &[f32], inv: f32, levels: &mut [u8]) {
        for (u, &v) in levels.iter_mut().zip(values) {
            // v·inv lies in [−127, 127] (NaN is taken to level 1 by `max`); adding 2^23
            // rounds it to the nearest level in the low mantissa bits. A float-to-int
            // cast would do the same, but scalar.
            #[allow(clippy::manual_clamp)] // `clamp` would keep a NaN
            let level = (v * inv + 128.0).max(1.0).min(255.0) + 8_388_608.0;
            *u = level.to_bits() as u8;
        }
    }
}

simd_variant! {
    /// The step between levels that maps the largest magnitude of `x` to 127 (1 for
    /// an all-zero or non-finite `x`). Written to vectorise: it runs before every int8
    /// product of a sampled character.
    fn scale_of(x: &[f32]) -> f32 {
        let top = super::largest(x, 0.0, f32::abs);
        if top > 0.0 && top.is_finite() {
            top / 127.0
        } else {
            1.0
        }
    }
}

/// Whether int8 products run on AVX-512 VNNI here.
#[cfg(target_arch = "x86_64")]
fn vnni_supported() -> bool {
    use std::arch::is_x86_feature_detected as has;
    crate::kernel::avx512_enabled() && has!("avx512bw") && has!("avx512vnni")
}

/// Whether int8 products run a SIMD kernel here (AVX-512 VNNI, or AVX2); elsewhere
/// a portable loop, slower than f32.
pub fn int8_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::is_x86_feature_detected as has;
        vnni_supported() || has!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// A group kernel: `(lines, steps, x, y, pass)` as [`dot_groups`] takes them.
#[cfg(target_arch = "x86_64")]
type Kernel = unsafe fn(&[Line], usize, &PanelVector, &mut [f32], Pass);

/// This CPU's SIMD kernel for products of `weights`, and how it runs.
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct GroupKernel {
    run: Kernel,
    /// It streams four groups at once when the pass asks (see [`Streams`]).
    four: bool,
    /// Its int8 sums count the vector's levels from 128 (`Σ q·(u − 128)`).
    centred: bool,
}

/// The SIMD kernel for `weights` on this CPU; `None` where the portable loop runs.
#[cfg(target_arch = "x86_64")]
fn group_kernel(weights: Weights) -> Option<GroupKernel> {
    use std::arch::is_x86_feature_detected as has;
    let avx2 = has!("avx2") && has!("fma");
    let (run, four, centred): (Kernel, bool, bool) = match weights {
        Weights::F32 if crate::kernel::avx512_enabled() => (avx512::f32_groups, true, false),
        Weights::Bf16 if super::bf16_supported() => (avx512::dpbf16_groups, false, false),
        Weights::Bf16 if crate::kernel::avx512_enabled() => (avx512::bf16_groups, false, false),
        Weights::F32 if avx2 => (avx2::f32_groups, false, false),
        Weights::Bf16 if avx2 => (avx2::bf16_groups, false, false),
        Weights::Int8 if vnni_supported() => (avx512::vnni_groups, true, false),
        Weights::Int8 if has!("avx2") => (avx2::int8_groups, false, true),
        _ => return None,
    };
    Some(GroupKernel { run, four, centred })
}

/// The groups of `lines` (`steps` lines each) times `x` into `y` (int8: the raw
/// integer sums, as f32), read as `pass` says. Returns whether int8 sums count
/// the vector's levels from 128 (`Σ q·(u − 128)`, the AVX2 kernel's) rather than 0.
fn dot_groups(
    weights: Weights,
    lines: &[Line],
    steps: usize,
    x: &PanelVector,
    y: &mut [f32],
    pass: Pass,
) -> bool {
    #[cfg(target_arch = "x86_64")]
    if let Some(kernel) = group_kernel(weights) {
        // SAFETY: the CPU has the kernel's features; `lines` holds
        // `y.len().div_ceil(GROUP)` groups of `steps` lines and `x` is prepared for
        // `steps` steps (both checked by the caller).
        unsafe { (kernel.run)(lines, steps, x, y, pass) };
        return kernel.centred;
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = pass; // the portable loop reads the groups in order, one at a time
    dot_groups_ref(weights, lines, steps, x, y);
    false
}

/// The portable loop of [`dot_groups`] (bfloat16 weights widened exactly, `x` kept f32).
fn dot_groups_ref(weights: Weights, lines: &[Line], steps: usize, x: &PanelVector, y: &mut [f32]) {
    for (g, y) in y.chunks_mut(GROUP).enumerate() {
        let group = &lines[g * steps..][..steps];
        for (lane, y) in y.iter_mut().enumerate() {
            *y = match weights {
                Weights::F32 => group
                    .iter()
                    .zip(&x.values)
                    .map(|(l, &x)| f32::from_bits(l.0[lane]) * x)
                    .sum(),
                Weights::Bf16 => group
                    .iter()
                    .zip(x.values.chunks_exact(2))
                    .map(|(l, x)| {
                        let w = l.0[lane];
                        f32::from_bits(w << 16) * x[0] + f32::from_bits(w & 0xffff_0000) * x[1]
                    })
                    .sum(),
                Weights::Int8 => group
                    .iter()
                    .zip(x.levels.chunks_exact(4))
                    .map(|(l, u)| {
                        let w = l.0[lane].to_le_bytes();
                        (0..4)
                            .map(|e| i32::from(w[e] as i8) * i32::from(u[e]))
                            .sum::<i32>()
                    })
                    .sum::<i32>() as f32,
            };
        }
    }
}

/// Accumulators per group: enough independent chains to cover the latency of the
/// multiply-adds while a group streams.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 4;

/// Runs `step(acc, line, s)` for every step `s` of every group (the chains taking
/// turns), then `finish(sum of the chains, group's outputs)`, the groups in the
/// `sweep`'s order, `N` groups at a time. Inlined into each kernel, whose features
/// it takes.
///
/// Groups taken together share each step's broadcast of `x` (see [`Streams`]). Each
/// group's chains and sums are those of one group at a time, so the results are too.
///
/// # Safety
/// `lines` holds `steps` lines for each group of `y`.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn groups<A: Copy, const N: usize>(
    lines: &[Line],
    steps: usize,
    y: &mut [f32],
    sweep: Sweep,
    zero: A,
    add: impl Fn(A, A) -> A,
    step: impl Fn(A, *const Line, usize) -> A,
    finish: impl Fn(A, &mut [f32]),
) {
    let m = y.len();
    let mut order = sweep.order(m.div_ceil(GROUP));
    let mut store_group = |g: usize, acc: [A; CHAINS]| {
        let sum = add(add(acc[0], acc[1]), add(acc[2], acc[3]));
        finish(sum, &mut y[g * GROUP..m.min(g * GROUP + GROUP)]);
    };
    loop {
        let mut together = [0; N];
        let mut taken = 0;
        for g in order.by_ref().take(N) {
            together[taken] = g;
            taken += 1;
        }
        if taken == N {
            // SAFETY: the caller guarantees `steps` lines for every group.
            let sums = unsafe { chains(lines, together, steps, zero, &step) };
            for (g, acc) in together.into_iter().zip(sums) {
                store_group(g, acc);
            }
        } else {
            for g in together.into_iter().take(taken) {
                // SAFETY: as above.
                let [acc] = unsafe { chains(lines, [g], steps, zero, &step) };
                store_group(g, acc);
            }
            return;
        }
    }
}

/// The chains of groups `gs`, stepped together: step s of every group, then s + 1.
///
/// # Safety
/// `lines` holds `steps` lines for each group of `gs`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn chains<A: Copy, const N: usize>(
    lines: &[Line],
    gs: [usize; N],
    steps: usize,
    zero: A,
    step: &impl Fn(A, *const Line, usize) -> A,
) -> [[A; CHAINS]; N] {
    // SAFETY (for every pointer below): the caller guarantees `steps` lines per group.
    let base = gs.map(|g| unsafe { lines.as_ptr().add(g * steps) });
    let mut acc = [[zero; CHAINS]; N];
    let mut s = 0;
    while steps - s >= CHAINS {
        for c in 0..CHAINS {
            for (a, b) in acc.iter_mut().zip(base) {
                a[c] = step(a[c], unsafe { b.add(s + c) }, s + c);
            }
        }
        s += CHAINS;
    }
    for s in s..steps {
        for (a, b) in acc.iter_mut().zip(base) {
            a[0] = step(a[0], unsafe { b.add(s) }, s);
        }
    }
    acc
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::{groups, Line, PanelVector, Pass, Streams, Sweep};
    use crate::kernel::lanes::first_lanes;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f")]
    fn store(sum: __m512, y: &mut [f32]) {
        // SAFETY: the mask covers the lanes of `y` alone.
        unsafe { _mm512_mask_storeu_ps(y.as_mut_ptr(), first_lanes(y.len()), sum) };
    }

    /// [`groups`] with f32 accumulators, stored as they are, `N` groups at a time.
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn float_groups<const N: usize>(
        lines: &[Line],
        steps: usize,
        y: &mut [f32],
        sweep: Sweep,
        step: impl Fn(__m512, *const Line, usize) -> __m512,
    ) {
        let add = |a, b| _mm512_add_ps(a, b);
        let zero = _mm512_setzero_ps();
        unsafe { groups::<_, N>(lines, steps, y, sweep, zero, add, step, |s, y| store(s, y)) }
    }

    /// f32 weights: `acc += line · broadcast(x[s])`.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn f32_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        let xs = x.values.as_ptr();
        let step = |a, line: *const Line, s| {
            let w = unsafe { _mm512_load_ps(line.cast()) };
            _mm512_fmadd_ps(w, _mm512_set1_ps(unsafe { *xs.add(s) }), a)
        };
        match pass.streams {
            Streams::One => unsafe { float_groups::<1>(lines, steps, y, pass.sweep, step) },
            Streams::Four => unsafe { float_groups::<4>(lines, steps, y, pass.sweep, step) },
        }
    }

    /// bfloat16 pairs by `vdpbf16ps` against `x`'s pairs rounded to bfloat16.
    #[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
    pub(super) unsafe fn dpbf16_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        // Pairs of bfloat16 values, read 4 bytes at a time.
        let xs = x.half.as_ptr().cast::<u32>();
        let step = |a, line: *const Line, s| {
            // SAFETY: both are 64 bytes of lanes; step s's pair lies inside `half`.
            let (w, xv): (__m512bh, __m512bh) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_load_si512(line.cast())),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(
                        xs.add(s).read_unaligned() as i32,
                    )),
                )
            };
            _mm512_dpbf16_ps(a, w, xv)
        };
        unsafe { float_groups::<1>(lines, steps, y, pass.sweep, step) }
    }

    /// bfloat16 pairs widened exactly to f32 (a shift and a mask), times `x` in f32.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn bf16_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        let xs = x.values.as_ptr();
        let step = |a, line: *const Line, s: usize| {
            let w = unsafe { _mm512_load_si512(line.cast()) };
            let even = _mm512_castsi512_ps(_mm512_slli_epi32::<16>(w));
            let odd = _mm512_castsi512_ps(_mm512_and_si512(w, _mm512_set1_epi32(-65536)));
            let a = _mm512_fmadd_ps(even, _mm512_set1_ps(unsafe { *xs.add(2 * s) }), a);
            _mm512_fmadd_ps(odd, _mm512_set1_ps(unsafe { *xs.add(2 * s + 1) }), a)
        };
        unsafe { float_groups::<1>(lines, steps, y, pass.sweep, step) }
    }

    /// int8 quads by `vpdpbusd` (unsigned `x` bytes × signed weights), exact in i32.
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
    pub(super) unsafe fn vnni_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        // Quads of levels, read 4 bytes at a time.
        let xs = x.levels.as_ptr().cast::<u32>();
        let step = |a, line: *const Line, s| {
            let w = unsafe { _mm512_load_si512(line.cast()) };
            // SAFETY: step s's quad lies inside `levels`.
            let quad = unsafe { xs.add(s).read_unaligned() } as i32;
            _mm512_dpbusd_epi32(a, _mm512_set1_epi32(quad), w)
        };
        let finish = |s: __m512i, y: &mut [f32]| store(_mm512_cvtepi32_ps(s), y);
        let (zero, add) = (_mm512_setzero_si512(), |a, b| _mm512_add_epi32(a, b));
        let sweep = pass.sweep;
        match pass.streams {
            Streams::One => unsafe {
                groups::<_, 1>(lines, steps, y, sweep, zero, add, step, finish)
            },
            Streams::Four => unsafe {
                groups::<_, 4>(lines, steps, y, sweep, zero, add, step, finish)
            },
        }
    }
}

/// The kernels for CPUs with AVX2 and FMA but not AVX-512: a line is two registers of
/// 8 lanes, each lane summed in the same order as in `avx512`, so the f32 and
/// widened-bfloat16 results are the same bits.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{groups, Line, PanelVector, Pass, Sweep, GROUP};
    use std::arch::x86_64::*;

    /// A line's 16 lanes.
    type Pair = [__m256; 2];

    /// A group's 16 sums into `y` (as many as it has rows).
    #[target_feature(enable = "avx2")]
    fn store(s: Pair, y: &mut [f32]) {
        let mut lanes = [0.0f32; GROUP];
        // SAFETY: `lanes` holds both registers.
        unsafe {
            _mm256_storeu_ps(lanes.as_mut_ptr(), s[0]);
            _mm256_storeu_ps(lanes.as_mut_ptr().add(8), s[1]);
        }
        y.copy_from_slice(&lanes[..y.len()]);
    }

    /// [`groups`] with f32 accumulators, stored as they are.
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn float_groups(
        lines: &[Line],
        steps: usize,
        y: &mut [f32],
        sweep: Sweep,
        step: impl Fn(Pair, *const Line, usize) -> Pair,
    ) {
        let add = |a: Pair, b: Pair| [_mm256_add_ps(a[0], b[0]), _mm256_add_ps(a[1], b[1])];
        let zero = [_mm256_setzero_ps(); 2];
        // One group at a time: its chains take 8 of the 16 registers.
        unsafe { groups::<_, 1>(lines, steps, y, sweep, zero, add, step, |s, y| store(s, y)) }
    }

    /// f32 weights: `acc += line · broadcast(x[s])`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn f32_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        let xs = x.values.as_ptr();
        let step = |a: Pair, line: *const Line, s: usize| {
            // SAFETY: a line is 64 aligned bytes; step s's value lies inside `values`.
            let (w, xv) = unsafe {
                let w = line.cast::<f32>();
                (
                    [_mm256_load_ps(w), _mm256_load_ps(w.add(8))],
                    _mm256_set1_ps(*xs.add(s)),
                )
            };
            [
                _mm256_fmadd_ps(w[0], xv, a[0]),
                _mm256_fmadd_ps(w[1], xv, a[1]),
            ]
        };
        unsafe { float_groups(lines, steps, y, pass.sweep, step) }
    }

    /// bfloat16 pairs widened exactly to f32 (a shift and a mask), times `x` in f32.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn bf16_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        let xs = x.values.as_ptr();
        let step = |a: Pair, line: *const Line, s: usize| {
            // SAFETY: as in `f32_groups`; step s's pair lies inside `values`.
            let (w, x0, x1) = unsafe {
                let w = line.cast::<__m256i>();
                (
                    [_mm256_load_si256(w), _mm256_load_si256(w.add(1))],
                    _mm256_set1_ps(*xs.add(2 * s)),
                    _mm256_set1_ps(*xs.add(2 * s + 1)),
                )
            };
            let high = _mm256_set1_epi32(-65536);
            let mut out = a;
            for (o, w) in out.iter_mut().zip(w) {
                let even = _mm256_castsi256_ps(_mm256_slli_epi32::<16>(w));
                let odd = _mm256_castsi256_ps(_mm256_and_si256(w, high));
                *o = _mm256_fmadd_ps(odd, x1, _mm256_fmadd_ps(even, x0, *o));
            }
            out
        };
        unsafe { float_groups(lines, steps, y, pass.sweep, step) }
    }

    /// int8 quads without VNNI: `|q|` times the vector's centred levels `u − 128`
    /// given `q`'s signs (`vpmaddubsw` of `vpabsb` and `vpsignb`), the pairs' sums
    /// widened and added by `vpmaddwd`: `Σ q·(u − 128)`, exact (a pair is at most
    /// 2·127·127 in magnitude, inside i16; `u − 128` keeps `vpmaddubsw`'s signed
    /// operand in [−127, 127]).
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn int8_groups(
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        y: &mut [f32],
        pass: Pass,
    ) {
        type Sums = [__m256i; 2];
        let xs = x.levels.as_ptr().cast::<u32>();
        let ones = _mm256_set1_epi16(1);
        let flip = _mm256_set1_epi8(-128);
        let step = |a: Sums, line: *const Line, s: usize| {
            // SAFETY: a line is 64 aligned bytes; step s's quad lies inside `levels`.
            let (w, quad) = unsafe {
                let w = line.cast::<__m256i>();
                (
                    [_mm256_load_si256(w), _mm256_load_si256(w.add(1))],
                    xs.add(s).read_unaligned(),
                )
            };
            // Broadcast from memory, then flipped in the register (no trip through a
            // general-purpose register).
            let centred = _mm256_xor_si256(_mm256_set1_epi32(quad as i32), flip);
            let mut out = a;
            for (o, w) in out.iter_mut().zip(w) {
                let pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(w), _mm256_sign_epi8(centred, w));
                *o = _mm256_add_epi32(*o, _mm256_madd_epi16(pairs, ones));
            }
            out
        };
        let add = |a: Sums, b: Sums| [_mm256_add_epi32(a[0], b[0]), _mm256_add_epi32(a[1], b[1])];
        let finish =
            |s: Sums, y: &mut [f32]| store([_mm256_cvtepi32_ps(s[0]), _mm256_cvtepi32_ps(s[1])], y);
        let zero = [_mm256_setzero_si256(); 2];
        unsafe { groups::<_, 1>(lines, steps, y, pass.sweep, zero, add, step, finish) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn bf16_value(v: f32) -> f64 {
        f32::from_bits(u32::from(to_bf16(v)) << 16) as f64
    }

    /// The AVX2 kernel's sums of `m` rows of `lines` where the CPU has it.
    fn avx2_groups(
        weights: Weights,
        lines: &[Line],
        steps: usize,
        x: &PanelVector,
        m: usize,
    ) -> Option<Vec<f32>> {
        #[cfg(target_arch = "x86_64")]
        {
            use std::arch::is_x86_feature_detected as has;
            let kernel: Kernel = match weights {
                Weights::F32 => avx2::f32_groups,
                Weights::Bf16 => avx2::bf16_groups,
                Weights::Int8 => avx2::int8_groups,
            };
            if cfg!(miri) || !(has!("avx2") && has!("fma")) {
                return None;
            }
            assert!(lines.len() >= m.div_ceil(GROUP) * steps);
            let mut y = vec![f32::NAN; m];
            // SAFETY: the CPU has the features; `lines` holds `steps` lines for each
            // group of `y` (asserted).
            unsafe { kernel(lines, steps, x, &mut y, Pass::default()) };
            Some(y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = (weights, lines, steps, x, m);
            None
        }
    }

    /// Every precision, on every path this CPU has, against the f64 product of the
    /// weights as stored, within the rounding of the vector.
    #[test]
    fn panels_match_the_rows_they_hold() {
        let mut rng = Rng::new(9);
        let sizes: &[(usize, usize, usize)] = if cfg!(miri) {
            &[(1, 1, 1), (3, 5, 1), (34, 9, 2)]
        } else {
            &[
                (1, 1, 1),
                (3, 63, 1),
                (16, 64, 1),
                (17, 65, 1),
                (40, 130, 4),
                (2048, 512, 4),
                (8, 3, 2),
                (100, 70, 1),
                (117, 33, 2),
            ]
        };
        for &(rows, cols, blocks) in sizes {
            let w: Vec<f32> = (0..rows * cols * blocks)
                .map(|_| rng.uniform_in(-0.5, 0.5) as f32)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
                let p = Panels::new(&w, cols, blocks, weights);
                let mut v = PanelVector::default();
                v.set(&x, weights);
                let bias: Vec<f32> = (0..rows).map(|i| i as f32).collect();
                for b in 0..blocks {
                    for j0 in (0..rows).step_by(GROUP) {
                        // The whole block from its first row (the kernels take groups
                        // four at a time, and the rest one by one), two groups elsewhere.
                        let m = if j0 == 0 {
                            rows
                        } else {
                            (rows - j0).min(2 * GROUP)
                        };
                        let mut got = vec![f32::NAN; m];
                        p.dot(b, j0, &v, Some(&bias[..m]), &mut got, Pass::default());
                        // The groups read last to first, and four at a time, give the
                        // same sums.
                        for sweep in [Sweep::Forward, Sweep::Backward] {
                            for streams in [Streams::One, Streams::Four] {
                                let mut other = vec![f32::NAN; m];
                                let pass = Pass { sweep, streams };
                                p.dot(b, j0, &v, Some(&bias[..m]), &mut other, pass);
                                assert_eq!(
                                    other.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    "{weights:?} {rows}×{cols}×{blocks} {pass:?}"
                                );
                            }
                        }
                        // The kernel this CPU runs and the portable loop on the same lines:
                        // int8 sums are exact on both.
                        let first = (b * p.groups_per_block + j0 / GROUP) * p.steps;
                        let (mut fast, mut plain) = (vec![0.0; m], vec![0.0; m]);
                        let lines = &p.lines[first..];
                        let centred =
                            dot_groups(weights, lines, p.steps, &v, &mut fast, Pass::default());
                        dot_groups_ref(weights, &p.lines[first..], p.steps, &v, &mut plain);
                        // int8 sums counted from 128 (`Σ q·(u − 128)`) and from 0 differ
                        // by 128 times the row's sum; exactly, at these sizes.
                        let from_zero = |sums: &[f32], centred: bool| -> Vec<f32> {
                            let row_sums = (0..m).map(|i| p.sum[b * rows + j0 + i]);
                            let shift = |sum: i32| if centred { 128.0 * sum as f32 } else { 0.0 };
                            sums.iter()
                                .zip(row_sums)
                                .map(|(&v, sum)| v + shift(sum))
                                .collect()
                        };
                        if weights == Weights::Int8 {
                            assert_eq!(from_zero(&fast, centred), plain, "{rows}×{cols}×{blocks}");
                        }
                        // The AVX2 kernels sum each lane as the AVX-512 ones do.
                        let narrow = avx2_groups(weights, lines, p.steps, &v, m);
                        if let Some(narrow) = &narrow {
                            if weights == Weights::Int8 {
                                assert_eq!(
                                    from_zero(narrow, true),
                                    plain,
                                    "{rows}×{cols}×{blocks}"
                                );
                            } else if weights == Weights::F32 || !crate::kernel::bf16_supported() {
                                assert_eq!(
                                    narrow.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    fast.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                    "{weights:?} {rows}×{cols}×{blocks}"
                                );
                            }
                        }
                        for (i, &got) in got.iter().enumerate() {
                            let r = b * rows + j0 + i;
                            let row = &w[r * cols..][..cols];
                            let exact: f64 =
                                row.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
                            let mag: f64 = row
                                .iter()
                                .zip(&x)
                                .map(|(&a, &b)| (a * b).abs() as f64)
                                .sum();
                            let got = got as f64 - bias[i] as f64;
                            let (stored, tol) = match weights {
                                Weights::F32 => (exact, 1e-5 * (1.0 + mag)),
                                // x may be rounded to bfloat16 as well (2^-9 each).
                                Weights::Bf16 => (
                                    row.iter()
                                        .zip(&x)
                                        .map(|(&a, &b)| bf16_value(a) * b as f64)
                                        .sum(),
                                    1e-5 + mag / 256.0,
                                ),
                                // Half a level of each operand per product.
                                Weights::Int8 => {
                                    let (sw, sx) = (p.scale[r] as f64, v.scale as f64);
                                    let bound: f64 = row
                                        .iter()
                                        .zip(&x)
                                        .map(|(&a, &b)| {
                                            (sw * b.abs() as f64 + sx * a.abs() as f64) / 2.0
                                                + sw * sx / 4.0
                                        })
                                        .sum();
                                    (exact, bound + 1e-5)
                                }
                            };
                            // The portable loop's f32 and bfloat16 results as well (its int8
                            // sums were compared exactly above).
                            let portable = (weights != Weights::Int8).then_some(plain[i] as f64);
                            let narrow = narrow
                                .as_ref()
                                .filter(|_| weights != Weights::Int8)
                                .map(|n| n[i] as f64);
                            for got in std::iter::once(got).chain(portable).chain(narrow) {
                                assert!(
                                    (got - stored).abs() <= tol,
                                    "{weights:?} {rows}×{cols}×{blocks} row {r}: {got} vs {stored}"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// Rows of several blocks in one call: whole blocks of whole groups in one pass
    /// (and blocks of a partial group, or a share of each block's rows, one product
    /// a block), the same bits as one [`Panels::dot`] a block, every precision, pass
    /// and bias.
    #[test]
    fn rows_of_several_blocks_match_a_product_per_block() {
        let mut rng = Rng::new(4);
        for (rows, cols, blocks) in [(32, 40, 4), (128, 33, 3), (20, 17, 4), (64, 64, 1)] {
            let w: Vec<f32> = (0..rows * cols * blocks)
                .map(|_| rng.uniform_in(-0.5, 0.5) as f32)
                .collect();
            let x: Vec<f32> = (0..cols)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            let bias: Vec<f32> = (0..rows * blocks).map(|i| i as f32 * 0.25).collect();
            for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
                let p = Panels::new(&w, cols, blocks, weights);
                let mut v = PanelVector::default();
                v.set(&x, weights);
                let shares = [
                    (0, rows),
                    (0, rows.min(GROUP)),
                    (GROUP, rows.saturating_sub(GROUP)),
                ];
                for (j0, m) in shares
                    .into_iter()
                    .filter(|&(j0, m)| m > 0 && j0 + m <= rows)
                {
                    for range in [0..blocks, 0..blocks.min(2), blocks - 1..blocks] {
                        for sweep in [Sweep::Forward, Sweep::Backward] {
                            for streams in [Streams::One, Streams::Four] {
                                let pass = Pass { sweep, streams };
                                for bias in [None, Some(&bias[..])] {
                                    let mut got = vec![f32::NAN; range.len() * m];
                                    p.dot_blocks(range.clone(), j0, &v, bias, &mut got, pass);
                                    let mut want = vec![f32::NAN; range.len() * m];
                                    for (k, b) in range.clone().enumerate() {
                                        let r = b * rows + j0;
                                        let bias = bias.map(|v| &v[r..r + m]);
                                        let out = &mut want[k * m..][..m];
                                        p.dot(b, j0, &v, bias, out, Pass::default());
                                    }
                                    assert_eq!(
                                        got.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                        want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                                        "{weights:?} {rows}×{cols}×{blocks} {j0}+{m} {range:?} {pass:?}"
                                    );
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn zero_rows_and_vectors_give_zero() {
        for weights in [Weights::F32, Weights::Bf16, Weights::Int8] {
            let p = Panels::new(&[0.0; 8], 4, 1, weights);
            let mut v = PanelVector::default();
            v.set(&[0.0; 4], weights);
            let mut y = [1.0; 2];
            p.dot(0, 0, &v, None, &mut y, Pass::default());
            assert_eq!(y, [0.0, 0.0]);
            v.set(&[1.0, -1.0, 0.5, 0.0], weights);
            p.dot(0, 0, &v, None, &mut y, Pass::default());
            assert_eq!(y, [0.0, 0.0]);
        }
    }

    #[test]
    #[should_panic(expected = "vector prepared for other panels")]
    fn a_vector_of_another_precision_is_refused() {
        let p = Panels::new(&[1.0; 64], 2, 2, Weights::F32);
        let mut v = PanelVector::default();
        v.set(&[1.0; 2], Weights::Bf16);
        p.dot_blocks(0..2, 0, &v, None, &mut [0.0; 32], Pass::default());
    }

    #[test]
    #[should_panic(expected = "vector prepared for other panels")]
    fn a_vector_of_another_length_is_refused() {
        let p = Panels::new(&[1.0; 64], 4, 1, Weights::F32);
        let mut v = PanelVector::default();
        v.set(&[1.0; 3], Weights::F32);
        p.dot(0, 0, &v, None, &mut [0.0; 16], Pass::default());
    }

    #[test]
    #[should_panic(expected = "outside the panels")]
    fn rows_not_starting_a_group_are_refused() {
        let p = Panels::new(&[1.0; 64], 2, 1, Weights::F32);
        let mut v = PanelVector::default();
        v.set(&[1.0; 2], Weights::F32);
        p.dot(0, 3, &v, None, &mut [0.0; 4], Pass::default());
    }
}
