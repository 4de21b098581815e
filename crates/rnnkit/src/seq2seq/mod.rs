//! Encoder–decoder (sequence to sequence) with attention and input feeding
//! (Luong et al. 2015), as the PyTorch module `tools/task_modules.py::Seq2seq`.
//!
//! ```text
//! encoder:  e_1..e_S, final state = RNN(src_embed(x_1..x_S))     (uni- or bidirectional,
//!           H/2 per direction when bidirectional, so e_s and the states are H wide)
//! decoder:  state_0 = the encoder's final state (directions concatenated, per layer)
//!           h_t = RNN([tgt_embed(y_{t-1}); o_{t-1}], state_{t-1})   o_0 = 0, y_0 = <s>
//!           ctx_t = Σ_s α_ts e_s (see [`attention`])
//!           o_t = dropout(tanh(W_c [ctx_t; h_t] + b_c))   (o_t = dropout(h_t) without attention)
//!           p(y_t | y_<t, x) = softmax(W_o o_t + b_o)
//! ```
//!
//! Trained with teacher forcing; the loss is the mean cross-entropy over real target
//! tokens (the end token included, padding left out). Decoding: [`Seq2seq::greedy`]
//! and [`Seq2seq::beam`] (in `decode.rs`).

pub mod attention;
mod decode;

pub use attention::{Attention, AttentionKind, Memory, StepAttention};
pub use decode::{max_output_len, DecodeOptions, Decoded};

use crate::checkpoint::{self, TensorFile};
use crate::data::{Split, TokenVocab};
use crate::error::{Error, Result};
use crate::layer::{
    Dropout, Embedding, Kept, Linear, ParamVisitor, Parameters, Recurrent, RecurrentConfig,
    RecurrentState,
};
use crate::loss::{cross_entropy, CrossEntropy, LossValue};
use crate::rng::Rng;
use crate::tensor::{overwritten, Real, Scratch, Tensor};
use crate::train::{Change, Setting, Settings};
use crate::CellKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the attention kind.
pub const META_ATTENTION: &str = "rnnkit.attention";
/// Metadata key of the source vocabulary (JSON list, index = id).
pub const META_SOURCE_VOCAB: &str = "rnnkit.source_vocab";
/// Metadata key of the target vocabulary (JSON list; `</s>` = 0, `<s>` = 1).
pub const META_TARGET_VOCAB: &str = "rnnkit.target_vocab";
/// Metadata key of how sources are split into tokens.
pub const META_SOURCE_TOKENS: &str = "rnnkit.source_tokens";
/// Metadata key of how targets are split into tokens.
pub const META_TARGET_TOKENS: &str = "rnnkit.target_tokens";

/// Sizes of a [`Seq2seq`]; the vocabularies come from the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Seq2seqConfig {
    /// The recurrence of encoder and decoder.
    pub cell: CellKind,
    /// How the decoder looks at the source.
    pub attention: AttentionKind,
    /// Width of both embeddings.
    pub embed: usize,
    /// Decoder width H (the encoder has H/2 per direction when bidirectional).
    pub hidden_size: usize,
    /// Layers of the encoder and of the decoder.
    pub num_layers: usize,
    /// Read the source in both directions.
    pub bidirectional: bool,
    /// Dropout between recurrent layers and on the decoder's output, in training.
    pub dropout: f32,
    /// Label smoothing ε of the training loss, in [0, 1) (absent in older checkpoints: 0).
    #[serde(default)]
    pub label_smoothing: f32,
}

impl Settings for Seq2seqConfig {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        vec![
            Setting::new("--cell", self.cell, Fixed),
            Setting::new("--attention", self.attention, Fixed),
            Setting::new("--embed", self.embed, Fixed),
            Setting::new("--hidden", self.hidden_size, Fixed),
            Setting::new("--layers", self.num_layers, Fixed),
            Setting::new("--bidirectional", self.bidirectional, Fixed),
            Setting::new("--dropout", self.dropout, Alters),
            Setting::new("--label-smoothing", self.label_smoothing, Alters),
        ]
    }
}

impl Seq2seqConfig {
    /// Checks the sizes fit together (a bidirectional encoder needs an even width).
    pub fn validate(&self) -> Result<()> {
        if self.bidirectional && !self.hidden_size.is_multiple_of(2) {
            return Err(Error::Input(format!(
                "--hidden {} must be even with a bidirectional encoder (each direction has half)",
                self.hidden_size
            )));
        }
        if !(0.0..1.0).contains(&self.label_smoothing) {
            return Err(Error::Input(format!(
                "--label-smoothing {} must be in [0, 1)",
                self.label_smoothing
            )));
        }
        if self.embed == 0 || self.hidden_size == 0 || self.num_layers == 0 {
            return Err(Error::Input(
                "--embed, --hidden and --layers must be at least 1".into(),
            ));
        }
        self.encoder().validate()?;
        self.decoder().validate()
    }

    fn directions(&self) -> usize {
        if self.bidirectional {
            2
        } else {
            1
        }
    }

    fn encoder(&self) -> RecurrentConfig {
        RecurrentConfig::new(self.cell, self.embed, self.hidden_size / self.directions())
            .with_layers(self.num_layers)
            .with_bidirectional(self.bidirectional)
            .with_dropout(self.dropout)
    }

    fn decoder(&self) -> RecurrentConfig {
        let feed = if self.attention == AttentionKind::None {
            0
        } else {
            self.hidden_size
        };
        RecurrentConfig::new(self.cell, self.embed + feed, self.hidden_size)
            .with_layers(self.num_layers)
            .with_dropout(self.dropout)
    }
}

/// A padded, time-major batch of pairs (or of sources only, for decoding).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PairBatch {
    /// Source ids `[S, B]` (0 past each end).
    pub src: Vec<usize>,
    /// Source lengths (≥ 1).
    pub src_len: Vec<usize>,
    /// Decoder inputs `[T, B]`: `<s>` then the target.
    pub tgt_in: Vec<usize>,
    /// Decoder outputs `[T, B]`: the target then `</s>`.
    pub tgt_out: Vec<usize>,
    /// Target lengths with the end token.
    pub tgt_len: Vec<usize>,
}

impl PairBatch {
    /// Pads `pairs` (source ids, target ids without specials) time-major.
    pub fn new(pairs: &[(&[usize], &[usize])]) -> Result<Self> {
        let mut batch = PairBatch::default();
        batch.fill(pairs)?;
        Ok(batch)
    }

    /// [`PairBatch::new`] into this batch, reusing its storage.
    pub fn fill(&mut self, pairs: &[(&[usize], &[usize])]) -> Result<()> {
        let b = pairs.len();
        if b == 0 {
            return Err(Error::Input("an empty batch".into()));
        }
        if let Some(k) = pairs.iter().position(|(s, _)| s.is_empty()) {
            return Err(Error::Input(format!("source {k} of the batch is empty")));
        }
        let s_max = pairs.iter().map(|(s, _)| s.len()).max().unwrap_or(0);
        let t_max = pairs.iter().map(|(_, t)| t.len() + 1).max().unwrap_or(0);
        let reset = |v: &mut Vec<usize>, n: usize, x: usize| {
            v.clear();
            v.resize(n, x);
        };
        let batch = self;
        reset(&mut batch.src, s_max * b, 0);
        reset(&mut batch.tgt_in, t_max * b, crate::data::END);
        reset(&mut batch.tgt_out, t_max * b, crate::data::END);
        batch.src_len.clear();
        batch.src_len.extend(pairs.iter().map(|(s, _)| s.len()));
        batch.tgt_len.clear();
        batch.tgt_len.extend(pairs.iter().map(|(_, t)| t.len() + 1));
        for (j, (s, t)) in pairs.iter().enumerate() {
            for (i, &id) in s.iter().enumerate() {
                batch.src[i * b + j] = id;
            }
            batch.tgt_in[j] = crate::data::START;
            for (i, &id) in t.iter().enumerate() {
                batch.tgt_in[(i + 1) * b + j] = id;
                batch.tgt_out[i * b + j] = id;
            }
        }
        Ok(())
    }

    /// Sequences in the batch.
    pub fn size(&self) -> usize {
        self.src_len.len()
    }

    /// Padded source steps S.
    pub fn src_steps(&self) -> usize {
        self.src.len() / self.size().max(1)
    }

    /// Padded target steps T.
    pub fn tgt_steps(&self) -> usize {
        self.tgt_in.len() / self.size().max(1)
    }
}

/// What one decoder step keeps for the backward pass.
#[derive(Clone, Debug, Default)]
struct StepSaved<T> {
    /// The decoder's top output `h_t [B, H]`.
    q: Vec<T>,
    /// `[ctx_t; h_t]` `[B, 2H]`.
    cat: Vec<T>,
    /// `tanh(W_c [ctx; h] + b_c)` `[B, H]`.
    tilde: Vec<T>,
    attn: StepAttention<T>,
    dropout: Dropout<T>,
}

/// Everything a teacher-forced forward keeps for [`Seq2seq`]'s backward pass.
#[derive(Clone, Debug, Default)]
struct Saved<T: Real> {
    steps: Vec<StepSaved<T>>,
    mem: Memory<T>,
    /// `o_t` of every step `[T, B, H]`.
    outputs: Vec<T>,
    /// The buffers of a training step, taken for the step and kept between steps.
    work: Option<Work<T>>,
}

/// The buffers of a teacher-forced training step (so that a warmed-up step
/// allocates nothing).
#[derive(Clone, Debug, Default)]
struct Work<T: Real> {
    /// The encoder's pass.
    enc: Kept<T>,
    /// The decoder's state before and after a step.
    state: RecurrentState<T>,
    next: RecurrentState<T>,
    /// A decoder step's input `[1, B, E (+H)]`, its pass, and the fed-back `o_t`.
    x: Tensor<T>,
    step: Kept<T>,
    feed: Vec<T>,
    /// The attention's context `[B, H]`.
    ctx: Vec<T>,
    /// The logits `[T, B, Vt]`, their gradient, and which are real targets.
    logits: Vec<T>,
    dlogits: Vec<T>,
    mask: Vec<bool>,
    /// The backward pass's state gradients, and a step's output gradient `[1, B, H]`.
    d_state: RecurrentState<T>,
    d_next: RecurrentState<T>,
    dy: Tensor<T>,
    /// The encoder's final-state and output gradients.
    d_final: RecurrentState<T>,
    d_enc: Tensor<T>,
}

/// The encoder–decoder with its vocabularies and gradients.
#[derive(Clone, Debug)]
pub struct Seq2seq<T: Real = f32> {
    /// `src_embed.weight [Vs, E]`.
    pub src_embed: Embedding<T>,
    /// `encoder.*`.
    pub encoder: Recurrent<T>,
    /// `tgt_embed.weight [Vt, E]`.
    pub tgt_embed: Embedding<T>,
    /// `decoder.*`.
    pub decoder: Recurrent<T>,
    /// `attn.*`.
    pub attention: Attention<T>,
    /// `combine.*` `[H, 2H]` (absent without attention).
    pub combine: Option<Linear<T>>,
    /// `out.*` `[Vt, H]`.
    pub out: Linear<T>,
    /// Source tokens.
    pub source_vocab: TokenVocab,
    /// Target tokens (`</s>`, `<s>`, …).
    pub target_vocab: TokenVocab,
    /// How source and target lines are split into tokens.
    pub splits: (Split, Split),
    config: Seq2seqConfig,
    saved: Saved<T>,
}

impl<T: Real> Seq2seq<T> {
    /// A freshly initialised model (torch's default initialisation of every module).
    pub fn new(
        config: &Seq2seqConfig,
        source_vocab: TokenVocab,
        target_vocab: TokenVocab,
        splits: (Split, Split),
        rng: &mut Rng,
    ) -> Result<Self> {
        config.validate()?;
        if source_vocab.is_empty() {
            return Err(Error::Input("the source vocabulary is empty".into()));
        }
        if target_vocab.len() < 3 {
            return Err(Error::Input(
                "the target vocabulary needs a token besides </s> and <s>".into(),
            ));
        }
        let h = config.hidden_size;
        let src_embed = Embedding::new(source_vocab.len(), config.embed, rng);
        let encoder = config.encoder().init(rng)?;
        let tgt_embed = Embedding::new(target_vocab.len(), config.embed, rng);
        let decoder = config.decoder().init(rng)?;
        let attention = Attention::new(config.attention, h, rng);
        let combine = (config.attention != AttentionKind::None).then(|| Linear::new(2 * h, h, rng));
        let out = Linear::new(h, target_vocab.len(), rng);
        Ok(Seq2seq {
            src_embed,
            encoder,
            tgt_embed,
            decoder,
            attention,
            combine,
            out,
            source_vocab,
            target_vocab,
            splits,
            config: config.clone(),
            saved: Saved::default(),
        })
    }

    /// The sizes.
    pub fn config(&self) -> &Seq2seqConfig {
        &self.config
    }

    /// Sets the label smoothing of the training loss.
    pub fn set_label_smoothing(&mut self, label_smoothing: f32) -> Result<()> {
        let mut cfg = self.config.clone();
        cfg.label_smoothing = label_smoothing;
        cfg.validate()?;
        self.config = cfg;
        Ok(())
    }

    /// Sets the dropout used in training.
    pub fn set_dropout(&mut self, dropout: f32) -> Result<()> {
        let mut cfg = self.config.clone();
        cfg.dropout = dropout;
        cfg.validate()?;
        self.encoder = Recurrent::from_params(
            self.encoder.config().clone().with_dropout(dropout),
            self.encoder.cells().to_vec(),
        )?;
        self.decoder = Recurrent::from_params(
            self.decoder.config().clone().with_dropout(dropout),
            self.decoder.cells().to_vec(),
        )?;
        self.config = cfg;
        Ok(())
    }

    /// Runs the encoder over a batch's sources: the attention memory and the decoder's
    /// initial state.
    pub fn encode(
        &mut self,
        src: &[usize],
        src_len: &[usize],
        rng: Option<&mut Rng>,
    ) -> Result<(Memory<T>, RecurrentState<T>)> {
        let (mut enc, mut mem, mut init) = Default::default();
        self.encode_into(src, src_len, rng, (&mut enc, &mut mem, &mut init))?;
        Ok((mem, init))
    }

    /// [`Seq2seq::encode`] into kept buffers: the encoder's pass, the memory and the
    /// decoder's initial state.
    fn encode_into(
        &mut self,
        src: &[usize],
        src_len: &[usize],
        rng: Option<&mut Rng>,
        (enc, mem, init): (&mut Kept<T>, &mut Memory<T>, &mut RecurrentState<T>),
    ) -> Result<()> {
        let b = src_len.len();
        let steps = src.len() / b.max(1);
        if let Some(k) = src.iter().position(|&id| id >= self.source_vocab.len()) {
            return Err(Error::Input(format!(
                "source id {} at position {k} is outside the vocabulary of {}",
                src[k],
                self.source_vocab.len()
            )));
        }
        self.encoder.forward_embedded_into(
            &self.src_embed.weight,
            src,
            (steps, b),
            Some(src_len),
            None,
            rng,
            enc.forward(),
        )?;
        let h = self.config.hidden_size;
        self.attention.memory_into(enc.y.data(), src_len, h, mem)?;
        bridge_state(&enc.fin, self.config.directions(), false, init);
        Ok(())
    }

    /// One decoder step of inference (decoding) for the tokens `ids [B]` with the
    /// fed-back `feed [B, H]` (ignored without attention) from `state`. Returns `o_t
    /// [B, H]`, the new state and `α [B, S]` (empty without attention). Training steps
    /// run in [`Seq2seq::forward`].
    pub fn step(
        &mut self,
        ids: &[usize],
        feed: &[T],
        state: &RecurrentState<T>,
        mem: &Memory<T>,
    ) -> Result<(Vec<T>, RecurrentState<T>, Vec<T>)> {
        let (b, h) = (ids.len(), self.config.hidden_size);
        let mut x = Tensor::zeros(&[1, b, self.decoder.config().input_size]);
        self.decoder_input(ids, feed, x.data_mut())?;
        let (y, new_state) = self.decoder.forward(&x, None, Some(state))?;
        let q = y.into_vec();
        if self.config.attention == AttentionKind::None {
            return Ok((q, new_state, Vec::new()));
        }
        let mut attn = StepAttention::default();
        let (mut ctx, mut cat) = (vec![T::zero(); b * h], vec![T::zero(); b * 2 * h]);
        let mut o = vec![T::zero(); b * h];
        let parts = (&mut ctx[..], &mut cat[..], &mut attn);
        let layers = (&self.attention, self.combine.as_ref());
        attentional_output(layers, mem, (&q, b, h), parts, &mut o);
        Ok((o, new_state, attn.alpha))
    }

    /// The decoder's input rows `x [B, E (+ H)]` for the tokens `ids`: each token's
    /// embedding, then with attention its row of the fed-back `feed [B, H]`.
    fn decoder_input(&self, ids: &[usize], feed: &[T], x: &mut [T]) -> Result<()> {
        let (e, h) = (self.config.embed, self.config.hidden_size);
        let attend = self.config.attention != AttentionKind::None;
        let in_w = self.decoder.config().input_size;
        for (j, &id) in ids.iter().enumerate() {
            if id >= self.target_vocab.len() {
                return Err(Error::Input(format!(
                    "target id {id} is outside the vocabulary of {}",
                    self.target_vocab.len()
                )));
            }
            let row = &mut x[j * in_w..][..in_w];
            row[..e].copy_from_slice(&self.tgt_embed.weight.data()[id * e..][..e]);
            if attend {
                row[e..].copy_from_slice(&feed[j * h..][..h]);
            }
        }
        Ok(())
    }

    /// Teacher-forced forward over `batch` (training mode with dropout when `rng` is
    /// given); keeps what [`Seq2seq::backward`] needs. Returns the logits `[T, B, Vt]`.
    pub fn forward(&mut self, batch: &PairBatch, rng: Option<&mut Rng>) -> Result<Vec<T>> {
        self.with_work(|m, w| {
            m.forward_in(batch, rng, w)?;
            Ok(w.logits.clone())
        })
    }

    /// Runs `f` with the kept buffers of a training step (taken out of the model for
    /// the step: its passes borrow the model's layers).
    fn with_work<R>(&mut self, f: impl FnOnce(&mut Self, &mut Work<T>) -> Result<R>) -> Result<R> {
        let mut work = self.saved.work.take().unwrap_or_default();
        let out = f(self, &mut work);
        self.saved.work = Some(work);
        out
    }

    /// [`Seq2seq::forward`] into `w` (the logits into `w.logits`).
    fn forward_in(
        &mut self,
        batch: &PairBatch,
        mut rng: Option<&mut Rng>,
        w: &mut Work<T>,
    ) -> Result<()> {
        let (b, tt, h) = (batch.size(), batch.tgt_steps(), self.config.hidden_size);
        let mut mem = std::mem::take(&mut self.saved.mem);
        let mut outputs = std::mem::take(&mut self.saved.outputs);
        let encoded = self.encode_into(
            &batch.src,
            &batch.src_len,
            rng.as_deref_mut(),
            (&mut w.enc, &mut mem, &mut w.state),
        );
        let run = || -> Result<()> {
            encoded?;
            w.feed.clear();
            w.feed.resize(b * h, T::zero());
            let outputs = overwritten(&mut outputs, tt * b * h);
            for (t, o) in outputs.chunks_exact_mut(b * h).enumerate() {
                let ids = &batch.tgt_in[t * b..][..b];
                self.step_tape(t, ids, &mem, o, w, rng.as_deref_mut())?;
                std::mem::swap(&mut w.state, &mut w.next);
            }
            let logits = overwritten(&mut w.logits, tt * b * self.target_vocab.len());
            self.out.forward(outputs, tt * b, logits);
            Ok(())
        };
        let result = run();
        self.saved.mem = mem;
        self.saved.outputs = outputs;
        result
    }

    /// Decoder step `t` of a teacher-forced forward, from `w.state` into `w.next`, for
    /// the tokens `ids [B]` with the fed-back `w.feed`: writes `o_t` to `o` and to
    /// `w.feed`, and keeps step `t` for the backward pass (in buffers reused from the
    /// last batch's step `t`).
    fn step_tape(
        &mut self,
        t: usize,
        ids: &[usize],
        mem: &Memory<T>,
        o: &mut [T],
        w: &mut Work<T>,
        mut rng: Option<&mut Rng>,
    ) -> Result<()> {
        let (b, h) = (ids.len(), self.config.hidden_size);
        // Every element is written: the embedding, then the feed with attention.
        w.x.reshape_overwritten(&[1, b, self.decoder.config().input_size]);
        self.decoder_input(ids, &w.feed, w.x.data_mut())?;
        let into = (&mut w.step.y, &mut w.next);
        self.decoder
            .step_train_into(t, &w.x, &w.state, rng.as_deref_mut(), into)?;
        let q = w.step.y.data();
        let steps = &mut self.saved.steps;
        if steps.len() <= t {
            steps.resize_with(t + 1, StepSaved::default);
        }
        let st = &mut steps[t];
        if self.config.attention != AttentionKind::None {
            let parts = (
                overwritten(&mut w.ctx, b * h),
                overwritten(&mut st.cat, b * 2 * h),
                &mut st.attn,
            );
            let tilde = overwritten(&mut st.tilde, b * h);
            let layers = (&self.attention, self.combine.as_ref());
            attentional_output(layers, mem, (q, b, h), parts, tilde);
            o.copy_from_slice(tilde);
        } else {
            o.copy_from_slice(q);
        }
        match rng {
            Some(r) => st.dropout.forward(o, self.config.dropout, r),
            None => st.dropout.disable(),
        }
        st.q.clear();
        st.q.extend_from_slice(q);
        w.feed.copy_from_slice(o);
        Ok(())
    }

    /// Mean cross-entropy of the logits of [`Seq2seq::forward`] over the real target
    /// tokens of `batch`, and its gradient when `dlogits` is given.
    pub fn loss(
        &self,
        batch: &PairBatch,
        logits: &[T],
        dlogits: Option<&mut [T]>,
    ) -> Result<LossValue> {
        self.smoothed_loss(batch, logits, dlogits, 0.0, &mut Vec::new())
    }

    /// [`Seq2seq::loss`] against targets smoothed by `label_smoothing` (torch's),
    /// with `mask` for which targets are real.
    fn smoothed_loss(
        &self,
        batch: &PairBatch,
        logits: &[T],
        dlogits: Option<&mut [T]>,
        label_smoothing: f64,
        mask: &mut Vec<bool>,
    ) -> Result<LossValue> {
        let b = batch.size();
        mask.clear();
        mask.extend((0..batch.tgt_out.len()).map(|r| r / b < batch.tgt_len[r % b]));
        cross_entropy(
            logits,
            self.target_vocab.len(),
            &batch.tgt_out,
            Some(mask),
            &CrossEntropy {
                label_smoothing,
                ..CrossEntropy::default()
            },
            dlogits,
        )
    }

    /// Forward with dropout, loss (label-smoothed as configured), backward: adds the
    /// gradients of the batch's mean loss. A warmed-up step allocates nothing.
    pub fn train_step(&mut self, batch: &PairBatch, rng: &mut Rng) -> Result<LossValue> {
        self.with_work(|m, w| {
            m.forward_in(batch, Some(rng), w)?;
            let eps = f64::from(m.config.label_smoothing);
            let mut dlogits = std::mem::take(&mut w.dlogits);
            let d = overwritten(&mut dlogits, w.logits.len());
            let loss = m.smoothed_loss(batch, &w.logits, Some(d), eps, &mut w.mask);
            let result = loss.and_then(|loss| m.backward_in(batch, &dlogits, w).map(|_| loss));
            w.dlogits = dlogits;
            result
        })
    }

    /// Backpropagates `dlogits [T, B, Vt]` through the last [`Seq2seq::forward`],
    /// adding every parameter's gradient.
    pub fn backward(&mut self, batch: &PairBatch, dlogits: &[T]) -> Result<()> {
        self.with_work(|m, w| m.backward_in(batch, dlogits, w))
    }

    /// [`Seq2seq::backward`] in the buffers `w` (those of the forward pass).
    fn backward_in(&mut self, batch: &PairBatch, dlogits: &[T], w: &mut Work<T>) -> Result<()> {
        let (b, tt) = (batch.size(), batch.tgt_steps());
        let (e, h) = (self.config.embed, self.config.hidden_size);
        let Seq2seq {
            src_embed,
            encoder,
            tgt_embed,
            decoder,
            attention,
            combine,
            out,
            saved,
            config,
            ..
        } = self;
        if saved.steps.len() < tt || saved.outputs.len() != tt * b * h {
            return Err(Error::Input(
                "backward called without a forward pass of this batch before it".into(),
            ));
        }
        // The temporaries come from the thread's pool: nothing is allocated once it
        // has grown.
        let mut d_o = Scratch::<T>::zeroed(tt * b * h);
        out.backward(&saved.outputs, dlogits, tt * b, Some(&mut d_o));
        let mem = &saved.mem;
        let mut d_enc = Scratch::<T>::zeroed(mem.enc.len());
        let mut d_keys = Scratch::<T>::zeroed(mem.enc.len());
        w.d_state.zero(decoder.config(), b);
        let mut d_feed = Scratch::<T>::zeroed(b * h);
        let in_w = decoder.config().input_size;
        let mut d_embed = Scratch::<T>::zeroed(b * e);
        // The combine layer's pre-activation gradients of every step, for one weight
        // gradient over all of them after the loop.
        let mut d_tilde = Scratch::<T>::zeroed(if combine.is_some() { tt * b * h } else { 0 });
        for t in (0..tt).rev() {
            let st = &saved.steps[t];
            w.dy.reshape_overwritten(&[1, b, h]);
            let dq = w.dy.data_mut();
            dq.copy_from_slice(&d_o[t * b * h..][..b * h]);
            dq.iter_mut().zip(d_feed.iter()).for_each(|(d, &f)| *d += f);
            st.dropout.backward(dq);
            if let Some(combine) = combine.as_mut() {
                // o = tanh(W_c [ctx; q] + b_c)
                for (d, &y) in dq.iter_mut().zip(&st.tilde) {
                    *d *= T::one() - y * y;
                }
                let mut dcat = Scratch::<T>::zeroed(b * 2 * h);
                combine.backward_input(dq, b, &mut dcat);
                d_tilde[t * b * h..][..b * h].copy_from_slice(dq);
                let mut dctx = Scratch::<T>::zeroed(b * h);
                for (d, r) in dctx.chunks_exact_mut(h).zip(dcat.chunks_exact(2 * h)) {
                    d.copy_from_slice(&r[..h]);
                }
                attention.backward(mem, &st.q, &st.attn, &dctx, dq, &mut d_enc, &mut d_keys);
                for (j, r) in dcat.chunks_exact(2 * h).enumerate() {
                    dq[j * h..][..h]
                        .iter_mut()
                        .zip(&r[h..])
                        .for_each(|(d, &g)| *d += g);
                }
            }
            let into = (&mut w.step.dx, &mut w.d_next);
            decoder.step_backward_inputs_into(t, &w.dy, &w.d_state, into)?;
            std::mem::swap(&mut w.d_state, &mut w.d_next);
            for (j, row) in w.step.dx.data().chunks_exact(in_w).enumerate() {
                d_embed[j * e..][..e].copy_from_slice(&row[..e]);
                if in_w > e {
                    d_feed[j * h..][..h].copy_from_slice(&row[e..]);
                }
            }
            tgt_embed.backward(&batch.tgt_in[t * b..][..b], &d_embed);
        }
        // A target's steps after its end have zero gradients.
        decoder.step_weight_grads(0..tt, Some(&batch.tgt_len))?;
        if let Some(combine) = combine.as_mut() {
            let real = |t: usize| (0..b).filter(move |&j| t < batch.tgt_len[j]);
            let rows: usize = (0..tt).map(|t| real(t).count()).sum();
            let mut cat = Scratch::<T>::zeroed(rows * 2 * h);
            let mut dt = Scratch::<T>::zeroed(rows * h);
            let picked = (0..tt).flat_map(|t| real(t).map(move |j| (t, j)));
            for (r, (t, j)) in picked.enumerate() {
                let st = &saved.steps[t];
                cat[r * 2 * h..][..2 * h].copy_from_slice(&st.cat[j * 2 * h..][..2 * h]);
                dt[r * h..][..h].copy_from_slice(&d_tilde[(t * b + j) * h..][..h]);
            }
            combine.backward_params(&cat, &dt, rows);
        }
        attention.keys_backward(mem, &d_keys, &mut d_enc);
        bridge_state(&w.d_state, config.directions(), true, &mut w.d_final);
        w.d_enc.reshape_overwritten(&[mem.steps, b, h]);
        w.d_enc.data_mut().copy_from_slice(&d_enc);
        let into = w.enc.backward();
        encoder.backward_into(&w.d_enc, Some(&w.d_final), &mut |_| {}, into)?;
        src_embed
            .grad_weight
            .data_mut()
            .iter_mut()
            .zip(w.enc.dx.data())
            .for_each(|(g, &d)| *g += d);
        Ok(())
    }

    /// Attention weights `[T, B, S]` of the last [`Seq2seq::forward`] (zeros without attention).
    pub fn last_attention(&self) -> Vec<T> {
        let mem = &self.saved.mem;
        let (b, s) = (mem.batch(), mem.steps);
        let tt = self.saved.outputs.len() / (b * self.config.hidden_size).max(1);
        let mut out = vec![T::zero(); tt * b * s];
        for (t, st) in self.saved.steps.iter().take(tt).enumerate() {
            if !st.attn.alpha.is_empty() {
                out[t * b * s..][..b * s].copy_from_slice(&st.attn.alpha);
            }
        }
        out
    }

    /// Logits `[B, Vt]` of decoder outputs `o [B, H]`.
    pub(crate) fn logits(&self, o: &[T]) -> Vec<T> {
        let rows = o.len() / self.config.hidden_size;
        let mut logits = vec![T::zero(); rows * self.target_vocab.len()];
        self.out.forward(o, rows, &mut logits);
        logits
    }

    /// Multiply-adds ×2 of one forward, per source token (`encoder`) and per target
    /// token (`decoder`, with attention over `mean_src` source steps).
    pub fn flops(&self, mean_src: f64) -> (u64, u64) {
        let cell_flops = |cfg: &RecurrentConfig| -> u64 {
            let g = cfg.cell.gates() as u64 * cfg.hidden_size as u64;
            (0..cfg.num_layers)
                .map(|l| 2 * g * (cfg.layer_input_size(l) + cfg.hidden_size) as u64)
                .sum::<u64>()
                * cfg.directions() as u64
        };
        let h = self.config.hidden_size as u64;
        // Per target token: scores and context over the source (additive: also its
        // sum before tanh and the query projection), then combine.
        let scores = (4.0 * mean_src) as u64 * h;
        let attend = match self.config.attention {
            AttentionKind::None => 0,
            AttentionKind::Dot | AttentionKind::General => scores + 2 * 2 * h * h,
            AttentionKind::Additive => scores + 2 * h * h + 2 * 2 * h * h,
        };
        // Per source token: the keys (general, additive).
        let keys = match self.config.attention {
            AttentionKind::General | AttentionKind::Additive => 2 * h * h,
            _ => 0,
        };
        (
            cell_flops(self.encoder.config()) + keys,
            cell_flops(self.decoder.config()) + attend + 2 * h * self.target_vocab.len() as u64,
        )
    }
}

/// The attentional output `o = tanh(W_c·[ctx; q])` for the decoder outputs `q [B, H]`
/// (`b` rows of `h`): the attention over `mem` writes its context to `ctx [B, H]` and
/// keeps its weights in `attn`; `cat [B, 2H]` receives `[ctx; q]`. Decoding and
/// training steps share it.
fn attentional_output<T: Real>(
    (attention, combine): (&Attention<T>, Option<&Linear<T>>),
    mem: &Memory<T>,
    (q, b, h): (&[T], usize, usize),
    (ctx, cat, attn): (&mut [T], &mut [T], &mut StepAttention<T>),
    o: &mut [T],
) {
    attention.forward(mem, q, ctx, attn);
    for j in 0..b {
        cat[j * 2 * h..][..h].copy_from_slice(&ctx[j * h..][..h]);
        cat[j * 2 * h + h..][..h].copy_from_slice(&q[j * h..][..h]);
    }
    let combine = combine.expect("attention has combine");
    combine.forward(cat, b, o);
    T::tanh_inplace(o);
}

/// `f` applied to `h` and `c` of a state.
/// The encoder's final state `[L·D, B, H/D]` as the decoder's initial state
/// `[L, B, H]` (each layer's directions side by side), or back when `back`, into
/// `out` (its storage reused).
fn bridge_state<T: Real>(
    s: &RecurrentState<T>,
    dirs: usize,
    back: bool,
    out: &mut RecurrentState<T>,
) {
    bridge(&s.h, dirs, back, &mut out.h);
    match &s.c {
        Some(c) => bridge(c, dirs, back, out.c.get_or_insert_with(Tensor::default)),
        None => out.c = None,
    }
}

/// [`bridge_state`] of one tensor.
fn bridge<T: Real>(t: &Tensor<T>, dirs: usize, back: bool, out: &mut Tensor<T>) {
    let shape = t.shape();
    let (ld, b, w) = if back {
        (shape[0] * dirs, shape[1], shape[2] / dirs)
    } else {
        (shape[0], shape[1], shape[2])
    };
    let layers = ld / dirs;
    match back {
        true => out.reshape_overwritten(&[ld, b, w]),
        false => out.reshape_overwritten(&[layers, b, dirs * w]),
    }
    let out = out.data_mut();
    for l in 0..layers {
        for d in 0..dirs {
            for j in 0..b {
                let enc = ((l * dirs + d) * b + j) * w;
                let dec = (l * b + j) * dirs * w + d * w;
                let (from, to) = if back { (dec, enc) } else { (enc, dec) };
                out[to..to + w].copy_from_slice(&t.data()[from..from + w]);
            }
        }
    }
}

impl<T: Real> Parameters<T> for Seq2seq<T> {
    /// Names as the PyTorch module: `src_embed.weight`, `encoder.*`, `tgt_embed.weight`,
    /// `decoder.*`, `attn.*`, `combine.*`, `out.*`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        f("src_embed.weight", &self.src_embed.weight);
        self.encoder.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("encoder.{n}"), |n| f(n, t))
        });
        f("tgt_embed.weight", &self.tgt_embed.weight);
        self.decoder.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("decoder.{n}"), |n| f(n, t))
        });
        self.attention.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("attn.{n}"), |n| f(n, t))
        });
        if let Some(c) = &self.combine {
            f("combine.weight", &c.weight);
            f("combine.bias", &c.bias);
        }
        f("out.weight", &self.out.weight);
        f("out.bias", &self.out.bias);
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        let e = &mut self.src_embed;
        f("src_embed.weight", &mut e.weight, &mut e.grad_weight);
        self.encoder.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("encoder.{n}"), |n| f(n, t, g))
        });
        let e = &mut self.tgt_embed;
        f("tgt_embed.weight", &mut e.weight, &mut e.grad_weight);
        self.decoder.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("decoder.{n}"), |n| f(n, t, g))
        });
        self.attention.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("attn.{n}"), |n| f(n, t, g))
        });
        if let Some(c) = &mut self.combine {
            f("combine.weight", &mut c.weight, &mut c.grad_weight);
            f("combine.bias", &mut c.bias, &mut c.grad_bias);
        }
        let o = &mut self.out;
        f("out.weight", &mut o.weight, &mut o.grad_weight);
        f("out.bias", &mut o.bias, &mut o.grad_bias);
    }
}

impl Seq2seq<f32> {
    /// Writes the model (the PyTorch `Seq2seq` state dict and its metadata) with
    /// `extra` tensors and `metadata`, atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut meta = metadata;
        meta.insert(crate::task::META_TASK.into(), "seq2seq".into());
        meta.insert(
            crate::model::META_CELL.into(),
            self.config.cell.name().into(),
        );
        meta.insert(META_ATTENTION.into(), self.config.attention.name().into());
        let json = |v: &TokenVocab| serde_json::to_string(&v.tokens).expect("strings");
        meta.insert(META_SOURCE_VOCAB.into(), json(&self.source_vocab));
        meta.insert(META_TARGET_VOCAB.into(), json(&self.target_vocab));
        meta.insert(META_SOURCE_TOKENS.into(), self.splits.0.name().into());
        meta.insert(META_TARGET_TOKENS.into(), self.splits.1.name().into());
        let named = checkpoint::named_params(self, "");
        checkpoint::save_named(path, &named, extra, &meta)
    }

    /// Reads a checkpoint written by [`Seq2seq::save`] (or by PyTorch for the same
    /// module), checking every shape from the header before anything is allocated;
    /// returns the open file for any training state.
    pub fn load(source: impl crate::checkpoint::CheckpointSource) -> Result<(Self, TensorFile)> {
        let file = source.open()?;
        crate::task::expect_task(&file, "seq2seq")?;
        let cell = crate::task::meta_cell(&file)?;
        let meta = file.metadata();
        let attention = match meta.get(META_ATTENTION) {
            Some(a) => AttentionKind::from_name(a).ok_or_else(|| {
                file.error(format!(
                    "metadata `{META_ATTENTION}` is {a:?}; expected none, dot, general or additive"
                ))
            })?,
            None => return Err(file.error(format!("metadata `{META_ATTENTION}` is missing"))),
        };
        let split = |key: &str| -> Result<Split> {
            match meta.get(key) {
                Some(s) => Split::from_name(s).ok_or_else(|| {
                    file.error(format!(
                        "metadata `{key}` is {s:?}; expected chars or space"
                    ))
                }),
                None => Ok(Split::Chars),
            }
        };
        let splits = (split(META_SOURCE_TOKENS)?, split(META_TARGET_TOKENS)?);
        let vocab = |key: &str| -> Result<TokenVocab> {
            let tokens: Vec<String> = crate::task::meta_json(&file, key)?;
            TokenVocab::new(tokens).map_err(|e| file.error(format!("metadata `{key}`: {e}")))
        };
        let (source_vocab, target_vocab) = (vocab(META_SOURCE_VOCAB)?, vocab(META_TARGET_VOCAB)?);
        if target_vocab.len() < 3
            || target_vocab.tokens[..2] != crate::data::SPECIALS.map(String::from)
        {
            return Err(file.error(format!(
                "metadata `{META_TARGET_VOCAB}` must start with \"</s>\", \"<s>\" and hold another token"
            )));
        }
        let (vs, vt) = (source_vocab.len(), target_vocab.len());
        let (enc_cfg, enc_params) = checkpoint::recurrent_config(&file, "encoder.", cell)?;
        let (dec_cfg, dec_params) = checkpoint::recurrent_config(&file, "decoder.", cell)?;
        let e = enc_cfg.input_size;
        let h = dec_cfg.hidden_size;
        let config = Seq2seqConfig {
            cell,
            attention,
            embed: e,
            hidden_size: h,
            num_layers: dec_cfg.num_layers,
            bidirectional: enc_cfg.bidirectional,
            dropout: 0.0,
            label_smoothing: 0.0,
        };
        let want_enc = config.encoder();
        let want_dec = config.decoder();
        if config.validate().is_err()
            || enc_cfg.hidden_size != want_enc.hidden_size
            || enc_cfg.num_layers != want_enc.num_layers
            || dec_cfg.input_size != want_dec.input_size
            || dec_cfg.bidirectional
        {
            return Err(file.error(format!(
                "the encoder ({} layers of {} per direction, {}) and decoder ({} layers of {}, input {}) do not fit together: the decoder must have the encoder's layers, be as wide as the encoder's directions together, and read the embedding{}",
                enc_cfg.num_layers,
                enc_cfg.hidden_size,
                if enc_cfg.bidirectional { "bidirectional" } else { "unidirectional" },
                dec_cfg.num_layers,
                dec_cfg.hidden_size,
                dec_cfg.input_size,
                if attention == AttentionKind::None { "" } else { " and the attentional vector" },
            )));
        }
        file.expect_float("src_embed.weight", &[vs, e])?;
        file.expect_float("tgt_embed.weight", &[vt, e])?;
        let mut extra = (vs + vt) * e + vt * h + vt;
        for (name, shape) in Attention::<f32>::tensor_shapes(attention, h) {
            file.expect_float(name, &shape)?;
            extra += shape.iter().product::<usize>();
        }
        if attention != AttentionKind::None {
            file.expect_float("combine.weight", &[h, 2 * h])?;
            file.expect_float("combine.bias", &[h])?;
            extra += 2 * h * h + h;
        }
        file.expect_float("out.weight", &[vt, h])?;
        file.expect_float("out.bias", &[vt])?;
        checkpoint::check_model_memory(&file, enc_params + dec_params + extra as u64)?;
        let encoder = Recurrent::from_state_dict(&file, "encoder.", cell)?;
        let decoder = Recurrent::from_state_dict(&file, "decoder.", cell)?;
        let attention = Attention::from_tensors(attention, h, |n, s| file.get(n, Some(s)))?;
        let combine = match config.attention {
            AttentionKind::None => None,
            _ => Some(Linear::from_params(
                file.get("combine.weight", Some(&[h, 2 * h]))?,
                file.get("combine.bias", Some(&[h]))?,
            )?),
        };
        let model = Seq2seq {
            src_embed: Embedding::from_weight(file.get("src_embed.weight", Some(&[vs, e]))?)?,
            encoder,
            tgt_embed: Embedding::from_weight(file.get("tgt_embed.weight", Some(&[vt, e]))?)?,
            decoder,
            attention,
            combine,
            out: Linear::from_params(
                file.get("out.weight", Some(&[vt, h]))?,
                file.get("out.bias", Some(&[vt]))?,
            )?,
            source_vocab,
            target_vocab,
            splits,
            config,
            saved: Saved::default(),
        };
        Ok((model, file))
    }
}
