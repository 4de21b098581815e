//! Batch-1 inference of a [`CharLm`], one character at a time (sampling). Batch-1
//! steps are bound by streaming the weights, so each layer's step is one pass over
//! them: the hidden units are shared out between the cores, each computing the gate
//! rows of its units and their cell update (one handoff per layer, to the stepper's
//! own [`Team`] of threads, each keeping its share's weights in its core's cache).
//! Nothing passes through the caller between the layers: each share prepares the
//! vectors it reads itself, writes its units' `h` and `c` into the layer's state,
//! and multiplies its units' new `h` of the last layer by its columns of the output
//! layer, so the caller only adds the shares' partial logits. The first layer's
//! input product is a table lookup, `W_ih0·E[id] + b_ih0` precomputed per
//! character; the weights can be kept in bfloat16 or int8, halving or quartering
//! the bytes to stream. Where a core's share of the weights is larger than its
//! cache, alternate characters can read them in orders that find part of them still
//! cached (see [`Order`]); a stepper times that against reading forward at every
//! character, its products' streaming one group of rows at a time against four, and
//! a small model's step on one thread against two, and keeps the fastest, timing
//! them again every few seconds or once it slows (see [`ReadTuner`]). The logits are
//! the same bits every way: the output layer's parts of the logits are those of the
//! widest split it may use, added in order.
//! The cell equations are those of `crate::cell` (named there).

use super::CharLm;
use crate::cell::rnn::{self, Activation};
use crate::cell::{lstm, CellKind, Projection};
use crate::error::{Error, Result};
pub use crate::kernel::Weights;
use crate::kernel::{
    add_bias_rows, matmul, sigmoid_f32, streams_matter, tanh_f32, LstmShare, MatMut, MatRef,
    PanelVector, Panels, Pass, Sweep, Team,
};
use reads::{ReadTuner, Reads};
use std::marker::PhantomData;

mod reads;

/// One recurrent layer's weights and state.
#[derive(Clone, Debug)]
struct Layer {
    /// `W_ih`; `None` on the first layer when the table replaces it.
    w_ih: Option<Panels>,
    w_hh: Panels,
    b_ih: Vec<f32>,
    b_hh: Option<Vec<f32>>,
    /// `h[cur]` is the state; a step's shares write their units' next `h` into the
    /// other, which no share reads during the step, and `cur` then moves to it.
    h: [Vec<f32>; 2],
    cur: usize,
    /// The cell state (LSTM; unused zeros otherwise), `c[cur]` as `h[cur]`.
    c: [Vec<f32>; 2],
    /// The activated gates of the last step `[G, H]`, kept when recording.
    gates: Vec<f32>,
}

impl Layer {
    /// The state's `h`.
    fn h(&self) -> &[f32] {
        &self.h[self.cur]
    }

    /// The state's `c`.
    fn c(&self) -> &[f32] {
        &self.c[self.cur]
    }
}

/// Runs a [`CharLm`] on one sequence, a character per [`Stepper::feed`], with the
/// state carried. Built from a model by [`Stepper::new`]; independent of it after.
///
/// A large model's steps are shared out between as many threads as the rayon pool
/// current at [`Stepper::new`] has: the caller's and threads the stepper starts at
/// its first step and ends when dropped (a clone starts its own). Between steps they
/// spin for up to half a millisecond, then sleep.
#[derive(Clone, Debug)]
pub struct Stepper {
    kind: CellKind,
    hs: usize,
    vocab: usize,
    embed: Vec<f32>,
    /// `[V, G·H]`: `W_ih0·E[v] + b_ih0` for every character v (empty when not used).
    table: Vec<f32>,
    layers: Vec<Layer>,
    /// The output layer's weights `[V, H]`, from which each share takes its columns.
    head_w: Vec<f32>,
    head_b: Vec<f32>,
    /// The hidden units shared out for each step, one share per thread.
    shares: Vec<Share>,
    /// The other way to share them where the stepper times both (one thread and
    /// two), else empty; `split` says whether `shares` is the split one.
    other: Vec<Share>,
    split: bool,
    /// The threads that run every share but the first.
    team: Team,
    /// `r ⊙ h` of the reset-before GRU, read by every share in its second phase.
    rh: Vec<f32>,
    weights: Weights,
    /// The direction of the last character's reads (see [`Order`]).
    sweep: Sweep,
    /// The way characters read their weights: their directions, the products'
    /// streams, and (for a small model) the split, timed on the first characters.
    reads: ReadTuner,
    logits: Vec<f32>,
}

/// From this many bytes of weights per layer step (on average over the layers), the
/// pool's threads share every step; below it a stepper times one thread against
/// two ([`ReadTuner`]): on a Zen 5 LSTM 1×128 sampled 20 % faster in f32 on two
/// threads, on the Xeon below 24 % slower. A handoff to the team and back costs 1–1.5 µs
/// under a hypervisor; measured on a 2-core Xeon, splitting the step paid from
/// 384–576 KiB per layer on, in every precision (f32 LSTM 1×128, 256 KiB: 2.9 µs a
/// character on one thread, 3.6 on two; bf16 LSTM 1×256, 512 KiB: 7.0 and 6.6).
const SPLIT_MIN_BYTES: usize = 512 << 10;

/// One share of a step: a range of hidden units, and its buffers.
#[derive(Clone, Debug)]
struct Share {
    /// The first unit (a multiple of 16, so no share but the last needs masked loads).
    j0: usize,
    /// The number of units.
    m: usize,
    /// The input gate pre-activations of the units (`[G, m]`); after the update,
    /// their activated gates.
    xp: Vec<f32>,
    /// The recurrent gate pre-activations of the units (`[G, m]`).
    hp: Vec<f32>,
    /// Two unit-wide buffers for the LSTM update.
    spare: Vec<f32>,
    /// The next layer's recurrent pre-activations of the units (`[G, m]`), when
    /// computed ahead (see [`Order`]); they become that layer's `hp` by a swap.
    ahead: Vec<f32>,
    /// The vectors the share's products read, prepared by the share itself.
    vectors: Vectors,
    /// The output layer's columns of the share's units, in parts.
    head: Vec<HeadPart>,
}

/// Some of a share's units' columns of the output layer, and their part of the
/// logits. The parts are the same whatever the threads (those of the widest split
/// the stepper may use), and the caller adds them in order, so the logits are the
/// same bits on one thread or several.
#[derive(Clone, Debug)]
struct HeadPart {
    /// The part's first unit, counted from the share's.
    offset: usize,
    /// Its number of units.
    width: usize,
    /// The output layer's columns of the part's units, `[V, width]`.
    columns: Panels,
    /// Those columns times the units' `h` of the last layer, before the bias.
    logits: Vec<f32>,
}

/// A share's vectors, prepared for the weights' precision.
#[derive(Clone, Debug, Default)]
struct Vectors {
    /// The layer's input.
    x: PanelVector,
    /// The layer's `h` (for the reset-before GRU's candidate, `r ⊙ h`).
    h: PanelVector,
    /// The next layer's `h`, when its recurrent product is computed ahead.
    next: PanelVector,
    /// The share's units of the last layer's new `h`.
    units: PanelVector,
}

/// A buffer that the shares of one job write in parts, each share its own units.
struct Parts<'a> {
    ptr: *mut f32,
    len: usize,
    buf: PhantomData<&'a mut [f32]>,
}

// SAFETY: shares write disjoint parts (see `part`), and the buffer outlives the job.
unsafe impl Sync for Parts<'_> {}

impl<'a> Parts<'a> {
    fn new(buf: &'a mut [f32]) -> Parts<'a> {
        Parts {
            ptr: buf.as_mut_ptr(),
            len: buf.len(),
            buf: PhantomData,
        }
    }

    /// Elements `j0..j0 + m`.
    ///
    /// # Safety
    /// No other part given out during the job overlaps this one, and nothing else
    /// reads or writes the buffer until the job is done.
    #[allow(clippy::mut_from_ref)] // each share asks for its own units only
    unsafe fn part(&self, j0: usize, m: usize) -> &mut [f32] {
        assert!(j0 + m <= self.len, "units {j0}..{} of {}", j0 + m, self.len);
        // SAFETY: in bounds (checked), and the caller guarantees exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(j0), m) }
    }
}

impl Stepper {
    /// Prepares `model` for batch-1 steps from the zero state. Fails on a
    /// bidirectional model, which cannot run one step at a time.
    pub fn new(model: &CharLm, weights: impl Into<Weights>) -> Result<Stepper> {
        let weights = weights.into();
        let cfg = model.rnn.config();
        if cfg.bidirectional {
            return Err(Error::Config(
                "a bidirectional model cannot generate one character at a time".into(),
            ));
        }
        let (kind, hs, g) = (cfg.cell, cfg.hidden_size, cfg.cell.gates());
        let vocab = model.vocab().len();
        let (e, embed) = match &model.embed {
            Some(m) => (m.dim(), m.weight.data().to_vec()),
            None => (0, Vec::new()),
        };
        let cells = model.rnn.cells();
        // The table costs V·G·H floats against W_ih0's E·G·H: worth it unless the
        // vocabulary is much wider than the embedding. One-hot inputs always use it:
        // their table is W_ih0ᵀ itself.
        let use_table = e == 0 || vocab <= 4 * e.max(16);
        let mut table = Vec::new();
        if e == 0 {
            let w = cells[0].w_ih.data();
            table = vec![0.0; vocab * g * hs];
            for (r, row) in w.chunks_exact(vocab).enumerate() {
                for (v, &x) in row.iter().enumerate() {
                    table[v * g * hs + r] = x;
                }
            }
            add_bias_rows(&mut table, cells[0].b_ih.data());
        } else if use_table {
            table = vec![0.0; vocab * g * hs];
            matmul(
                MatMut::dense(&mut table, vocab, g * hs),
                MatRef::dense(&embed, vocab, e),
                MatRef::dense(cells[0].w_ih.data(), g * hs, e).t(),
                false,
            );
            add_bias_rows(&mut table, cells[0].b_ih.data());
        }
        let layers: Vec<Layer> = cells
            .iter()
            .enumerate()
            .map(|(l, p)| Layer {
                w_ih: (l > 0 || !use_table)
                    .then(|| Panels::new(p.w_ih.data(), p.w_ih.shape()[1], g, weights)),
                w_hh: Panels::new(p.w_hh.data(), hs, g, weights),
                b_ih: p.b_ih.data().to_vec(),
                b_hh: p.b_hh.as_ref().map(|b| b.data().to_vec()),
                h: [vec![0.0; hs], vec![0.0; hs]],
                cur: 0,
                c: [vec![0.0; hs], vec![0.0; hs]],
                gates: Vec::new(),
            })
            .collect();
        let bytes: usize = layers
            .iter()
            .map(|l| l.w_hh.bytes() + l.w_ih.as_ref().map_or(0, Panels::bytes))
            .sum();
        // Large models share every step between the pool's threads; small ones start
        // on one and time two too (more would cut the output layer into smaller
        // parts, and hand off more, for a step that fits two cores' caches).
        let pool = rayon::current_num_threads().max(1);
        let large = bytes >= SPLIT_MIN_BYTES * layers.len();
        let head_w = model.head.weight.data().to_vec();
        let (threads, wide) = if large {
            (pool, pool)
        } else {
            (1, pool.min(2))
        };
        let other = if large || wide == 1 {
            Vec::new()
        } else {
            shares(hs, g, wide, wide, &head_w, weights)
        };
        let split = threads > 1;
        let tune_split = if other.is_empty() { Some(split) } else { None };
        Ok(Stepper {
            kind,
            hs,
            vocab,
            embed,
            table,
            layers,
            shares: shares(hs, g, threads, wide, &head_w, weights),
            other,
            split,
            head_w,
            head_b: model.head.bias.data().to_vec(),
            team: Team::default(),
            rh: vec![0.0; hs],
            weights,
            sweep: Sweep::default(),
            reads: ReadTuner::new(streams_matter(weights), tune_split),
            logits: vec![0.0; vocab],
        })
    }

    /// Shares each step's hidden units out between `threads` threads (the caller's
    /// and `threads − 1` of the stepper's own; 0 counts as 1) instead of the number
    /// [`Stepper::new`] picked: the rayon pool's size for a large model, for a small
    /// one whichever of 1 and 2 (where the pool has two) was faster on its first
    /// characters (that timing then stops). A share holds at least 16 units. The
    /// logits' last bits may change with the threads set here.
    pub fn set_threads(&mut self, threads: usize) {
        let g = self.kind.gates();
        let threads = threads.max(1);
        self.shares = shares(self.hs, g, threads, threads, &self.head_w, self.weights);
        self.other = Vec::new();
        self.split = threads > 1;
        self.reads = ReadTuner::new(streams_matter(self.weights), Some(self.split));
    }

    /// Whether the stepper is timing the ways it can read its weights, as on its
    /// first few hundred characters (and again every few seconds, or once the way
    /// it chose slows; see [`ReadTuner`]): a benchmark feeds it until it is done.
    pub fn tuning(&self) -> bool {
        !self.reads.done()
    }

    /// The threads each step is shared out between (the caller's included); a small
    /// model's may change while it times its ways.
    pub fn threads(&self) -> usize {
        self.shares.len()
    }

    /// Whether the first layer's input projection is a row of a table of projected
    /// characters (read per character instead of `W_ih0`).
    pub fn reads_table(&self) -> bool {
        !self.table.is_empty()
    }

    /// Back to the zero state.
    pub fn reset(&mut self) {
        for l in &mut self.layers {
            l.h.iter_mut().for_each(|h| h.fill(0.0));
            l.c.iter_mut().for_each(|c| c.fill(0.0));
        }
    }

    /// Keeps (or stops keeping) every layer's activated gates at each step, for
    /// [`Stepper::gates`]. Gated cells only; the vanilla RNN has none.
    pub fn record_gates(&mut self, on: bool) {
        let n = if on && self.kind != CellKind::RnnTanh && self.kind != CellKind::RnnRelu {
            self.kind.gates() * self.hs
        } else {
            0
        };
        self.layers.iter_mut().for_each(|l| l.gates = vec![0.0; n]);
    }

    /// The state of layer `l` after the last character fed: `h`, and `c` (zeros
    /// unless the cell is an LSTM).
    pub fn state(&self, l: usize) -> (&[f32], &[f32]) {
        let layer = &self.layers[l];
        (layer.h(), layer.c())
    }

    /// Puts layer `l` back in a state read earlier by [`Stepper::state`], so one
    /// stepper can continue many sequences (a decoder's hypotheses) in turn.
    pub fn set_state(&mut self, l: usize, h: &[f32], c: &[f32]) -> Result<()> {
        let hs = self.hs;
        let layers = self.layers.len();
        let layer = self.layers.get_mut(l).ok_or_else(|| {
            Error::Input(format!("layer {l} does not exist: the model has {layers}"))
        })?;
        if h.len() != hs || c.len() != hs {
            return Err(Error::Shape(format!(
                "layer {l}'s state is {hs} wide, got h of {} and c of {}",
                h.len(),
                c.len()
            )));
        }
        layer.h[layer.cur].copy_from_slice(h);
        layer.c[layer.cur].copy_from_slice(c);
        Ok(())
    }

    /// The activated gates of layer `l` at the last step, `[G, H]` (i, f, g, o for
    /// the LSTM; r, z, n for the GRU); empty unless recording (see [`Stepper::record_gates`]).
    pub fn gates(&self, l: usize) -> &[f32] {
        &self.layers[l].gates
    }

    /// Number of recurrent layers.
    pub fn layers(&self) -> usize {
        self.layers.len()
    }

    /// Feeds character `id`; returns the logits of the next one.
    pub fn feed(&mut self, id: usize) -> Result<&[f32]> {
        if id >= self.vocab {
            return Err(Error::Input(format!(
                "character id {id} is outside the vocabulary of {}",
                self.vocab
            )));
        }
        let (hs, e) = (self.hs, self.embed.len() / self.vocab);
        let gh = self.kind.gates() * hs;
        let way = self.reads.next();
        if way.split != self.split && !self.other.is_empty() {
            std::mem::swap(&mut self.shares, &mut self.other);
            self.split = way.split;
        }
        self.sweep = match way.reads {
            Reads::Alternate => self.sweep.flip(),
            Reads::Forward => Sweep::Forward,
        };
        let ahead = self.sweep == Sweep::Forward && self.kind != CellKind::GruResetBefore;
        let last = self.layers.len() - 1;
        for l in 0..=last {
            let (below, rest) = self.layers.split_at_mut(l);
            let (layer, above) = rest.split_first_mut().expect("layer l exists");
            let input = match below.last() {
                Some(prev) => Input::Project(prev.h()),
                None if self.table.is_empty() => Input::Project(&self.embed[id * e..][..e]),
                None => Input::Ready(&self.table[id * gh..][..gh]),
            };
            let next = above
                .first()
                .filter(|_| ahead)
                .map(|up| (&up.w_hh, up.b_hh.as_deref(), up.h()));
            let order = Order {
                pass: Pass {
                    sweep: self.sweep,
                    streams: way.streams,
                },
                ready: ahead && l > 0,
                next,
                head: l == last,
            };
            step_layer(
                self.kind,
                layer,
                input,
                order,
                &mut self.team,
                &mut self.shares,
                &mut self.rh,
                self.weights,
            );
            if !layer.gates.is_empty() {
                // Each share's `xp` holds its units' activated gates, [G, m].
                for s in &self.shares {
                    for gate in 0..self.kind.gates() {
                        layer.gates[gate * hs + s.j0..][..s.m]
                            .copy_from_slice(&s.xp[gate * s.m..][..s.m]);
                    }
                }
            }
        }
        // The parts of the logits in order of their units, then the bias.
        let mut parts = self.shares.iter().flat_map(|s| &s.head);
        let first = parts
            .next()
            .expect("a stepper has a share of the output layer");
        self.logits.copy_from_slice(&first.logits);
        for part in parts {
            for (y, &p) in self.logits.iter_mut().zip(&part.logits) {
                *y += p;
            }
        }
        for (y, &b) in self.logits.iter_mut().zip(&self.head_b) {
            *y += b;
        }
        Ok(&self.logits)
    }
}

/// The units of each of `threads` shares of `hs`: a multiple of 16.
fn share_width(hs: usize, threads: usize) -> usize {
    hs.div_ceil(threads.max(1)).div_ceil(16) * 16
}

/// `hs` hidden units of a `g`-gate cell shared out between `threads` threads, in
/// multiples of 16 units, each with its columns of the output layer `head` (`[V, hs]`)
/// in the parts of `parts` shares (`threads` is 1 or `parts`).
fn shares(
    hs: usize,
    g: usize,
    threads: usize,
    parts: usize,
    head: &[f32],
    weights: Weights,
) -> Vec<Share> {
    let share = share_width(hs, threads);
    let part = share_width(hs, parts);
    let vocab = head.len() / hs;
    (0..hs)
        .step_by(share)
        .map(|j0| {
            let m = share.min(hs - j0);
            let head = (j0..j0 + m)
                .step_by(part)
                .map(|p0| {
                    let width = part.min(j0 + m - p0);
                    let columns: Vec<f32> = head
                        .chunks_exact(hs)
                        .flat_map(|row| &row[p0..p0 + width])
                        .copied()
                        .collect();
                    HeadPart {
                        offset: p0 - j0,
                        width,
                        columns: Panels::new(&columns, width, 1, weights),
                        logits: vec![0.0; vocab],
                    }
                })
                .collect();
            Share {
                j0,
                m,
                xp: vec![0.0; g * m],
                hp: vec![0.0; g * m],
                spare: vec![0.0; 2 * m],
                ahead: vec![0.0; g * m],
                vectors: Vectors::default(),
                head,
            }
        })
        .collect()
}

/// A layer's input: a vector to multiply by `W_ih`, or `W_ih x + b_ih` already.
#[derive(Clone, Copy)]
enum Input<'a> {
    Project(&'a [f32]),
    Ready(&'a [f32]),
}

/// How one layer's step reads its weights at this character.
///
/// A core's share of a 2×512 LSTM's weights is three matrices of 1 MB in bfloat16,
/// `W_hh0` (A), `W_hh1` (B) and `W_ih1` (C), and its L2 cache holds two. Read in
/// the same order at every character, each line is evicted just before it is read
/// again, and every byte comes from L3. `W_hh1·h1` does not wait for layer 0, so
/// the characters alternate between B A C, read forward with each layer's `W_hh`
/// product computed ahead in the job of the layer below, and A C B, read backward:
/// each starts with the matrices the other ended with, and meets their lines in the
/// reverse of the order they were left in the cache. Each matrix, row and sum is
/// the same in both orders, so the results are too. Measured on a 2-core Xeon (2 MiB
/// L2 per core), LSTM 2×512 at batch 1: bf16 115 → 95 µs a character, f32 240 → 213
/// (its matrices are 2 MB each, and only every other character starts with the one
/// it ended with). Where that does not pay, every character reads forward, B A C:
/// the stepper times both ways on its first characters ([`ReadTuner`]).
#[derive(Clone, Copy)]
struct Order<'a> {
    /// The direction of every product's reads (and of its gates), and its streams.
    pass: Pass,
    /// The shares' `ahead` hold this layer's recurrent pre-activations already.
    ready: bool,
    /// The next layer's `W_hh`, `b_hh` and `h`, to multiply first into the shares'
    /// `ahead`.
    next: Option<NextLayer<'a>>,
    /// The last layer: each share multiplies its units' new `h` by its columns of the
    /// output layer.
    head: bool,
}

/// The next layer's `W_hh`, `b_hh` and `h`.
type NextLayer<'a> = (&'a Panels, Option<&'a [f32]>, &'a [f32]);

/// One step of one layer: every share computes its units and writes their `h` (and
/// `c`) into the layer's state, and then `h[cur]` is the new state.
#[allow(clippy::too_many_arguments)]
fn step_layer(
    kind: CellKind,
    layer: &mut Layer,
    input: Input<'_>,
    order: Order<'_>,
    team: &mut Team,
    shares: &mut [Share],
    rh: &mut [f32],
    weights: Weights,
) {
    let Layer {
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        h,
        cur,
        c,
        ..
    } = layer;
    let g = kind.gates();
    let hs = h[0].len();
    let [(h_old, h_new), (c_old, c_new)] = [h, c].map(|[a, b]| match *cur {
        0 => (&*a, Parts::new(b)),
        _ => (&*b, Parts::new(a)),
    });
    let (pass, sweep) = (order.pass, order.pass.sweep);
    // Pre-activations of every gate of the share's units: [G, m] input side, [G, m]
    // recurrent side (for the reset-before GRU the candidate's recurrent part waits).
    // Given an LSTM's state `(c_{t-1}, c_t, h_t)`, the recurrent product may update
    // the units as it goes (`Panels::lstm_f32`): then it returns true.
    let preact = |s: &mut Share, state: Option<(&[f32], &mut [f32], &mut [f32])>| {
        let (j0, m) = (s.j0, s.m);
        if order.ready {
            std::mem::swap(&mut s.hp, &mut s.ahead);
        }
        let (xp, hp, v) = (&mut s.xp, &mut s.hp, &mut s.vectors);
        if let Some((w, b, h_next)) = order.next {
            v.next.set(h_next, weights);
            w.dot_blocks(0..g, j0, &v.next, b, &mut s.ahead, pass);
        }
        match input {
            Input::Ready(v) => {
                for gate in sweep.order(g) {
                    let r0 = gate * hs + j0;
                    xp[gate * m..][..m].copy_from_slice(&v[r0..r0 + m]);
                }
            }
            Input::Project(x) => {
                v.x.set(x, weights);
                let w = w_ih.as_ref().expect("W_ih kept for projected inputs");
                w.dot_blocks(0..g, j0, &v.x, Some(b_ih), xp, pass);
            }
        }
        if order.ready {
            return false;
        }
        v.h.set(h_old, weights);
        // The reset-before GRU's candidate (gate 2) waits for `r ⊙ h`.
        let gates = if kind == CellKind::GruResetBefore {
            2
        } else {
            g
        };
        let hp = &mut hp[..gates * m];
        if let Some((c_prev, c, h)) = state {
            let share = LstmShare {
                xp,
                hp: &mut *hp,
                c: (c_prev, c),
                h,
            };
            if w_hh.lstm_f32(j0, &v.h, b_hh.as_deref(), pass, share) {
                return true;
            }
        }
        w_hh.dot_blocks(0..gates, j0, &v.h, b_hh.as_deref(), hp, pass);
        false
    };
    // The share's part of the logits from its units' new `h`, on the last layer.
    let head = |s: &mut Share, h: &[f32]| {
        if order.head {
            for part in &mut s.head {
                let units = &h[part.offset..part.offset + part.width];
                s.vectors.units.set(units, weights);
                part.columns
                    .dot(0, 0, &s.vectors.units, None, &mut part.logits, pass);
            }
        }
    };
    match kind {
        CellKind::GruResetBefore => {
            // Phase 1: r and z of every unit, and r ⊙ h for the candidate's product.
            let parts = Parts::new(rh);
            team.for_each(shares, |_, s| {
                preact(s, None);
                let (j0, m) = (s.j0, s.m);
                let (xp, hp) = (&mut s.xp, &s.hp);
                for (v, &u) in xp[..2 * m].iter_mut().zip(&hp[..2 * m]) {
                    *v += u;
                }
                sigmoid_f32(&mut xp[..2 * m]);
                // SAFETY: the share's own units; `rh` is read only in phase 2.
                let rh = unsafe { parts.part(j0, m) };
                for ((rh, &r), &h) in rh.iter_mut().zip(&xp[..m]).zip(&h_old[j0..]) {
                    *rh = r * h;
                }
            });
            let rh = &*rh;
            team.for_each(shares, |_, s| {
                let (j0, m) = (s.j0, s.m);
                s.vectors.h.set(rh, weights);
                let (xp, hp_n) = (&mut s.xp, &mut s.hp[2 * m..3 * m]);
                w_hh.dot(2, j0, &s.vectors.h, None, hp_n, pass);
                let (rz, n) = xp.split_at_mut(2 * m);
                for (v, &u) in n.iter_mut().zip(hp_n.iter()) {
                    *v += u;
                }
                tanh_f32(n);
                // SAFETY: the share's own units; nothing else touches `h_new` now.
                let hn = unsafe { h_new.part(j0, m) };
                for j in 0..m {
                    let z = rz[m + j];
                    hn[j] = (1.0 - z) * n[j] + z * h_old[j0 + j];
                }
                head(s, hn);
            });
        }
        _ => team.for_each(shares, |_, s| {
            let (j0, m) = (s.j0, s.m);
            // SAFETY: the share's own units; no other share reads or writes them, and
            // `h_old`, `c_old` are the other buffers.
            let (hn, cn) = unsafe { (h_new.part(j0, m), c_new.part(j0, m)) };
            let old = (&h_old[j0..j0 + m], &c_old[j0..j0 + m]);
            let state = (kind == CellKind::Lstm).then_some((old.1, &mut *cn, &mut *hn));
            if !preact(s, state) {
                update(kind, &mut s.xp, &s.hp, old, cn, hn, &mut s.spare);
            }
            head(s, hn);
        }),
    }
    *cur ^= 1;
}

/// The cell update of `m` units from their pre-activations `xp`, `hp` (`[G, m]`
/// each, biases included) and their state `(h, c)`, into `hn`, `cn`; `xp` is
/// overwritten, `spare` (`2m`) is scratch.
fn update(
    kind: CellKind,
    xp: &mut [f32],
    hp: &[f32],
    (h, c): (&[f32], &[f32]),
    cn: &mut [f32],
    hn: &mut [f32],
    spare: &mut [f32],
) {
    let m = hn.len();
    match kind {
        CellKind::RnnTanh | CellKind::RnnRelu => {
            let act = if kind == CellKind::RnnTanh {
                Activation::Tanh
            } else {
                Activation::Relu
            };
            rnn::step(act, xp, Projection::Here, hp, hn, &mut spare[..m]);
        }
        CellKind::Lstm => {
            let (tanh_c, y) = spare.split_at_mut(m);
            lstm::step(xp, Projection::Here, hp, (c, cn), tanh_c, hn, y);
        }
        CellKind::Gru => {
            for (v, &u) in xp[..2 * m].iter_mut().zip(&hp[..2 * m]) {
                *v += u;
            }
            sigmoid_f32(&mut xp[..2 * m]);
            let (rz, n) = xp.split_at_mut(2 * m);
            for j in 0..m {
                n[j] += rz[j] * hp[2 * m + j];
            }
            tanh_f32(n);
            for j in 0..m {
                let z = rz[m + j];
                hn[j] = (1.0 - z) * n[j] + z * h[j];
            }
        }
        CellKind::GruResetBefore => unreachable!("handled in two phases by step_layer"),
    }
}
