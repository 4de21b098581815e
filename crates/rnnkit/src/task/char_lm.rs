//! The character language model as a task: next-character prediction on a text,
//! batched as char-rnn's carried streams (truncated BPTT) or as shuffled independent
//! windows (the Keras text-generation recipe), validated on the text's last part.

use super::{BatchLoss, Metrics, Selection, Task};
use crate::checkpoint::TensorFile;
use crate::data::{Streams, Vocab};
use crate::error::{Error, Result};
use crate::model::{CharLm, CharLmConfig, Stepper, Weights};
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::{Change, GradientSink, Setting, Settings, Shard};
use crate::RecurrentState;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

const CARRY_H: &str = "train.carry.h";
const CARRY_C: &str = "train.carry.c";

/// How the training text is cut into batches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Batching {
    /// `batch` contiguous streams, each batch continuing every stream (char-rnn): the
    /// hidden state may be carried from batch to batch.
    #[default]
    Streams,
    /// Independent windows of `seq_len + 1` characters in a shuffled order each epoch,
    /// every batch from a zero state (the Keras recipe).
    Shuffled,
}

impl Batching {
    /// The name the `--batching` flag takes.
    pub fn name(self) -> &'static str {
        match self {
            Batching::Streams => "streams",
            Batching::Shuffled => "shuffled",
        }
    }
}

/// The char LM's part of a recipe: model sizes and how the text is batched.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CharLmRecipe {
    /// Model sizes and dropout.
    pub model: CharLmConfig,
    /// Timesteps per batch (the truncation length of BPTT).
    pub seq_len: usize,
    /// Carry the hidden state from batch to batch (streams only).
    pub carry_state: bool,
    /// How the text is cut into batches (absent in older checkpoints: streams).
    #[serde(default)]
    pub batching: Batching,
}

impl Settings for CharLmRecipe {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        let m = &self.model;
        vec![
            Setting::new("--cell", m.cell, Fixed),
            Setting::new("--layers", m.num_layers, Fixed),
            Setting::new("--hidden", m.hidden_size, Fixed),
            Setting::new("--embed", m.embed_size, Fixed),
            Setting::new("--dropout", m.dropout, Alters),
            Setting::new("--seq-len", self.seq_len, Fixed),
            Setting::new(
                "--no-carry",
                if self.carry_state { "off" } else { "on" },
                Fixed,
            ),
            Setting::new("--batching", self.batching.name(), Fixed),
        ]
    }
}

/// Training text as batches of `[T, B]` inputs and targets.
enum TrainText {
    Streams(Streams),
    Windows {
        ids: Vec<usize>,
        windows: usize,
        batch: usize,
        seq_len: usize,
        seed: u64,
        /// The windows in the order of epoch `.0` (drawn at its first batch).
        order: (Option<u64>, Vec<usize>),
    },
}

impl TrainText {
    fn batches(&self) -> usize {
        match self {
            TrainText::Streams(s) => s.batches(),
            TrainText::Windows { windows, batch, .. } => windows / batch,
        }
    }

    fn fill(&mut self, epoch: u64, k: usize, inputs: &mut Vec<usize>, targets: &mut Vec<usize>) {
        match self {
            TrainText::Streams(s) => s.batch(k, inputs, targets),
            TrainText::Windows {
                ids,
                windows,
                batch,
                seq_len,
                seed,
                order: (drawn, order),
            } => {
                // The order of one epoch depends only on the seed and the epoch, so a
                // resumed run needs nothing but the step to find its place.
                if *drawn != Some(epoch) {
                    order.clear();
                    order.extend(0..*windows);
                    Rng::new(*seed ^ 0x5851_f42d_4c95_7f2d_u64.wrapping_mul(epoch + 1))
                        .shuffle(order);
                    *drawn = Some(epoch);
                }
                let chosen = &order[k * *batch..(k + 1) * *batch];
                inputs.clear();
                targets.clear();
                for t in 0..*seq_len {
                    for &w in chosen {
                        let pos = w * (*seq_len + 1) + t;
                        inputs.push(ids[pos]);
                        targets.push(ids[pos + 1]);
                    }
                }
            }
        }
    }
}

/// A [`CharLm`] with its training and validation text.
pub struct CharLmTask {
    /// The model.
    pub model: CharLm,
    recipe: CharLmRecipe,
    batch: usize,
    train: TrainText,
    val: Option<Streams>,
    carry: Option<RecurrentState<f32>>,
    train_chars: usize,
    buffers: (Vec<usize>, Vec<usize>),
    /// This process's streams (or windows) of every batch: all of them on one process.
    shard: Shard,
    /// This process's columns of the whole batch's `[T, B]` inputs and targets.
    local: (Vec<usize>, Vec<usize>),
}

impl CharLmTask {
    /// Cuts `text` into training and validation parts (the last `val_frac`) for `model`.
    pub fn new(
        model: CharLm,
        recipe: &CharLmRecipe,
        batch: usize,
        val_frac: f64,
        seed: u64,
        text: &str,
    ) -> Result<Self> {
        // The recipe may come from a checkpoint: its window length sizes the batches.
        if !(1..=crate::limits::MAX_SEQ_LEN).contains(&recipe.seq_len) {
            return Err(Error::Config(format!(
                "--seq-len must be in [1, {}], got {}",
                crate::limits::MAX_SEQ_LEN,
                recipe.seq_len
            )));
        }
        let ids = model.vocab().encode(text)?;
        let n_val = (ids.len() as f64 * val_frac) as usize;
        let val_ids = ids[ids.len() - n_val..].to_vec();
        let train_ids = ids[..ids.len() - n_val].to_vec();
        let train_chars = train_ids.len();
        let seq_len = recipe.seq_len;
        let train = match recipe.batching {
            Batching::Streams => {
                TrainText::Streams(Streams::new(train_ids, batch, seq_len, "training text")?)
            }
            Batching::Shuffled => {
                let windows = train_ids.len() / (seq_len + 1);
                if windows < batch {
                    return Err(Error::Input(format!(
                        "the training text has {} characters but one batch of {batch} windows of {} needs {}; give more text or lower --batch / --seq-len",
                        train_ids.len(),
                        seq_len + 1,
                        batch * (seq_len + 1)
                    )));
                }
                TrainText::Windows {
                    ids: train_ids,
                    windows,
                    batch,
                    seq_len,
                    seed,
                    order: (None, Vec::new()),
                }
            }
        };
        let val = if n_val == 0 {
            None
        } else {
            let streams = batch.min(n_val.saturating_sub(1) / seq_len).max(1);
            Some(Streams::new(
                val_ids,
                streams,
                seq_len,
                "validation text (the last --val-frac of the data)",
            )?)
        };
        Ok(CharLmTask {
            model,
            recipe: recipe.clone(),
            batch,
            train,
            val,
            carry: None,
            train_chars,
            buffers: (Vec::new(), Vec::new()),
            shard: Shard::WHOLE,
            local: (Vec::new(), Vec::new()),
        })
    }

    fn carries(&self) -> bool {
        self.recipe.carry_state && self.recipe.batching == Batching::Streams
    }

    /// Forward and backward on this process's streams of batch `k`.
    fn step(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        let (mut inputs, mut targets) = std::mem::take(&mut self.buffers);
        self.train.fill(epoch, k, &mut inputs, &mut targets);
        let cols = self.shard.range(self.batch);
        let (mut li, mut lt) = std::mem::take(&mut self.local);
        if !self.shard.is_whole() {
            // Every process draws the whole batch and keeps its own streams' columns.
            li.clear();
            lt.clear();
            for t in 0..self.recipe.seq_len {
                let row = t * self.batch;
                li.extend_from_slice(&inputs[row + cols.start..row + cols.end]);
                lt.extend_from_slice(&targets[row + cols.start..row + cols.end]);
            }
        }
        let (x, y) = match self.shard.is_whole() {
            true => (&inputs, &targets),
            false => (&li, &lt),
        };
        let carries = self.carries();
        let init = if carries { self.carry.as_ref() } else { None };
        let result =
            self.model
                .train_step_with(x, y, self.recipe.seq_len, cols.len(), init, rng, ready);
        self.buffers = (inputs, targets);
        self.local = (li, lt);
        let (loss, fin) = result?;
        match (carries, &mut self.carry) {
            (true, Some(carry)) => carry.copy_from(fin),
            (true, None) => self.carry = Some(fin.clone()),
            (false, _) => self.carry = None,
        }
        Ok(BatchLoss {
            loss,
            tokens: cols.len() * self.recipe.seq_len,
        })
    }
}

super::params_of_model!(CharLmTask);

impl Task for CharLmTask {
    type Config = CharLmRecipe;

    fn kind(&self) -> &'static str {
        "char_lm"
    }

    fn loss_name(&self) -> &'static str {
        "nats_per_char"
    }

    fn selection(&self) -> Selection {
        Selection::MinLoss
    }

    fn describe(&self) -> String {
        format!(
            "training on {} characters ({} held out for validation), vocabulary {}",
            self.train_chars,
            self.val
                .as_ref()
                .map_or(0, |v| v.tokens_per_pass() + v.batch_size()),
            self.model.vocab().len()
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.batches()
    }

    fn start_epoch(&mut self, _epoch: u64) {
        self.carry = None; // a new pass starts the streams again
    }

    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        self.step(epoch, k, rng, ready)
    }

    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        let what = match self.recipe.batching {
            Batching::Streams => "text streams",
            Batching::Shuffled => "windows",
        };
        shard.check(self.batch, what)?;
        if let Some(c) = &self.carry {
            // A resumed carried state is the whole batch's: keep this share's rows.
            let rows = shard.range(self.batch);
            self.carry = Some(RecurrentState {
                h: batch_rows(&c.h, rows.clone()),
                c: c.c.as_ref().map(|t| batch_rows(t, rows)),
            });
        }
        self.shard = shard;
        Ok(())
    }

    fn shard_weight(&mut self, _epoch: u64, _k: usize) -> f64 {
        self.shard.range(self.batch).len() as f64 / self.batch as f64
    }

    fn validate(&mut self) -> Result<Option<Metrics>> {
        let Some(val) = &self.val else {
            return Ok(None);
        };
        Ok(Some(Metrics {
            loss: evaluate(&mut self.model, val)?,
            scores: Default::default(),
        }))
    }

    fn carried_state(&self) -> Vec<(String, Tensor<f32>)> {
        let mut out = Vec::new();
        let whole = |t: &Tensor<f32>| match self.shard.is_whole() {
            true => t.clone(),
            false => whole_batch(t, self.batch, self.shard.range(self.batch)),
        };
        if let Some(c) = &self.carry {
            out.push((CARRY_H.into(), whole(&c.h)));
            if let Some(cc) = &c.c {
                out.push((CARRY_C.into(), whole(cc)));
            }
        }
        out
    }

    fn restore_carried_state(&mut self, file: &TensorFile) -> Result<()> {
        let cfg = self.model.rnn.config().clone();
        self.carry = match file.shape(CARRY_H) {
            None => None,
            Some(shape) => {
                let want = [
                    cfg.num_layers * cfg.directions(),
                    self.batch,
                    cfg.hidden_size,
                ];
                if shape != want {
                    return Err(file.error(format!(
                        "`{CARRY_H}` has shape {shape:?} but the model and batch need {want:?}"
                    )));
                }
                let h = file.get(CARRY_H, Some(&want))?;
                let c = match cfg.cell.has_cell_state() {
                    true => Some(file.get(CARRY_C, Some(&want))?),
                    false => None,
                };
                Some(RecurrentState { h, c })
            }
        };
        Ok(())
    }

    fn flops_per_token(&self) -> u64 {
        self.model
            .config()
            .flops_per_token(self.model.vocab().len())
    }

    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        self.model.save(path, extra, metadata)
    }
}

/// Rows `rows` of the batch axis of a `[L, B, H]` state.
fn batch_rows(t: &Tensor<f32>, rows: std::ops::Range<usize>) -> Tensor<f32> {
    let (l, b, h) = (t.shape()[0], t.shape()[1], t.shape()[2]);
    let mut out = Vec::with_capacity(l * rows.len() * h);
    for layer in t.data().chunks(b * h) {
        out.extend_from_slice(&layer[rows.start * h..rows.end * h]);
    }
    Tensor::from_vec(&[l, rows.len(), h], out).expect("sizes agree")
}

/// A `[L, b, H]` share of the state as the whole batch's `[L, batch, H]`, zero
/// outside rows `rows`.
fn whole_batch(t: &Tensor<f32>, batch: usize, rows: std::ops::Range<usize>) -> Tensor<f32> {
    let (l, h) = (t.shape()[0], t.shape()[2]);
    let mut out = Tensor::zeros(&[l, batch, h]);
    for (dst, src) in out
        .data_mut()
        .chunks_mut(batch * h)
        .zip(t.data().chunks(rows.len() * h))
    {
        dst[rows.start * h..rows.end * h].copy_from_slice(src);
    }
    out
}

/// Mean cross-entropy over every stream of `val`, carrying the state, without dropout.
pub fn evaluate(model: &mut CharLm, val: &Streams) -> Result<f64> {
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let mut state: Option<RecurrentState<f32>> = None;
    let mut sum = 0.0;
    for k in 0..val.batches() {
        val.batch(k, &mut inputs, &mut targets);
        let (loss, fin) = model.loss(
            &inputs,
            &targets,
            val.seq_len(),
            val.batch_size(),
            state.as_ref(),
        )?;
        sum += loss;
        state = Some(fin);
    }
    Ok(sum / val.batches().max(1) as f64)
}

/// Refuses a text too short to predict a character of.
fn check_scorable(ids: &[usize]) -> Result<()> {
    if ids.len() < 2 {
        return Err(Error::Input(
            "the text needs at least 2 characters (after any skipped) to predict one".into(),
        ));
    }
    Ok(())
}

/// Mean cross-entropy of predicting ids 2..N of `ids` (nats per character), batch 1
/// from a zero state, fed `chunk` ids at a time so memory stays bounded; `done` hears
/// how many ids each chunk scored (for progress). Returns the count predicted and the mean.
pub fn eval_ids(
    model: &mut CharLm,
    ids: &[usize],
    chunk: usize,
    mut done: impl FnMut(usize) + Send,
) -> Result<(usize, f64)> {
    check_scorable(ids)?;
    let chunk = chunk.max(1);
    let n = ids.len() - 1;
    crate::kernel::on_pool_polling(|| {
        let mut state: Option<RecurrentState<f32>> = None;
        let mut sum = 0.0;
        for pos in (0..n).step_by(chunk) {
            let len = chunk.min(n - pos);
            let (loss, fin) = model.loss(
                &ids[pos..pos + len],
                &ids[pos + 1..pos + 1 + len],
                len,
                1,
                state.as_ref(),
            )?;
            sum += loss * len as f64;
            state = Some(fin);
            done(len);
        }
        Ok((n, sum / n as f64))
    })
}

/// [`eval_ids`] one character at a time through a [`Stepper`] holding the weights
/// as `weights`: the score of what `rnnkit sample` with those weights predicts.
/// `done` hears every 1024 ids scored.
pub fn eval_ids_stepped(
    model: &CharLm,
    ids: &[usize],
    weights: Weights,
    mut done: impl FnMut(usize) + Send,
) -> Result<(usize, f64)> {
    check_scorable(ids)?;
    let mut stepper = Stepper::new(model, weights)?;
    let n = ids.len() - 1;
    crate::kernel::on_pool(|| {
        let mut sum = 0.0;
        for (i, pair) in ids.windows(2).enumerate() {
            let logits = stepper.feed(pair[0])?;
            sum += crate::loss::log_sum_exp(logits) - f64::from(logits[pair[1]]);
            if (i + 1) % 1024 == 0 {
                done(1024);
            }
        }
        done(n % 1024);
        Ok((n, sum / n as f64))
    })
}

/// Refuses training `model` with `batch × seq_len` batches if it cannot fit in memory.
pub fn check_training_memory(
    model: &CharLmConfig,
    vocab: usize,
    batch: usize,
    seq_len: usize,
) -> Result<()> {
    // Validated sizes keep the estimate's products in range.
    model.validate()?;
    crate::train::check_memory(
        model.training_memory(vocab, batch, seq_len),
        "--hidden, --layers, --batch or --seq-len",
    )
}

/// A model for fine-tuning on another text: `model`'s vocabulary is extended by the
/// characters of `text` it lacks (appended, so every known id keeps its rows); their
/// embedding rows and output units are initialised as a fresh model's would be.
/// Returns the model and the characters added.
pub fn extend_vocab(model: CharLm, text: &str, rng: &mut Rng) -> Result<(CharLm, Vec<char>)> {
    let known = model.vocab().clone();
    let added: Vec<char> = Vocab::from_text(text)?
        .chars()
        .iter()
        .copied()
        .filter(|&c| known.id(c).is_none())
        .collect();
    if added.is_empty() {
        return Ok((model, added));
    }
    let mut chars = known.chars().to_vec();
    chars.extend(&added);
    let vocab = Vocab::from_chars(chars)?;
    let cfg = model.config();
    let fresh = CharLm::new(&cfg, vocab.clone(), rng)?;
    if model.embed.is_none() {
        return Err(Error::Input(format!(
            "the text has characters the one-hot model does not know ({}); a one-hot model's input width is its vocabulary, so it cannot grow: fine-tune on text with the model's characters only",
            added.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" ")
        )));
    }
    let (v_old, e, h) = (known.len(), cfg.embed_size, model.head.in_features());
    let mut grown = fresh;
    if let (Some(g), Some(m)) = (&mut grown.embed, &model.embed) {
        g.weight.data_mut()[..v_old * e].copy_from_slice(m.weight.data());
    }
    grown.rnn = model.rnn.clone();
    grown.head.weight.data_mut()[..v_old * h].copy_from_slice(model.head.weight.data());
    grown.head.bias.data_mut()[..v_old].copy_from_slice(model.head.bias.data());
    Ok((grown, added))
}
