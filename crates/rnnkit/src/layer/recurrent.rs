//! The recurrent layer: one cell kind × `num_layers` × one or two directions,
//! parameters named and shaped as torch.nn.RNN / LSTM / GRU.

use super::{with_name, Dropout, ParamVisitor, Parameters};
use crate::cell::gru::{self, GruCache};
use crate::cell::lstm::{self, LstmCache};
use crate::cell::rnn::{self, Activation, RnnCache};
use crate::cell::{for_directions, CellKind, CellParams, Input, Seq, WeightCopies};
use crate::error::{Error, Result};
use crate::kernel::copy;
use crate::rng::Rng;
use crate::tensor::{overwritten, scratch, Real, Tensor};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// How the two directions of a bidirectional layer are combined.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// `[forward, backward]` side by side (torch.nn's behaviour), width 2H.
    #[default]
    Concat,
    /// Elementwise sum, width H.
    Sum,
    /// Elementwise product, width H.
    Mul,
    /// Elementwise mean, width H.
    Average,
}

/// Configuration of a [`Recurrent`] layer; stored with the model in checkpoints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RecurrentConfig {
    /// The recurrence.
    pub cell: CellKind,
    /// Width of the input features.
    pub input_size: usize,
    /// Width of the hidden state H.
    pub hidden_size: usize,
    /// Number of stacked layers.
    pub num_layers: usize,
    /// Run a second, reversed direction in every layer.
    pub bidirectional: bool,
    /// How the two directions are combined (bidirectional only).
    pub merge: Merge,
    /// Dropout probability on the outputs of every layer but the last, in training.
    pub dropout: f32,
}

impl RecurrentConfig {
    /// One unidirectional layer, no dropout.
    pub fn new(cell: CellKind, input_size: usize, hidden_size: usize) -> Self {
        RecurrentConfig {
            cell,
            input_size,
            hidden_size,
            num_layers: 1,
            bidirectional: false,
            merge: Merge::Concat,
            dropout: 0.0,
        }
    }

    /// Sets the number of stacked layers.
    pub fn with_layers(mut self, num_layers: usize) -> Self {
        self.num_layers = num_layers;
        self
    }

    /// Makes every layer bidirectional (or not).
    pub fn with_bidirectional(mut self, bidirectional: bool) -> Self {
        self.bidirectional = bidirectional;
        self
    }

    /// Sets how directions are merged.
    pub fn with_merge(mut self, merge: Merge) -> Self {
        self.merge = merge;
        self
    }

    /// Sets the dropout between stacked layers.
    pub fn with_dropout(mut self, dropout: f32) -> Self {
        self.dropout = dropout;
        self
    }

    /// Number of directions D (1 or 2).
    pub fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    /// Width of each layer's output: D·H when concatenated, else H.
    pub fn output_size(&self) -> usize {
        if self.bidirectional && self.merge == Merge::Concat {
            2 * self.hidden_size
        } else {
            self.hidden_size
        }
    }

    /// Width of the input of layer `l`.
    pub fn layer_input_size(&self, l: usize) -> usize {
        if l == 0 {
            self.input_size
        } else {
            self.output_size()
        }
    }

    /// Fails with a message naming the field if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if self.input_size == 0 {
            return bad("input_size must be at least 1".into());
        }
        if self.hidden_size == 0 {
            return bad("hidden_size must be at least 1".into());
        }
        // Sizes come from files too: keep G·H and the directions' width in range.
        if self.hidden_size > crate::limits::MAX_WIDTH {
            return bad(format!(
                "hidden_size must be at most {}, got {}",
                crate::limits::MAX_WIDTH,
                self.hidden_size
            ));
        }
        if self.num_layers > crate::limits::MAX_LAYERS {
            return bad(format!(
                "num_layers must be at most {}, got {}",
                crate::limits::MAX_LAYERS,
                self.num_layers
            ));
        }
        if self.num_layers == 0 {
            return bad("num_layers must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return bad(format!("dropout must be in [0, 1), got {}", self.dropout));
        }
        Ok(())
    }

    /// Builds the layer with torch.nn's default initialisation: every weight and bias U(−1/√H, 1/√H).
    pub fn init<T: Real>(&self, rng: &mut Rng) -> Result<Recurrent<T>> {
        self.validate()?;
        let k = 1.0 / (self.hidden_size as f64).sqrt();
        let mut params = Vec::new();
        for l in 0..self.num_layers {
            for _ in 0..self.directions() {
                let mut p =
                    CellParams::zeros(self.cell, self.layer_input_size(l), self.hidden_size);
                for (_, t) in p.named_mut() {
                    t.data_mut()
                        .iter_mut()
                        .for_each(|v| *v = T::of(rng.uniform_in(-k, k)));
                }
                params.push(p);
            }
        }
        Recurrent::from_params(self.clone(), params)
    }
}

/// The state of a recurrent layer, laid out as torch.nn's `h_n` / `c_n`:
/// `[num_layers · D, B, H]`, ordered layer 0 forward, layer 0 reverse, layer 1 forward, …
#[derive(Clone, Debug, PartialEq)]
pub struct RecurrentState<T = f32> {
    /// Hidden state.
    pub h: Tensor<T>,
    /// Cell state (LSTM only).
    pub c: Option<Tensor<T>>,
}

impl<T: Real> Default for RecurrentState<T> {
    /// An empty state, for a buffer that a `*_into` pass then fills.
    fn default() -> Self {
        RecurrentState {
            h: Tensor::zeros(&[0]),
            c: None,
        }
    }
}

impl<T: Real> RecurrentState<T> {
    /// The all-zero state for a batch of `batch` sequences.
    pub fn zeros(config: &RecurrentConfig, batch: usize) -> Self {
        let shape = [
            config.num_layers * config.directions(),
            batch,
            config.hidden_size,
        ];
        RecurrentState {
            h: Tensor::zeros(&shape),
            c: config.cell.has_cell_state().then(|| Tensor::zeros(&shape)),
        }
    }

    /// Makes this a copy of `src`, reusing this state's storage (a trainer that
    /// carries the state from batch to batch allocates nothing for it).
    pub fn copy_from(&mut self, src: &Self) {
        let copy = |t: &mut Tensor<T>, src: &Tensor<T>| {
            t.reshape_overwritten(src.shape());
            t.data_mut().copy_from_slice(src.data());
        };
        copy(&mut self.h, &src.h);
        match &src.c {
            Some(c) => copy(self.c.get_or_insert_with(|| Tensor::zeros(&[0])), c),
            None => self.c = None,
        }
    }

    /// Makes this `init` (already checked), or zeros for a batch of `batch` when
    /// `None`, reusing this state's storage.
    fn assign(&mut self, config: &RecurrentConfig, batch: usize, init: Option<&Self>) {
        match init {
            Some(init) => self.copy_from(init),
            None => self.zero(config, batch),
        }
    }

    /// Makes this the all-zero state for a batch of `batch`, reusing its storage.
    pub fn zero(&mut self, config: &RecurrentConfig, batch: usize) {
        let shape = [
            config.num_layers * config.directions(),
            batch,
            config.hidden_size,
        ];
        let zero = |t: &mut Tensor<T>| {
            t.reshape_overwritten(&shape);
            t.data_mut().fill(T::zero());
        };
        zero(&mut self.h);
        match config.cell.has_cell_state() {
            true => zero(self.c.get_or_insert_with(|| Tensor::zeros(&[0]))),
            false => self.c = None,
        }
    }

    fn check(&self, config: &RecurrentConfig, batch: usize, what: &str) -> Result<()> {
        let shape = [
            config.num_layers * config.directions(),
            batch,
            config.hidden_size,
        ];
        // The messages are made only on a mismatch: a training step checks its state
        // every time and allocates nothing.
        let expect = |t: &Tensor<T>, part: &str| {
            if t.shape() == shape {
                Ok(())
            } else {
                t.expect_shape(&format!("{what} {part}"), &shape)
            }
        };
        expect(&self.h, "h")?;
        match (&self.c, config.cell.has_cell_state()) {
            (Some(c), true) => expect(c, "c"),
            (None, false) => Ok(()),
            (None, true) => Err(Error::Shape(format!(
                "{what}: an LSTM state needs c as well as h"
            ))),
            (Some(_), false) => Err(Error::Shape(format!(
                "{what}: a {} state has no c",
                config.cell
            ))),
        }
    }
}

/// What a model keeps of its recurrent layer's training step from one step to the
/// next, for the `*_into` passes to fill: with them a warmed-up step allocates none
/// of these.
#[derive(Clone, Debug, Default)]
pub struct Kept<T: Real = f32> {
    /// The output `[T, B, output_size]`.
    pub y: Tensor<T>,
    /// The final state.
    pub fin: RecurrentState<T>,
    /// The input's gradient (the embedding table's after an embedded pass).
    pub dx: Tensor<T>,
    /// The initial state's gradient.
    pub d_init: RecurrentState<T>,
}

impl<T: Real> Kept<T> {
    /// Where a forward pass writes: the output and the final state.
    pub fn forward(&mut self) -> (&mut Tensor<T>, &mut RecurrentState<T>) {
        (&mut self.y, &mut self.fin)
    }

    /// Where a backward pass writes: the input's and the initial state's gradients.
    pub fn backward(&mut self) -> (&mut Tensor<T>, &mut RecurrentState<T>) {
        (&mut self.dx, &mut self.d_init)
    }
}

/// Saved activations of one cell, by kind.
#[derive(Clone, Debug)]
enum CellCache<T> {
    Rnn(RnnCache<T>),
    Lstm(LstmCache<T>),
    Gru(GruCache<T>),
}

impl<T: Default> CellCache<T> {
    /// An empty cache for a cell of this kind.
    fn new(kind: CellKind) -> Self {
        match kind {
            CellKind::RnnTanh | CellKind::RnnRelu => CellCache::Rnn(RnnCache::default()),
            CellKind::Lstm => CellCache::Lstm(LstmCache::default()),
            CellKind::Gru | CellKind::GruResetBefore => CellCache::Gru(GruCache::default()),
        }
    }
}

impl<T> CellCache<T> {
    fn weights_changed(&mut self) {
        self.weights_mut().invalidate();
    }

    fn weights_mut(&mut self) -> &mut WeightCopies<T> {
        match self {
            CellCache::Rnn(c) => c.weights_mut(),
            CellCache::Lstm(c) => c.weights_mut(),
            CellCache::Gru(c) => c.weights_mut(),
        }
    }
}

impl<T: Copy> CellCache<T> {
    /// Empties what `append_grad_rows` gathered, keeping the storage.
    fn clear_grad_rows(&mut self) {
        match self {
            CellCache::Rnn(c) => c.clear_grad_rows(),
            CellCache::Lstm(c) => c.clear_grad_rows(),
            CellCache::Gru(c) => c.clear_grad_rows(),
        }
    }
}

/// Everything the last forward pass keeps for the backward pass; reused between calls.
#[derive(Clone, Debug, Default)]
struct Saved<T> {
    steps: usize,
    batch: usize,
    lengths: Option<Vec<usize>>,
    /// Input of every layer (after dropout) `[T, B, in_l]`; layer 0's stays empty
    /// when the input came as ids into `table`.
    inputs: Vec<Vec<T>>,
    /// Layer 0's input as token ids `[T, B]` into `table` ([`Recurrent::forward_embedded`]).
    ids: Option<Vec<usize>>,
    /// The ids stand for one-hot vectors (no table).
    one_hot: bool,
    /// The embedding the ids index, `[V, input_size]`.
    table: Vec<T>,
    /// Dropout on the input of every layer (unused for layer 0).
    dropout: Vec<Dropout<T>>,
    /// Output of every cell `[T, B, H]` of a bidirectional layer, to be merged (a
    /// single direction writes its own into the next layer's input, or the last
    /// layer's into the caller's output).
    outputs: Vec<Vec<T>>,
    caches: Vec<CellCache<T>>,
    /// Scratch for the output gradient of each of two directions `[T, B, H]` (a
    /// single direction reads the layer's).
    d_out: Vec<Vec<T>>,
    /// The gradient flowing between layers `[T, B, width]`.
    d_between: Vec<T>,
    /// Scratch for the input gradient of each direction (kept: tens of megabytes).
    dx_dirs: Vec<Vec<T>>,
    ready: bool,
    /// A backward pass left its parameter gradients to [`Recurrent::step_weight_grads`].
    grads_pending: bool,
}

impl<T: Real> Saved<T> {
    /// One cache per cell of `cfg`, kept when they exist.
    fn make_caches(&mut self, cfg: &RecurrentConfig) {
        let cells = cfg.num_layers * cfg.directions();
        if self.caches.len() != cells {
            self.caches = (0..cells).map(|_| CellCache::new(cfg.cell)).collect();
        }
    }
}

/// A stack of recurrent layers, uni- or bidirectional, with its parameter gradients.
#[derive(Clone, Debug)]
pub struct Recurrent<T: Real = f32> {
    config: RecurrentConfig,
    params: Vec<CellParams<T>>,
    grads: Vec<CellParams<T>>,
    saved: Saved<T>,
    /// What [`Recurrent::step_train`] kept of each timestep, for [`Recurrent::step_backward`].
    tape: Vec<Saved<T>>,
    /// [`Recurrent::step_weight_grads`]'s rows of every tape step, per cell: the
    /// inputs and the gradient caches (kept between calls).
    gathered: Vec<(Vec<T>, CellCache<T>)>,
}

impl<T: Real> Recurrent<T> {
    /// Builds the layer from given parameters, one [`CellParams`] per (layer, direction)
    /// in torch's order; checks every shape against the configuration.
    pub fn from_params(config: RecurrentConfig, params: Vec<CellParams<T>>) -> Result<Self> {
        config.validate()?;
        let want = config.num_layers * config.directions();
        if params.len() != want {
            return Err(Error::Shape(format!(
                "{want} cells expected, {} given",
                params.len()
            )));
        }
        for (idx, p) in params.iter().enumerate() {
            let expect = CellParams::<T>::zeros(
                config.cell,
                config.layer_input_size(idx / config.directions()),
                config.hidden_size,
            );
            if p.b_hh.is_some() != expect.b_hh.is_some() {
                return Err(Error::Shape(format!(
                    "{}: bias_hh{} is {}",
                    config.cell,
                    suffix(&config, idx),
                    if expect.b_hh.is_some() {
                        "required"
                    } else {
                        "not used"
                    }
                )));
            }
            for ((name, got), (_, exp)) in p.named().zip(expect.named()) {
                got.expect_shape(&format!("{name}{}", suffix(&config, idx)), exp.shape())?;
            }
        }
        let grads = params
            .iter()
            .enumerate()
            .map(|(idx, _)| {
                CellParams::zeros(
                    config.cell,
                    config.layer_input_size(idx / config.directions()),
                    config.hidden_size,
                )
            })
            .collect();
        Ok(Recurrent {
            config,
            params,
            grads,
            saved: Saved::default(),
            tape: Vec::new(),
            gathered: Vec::new(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RecurrentConfig {
        &self.config
    }

    /// The parameters of every cell, in torch's order (layer 0 forward, layer 0 reverse, …).
    pub fn cells(&self) -> &[CellParams<T>] {
        &self.params
    }

    /// The accumulated gradient of the parameter named `name` (torch naming).
    pub fn grad(&self, name: &str) -> Option<&Tensor<T>> {
        find_named(&self.grads, self.locate(name)?)
    }

    /// The parameter named `name` (torch naming).
    pub fn param(&self, name: &str) -> Option<&Tensor<T>> {
        find_named(&self.params, self.locate(name)?)
    }

    /// The cell index and the suffix-less name (`weight_ih`, …) of a torch parameter name.
    fn locate<'a>(&self, name: &'a str) -> Option<(usize, &'a str)> {
        (0..self.params.len()).find_map(|idx| {
            let base = name.strip_suffix(&suffix(&self.config, idx))?;
            ["weight_ih", "weight_hh", "bias_ih", "bias_hh"]
                .contains(&base)
                .then_some((idx, base))
        })
    }

    /// Runs the stack over `x [T, B, input_size]` (time-major) in inference mode.
    /// See [`Recurrent::forward_train`].
    pub fn forward(
        &mut self,
        x: &Tensor<T>,
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (steps, batch) = self.check_input(x)?;
        self.run_forward(Input::Dense(x.data()), steps, batch, lengths, init, None)
    }

    /// Runs the stack over `x [T, B, input_size]` (time-major), applying dropout
    /// between layers with masks drawn from `rng`. `lengths` (one per sequence, ≤ T)
    /// marks padding: padded steps output zero and leave the state unchanged.
    /// `init` defaults to zeros. Returns the output `[T, B, output_size]` and the
    /// final state; keeps what [`Recurrent::backward`] needs.
    pub fn forward_train(
        &mut self,
        x: &Tensor<T>,
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: &mut Rng,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (steps, batch) = self.check_input(x)?;
        self.run_forward(
            Input::Dense(x.data()),
            steps,
            batch,
            lengths,
            init,
            Some(rng),
        )
    }

    /// [`Recurrent::forward_train`] (inference mode when `rng` is `None`) writing the
    /// output and the final state into `into`, as [`Recurrent::forward_embedded_into`]
    /// does.
    pub fn forward_into(
        &mut self,
        x: &Tensor<T>,
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let (steps, batch) = self.check_input(x)?;
        let x = Input::Dense(x.data());
        self.run_forward_into(x, steps, batch, lengths, init, rng, into)
    }

    /// As [`Recurrent::forward_train`] (inference mode when `rng` is `None`) for
    /// inputs that are rows of an embedding `table [V, input_size]`, given as ids
    /// `[T, B]` (time-major) with optional `lengths` as there: the first layer then
    /// multiplies each of the V table rows once instead of each of the T·B inputs, and
    /// [`Recurrent::backward`] returns the table's gradient `[V, input_size]` instead
    /// of the inputs'. Ids at padded steps must still be valid rows (0 will do).
    pub fn forward_embedded(
        &mut self,
        table: &Tensor<T>,
        ids: &[usize],
        shape: (usize, usize),
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut out, mut fin) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.forward_embedded_into(table, ids, shape, lengths, init, rng, (&mut out, &mut fin))?;
        Ok((out, fin))
    }

    /// [`Recurrent::forward_embedded`] writing the output and the final state into
    /// `into` (reshaped, their storage reused: a training loop that keeps them
    /// allocates nothing for them per step).
    #[allow(clippy::too_many_arguments)]
    pub fn forward_embedded_into(
        &mut self,
        table: &Tensor<T>,
        ids: &[usize],
        (steps, batch): (usize, usize),
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let &[v, width] = table.shape() else {
            return Err(Error::Shape(format!(
                "embedding table must be [V, {}], got {:?}",
                self.config.input_size,
                table.shape()
            )));
        };
        if width != self.config.input_size {
            return Err(Error::Shape(format!(
                "embedding table must be [V, {}], got {:?}",
                self.config.input_size,
                table.shape()
            )));
        }
        if ids.len() != steps * batch {
            return Err(Error::Shape(format!(
                "{} ids given for {steps} steps × {batch} sequences",
                ids.len()
            )));
        }
        if let Some(k) = ids.iter().position(|&id| id >= v) {
            return Err(Error::Input(format!(
                "id {} at position {k} is outside the embedding table of {v} rows",
                ids[k]
            )));
        }
        let x = Input::Embedded {
            table: table.data(),
            ids,
        };
        self.run_forward_into(x, steps, batch, lengths, init, rng, into)
    }

    /// As [`Recurrent::forward_embedded`] for one-hot inputs: `ids [T, B]` (< input_size)
    /// stand for one-hot vectors, so the first layer's input product is a column of
    /// `W_ih` looked up per id (never a product with zeros), and [`Recurrent::backward`]
    /// returns an empty input gradient `[0, input_size]`.
    pub fn forward_one_hot(
        &mut self,
        ids: &[usize],
        shape: (usize, usize),
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut out, mut fin) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.forward_one_hot_into(ids, shape, lengths, init, rng, (&mut out, &mut fin))?;
        Ok((out, fin))
    }

    /// [`Recurrent::forward_one_hot`] writing the output and the final state into
    /// `into`, as [`Recurrent::forward_embedded_into`] does.
    pub fn forward_one_hot_into(
        &mut self,
        ids: &[usize],
        (steps, batch): (usize, usize),
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        if ids.len() != steps * batch {
            return Err(Error::Shape(format!(
                "{} ids given for {steps} steps × {batch} sequences",
                ids.len()
            )));
        }
        let v = self.config.input_size;
        if let Some(k) = ids.iter().position(|&id| id >= v) {
            return Err(Error::Input(format!(
                "id {} at position {k} is outside the {v} one-hot inputs",
                ids[k]
            )));
        }
        let x = Input::OneHot { ids };
        self.run_forward_into(x, steps, batch, lengths, init, rng, into)
    }

    /// One timestep of a stepped sequence, for models whose next input depends on the
    /// last output (a decoder fed its own attention): runs `x [1, B, input_size]` from
    /// `state` as [`Recurrent::forward_train`] does (dropout between layers when `rng`
    /// is given) and keeps what [`Recurrent::step_backward`] needs as step `t` of a
    /// tape, so the steps of a sequence can be run one by one and then backpropagated
    /// in reverse order.
    pub fn step_train(
        &mut self,
        t: usize,
        x: &Tensor<T>,
        state: &RecurrentState<T>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut y, mut fin) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.step_train_into(t, x, state, rng, (&mut y, &mut fin))?;
        Ok((y, fin))
    }

    /// [`Recurrent::step_train`] writing the step's output and new state into
    /// `into`, as [`Recurrent::forward_into`] does.
    pub fn step_train_into(
        &mut self,
        t: usize,
        x: &Tensor<T>,
        state: &RecurrentState<T>,
        rng: Option<&mut Rng>,
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let (steps, batch) = self.check_input(x)?;
        if steps != 1 {
            return Err(Error::Shape(format!(
                "a stepped input is one timestep [1, B, {}], got {:?}",
                self.config.input_size,
                x.shape()
            )));
        }
        self.on_tape(t, |rnn| {
            let x = Input::Dense(x.data());
            rnn.run_forward_into(x, 1, batch, None, Some(state), rng, into)
        })
    }

    /// Backpropagates through step `t` of [`Recurrent::step_train`]: `dy [1, B, output_size]`
    /// is the gradient of that step's output and `d_state` that of the state it returned.
    /// Adds the parameter gradients; returns the gradients of the step's input and of
    /// the state it started from.
    pub fn step_backward(
        &mut self,
        t: usize,
        dy: &Tensor<T>,
        d_state: &RecurrentState<T>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let out = self.step_backward_inputs(t, dy, d_state)?;
        self.step_weight_grads(t..t + 1, None)?;
        Ok(out)
    }

    /// [`Recurrent::step_backward`] without the parameter gradients, which
    /// [`Recurrent::step_weight_grads`] then adds for many steps at once: one product
    /// per weight over the rows of all of them, where step by step each product had
    /// the batch's few rows (a decoder's backward pass, about 15 % faster).
    pub fn step_backward_inputs(
        &mut self,
        t: usize,
        dy: &Tensor<T>,
        d_state: &RecurrentState<T>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut dx, mut d_init) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.step_backward_inputs_into(t, dy, d_state, (&mut dx, &mut d_init))?;
        Ok((dx, d_init))
    }

    /// [`Recurrent::step_backward_inputs`] writing the gradients of the step's input
    /// and of the state it started from into `into`, as [`Recurrent::backward_into`]
    /// does.
    pub fn step_backward_inputs_into(
        &mut self,
        t: usize,
        dy: &Tensor<T>,
        d_state: &RecurrentState<T>,
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        if t >= self.tape.len() {
            return Err(Error::Input(format!(
                "step_backward of step {t}, but only {} steps were run",
                self.tape.len()
            )));
        }
        self.on_tape(t, |rnn| {
            rnn.backward_impl(dy, Some(d_state), &mut |_| {}, false, into)
        })
    }

    /// Adds the parameter gradients of the tape steps `steps`, each backpropagated by
    /// [`Recurrent::step_backward_inputs`] since it was run (an error otherwise).
    /// `lengths`, one per sequence of the batch: how many of these steps it really
    /// has; its rows after them must have had zero gradients, and are skipped.
    pub fn step_weight_grads(
        &mut self,
        steps: Range<usize>,
        lengths: Option<&[usize]>,
    ) -> Result<()> {
        let cfg = &self.config;
        let tape = self.tape.get(steps.clone()).ok_or_else(|| {
            Error::Input(format!(
                "weight gradients of steps {steps:?}, but only {} steps were run",
                self.tape.len()
            ))
        })?;
        let Some(first) = tape.first() else {
            return Ok(());
        };
        let batch = first.batch;
        if let Some(k) = tape
            .iter()
            .position(|s| !s.grads_pending || s.batch != batch)
        {
            return Err(Error::Input(format!(
                "step {} has no backward pass of a batch of {batch} awaiting its weight gradients",
                steps.start + k
            )));
        }
        if let Some(l) = lengths {
            if l.len() != batch || l.iter().any(|&n| n > tape.len()) {
                return Err(Error::Shape(format!(
                    "step_weight_grads: {} lengths of at most {} steps needed, got {l:?}",
                    batch,
                    tape.len()
                )));
            }
        }
        let (dirs, hs) = (cfg.directions(), cfg.hidden_size);
        let rows = tape.len() * batch;
        let seq = Seq {
            steps: tape.len(),
            batch,
            lengths,
            reverse: false,
        };
        let cells = self.params.len();
        if self.gathered.len() != cells {
            self.gathered = (0..cells)
                .map(|_| (Vec::new(), CellCache::new(cfg.cell)))
                .collect();
        }
        for (c, (p, g)) in self.params.iter().zip(&mut self.grads).enumerate() {
            let l = c / dirs;
            let (x, gathered) = &mut self.gathered[c];
            x.clear();
            x.reserve(rows * cfg.layer_input_size(l));
            gathered.clear_grad_rows();
            for s in tape {
                x.extend_from_slice(&s.inputs[l]);
                match (&mut *gathered, &s.caches[c]) {
                    (CellCache::Rnn(a), CellCache::Rnn(b)) => a.append_grad_rows(b, batch, hs),
                    (CellCache::Lstm(a), CellCache::Lstm(b)) => a.append_grad_rows(b, batch, hs),
                    (CellCache::Gru(a), CellCache::Gru(b)) => a.append_grad_rows(b, batch, hs),
                    _ => unreachable!("one cell kind per layer"),
                }
            }
            let x = Input::Dense(x);
            match gathered {
                CellCache::Rnn(cc) => rnn::weight_grads(p, g, seq, x, cc),
                CellCache::Lstm(cc) => lstm::weight_grads(p, g, seq, x, cc),
                CellCache::Gru(cc) => {
                    gru::weight_grads(p, g, cfg.cell == CellKind::Gru, seq, x, cc)
                }
            }
        }
        for s in &mut self.tape[steps] {
            s.grads_pending = false;
        }
        Ok(())
    }

    /// Runs `f` with step `t` of the tape as the saved forward pass. The copies of
    /// `W_hh` that the per-step products read stay with the layer's own saved pass
    /// and are lent to the step: one copy serves every step.
    fn on_tape<R>(&mut self, t: usize, f: impl FnOnce(&mut Self) -> R) -> R {
        if self.tape.len() <= t {
            self.tape.resize_with(t + 1, Saved::default);
        }
        self.saved.make_caches(&self.config);
        self.tape[t].make_caches(&self.config);
        let lend = |a: &mut Saved<T>, b: &mut Saved<T>| {
            for (x, y) in a.caches.iter_mut().zip(&mut b.caches) {
                std::mem::swap(x.weights_mut(), y.weights_mut());
            }
        };
        std::mem::swap(&mut self.saved, &mut self.tape[t]);
        lend(&mut self.saved, &mut self.tape[t]);
        let out = f(self);
        lend(&mut self.saved, &mut self.tape[t]);
        std::mem::swap(&mut self.saved, &mut self.tape[t]);
        out
    }

    /// `(T, B)` of an input `[T, B, input_size]`.
    fn check_input(&self, x: &Tensor<T>) -> Result<(usize, usize)> {
        match *x.shape() {
            [steps, batch, width] if width == self.config.input_size => Ok((steps, batch)),
            _ => Err(Error::Shape(format!(
                "input must be [T, B, {}], got {:?}",
                self.config.input_size,
                x.shape()
            ))),
        }
    }

    fn run_forward(
        &mut self,
        x: Input<'_, T>,
        steps: usize,
        batch: usize,
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        rng: Option<&mut Rng>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut out, mut fin) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.run_forward_into(x, steps, batch, lengths, init, rng, (&mut out, &mut fin))?;
        Ok((out, fin))
    }

    /// The forward pass into `out` (reshaped; every element is written) and the
    /// final state into `fin` (its storage reused).
    #[allow(clippy::too_many_arguments)]
    fn run_forward_into(
        &mut self,
        x: Input<'_, T>,
        steps: usize,
        batch: usize,
        lengths: Option<&[usize]>,
        init: Option<&RecurrentState<T>>,
        mut rng: Option<&mut Rng>,
        (out, state): (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let cfg = &self.config;
        if let Some(l) = lengths {
            if l.len() != batch {
                return Err(Error::Shape(format!(
                    "{} lengths given for a batch of {batch}",
                    l.len()
                )));
            }
            if let Some((b, &len)) = l.iter().enumerate().find(|(_, &len)| len > steps) {
                return Err(Error::Input(format!(
                    "length {len} of sequence {b} exceeds the {steps} timesteps of the input"
                )));
            }
        }
        if let Some(s) = init {
            s.check(cfg, batch, "initial state")?;
        }
        // The state evolves in `state`, layer by layer, from the initial one.
        state.assign(cfg, batch, init);
        let (dirs, hs, layers) = (cfg.directions(), cfg.hidden_size, cfg.num_layers);
        let saved = &mut self.saved;
        saved.ready = false;
        saved.grads_pending = false;
        saved.steps = steps;
        saved.batch = batch;
        saved.lengths = lengths.map(|l| reuse(saved.lengths.take(), l));
        saved.inputs.resize_with(layers, Vec::new);
        saved.dropout.resize_with(layers, Dropout::default);
        // Kept for two directions alone (to merge them).
        saved
            .outputs
            .resize_with(if dirs > 1 { layers * dirs } else { 0 }, Vec::new);
        saved.make_caches(cfg);
        let out_w = cfg.output_size();
        out.reshape_overwritten(&[steps, batch, out_w]);
        for l in 0..layers {
            if l == 0 {
                saved.inputs[0].clear();
                match x {
                    Input::Dense(x) => {
                        saved.ids = None;
                        saved.inputs[0].extend_from_slice(x);
                    }
                    Input::Embedded { table, ids } => {
                        saved.table.clear();
                        saved.table.extend_from_slice(table);
                        saved.ids = Some(reuse(saved.ids.take(), ids));
                        saved.one_hot = false;
                    }
                    Input::OneHot { ids } => {
                        saved.table.clear();
                        saved.ids = Some(reuse(saved.ids.take(), ids));
                        saved.one_hot = true;
                    }
                }
            } else {
                // One direction wrote here itself (below); two were merged into `out`.
                let inp = &mut saved.inputs[l];
                if dirs > 1 {
                    copy(overwritten(inp, out.len()), out.data());
                }
                match rng.as_deref_mut() {
                    Some(r) => saved.dropout[l].forward(inp, cfg.dropout, r),
                    None => saved.dropout[l].disable(),
                }
            }
            let (below, above) = saved.inputs.split_at_mut(l + 1);
            let x_l = layer_input(&saved.ids, saved.one_hot, &saved.table, below, l);
            let cells = l * dirs..(l + 1) * dirs;
            // Every output is written by the cell (zeros at padded steps). One
            // direction writes straight into the next layer's input, or the last
            // layer's into `out`, where a merge would only have copied it.
            let len = steps * batch * hs;
            let (first, second): (&mut [T], Option<&mut [T]>) = if dirs > 1 {
                let (f, b) = saved.outputs[cells.clone()].split_at_mut(1);
                (
                    overwritten(&mut f[0], len),
                    Some(overwritten(&mut b[0], len)),
                )
            } else if let Some(next) = above.first_mut() {
                (overwritten(next, len), None)
            } else {
                (out.data_mut(), None)
            };
            let jobs = saved.caches[cells.clone()]
                .iter_mut()
                .zip(std::iter::once(first).chain(second))
                .zip(state_rows(state, l, dirs, batch * hs))
                .zip(&self.params[cells.clone()]);
            for_directions(jobs, |d, (((cache, y), (h, c)), p)| {
                let seq = Seq {
                    steps,
                    batch,
                    lengths,
                    reverse: d == 1,
                };
                match (cache, cfg.cell) {
                    (CellCache::Rnn(cc), CellKind::RnnTanh) => {
                        rnn::forward(p, Activation::Tanh, seq, x_l, cc, y, h)
                    }
                    (CellCache::Rnn(cc), _) => {
                        rnn::forward(p, Activation::Relu, seq, x_l, cc, y, h)
                    }
                    (CellCache::Lstm(cc), _) => {
                        let c = c.expect("LSTM state has c");
                        lstm::forward(p, seq, x_l, cc, y, h, c)
                    }
                    (CellCache::Gru(cc), kind) => {
                        gru::forward(p, kind == CellKind::Gru, seq, x_l, cc, y, h)
                    }
                }
            });
            if dirs > 1 {
                merge_forward(cfg, &saved.outputs[cells], out.data_mut());
            }
        }
        saved.ready = true;
        Ok(())
    }

    /// Backpropagates through the last forward pass. `dy [T, B, output_size]` is the
    /// gradient of the output (ignored at padded steps); `d_final` that of the final
    /// state (zeros if `None`). Adds every parameter gradient (so truncated BPTT and
    /// shared weights accumulate) and returns the gradients of the input `[T, B, input_size]`
    /// and of the initial state.
    pub fn backward(
        &mut self,
        dy: &Tensor<T>,
        d_final: Option<&RecurrentState<T>>,
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        self.backward_with(dy, d_final, &mut |_| {})
    }

    /// [`Recurrent::backward`], handing the parameter gradients of each layer to
    /// `ready` as soon as they are final (the top layer first), while the layers
    /// below are still to do: a data-parallel trainer starts summing them meanwhile.
    pub fn backward_with(
        &mut self,
        dy: &Tensor<T>,
        d_final: Option<&RecurrentState<T>>,
        ready: &mut dyn FnMut(&[&Tensor<T>]),
    ) -> Result<(Tensor<T>, RecurrentState<T>)> {
        let (mut dx, mut d_init) = (Tensor::zeros(&[0]), RecurrentState::default());
        self.backward_impl(dy, d_final, ready, true, (&mut dx, &mut d_init))?;
        Ok((dx, d_init))
    }

    /// [`Recurrent::backward_with`] writing the input's and the initial state's
    /// gradients into `into` (reshaped, their storage reused: a training loop that
    /// keeps them allocates nothing for them per step).
    pub fn backward_into(
        &mut self,
        dy: &Tensor<T>,
        d_final: Option<&RecurrentState<T>>,
        ready: &mut dyn FnMut(&[&Tensor<T>]),
        into: (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        self.backward_impl(dy, d_final, ready, true, into)
    }

    /// The backward pass; without `weights` the parameter gradients are left for
    /// [`Recurrent::step_weight_grads`] (and `ready` is not called).
    fn backward_impl(
        &mut self,
        dy: &Tensor<T>,
        d_final: Option<&RecurrentState<T>>,
        ready: &mut dyn FnMut(&[&Tensor<T>]),
        weights: bool,
        (dx, d_state): (&mut Tensor<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let cfg = &self.config;
        let saved = &mut self.saved;
        if !saved.ready {
            return Err(Error::Input(
                "backward called without a forward pass before it".into(),
            ));
        }
        let (steps, batch) = (saved.steps, saved.batch);
        dy.expect_shape("output gradient", &[steps, batch, cfg.output_size()])?;
        if let Some(s) = d_final {
            s.check(cfg, batch, "final-state gradient")?;
        }
        // The state's gradient goes back in `d_state`, layer by layer.
        d_state.assign(cfg, batch, d_final);
        let (dirs, hs) = (cfg.directions(), cfg.hidden_size);
        let lengths = saved.lengths.as_deref();
        let dx_rows = |l: usize| match (&saved.ids, l) {
            (Some(_), 0) => saved.table.len() / cfg.input_size.max(1),
            _ => steps * batch,
        };
        let dx_shape = [dx_rows(0), cfg.input_size];
        saved.d_out.resize_with(dirs, Vec::new);
        saved.dx_dirs.resize_with(dirs, Vec::new);
        for l in (0..cfg.num_layers).rev() {
            let in_w = cfg.layer_input_size(l);
            let x_l = layer_input(&saved.ids, saved.one_hot, &saved.table, &saved.inputs, l);
            let cells = l * dirs..(l + 1) * dirs;
            // Kept for two directions alone.
            let outputs = saved.outputs.get(cells.clone()).unwrap_or_default();
            // The gradient of this layer's output: `dy` itself for the top layer
            // (no copy), then the input gradient of the layer above.
            let d_above = match l + 1 == cfg.num_layers {
                true => dy.data(),
                false => &saved.d_between[..],
            };
            let jobs = saved.caches[cells.clone()]
                .iter_mut()
                .zip(&mut saved.d_out)
                .zip(&mut saved.dx_dirs)
                .zip(state_rows(d_state, l, dirs, batch * hs))
                .zip(
                    self.params[cells.clone()]
                        .iter()
                        .zip(&mut self.grads[cells]),
                );
            let rows = dx_rows(l);
            for_directions(jobs, |d, ((((cache, dout), dx), (dh, dc)), (p, g))| {
                let seq = Seq {
                    steps,
                    batch,
                    lengths,
                    reverse: d == 1,
                };
                // One direction's output gradient is the layer's; two take theirs
                // from it.
                let dout: &[T] = match dirs {
                    1 => d_above,
                    _ => {
                        let dout = overwritten(dout, steps * batch * hs);
                        merge_backward(cfg, d_above, outputs, d, dout);
                        dout
                    }
                };
                let dx = scratch(dx, rows * in_w);
                let g = weights.then_some(g);
                match (cache, cfg.cell) {
                    (CellCache::Rnn(cc), CellKind::RnnTanh) => {
                        rnn::backward(p, g, Activation::Tanh, seq, x_l, cc, dout, dh, dx)
                    }
                    (CellCache::Rnn(cc), _) => {
                        rnn::backward(p, g, Activation::Relu, seq, x_l, cc, dout, dh, dx)
                    }
                    (CellCache::Lstm(cc), _) => {
                        let dc = dc.expect("LSTM state has c");
                        lstm::backward(p, g, seq, x_l, cc, dout, dh, dc, dx)
                    }
                    (CellCache::Gru(cc), kind) => {
                        gru::backward(p, g, kind == CellKind::Gru, seq, x_l, cc, dout, dh, dx)
                    }
                }
            });
            if weights {
                // At most 2 directions × 4 tensors, gathered on the stack.
                let grads = &self.grads[l * dirs..(l + 1) * dirs];
                let mut done = [&grads[0].w_ih; 8];
                let mut n = 0;
                for t in grads.iter().flat_map(|g| g.named().map(|(_, t)| t)) {
                    done[n] = t;
                    n += 1;
                }
                ready(&done[..n]);
            }
            if let [dx, other] = &mut saved.dx_dirs[..] {
                dx.iter_mut().zip(&*other).for_each(|(a, &b)| *a += b);
            }
            if l > 0 {
                saved.dropout[l].backward(&mut saved.dx_dirs[0]);
                // The next layer down reads this gradient; its buffer becomes that
                // layer's input-gradient scratch.
                std::mem::swap(&mut saved.d_between, &mut saved.dx_dirs[0]);
            }
        }
        let shape = match saved.ids {
            Some(_) => &dx_shape[..],
            None => &[steps, batch, cfg.input_size][..],
        };
        dx.reshape_overwritten(shape);
        dx.data_mut().copy_from_slice(&saved.dx_dirs[0]);
        saved.grads_pending = !weights;
        Ok(())
    }
}

impl<T: Real> Parameters<T> for Recurrent<T> {
    /// Names as torch.nn: `weight_ih_l0`, …, `bias_hh_l1_reverse`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        for (idx, p) in self.params.iter().enumerate() {
            let (l, rev) = layer_and_reverse(&self.config, idx);
            for (name, t) in p.named() {
                with_name(format_args!("{name}_l{l}{rev}"), |n| f(n, t));
            }
        }
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        std::iter::once(&mut self.saved)
            .chain(&mut self.tape)
            .flat_map(|s| &mut s.caches)
            .for_each(CellCache::weights_changed);
        for (idx, (p, g)) in self.params.iter_mut().zip(&mut self.grads).enumerate() {
            let (l, rev) = layer_and_reverse(&self.config, idx);
            for ((name, t), (_, gt)) in p.named_mut().zip(g.named_mut()) {
                with_name(format_args!("{name}_l{l}{rev}"), |n| f(n, t, gt));
            }
        }
    }
}

/// Tensor `base` (`weight_ih`, …) of cell `idx` in `cells` (parameters or gradients).
fn find_named<'a, T: Real>(
    cells: &'a [CellParams<T>],
    (idx, base): (usize, &str),
) -> Option<&'a Tensor<T>> {
    cells[idx]
        .named()
        .into_iter()
        .find(|(n, _)| *n == base)
        .map(|(_, t)| t)
}

/// The input of layer `l` as the last forward pass saved it: layer 0's ids (one-hot
/// or into `table`) when it was given ids, else the dense rows of `inputs[l]`.
fn layer_input<'a, T>(
    ids: &'a Option<Vec<usize>>,
    one_hot: bool,
    table: &'a [T],
    inputs: &'a [Vec<T>],
    l: usize,
) -> Input<'a, T> {
    match (ids, l) {
        (Some(ids), 0) if one_hot => Input::OneHot { ids },
        (Some(ids), 0) => Input::Embedded { table, ids },
        _ => Input::Dense(&inputs[l]),
    }
}

/// `values` in `buf`'s storage (no allocation once it is large enough).
fn reuse(buf: Option<Vec<usize>>, values: &[usize]) -> Vec<usize> {
    let mut buf = buf.unwrap_or_default();
    buf.clear();
    buf.extend_from_slice(values);
    buf
}

/// The `(h, c)` rows `[B, H]` of each direction of layer `l` in `state` (`c` for LSTMs only).
fn state_rows<T: Real>(
    state: &mut RecurrentState<T>,
    l: usize,
    dirs: usize,
    chunk: usize,
) -> impl Iterator<Item = (&mut [T], Option<&mut [T]>)> {
    let span = l * dirs * chunk..(l + 1) * dirs * chunk;
    let h = state.h.data_mut()[span.clone()].chunks_mut(chunk);
    let c = state
        .c
        .as_mut()
        .map(|c| c.data_mut()[span].chunks_mut(chunk));
    // Without a cell state every direction gets `None`.
    h.zip(
        c.into_iter()
            .flatten()
            .map(Some)
            .chain(std::iter::repeat_with(|| None)),
    )
}

/// `_l{k}` or `_l{k}_reverse`: torch's suffix for cell `idx`.
fn suffix(cfg: &RecurrentConfig, idx: usize) -> String {
    let (l, rev) = layer_and_reverse(cfg, idx);
    format!("_l{l}{rev}")
}

/// The layer of cell `idx` and the name suffix of its direction (`""` or `"_reverse"`).
fn layer_and_reverse(cfg: &RecurrentConfig, idx: usize) -> (usize, &'static str) {
    let (l, d) = (idx / cfg.directions(), idx % cfg.directions());
    (l, if d == 1 { "_reverse" } else { "" })
}

/// Combines the two directions' outputs `[T, B, H]` of one layer into `out [T, B,
/// output_size]`.
fn merge_forward<T: Real>(cfg: &RecurrentConfig, dirs: &[Vec<T>], out: &mut [T]) {
    let hs = cfg.hidden_size;
    let (f, b) = (&dirs[0], &dirs[1]);
    match cfg.merge {
        Merge::Concat => {
            for ((o, fr), br) in out
                .chunks_exact_mut(2 * hs)
                .zip(f.chunks_exact(hs))
                .zip(b.chunks_exact(hs))
            {
                o[..hs].copy_from_slice(fr);
                o[hs..].copy_from_slice(br);
            }
        }
        Merge::Sum => out
            .iter_mut()
            .zip(f.iter().zip(b))
            .for_each(|(o, (&x, &y))| *o = x + y),
        Merge::Mul => out
            .iter_mut()
            .zip(f.iter().zip(b))
            .for_each(|(o, (&x, &y))| *o = x * y),
        Merge::Average => out
            .iter_mut()
            .zip(f.iter().zip(b))
            .for_each(|(o, (&x, &y))| *o = (x + y) * T::of(0.5)),
    }
}

/// The gradient reaching direction `d` of two from the merged output gradient `dy`.
fn merge_backward<T: Real>(
    cfg: &RecurrentConfig,
    dy: &[T],
    dirs: &[Vec<T>],
    d: usize,
    out: &mut [T],
) {
    let hs = cfg.hidden_size;
    match cfg.merge {
        Merge::Concat => {
            for (o, g) in out.chunks_exact_mut(hs).zip(dy.chunks_exact(2 * hs)) {
                o.copy_from_slice(&g[d * hs..(d + 1) * hs]);
            }
        }
        Merge::Sum => copy(out, dy),
        Merge::Mul => out
            .iter_mut()
            .zip(dy.iter().zip(&dirs[1 - d]))
            .for_each(|(o, (&g, &other))| *o = g * other),
        Merge::Average => out
            .iter_mut()
            .zip(dy)
            .for_each(|(o, &g)| *o = g * T::of(0.5)),
    }
}
