//! Recurrent cells: one file per kind, each holding its forward pass over a whole
//! sequence and its hand-derived backward pass through time.
//!
//! Shared conventions: time-major `[T, B, F]` buffers; parameters in torch.nn's
//! layout (`W_ih [G·H, I]`, `W_hh [G·H, H]`, gate blocks stacked by rows); the big
//! input GEMMs are hoisted out of the time loop (here), only `h_{t-1}·W_hhᵀ` and
//! `dgates_t·W_hh` stay inside it (in the cell files).

pub mod gru;
pub mod lstm;
#[cfg(test)]
mod panels_tests;
pub mod rnn;

use crate::kernel::{
    add_bias_rows, dg_panels_supported, matmul, matmul_dg_panels, precision, scatter_add_rows,
    serial, sum_rows_into, with_precision, DgPanels, DgWriter, MatMut, MatRef, PackedB, Precision,
    FEW_ROWS,
};
use crate::tensor::{Kernel, Real, Scratch, Tensor};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;
use std::ops::Range;

/// Which recurrence a layer runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CellKind {
    /// Elman RNN with tanh: `h_t = tanh(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh)`.
    RnnTanh,
    /// Elman RNN with ReLU.
    RnnRelu,
    /// Long short-term memory, gates i, f, g, o.
    Lstm,
    /// Gated recurrent unit as torch.nn.GRU: reset applied after the recurrent matmul.
    Gru,
    /// GRU as Keras with `reset_after=False`: reset applied to `h` before the matmul, one bias.
    GruResetBefore,
}

impl CellKind {
    /// Every kind, in a fixed order.
    pub const ALL: [CellKind; 5] = [
        CellKind::RnnTanh,
        CellKind::RnnRelu,
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::GruResetBefore,
    ];

    /// Number of gate blocks G in `W_ih [G·H, I]`.
    pub fn gates(self) -> usize {
        match self {
            CellKind::RnnTanh | CellKind::RnnRelu => 1,
            CellKind::Lstm => 4,
            CellKind::Gru | CellKind::GruResetBefore => 3,
        }
    }

    /// Whether the cell carries a second state `c` besides `h`.
    pub fn has_cell_state(self) -> bool {
        self == CellKind::Lstm
    }

    /// Whether there is a `bias_hh` vector besides `bias_ih`.
    pub fn has_bias_hh(self) -> bool {
        self != CellKind::GruResetBefore
    }

    /// The name used in checkpoints and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            CellKind::RnnTanh => "rnn_tanh",
            CellKind::RnnRelu => "rnn_relu",
            CellKind::Lstm => "lstm",
            CellKind::Gru => "gru",
            CellKind::GruResetBefore => "gru_reset_before",
        }
    }

    /// Parses [`CellKind::name`].
    pub fn from_name(s: &str) -> Option<CellKind> {
        CellKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl std::fmt::Display for CellKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The parameters of one cell (one layer, one direction), in torch.nn's shapes.
/// The same struct holds their gradients.
#[derive(Clone, Debug, PartialEq)]
pub struct CellParams<T = f32> {
    /// Input weights `[G·H, I]`, gate blocks stacked by rows.
    pub w_ih: Tensor<T>,
    /// Recurrent weights `[G·H, H]`.
    pub w_hh: Tensor<T>,
    /// Input bias `[G·H]`.
    pub b_ih: Tensor<T>,
    /// Recurrent bias `[G·H]`; absent for [`CellKind::GruResetBefore`].
    pub b_hh: Option<Tensor<T>>,
}

impl<T: Real> CellParams<T> {
    /// All-zero parameters (used for gradients).
    pub fn zeros(kind: CellKind, input_size: usize, hidden_size: usize) -> Self {
        let gh = kind.gates() * hidden_size;
        CellParams {
            w_ih: Tensor::zeros(&[gh, input_size]),
            w_hh: Tensor::zeros(&[gh, hidden_size]),
            b_ih: Tensor::zeros(&[gh]),
            b_hh: kind.has_bias_hh().then(|| Tensor::zeros(&[gh])),
        }
    }

    /// Hidden size H.
    pub fn hidden_size(&self) -> usize {
        self.w_hh.shape()[1]
    }

    /// Input size I.
    pub fn input_size(&self) -> usize {
        self.w_ih.shape()[1]
    }

    /// The tensors with their torch.nn suffix-less names (`weight_ih`, …), in state-dict order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, &Tensor<T>)> {
        [
            Some(("weight_ih", &self.w_ih)),
            Some(("weight_hh", &self.w_hh)),
            Some(("bias_ih", &self.b_ih)),
            self.b_hh.as_ref().map(|b| ("bias_hh", b)),
        ]
        .into_iter()
        .flatten()
    }

    /// Mutable version of [`CellParams::named`].
    pub fn named_mut(&mut self) -> impl Iterator<Item = (&'static str, &mut Tensor<T>)> {
        [
            Some(("weight_ih", &mut self.w_ih)),
            Some(("weight_hh", &mut self.w_hh)),
            Some(("bias_ih", &mut self.b_ih)),
            self.b_hh.as_mut().map(|b| ("bias_hh", b)),
        ]
        .into_iter()
        .flatten()
    }
}

/// How one direction of one layer walks a batch of sequences.
#[derive(Clone, Copy, Debug)]
pub struct Seq<'a> {
    /// Number of timesteps T (the padded length).
    pub steps: usize,
    /// Batch size B.
    pub batch: usize,
    /// One length per sequence (≤ T); `None` means all are T.
    pub lengths: Option<&'a [usize]>,
    /// Walk from the last step to the first.
    pub reverse: bool,
}

impl Seq<'_> {
    /// The timestep processed at step `s` of the walk.
    #[inline]
    pub fn time(&self, s: usize) -> usize {
        if self.reverse {
            self.steps - 1 - s
        } else {
            s
        }
    }

    /// Whether sequence `b` has a real input at time `t`. Padded steps leave the
    /// state unchanged and output zero, so the reverse walk starts at each
    /// sequence's own last step.
    #[inline]
    pub fn valid(&self, t: usize, b: usize) -> bool {
        self.lengths.is_none_or(|l| t < l[b])
    }

    /// How many leading rows of the block `rows` the per-step product must cover
    /// at time `t`: up to the last row still running. Rows after it are padding;
    /// with a block ordered longest first (see [`packing_order`])
    /// padded steps cost no arithmetic, as with packed sequences.
    #[inline]
    pub fn active(&self, t: usize, rows: &Range<usize>) -> usize {
        match self.lengths {
            None => rows.len(),
            Some(l) => rows.clone().rposition(|b| t < l[b]).map_or(0, |i| i + 1),
        }
    }
}

/// The input of one layer, `[rows, I]`.
#[derive(Clone, Copy, Debug)]
pub enum Input<'a, T> {
    /// Dense rows.
    Dense(&'a [T]),
    /// Row r is `table[ids[r]]`, a row of an embedding `table [V, I]`: the input
    /// product is then taken once per table row instead of once per row, and the
    /// input gradient is that of the table, `[V, I]`.
    Embedded {
        /// The embedding `[V, I]`.
        table: &'a [T],
        /// One id (< V) per row.
        ids: &'a [usize],
    },
    /// Row r is the one-hot vector of `ids[r]` (< I, the input width): the input
    /// product is a column of `W_ih`, looked up, never multiplied; there is no input
    /// gradient.
    OneHot {
        /// One id (< I) per row.
        ids: &'a [usize],
    },
}

/// What of an input projection [`project_inputs`] left for the time loop to finish,
/// a timestep's rows just before the step reads them: for embedded and one-hot
/// inputs, copying each row from the projected row of its id; for dense inputs,
/// adding the biases to the products. (Done all at once, up front, each was a pass
/// over all the rows, to memory and back: 52 MB each way for a layer of LSTM 2×512
/// at B64 T100. Training steps alternating both ways in one process on an Ice Lake
/// Xeon, the copies: LSTM 1×128 e32 +7.6 %, LSTM 2×512 +1 to +3 %; the biases:
/// LSTM and GRU 2×512 +0.1 to +0.6 %, within the noise.)
pub(crate) struct Projected<'a, T: Real> {
    /// The projected row of each id, `[V, G·H]`, and the rows' ids; else none.
    per_id: Option<(Scratch<T>, &'a [usize])>,
    /// The biases still to add, `[G·H]`; else none.
    bias: Option<Scratch<T>>,
    /// `G·H`.
    width: usize,
}

impl<T: Real> Projected<'_, T> {
    /// Finishes the projection's rows `first..` in `out` (whole rows of `G·H`).
    pub(crate) fn fill(&self, first: usize, out: &mut [T]) {
        let w = self.width.max(1);
        if let Some((table, ids)) = &self.per_id {
            for (o, &id) in out.chunks_exact_mut(w).zip(&ids[first..]) {
                o.copy_from_slice(&table[id * w..][..w]);
            }
        }
        if let Some(bias) = &self.bias {
            add_bias_rows(out, bias);
        }
    }

    /// Where row `row` of the projection is to be read by a step that reads it once
    /// (the LSTM's), instead of finishing it first with [`Projected::fill`]: the
    /// same sums, one pass over `[B, G·H]` a step fewer.
    pub(crate) fn row(&self, row: usize) -> Projection<'_, T> {
        let w = self.width.max(1);
        match (&self.per_id, &self.bias) {
            (Some((table, ids)), _) => Projection::Row(&table[ids[row] * w..][..w]),
            (None, Some(bias)) => Projection::Biased(bias),
            (None, None) => Projection::Here,
        }
    }
}

/// A step's input projection of one row ([`Projected::row`]).
#[derive(Clone, Copy)]
pub(crate) enum Projection<'a, T> {
    /// In the step's own row already.
    Here,
    /// In the step's own row, the biases `[G·H]` still to add.
    Biased(&'a [T]),
    /// This projected row `[G·H]`, biases included.
    Row(&'a [T]),
}

/// Asserts that a step reads each kind of [`Projection`] of `width` values drawn
/// from `rng` (and as many biases) with the bits it gets from them finished in its
/// own row first: `run` takes the step's own row and the projection and returns
/// what the step wrote, whose value for the finished row is returned.
#[cfg(test)]
pub(crate) fn assert_projections_agree<R: PartialEq + std::fmt::Debug>(
    width: usize,
    rng: &mut crate::Rng,
    run: impl Fn(Vec<f32>, Projection<'_, f32>) -> R,
) -> R {
    let mut draw = || -> Vec<f32> {
        (0..width)
            .map(|_| rng.uniform_in(-3.0, 3.0) as f32)
            .collect()
    };
    let (x, bias) = (draw(), draw());
    let finished: Vec<f32> = x.iter().zip(&bias).map(|(x, b)| x + b).collect();
    let want = run(finished.clone(), Projection::Here);
    assert_eq!(run(x, Projection::Biased(&bias)), want);
    // NaN in the step's own row would show if it were read.
    assert_eq!(run(vec![f32::NAN; width], Projection::Row(&finished)), want);
    want
}

/// `xp [rows, G·H] = x [rows, I] · W_ihᵀ + b_ih`, plus `b_hh` when `fold_bias_hh`
/// (cells whose recurrent term is purely additive fold both biases in once).
/// The time loop finishes each timestep's rows ([`Projected::fill`]): for dense
/// inputs `xp` holds the products, for embedded and one-hot inputs nothing.
/// In bf16 mode a few rows (a stepped decoder) read `W_ihᵀ` packed once in `packed`.
pub(crate) fn project_inputs<'a, T: Real>(
    p: &CellParams<T>,
    x: Input<'a, T>,
    rows: usize,
    xp: &mut [T],
    fold_bias_hh: bool,
    packed: &mut PackedSteps,
) -> Projected<'a, T> {
    let (gh, i) = (p.w_ih.shape()[0], p.w_ih.shape()[1]);
    let w_ih_t = MatRef::dense(p.w_ih.data(), gh, i).t();
    let slot = few_rows_packed(rows, packed, w_ih_t);
    // Both biases at once where the cell folds them in.
    let mut bias = Scratch::<T>::zeroed(gh);
    for (s, &b) in bias.iter_mut().zip(p.b_ih.data()) {
        *s = b;
    }
    if let (Some(b_hh), true) = (&p.b_hh, fold_bias_hh) {
        for (s, &b) in bias.iter_mut().zip(b_hh.data()) {
            *s += b;
        }
    }
    let project = |x: &[T], rows: usize, out: &mut [T]| {
        pass_product(
            MatMut::dense(out, rows, gh),
            MatRef::dense(x, rows, i),
            w_ih_t,
            slot,
            false,
        )
    };
    let (per_id, bias) = match x {
        Input::Dense(x) => {
            project(x, rows, &mut xp[..rows * gh]);
            (None, Some(bias))
        }
        Input::Embedded { table, ids } => {
            let v = table.len() / i.max(1);
            let mut per_id = Scratch::<T>::zeroed(v * gh);
            project(table, v, &mut per_id);
            add_bias_rows(&mut per_id, &bias);
            (Some((per_id, &ids[..rows])), None)
        }
        Input::OneHot { ids } => {
            // W_ih x for a one-hot x is column id of W_ih: per_id [I, G·H] = W_ihᵀ + biases.
            let w = p.w_ih.data();
            let mut per_id = Scratch::<T>::zeroed(i * gh);
            for (g, row) in w.chunks_exact(i.max(1)).enumerate().take(gh) {
                for (v, &x) in row.iter().enumerate() {
                    per_id[v * gh + g] = x;
                }
            }
            add_bias_rows(&mut per_id, &bias);
            (Some((per_id, &ids[..rows])), None)
        }
    };
    Projected {
        per_id,
        bias,
        width: gh,
    }
}

/// After the time loop, from the pre-activation gradients `dg [T·B, G·H]` of the
/// input side over the walk `seq`: `dW_ih += dgᵀ·x` (over real steps only) and
/// `db_ih += Σ dg` when `g` is given, `dx += dg·W_ih` when `dx` is (for embedded
/// inputs `dx` is the table's gradient `[V, I]`: the rows of `dg` are first summed
/// per id, so the products run over V rows instead of T·B). Returns `Σ dg` when `g`
/// is given, for a cell whose `db_hh` is the same sum ([`recurrent_grads`]).
#[allow(clippy::too_many_arguments)]
pub(crate) fn input_grads<T: Real>(
    p: &CellParams<T>,
    g: Option<&mut CellParams<T>>,
    x: Input<'_, T>,
    seq: &Seq,
    dg: &[T],
    panels: Option<&DgPanels>,
    dx: Option<&mut [T]>,
    packed: Option<&mut PackedSteps>,
) -> Option<Scratch<T>> {
    let (gh, i) = (p.w_ih.shape()[0], p.w_ih.shape()[1]);
    let rows = seq.steps * seq.batch;
    let w_ih = MatRef::dense(p.w_ih.data(), gh, i);
    // Σ dg over `rows` rows of `dg`, added to `db_ih`.
    let bias_sum = |g: &mut CellParams<T>, dg: &[T], rows: usize| {
        let mut sum = Scratch::<T>::zeroed(gh);
        sum_rows_into(&mut sum, &dg[..rows * gh]);
        add_into(g.b_ih.data_mut(), &sum);
        sum
    };
    let slot = match (&dx, &x, packed) {
        (Some(_), Input::Dense(_), Some(packed)) => few_rows_packed(rows, packed, w_ih),
        _ => None,
    };
    let grads = |g: Option<&mut CellParams<T>>,
                 (x, rows): (&[T], usize),
                 real: Option<RealRows<'_>>,
                 (dg, panels): (&[T], Option<&DgPanels>),
                 dx: Option<&mut [T]>| {
        let dg_mat = MatRef::dense(dg, rows, gh);
        let sum = g.map(|g| {
            weight_grad(
                MatMut::dense(g.w_ih.data_mut(), gh, i),
                dg_mat,
                MatRef::dense(x, rows, i),
                real,
                panels,
            );
            bias_sum(g, dg, rows)
        });
        if let Some(dx) = dx {
            pass_product(MatMut::dense(dx, rows, i), dg_mat, w_ih, slot, true);
        }
        sum
    };
    match x {
        Input::Dense(x) => {
            let real = g.as_ref().and_then(|_| real_rows(seq));
            grads(g, (x, rows), real, (dg, panels), dx)
        }
        Input::Embedded { table, ids } => {
            let v = table.len() / i.max(1);
            let mut per_id = Scratch::<T>::zeroed(v * gh);
            scatter_add_rows(&mut per_id, dg, &ids[..rows], gh);
            // Σ dg = Σ of the per-id sums (V rows instead of T·B).
            grads(g, (table, v), None, (&per_id, None), dx)
        }
        Input::OneHot { ids } => {
            // dW_ih[:, id] += Σ of the rows of dg with that id; no input gradient.
            let g = g?;
            let mut per_id = Scratch::<T>::zeroed(i * gh);
            scatter_add_rows(&mut per_id, dg, &ids[..rows], gh);
            let gw = g.w_ih.data_mut();
            for (v, col) in per_id.chunks_exact(gh).enumerate() {
                for (gate, &d) in col.iter().enumerate() {
                    gw[gate * i + v] += d;
                }
            }
            // Σ dg = Σ of the per-id sums (I rows instead of T·B).
            Some(bias_sum(g, &per_id, i))
        }
    }
}

/// `acc += v`, element by element.
fn add_into<T: Real>(acc: &mut [T], v: &[T]) {
    for (a, &b) in acc.iter_mut().zip(v) {
        *a += b;
    }
}

/// `w` packed in `packed` (once per change of the weights) for a product of `rows`
/// rows, in bf16 mode when they are a few (more rows pack `w` on the fly at little
/// cost); `None` otherwise.
fn few_rows_packed<'p, T: Real>(
    rows: usize,
    packed: &'p mut PackedSteps,
    w: MatRef<'_, T>,
) -> Option<&'p PackedB> {
    if precision() != Precision::Bf16 || !(2..=FEW_ROWS).contains(&rows) {
        return None;
    }
    packed.prepare(&[w]).map(|p| &p[0])
}

/// `c (+)= a·b` for a product over a whole pass through `W_ih` (not a timestep's):
/// from [`few_rows_packed`]'s copy where it gave one, else by [`matmul`], which packs
/// `b` for many rows. (Read in place as a per-step product reads `W_hh`, LSTM
/// 2×512's input gradient, 6400 × 2048 · 2048 × 512, ran at about 115 GFLOP/s,
/// against about 200 packed.)
fn pass_product<T: Real>(
    c: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    packed: Option<&PackedB>,
    accumulate: bool,
) {
    match packed {
        Some(_) => step_product(c, a, b, packed, accumulate),
        None => matmul(c, a, b, accumulate),
    }
}

/// The parameter gradients of a cell whose gates are all linear in `x_t` and
/// `h_{t-1}` (LSTM, tanh/ReLU RNN), from the pre-activation gradients `dg` and the
/// previous states `h_prev` (`[T, B, ·]` over the walk `seq`) of a backward pass.
pub(crate) fn linear_weight_grads<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    seq: &Seq,
    x: Input<'_, T>,
    dg: &[T],
    h_prev: &[T],
) {
    let sum = input_grads(p, Some(&mut *g), x, seq, dg, None, None, None);
    recurrent_grads(g, seq, h_prev, dg, None, sum.as_deref());
}

/// `dW_hh += dghᵀ·h_prev` and `db_hh += Σ dgh`, for cells whose recurrent
/// pre-activation is `h_{t-1}·W_hhᵀ + b_hh` throughout; `dgh` and `h_prev` are
/// `[T, B, ·]` over the walk `seq`, `panels` the bf16 panels of `dgh` where the
/// backward pass wrote them. `sum` is `Σ dgh` where the caller has it (a cell whose
/// `dgh` is the input side's `dg`: [`input_grads`] returned it).
pub(crate) fn recurrent_grads<T: Real>(
    g: &mut CellParams<T>,
    seq: &Seq,
    h_prev: &[T],
    dgh: &[T],
    panels: Option<&DgPanels>,
    sum: Option<&[T]>,
) {
    let (gh, h) = (g.w_hh.shape()[0], g.w_hh.shape()[1]);
    let rows = seq.steps * seq.batch;
    weight_grad(
        MatMut::dense(g.w_hh.data_mut(), gh, h),
        MatRef::dense(dgh, rows, gh),
        MatRef::dense(h_prev, rows, h),
        real_rows(seq),
        panels,
    );
    match (&mut g.b_hh, sum) {
        (Some(b), Some(sum)) => add_into(b.data_mut(), sum),
        (Some(b), None) => sum_rows_into(b.data_mut(), &dgh[..rows * gh]),
        (None, _) => {}
    }
}

/// The rows `t·B + b` of a time-major `[T, B, ·]` buffer that hold real steps (of
/// sequences of `lengths`), `count` of them.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RealRows<'a> {
    steps: usize,
    lengths: &'a [usize],
    count: usize,
}

impl RealRows<'_> {
    /// The rows, in order.
    fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        let batch = self.lengths.len();
        (0..self.steps).flat_map(move |t| {
            (0..batch)
                .filter(move |&b| t < self.lengths[b])
                .map(move |b| t * batch + b)
        })
    }
}

/// The rows of real steps of the walk `seq`, when padded rows are at least an
/// eighth of all; `None` otherwise (their gradients are zero, and multiplying them
/// then costs less than gathering the others).
pub(crate) fn real_rows<'a>(seq: &Seq<'a>) -> Option<RealRows<'a>> {
    let lengths = seq.lengths?;
    let count: usize = lengths.iter().sum();
    if count * 8 > seq.steps * seq.batch * 7 {
        return None;
    }
    Some(RealRows {
        steps: seq.steps,
        lengths,
        count,
    })
}

/// `dw [N, K] += dgᵀ·x` for `dg [rows, N]` and `x [rows, K]`, over the rows in
/// `real` only (all when `None`): a weight gradient that skips padded steps. With
/// `panels` (bf16 pairs of `dg`'s rows, written by the backward pass) the product
/// reads them instead of packing `dgᵀ` itself, with the same sums.
pub(crate) fn weight_grad<T: Real>(
    dw: MatMut<'_, T>,
    dg: MatRef<'_, T>,
    x: MatRef<'_, T>,
    real: Option<RealRows<'_>>,
    panels: Option<&DgPanels>,
) {
    if let (None, Some(panels)) = (real, panels) {
        let (rows, cols, ld) = (dw.rows, dw.cols, dw.ld);
        assert!(x.cs == 1, "weight gradients read x by rows");
        // Panels are written for f32 alone (see `writes_dg_panels`).
        let (dw, xd) = (f32_mut(dw.data), f32_ref(x.data));
        let (dw, xd) = dw.zip(xd).expect("dg panels come with f32 operands");
        let x = MatRef::new(xd, x.rows, x.cols, x.rs);
        return matmul_dg_panels(MatMut::new(dw, rows, cols, ld), panels, x, true);
    }
    match real {
        None => matmul(dw, dg.t(), x, true),
        Some(r) => {
            let (dg_r, x_r) = (gather(dg, r), gather(x, r));
            matmul(
                dw,
                MatRef::dense(&dg_r, r.count, dg.cols).t(),
                MatRef::dense(&x_r, r.count, x.cols),
                true,
            );
        }
    }
}

/// The rows `rows` of the row-major matrix `m`, packed densely (in a buffer of the
/// thread's pool: nothing is allocated once it has grown).
fn gather<T: Real>(m: MatRef<'_, T>, rows: RealRows<'_>) -> Scratch<T> {
    debug_assert_eq!(m.cs, 1, "gather reads row-major operands");
    let mut out = Scratch::zeroed(rows.count * m.cols);
    for (dst, r) in out.chunks_exact_mut(m.cols.max(1)).zip(rows.iter()) {
        dst.copy_from_slice(&m.data[r * m.rs..][..m.cols]);
    }
    out
}

/// Whether a backward pass over `seq` writes its `dg`'s bf16 panels for the weight
/// gradients ([`DgPanels`]): f32 parameters in bf16 mode on the AVX-512 BF16 tiles,
/// every row in the products (no gather of the real ones), and every worker's block
/// of batch rows (see [`for_row_blocks`]) from an even row and of an even length, as
/// the panels pair consecutive rows.
pub(crate) fn writes_dg_panels<T: Real>(seq: &Seq) -> bool {
    let blocks = block_count(seq.batch, HALF.get());
    let even = |k| {
        let rows = block_rows(seq.batch, blocks, k);
        rows.start.is_multiple_of(2) && rows.len().is_multiple_of(2)
    };
    std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()
        && seq.steps * seq.batch > 0
        && precision() == Precision::Bf16
        && dg_panels_supported()
        && real_rows(seq).is_none()
        && (0..blocks).all(even)
}

/// Writes a worker's block of one timestep's `dg` rows, from row `first`, into the
/// panels of `writer` (where the backward pass keeps them).
///
/// # Safety
/// No other thread may write the same rows (the blocks of [`for_row_blocks`] do not).
pub(crate) unsafe fn write_dg_rows<T: Real>(writer: Option<&DgWriter<'_>>, dg: &[T], first: usize) {
    if let Some(writer) = writer {
        let dg = f32_ref(dg).expect("dg panels are written for f32");
        // SAFETY: the caller's rows alone.
        unsafe { writer.write(dg, first) };
    }
}

/// `s` as f32, where `T` is f32.
fn f32_ref<T: Real>(s: &[T]) -> Option<&[f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: `T` is f32 (compared above): the same type, length and borrow.
        unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<f32>(), s.len()) }
    })
}

/// `s` as f32, where `T` is f32.
fn f32_mut<T: Real>(s: &mut [T]) -> Option<&mut [f32]> {
    (std::any::TypeId::of::<T>() == std::any::TypeId::of::<f32>()).then(|| {
        // SAFETY: as in `f32_ref`, mutably.
        unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<f32>(), s.len()) }
    })
}

/// The right operand of the per-step product `h_{t-1}·W_hhᵀ`, for the gate blocks
/// `blocks`, when a thread's block of the batch has `m` rows. Where the weights are
/// packed for the step's products ([`PackedSteps`]) it is `W_hh` itself, read only by
/// the few-row and single-row fallbacks. Otherwise several rows read a transposed
/// copy (kept in the cell's cache: the GEMM reads it without packing, about twice as
/// fast); a single row reads `W_hh`, one dot product per gate row, the fastest
/// layout for a matrix–vector product.
pub(crate) struct RecurrentWeights<'a, T> {
    w: &'a [T],
    w_t: Option<&'a [T]>,
    hs: usize,
    gh: usize,
}

impl<'a, T: Real> RecurrentWeights<'a, T> {
    /// `W_hh` of `p`, without a transposed copy.
    fn new(p: &'a CellParams<T>) -> Self {
        RecurrentWeights {
            w: p.w_hh.data(),
            w_t: None,
            hs: p.hidden_size(),
            gh: p.w_hh.shape()[0],
        }
    }

    /// With the transposed copy in `w_t`, refreshed unless `valid` (and unless no
    /// block of `batch` rows will ever need it).
    fn transposed(self, batch: usize, w_t: &'a mut Vec<T>, valid: &mut bool) -> Self {
        if batch > 1 && !*valid {
            let buf = crate::tensor::scratch(&mut *w_t, self.gh * self.hs);
            transpose_into(buf, self.w, self.gh, self.hs);
            *valid = true;
        }
        RecurrentWeights {
            w_t: Some(w_t),
            ..self
        }
    }

    /// `W_hh[blocks]ᵀ`, `[H, blocks·H]`, for a block of `m` rows.
    pub(crate) fn blocks(&self, blocks: Range<usize>, m: usize) -> MatRef<'a, T> {
        let (hs, cols) = (self.hs, blocks.len() * self.hs);
        match self.w_t {
            Some(w_t) if m > 1 => MatRef::new(&w_t[blocks.start * hs..], hs, cols, self.gh),
            _ => MatRef::new(&self.w[blocks.start * hs * hs..], cols, hs, hs).t(),
        }
    }
}

/// `out [cols, rows] = mᵀ` for `m [rows, cols]`, in tiles of 16 × 16 so that both
/// sides stay in cache (element by element, every write of a large matrix missed).
/// Bands of `TILE` output rows go to the threads (`W_hh` of LSTM 2×512 is 4 MB).
fn transpose_into<T: Copy + Send + Sync>(out: &mut [T], m: &[T], rows: usize, cols: usize) {
    const TILE: usize = 16;
    let band = |(b, out): (usize, &mut [T])| {
        let j0 = b * TILE;
        for i0 in (0..rows).step_by(TILE) {
            for i in i0..(i0 + TILE).min(rows) {
                let row = &m[i * cols..][..cols];
                for j in j0..(j0 + TILE).min(cols) {
                    out[(j - j0) * rows + i] = row[j];
                }
            }
        }
    };
    if rows == 0 {
        return;
    }
    if !crate::kernel::parallel(rows * cols) {
        out.chunks_mut(TILE * rows).enumerate().for_each(band);
    } else {
        out.par_chunks_mut(TILE * rows).enumerate().for_each(band);
    }
}

/// `W_hh` in the layouts the per-step products read (transposed; packed in the
/// thread's precision), kept in a cell's cache while the weights do not change.
#[derive(Clone, Debug, Default)]
pub struct WeightCopies<T> {
    /// `W_hhᵀ [H, G·H]`, the fast layout for the per-step product of several rows.
    pub(crate) w_hh_t: Vec<T>,
    /// Whether `w_hh_t` matches the parameters.
    pub(crate) w_hh_t_valid: bool,
    /// bf16 mode: `W_hhᵀ` for the forward and `W_hh` for the backward per-step
    /// products; `W_ihᵀ` and `W_ih` for input products of a few rows (a stepped decoder).
    pub(crate) packed: [PackedSteps; 4],
}

impl<T> WeightCopies<T> {
    /// Forgets every copy (the weights changed).
    pub fn invalidate(&mut self) {
        self.w_hh_t_valid = false;
        self.packed.iter_mut().for_each(PackedSteps::invalidate);
    }
}

impl<T: Real> WeightCopies<T> {
    /// The forward's per-step operand `W_hh` of `p` for batches of `batch` rows:
    /// packed (slot 0) as one view of its gate blocks between each pair of
    /// consecutive `cuts` (one or two views), or else with its transposed copy refreshed.
    pub(crate) fn forward_operand<'a>(
        &'a mut self,
        p: &'a CellParams<T>,
        batch: usize,
        cuts: &[usize],
    ) -> (RecurrentWeights<'a, T>, Option<&'a [PackedB]>) {
        assert!((2..=3).contains(&cuts.len()), "one or two views of W_hh");
        let w = RecurrentWeights::new(p);
        let views = [0, 1].map(|i| match cuts.get(i..i + 2) {
            Some(&[a, b]) => w.blocks(a..b, 1),
            _ => w.blocks(0..0, 1),
        });
        let WeightCopies {
            w_hh_t,
            w_hh_t_valid,
            packed,
        } = self;
        match packed[0].prepare(&views[..cuts.len() - 1]) {
            Some(slots) => (w, Some(slots)),
            None => (w.transposed(batch, w_hh_t, w_hh_t_valid), None),
        }
    }
}

/// Copies of fixed views of `W_hh` packed once per change of the weights for the
/// per-step products, in the precision of the thread (see
/// [`crate::kernel::with_precision`]): the `gemm` crate would pack `W_hh` again at
/// every timestep, which halves its speed once the matrix outgrows the L2 cache,
/// and bf16 packing also rounds.
#[derive(Clone, Debug, Default)]
pub struct PackedSteps {
    slots: Vec<PackedB>,
    valid: bool,
}

impl PackedSteps {
    /// Forgets the packed copies (the weights changed).
    pub(crate) fn invalidate(&mut self) {
        self.valid = false;
    }

    /// Packs `views` (unless done since the last change, in this precision) and
    /// returns them, one per view; `None` where `T` or the CPU has no packed products.
    pub(crate) fn prepare<T: Real>(&mut self, views: &[MatRef<'_, T>]) -> Option<&[PackedB]> {
        let precision = precision();
        if precision == Precision::F32 && views.iter().any(|v| v.rows * v.cols < PACK_F32_MIN) {
            return None;
        }
        let fresh = self.valid
            && self.slots.len() == views.len()
            && self.slots.iter().all(|s| s.precision() == precision);
        if !fresh {
            self.valid = false;
            self.slots.resize_with(views.len(), PackedB::default);
            for (slot, &v) in self.slots.iter_mut().zip(views) {
                if !T::pack(v, precision, slot) {
                    return None;
                }
            }
            self.valid = true;
        }
        Some(&self.slots)
    }
}

/// Fewest elements of a view of `W_hh` that the f32 per-step products read packed;
/// smaller ones are read in place ([`Kernel::Rows`]). Packed from 2^16 rather than
/// 2^20 (a bound set against the `gemm` crate's repacking, before the in-place
/// kernel was ours), a training step on the Intel Xeon: GRU 2×512 650 → 518 ms,
/// LSTM 2×256 98 → 90 ms, tanh-RNN 2×512 181 → 174 ms, GRU 2×256 80 → 77 ms; LSTM
/// 1×128 (exactly 2^16) and the tasks' widths unchanged within the noise.
const PACK_F32_MIN: usize = 1 << 16;

/// Rows of the packed micro-tile ([`crate::kernel::gemm_packed`]).
const PACKED_MIN_ROWS: usize = 8;

/// `c (+)= a·b` for a per-step product with a fixed `b`: from its packed copy for
/// a full micro-tile of rows or more (in bf16, for any rows but one); else, in f32,
/// reading a row-major `b` that fits the cache in place ([`Kernel::Rows`]: no
/// allocation per timestep, as fast as the `gemm` crate); else by [`matmul`]. A
/// single row is a matrix–vector product, and a few rows of a large `b` in f32 run
/// faster through the `gemm` crate than a packed micro-tile (LSTM 2×512 at batch 8,
/// four rows per thread: 6.8 k against 4.8 k tokens/s).
pub(crate) fn step_product<T: Real>(
    c: MatMut<'_, T>,
    a: MatRef<'_, T>,
    b: MatRef<'_, T>,
    packed: Option<&PackedB>,
    accumulate: bool,
) {
    match packed {
        Some(p)
            if a.rows >= PACKED_MIN_ROWS || (a.rows > 1 && p.precision() == Precision::Bf16) =>
        {
            T::gemm_packed(c, a, p, accumulate)
        }
        _ => {
            if let Err(c) = T::gemm_kernel(Kernel::Rows, c, a, b, accumulate) {
                matmul(c, a, b, accumulate)
            }
        }
    }
}

/// Runs `f` on one block of batch rows per worker thread. Sequences in a batch
/// never interact, so each block runs the whole time loop on its own, with no
/// synchronisation per timestep; its GEMMs run single-threaded inside the worker.
pub(crate) fn for_row_blocks(batch: usize, f: impl Fn(Range<usize>) + Sync + Send) {
    let blocks = block_count(batch, HALF.get());
    if blocks == 1 {
        return f(0..batch);
    }
    let prec = precision();
    (0..blocks).into_par_iter().for_each(|k| {
        let rows = block_rows(batch, blocks, k);
        with_precision(prec, || serial(|| f(rows)))
    });
}

thread_local! {
    /// Set while this direction of a layer runs beside the other one, on half the threads.
    static HALF: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether the two directions of a bidirectional layer run at once, each on half
/// the threads: each thread then steps a block of twice the rows (larger products)
/// instead of both directions taking all threads in turn.
fn directions_apart() -> bool {
    let threads = rayon::current_num_threads();
    threads >= 2 && threads.is_multiple_of(2) && !HALF.get()
}

/// Runs `f(d, job)` for the job of each direction `d` of a layer (one or two jobs):
/// both at once (see [`directions_apart`]) or one after the other. Takes the jobs as
/// an iterator, so that handing them over allocates nothing.
pub(crate) fn for_directions<J: Send>(
    jobs: impl IntoIterator<Item = J>,
    f: impl Fn(usize, J) + Sync,
) {
    let mut jobs = jobs.into_iter();
    let (first, second) = (jobs.next(), jobs.next());
    assert!(jobs.next().is_none(), "a layer has at most two directions");
    match (first, second) {
        (Some(a), Some(b)) if directions_apart() => {
            let prec = precision();
            let half = |d: usize, job: J| {
                let before = HALF.replace(true);
                with_precision(prec, || f(d, job));
                HALF.set(before);
            };
            rayon::join(|| half(0, a), || half(1, b));
        }
        (first, second) => first
            .into_iter()
            .chain(second)
            .enumerate()
            .for_each(|(d, j)| f(d, j)),
    }
}

/// How many blocks [`for_row_blocks`] cuts a batch into: one per worker thread (half of
/// them when `half`), at most one per row.
fn block_count(batch: usize, half: bool) -> usize {
    let threads = rayon::current_num_threads();
    let threads = if half { (threads / 2).max(1) } else { threads };
    threads.min(batch).max(1)
}

/// Rows of block `k` of `blocks` over a batch.
fn block_rows(batch: usize, blocks: usize, k: usize) -> Range<usize> {
    k * batch / blocks..(k + 1) * batch / blocks
}

/// An order of a batch of sequences of these `lengths`, read by a layer of
/// `directions` directions, under which padding costs no arithmetic: each worker's
/// block of rows runs longest first (so the rows still running at a step are a
/// prefix, see [`Seq::active`]), and the blocks share the long and the short ones
/// alike. Row `r` of the batch should hold sequence `order[r]`.
pub fn packing_order(lengths: &[usize], directions: usize) -> Vec<usize> {
    let mut order = Vec::new();
    packing_order_into(lengths, directions, &mut order, &mut Vec::new());
    order
}

/// [`packing_order`] into `order`, with `scratch` for its work (both reused).
pub(crate) fn packing_order_into(
    lengths: &[usize],
    directions: usize,
    order: &mut Vec<usize>,
    scratch: &mut Vec<usize>,
) {
    let n = lengths.len();
    let blocks = block_count(n, directions == 2 && directions_apart());
    // The sequences longest first (ties in order), then each block's fill.
    scratch.clear();
    scratch.extend(0..n);
    scratch.sort_unstable_by_key(|&i| (std::cmp::Reverse(lengths[i]), i));
    scratch.resize(n + blocks, 0);
    let (by_length, filled) = scratch.split_at_mut(n);
    order.clear();
    order.resize(n, 0);
    // Deal longest first, round robin over the blocks that still have room.
    let mut k = 0;
    for &i in by_length.iter() {
        let room = |k: usize| block_rows(n, blocks, k).len();
        while filled[k] == room(k) {
            k = (k + 1) % blocks;
        }
        order[block_rows(n, blocks, k).start + filled[k]] = i;
        filled[k] += 1;
        k = (k + 1) % blocks;
    }
}

/// A `[T, B, width]` (or `[B, width]`) buffer that several threads write, each
/// only the rows of its own batch block.
pub(crate) struct Shared<'a, T> {
    ptr: *mut T,
    len: usize,
    batch: usize,
    width: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: access goes through `rows`, whose contract keeps threads on disjoint elements.
unsafe impl<T: Send> Send for Shared<'_, T> {}
unsafe impl<T: Send> Sync for Shared<'_, T> {}

impl<'a, T> Shared<'a, T> {
    /// Shares `buf`, laid out as `[*, batch, width]`.
    pub(crate) fn new(buf: &'a mut [T], batch: usize, width: usize) -> Self {
        Shared {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            batch,
            width,
            _borrow: PhantomData,
        }
    }

    /// Saves a block's initial `state` (its `rows`) as the state before the first
    /// step of `seq`, in a buffer of the states before each step (`h_{t-1}`).
    ///
    /// # Safety
    /// As [`Shared::rows`].
    pub(crate) unsafe fn save_initial(&self, seq: &Seq, rows: &Range<usize>, state: &[T])
    where
        T: Copy,
    {
        // SAFETY: the caller's.
        unsafe { self.rows(seq.time(0), rows) }.copy_from_slice(state);
    }

    /// Where step `s` of `seq` writes a block's new state: in this buffer of the
    /// states before each step, the next step's rows `rows`; after the last step,
    /// `state`.
    ///
    /// # Safety
    /// As [`Shared::rows`].
    pub(crate) unsafe fn next_state<'s>(
        &'s self,
        seq: &Seq,
        s: usize,
        rows: &Range<usize>,
        state: &'s mut [T],
    ) -> &'s mut [T] {
        if s + 1 < seq.steps {
            // SAFETY: the caller's.
            unsafe { self.rows(seq.time(s + 1), rows) }
        } else {
            state
        }
    }

    /// The rows `rows` of timestep `t`, `[rows.len(), width]`.
    ///
    /// # Safety
    /// No other live reference may overlap the returned rows: callers give each
    /// thread its own batch rows and take at most one slice per (buffer, t) at a time.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn rows(&self, t: usize, rows: &Range<usize>) -> &mut [T] {
        let start = (t * self.batch + rows.start) * self.width;
        let n = rows.len() * self.width;
        assert!(start + n <= self.len, "rows outside the buffer");
        // SAFETY: in bounds (checked above); exclusive by the caller's contract.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), n) }
    }
}
