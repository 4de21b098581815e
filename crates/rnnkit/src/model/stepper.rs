//! Batch-1 inference of a [`CharLm`], one character at a time (sampling). Batch-1
//! steps are bound by streaming the weights, so each layer's step is one pass over
//! them: the hidden units are shared out between the cores, each computing the gate
//! rows of its units and their cell update (one handoff per layer, to the stepper's
//! own [`Team`] of threads, each keeping its share's weights in its core's cache);
//! the first layer's input product is a table lookup, `W_ih0·E[id] + b_ih0`
//! precomputed per character; the weights can be kept in bfloat16 or int8, halving
//! or quartering the bytes to stream. Where a core's share of the weights is larger
//! than its cache, alternate characters read them in orders that find part of them
//! still cached (see [`Order`]).
//! The cell equations are those of `crate::cell` (named there).

use super::CharLm;
use crate::cell::rnn::{self, Activation};
use crate::cell::{lstm, CellKind};
use crate::error::{Error, Result};
pub use crate::kernel::Weights;
use crate::kernel::{
    add_bias_rows, matmul, sigmoid_f32, tanh_f32, MatMut, MatRef, PanelVector, Panels, Sweep, Team,
};

/// One recurrent layer's weights and state.
#[derive(Clone, Debug)]
struct Layer {
    /// `W_ih`; `None` on the first layer when the table replaces it.
    w_ih: Option<Panels>,
    w_hh: Panels,
    b_ih: Vec<f32>,
    b_hh: Option<Vec<f32>>,
    h: Vec<f32>,
    /// Cell state (LSTM); unused zeros otherwise.
    c: Vec<f32>,
    /// The activated gates of the last step `[G, H]`, kept when recording.
    gates: Vec<f32>,
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
    head_w: Panels,
    head_b: Vec<f32>,
    /// The hidden units shared out for each step, one share per thread.
    shares: Vec<Share>,
    /// The threads that run every share but the first.
    team: Team,
    /// `r ⊙ h` of the reset-before GRU, read by every share in its second phase.
    rh: Vec<f32>,
    /// The layer's input and hidden vectors, and the next layer's hidden vector,
    /// prepared for the weights' precision.
    vectors: [PanelVector; 3],
    weights: Weights,
    /// The direction of the last character's reads (see [`Order`]).
    sweep: Sweep,
    logits: Vec<f32>,
}

/// Below this many bytes of weights per layer step (on average over the layers),
/// one thread does the whole step. A handoff to the team and back costs 1–1.5 µs
/// under a hypervisor; measured on a 2-core Xeon, splitting the step paid from
/// 384–576 KiB per layer on, in every precision (f32 LSTM 1×128, 256 KiB: 2.9 µs a
/// character on one thread, 3.6 on two; bf16 LSTM 1×256, 512 KiB: 7.0 and 6.6).
const SPLIT_MIN_BYTES: usize = 512 << 10;

/// One share of a step: a range of hidden units, and its buffers.
#[derive(Clone, Debug)]
struct Share {
    /// The first unit (a multiple of 16, so no share but the last needs masked loads).
    j0: usize,
    /// The input and recurrent gate pre-activations of the units (`[G, m]` each), then
    /// two unit-wide buffers for the LSTM update.
    scratch: Vec<f32>,
    /// The units' next `h` (in the reset-before GRU's first phase, their `r ⊙ h`).
    h: Vec<f32>,
    /// The units' LSTM cell state, updated in place.
    c: Vec<f32>,
    /// The next layer's recurrent pre-activations of the units (`[G, m]`), when
    /// computed ahead (see [`Order`]).
    ahead: Vec<f32>,
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
                h: vec![0.0; hs],
                c: vec![0.0; hs],
                gates: Vec::new(),
            })
            .collect();
        let bytes: usize = layers
            .iter()
            .map(|l| l.w_hh.bytes() + l.w_ih.as_ref().map_or(0, Panels::bytes))
            .sum();
        let threads = if bytes >= SPLIT_MIN_BYTES * layers.len() {
            rayon::current_num_threads()
        } else {
            1
        };
        Ok(Stepper {
            kind,
            hs,
            vocab,
            embed,
            table,
            layers,
            head_w: Panels::new(model.head.weight.data(), hs, 1, weights),
            head_b: model.head.bias.data().to_vec(),
            shares: shares(hs, g, threads),
            team: Team::default(),
            rh: vec![0.0; hs],
            vectors: Default::default(),
            weights,
            sweep: Sweep::default(),
            logits: vec![0.0; vocab],
        })
    }

    /// Shares each step's hidden units out between `threads` threads (the caller's
    /// and `threads − 1` of the stepper's own; 0 counts as 1) instead of the number
    /// [`Stepper::new`] picked: the rayon pool's size for a large model, 1 for a
    /// small one. A share holds at least 16 units.
    pub fn set_threads(&mut self, threads: usize) {
        self.shares = shares(self.hs, self.kind.gates(), threads);
    }

    /// The threads each step is shared out between (the caller's included).
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
            l.h.fill(0.0);
            l.c.fill(0.0);
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
        (&layer.h, &layer.c)
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
        layer.h.copy_from_slice(h);
        layer.c.copy_from_slice(c);
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
        self.sweep = self.sweep.flip();
        let ahead = self.sweep == Sweep::Forward && self.kind != CellKind::GruResetBefore;
        for l in 0..self.layers.len() {
            let (below, rest) = self.layers.split_at_mut(l);
            let (layer, above) = rest.split_first_mut().expect("layer l exists");
            let input = match below.last() {
                Some(prev) => Input::Project(&prev.h),
                None if self.table.is_empty() => Input::Project(&self.embed[id * e..][..e]),
                None => Input::Ready(&self.table[id * gh..][..gh]),
            };
            let next = above.first().filter(|_| ahead).map(|up| {
                self.vectors[2].set(&up.h, self.weights);
                (&up.w_hh, up.b_hh.as_deref())
            });
            let order = Order {
                sweep: self.sweep,
                ready: ahead && l > 0,
                next,
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
                &mut self.vectors,
            );
            if !layer.gates.is_empty() {
                // Each share's scratch starts with its units' activated gates, [G, m].
                for s in &self.shares {
                    let m = s.h.len();
                    for gate in 0..self.kind.gates() {
                        layer.gates[gate * hs + s.j0..][..m]
                            .copy_from_slice(&s.scratch[gate * m..][..m]);
                    }
                }
            }
        }
        let top = &self.layers[self.layers.len() - 1].h;
        self.vectors[1].set(top, self.weights);
        let (v, b) = (&self.vectors[1], Some(&self.head_b[..]));
        self.head_w.dot(0, 0, v, b, &mut self.logits, self.sweep);
        Ok(&self.logits)
    }
}

/// `hs` hidden units of a `g`-gate cell shared out between `threads` threads, in
/// multiples of 16 units.
fn shares(hs: usize, g: usize, threads: usize) -> Vec<Share> {
    let share = hs.div_ceil(threads.max(1)).div_ceil(16) * 16;
    (0..hs)
        .step_by(share)
        .map(|j0| {
            let m = share.min(hs - j0);
            Share {
                j0,
                scratch: vec![0.0; (2 * g + 2) * m],
                h: vec![0.0; m],
                c: vec![0.0; m],
                ahead: vec![0.0; g * m],
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
/// it ended with).
#[derive(Clone, Copy)]
struct Order<'a> {
    /// The direction of every product's reads, and of its gates.
    sweep: Sweep,
    /// The shares' `ahead` hold this layer's recurrent pre-activations already.
    ready: bool,
    /// The next layer's `W_hh` and `b_hh`, to multiply first by its `h` (`vectors[2]`)
    /// into the shares' `ahead`.
    next: Option<(&'a Panels, Option<&'a [f32]>)>,
}

/// One step of one layer: every share computes its units, then `h` (and `c`) take
/// the shares' results. `vectors` receive the input and hidden vectors prepared for
/// `weights` (the third is the next layer's hidden vector, when `order.next` reads it).
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
    vectors: &mut [PanelVector; 3],
) {
    let Layer {
        w_ih,
        w_hh,
        b_ih,
        b_hh,
        h,
        c,
        ..
    } = layer;
    let (hs, g) = (h.len(), kind.gates());
    if let Input::Project(x) = input {
        vectors[0].set(x, weights);
    }
    vectors[1].set(h, weights);
    let (h_old, c_old) = (&*h, &*c);
    let [vx, vh, vn] = &*vectors;
    let sweep = order.sweep;
    // Pre-activations of every gate of the share's units: [G, m] input side, [G, m]
    // recurrent side (for the reset-before GRU the candidate's recurrent part waits).
    let preact = |s: &mut Share| {
        let (j0, m) = (s.j0, s.h.len());
        let (xp, hp) = s.scratch[..2 * g * m].split_at_mut(g * m);
        if order.ready {
            hp.copy_from_slice(&s.ahead);
        }
        if let Some((w, b)) = order.next {
            for gate in sweep.order(g) {
                let r0 = gate * hs + j0;
                let b = b.map(|b| &b[r0..r0 + m]);
                w.dot(gate, j0, vn, b, &mut s.ahead[gate * m..][..m], sweep);
            }
        }
        for gate in sweep.order(g) {
            let (r0, out) = (gate * hs + j0, &mut xp[gate * m..][..m]);
            match input {
                Input::Ready(v) => out.copy_from_slice(&v[r0..r0 + m]),
                Input::Project(_) => {
                    let w = w_ih.as_ref().expect("W_ih kept for projected inputs");
                    w.dot(gate, j0, vx, Some(&b_ih[r0..r0 + m]), out, sweep);
                }
            }
        }
        if order.ready {
            return;
        }
        for gate in sweep.order(g) {
            if kind == CellKind::GruResetBefore && gate == 2 {
                continue;
            }
            let r0 = gate * hs + j0;
            let b = b_hh.as_deref().map(|b| &b[r0..r0 + m]);
            w_hh.dot(gate, j0, vh, b, &mut hp[gate * m..][..m], sweep);
        }
    };
    match kind {
        CellKind::GruResetBefore => {
            // Phase 1: r and z of every unit, and r ⊙ h for the candidate's product.
            team.for_each(shares, |_, s| {
                preact(s);
                let (j0, m) = (s.j0, s.h.len());
                let (xp, hp) = s.scratch[..2 * g * m].split_at_mut(g * m);
                for (v, &u) in xp[..2 * m].iter_mut().zip(&hp[..2 * m]) {
                    *v += u;
                }
                sigmoid_f32(&mut xp[..2 * m]);
                for ((rh, &r), &h) in s.h.iter_mut().zip(&xp[..m]).zip(&h_old[j0..]) {
                    *rh = r * h;
                }
            });
            for s in shares.iter() {
                rh[s.j0..][..s.h.len()].copy_from_slice(&s.h);
            }
            vectors[1].set(rh, weights);
            let vrh = &vectors[1];
            team.for_each(shares, |_, s| {
                let (j0, m) = (s.j0, s.h.len());
                let (xp, hp) = s.scratch[..2 * g * m].split_at_mut(g * m);
                let hp_n = &mut hp[2 * m..3 * m];
                w_hh.dot(2, j0, vrh, None, hp_n, sweep);
                let (rz, n) = xp.split_at_mut(2 * m);
                for (v, &u) in n.iter_mut().zip(hp_n.iter()) {
                    *v += u;
                }
                tanh_f32(n);
                for j in 0..m {
                    let z = rz[m + j];
                    s.h[j] = (1.0 - z) * n[j] + z * h_old[j0 + j];
                }
            });
        }
        _ => team.for_each(shares, |_, s| {
            preact(s);
            let (j0, m) = (s.j0, s.h.len());
            let (pre, spare) = s.scratch[..(2 * g + 2) * m].split_at_mut(2 * g * m);
            let (xp, hp) = pre.split_at_mut(g * m);
            s.c.copy_from_slice(&c_old[j0..j0 + m]);
            update(kind, xp, hp, &h_old[j0..j0 + m], &mut s.c, &mut s.h, spare);
        }),
    }
    for s in shares.iter() {
        h[s.j0..][..s.h.len()].copy_from_slice(&s.h);
        if kind == CellKind::Lstm {
            c[s.j0..][..s.c.len()].copy_from_slice(&s.c);
        }
    }
}

/// The cell update of `m` units from their pre-activations `xp`, `hp` (`[G, m]`
/// each, biases included); `xp` is overwritten, `spare` (`2m`) is scratch.
fn update(
    kind: CellKind,
    xp: &mut [f32],
    hp: &[f32],
    h: &[f32],
    c: &mut [f32],
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
            rnn::step(act, xp, hp, hn, &mut spare[..m]);
        }
        CellKind::Lstm => {
            let (tanh_c, y) = spare.split_at_mut(m);
            lstm::step(xp, hp, c, tanh_c, hn, y);
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
