//! Frame sequences to text of another length with CTC: feature frames stacked `k` at a
//! time (a `k`-times shorter sequence of `k·bands` features) → recurrent stack (uni- or
//! bidirectional, variable lengths) → linear → CTC over the labels, blank = class 0.
//! Stored as the PyTorch module `tools/task_modules.py::CtcRecognizer` (`rnn.*`,
//! `head.*`; metadata `rnnkit.labels`, `rnnkit.stack`).

use super::seq2seq::edit_distance;
use super::{
    bucketed_batches, meta_json, padding_fraction, BatchLoss, EpochOrder, Metrics, Selection, Task,
};
use crate::audio::augment::{augment, Augment};
use crate::checkpoint::{self, TensorFile};
use crate::decode::ctc::{best_path, prefix_beam_search, BeamOptions, LabelScorer};
use crate::error::{Error, Result};
use crate::layer::{Dropout, Kept, Linear, Recurrent, RecurrentConfig};
use crate::loss::{ctc_loss, ctc_loss_with, CtcOptions, CtcWork, Reduction};
use crate::rng::Rng;
use crate::task::classifier::DenseBatch;
use crate::tensor::{overwritten, Tensor};
use crate::train::{Change, GradientSink, Setting, Settings, Shard};
use crate::CellKind;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the labels (JSON array of one-character strings; label `i` is class `i + 1`).
pub const META_LABELS: &str = "rnnkit.labels";
/// Metadata key of the frame stacking factor.
pub const META_STACK: &str = "rnnkit.stack";
/// The blank's class id.
pub const BLANK: usize = 0;

/// Sizes of a [`CtcModel`]; the feature width and labels come from the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CtcConfig {
    /// The recurrence.
    pub cell: CellKind,
    /// Hidden width H per direction.
    pub hidden_size: usize,
    /// Stacked recurrent layers.
    pub num_layers: usize,
    /// Read each sequence in both directions.
    pub bidirectional: bool,
    /// Dropout between recurrent layers and before the head, in training.
    pub dropout: f32,
    /// Consecutive frames joined into one step (the sequence gets this many times shorter).
    pub stack: usize,
    /// Perturb each training utterance ([`crate::audio::augment`]: time stretch, band
    /// warp and SpecAugment masks).
    pub augment: bool,
}

impl Settings for CtcConfig {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        vec![
            Setting::new("--cell", self.cell, Fixed),
            Setting::new("--layers", self.num_layers, Fixed),
            Setting::new("--hidden", self.hidden_size, Fixed),
            Setting::new("--bidirectional", self.bidirectional, Fixed),
            Setting::new("--stack", self.stack, Fixed),
            Setting::new("--dropout", self.dropout, Alters),
            Setting::new("--augment", self.augment, Alters),
        ]
    }
}

/// One utterance's features `[frames, bands]` with its label ids (1-based; 0 is the blank).
#[derive(Clone, Debug, PartialEq)]
pub struct Utterance {
    /// Feature frames.
    pub frames: usize,
    /// `[frames, bands]`, row-major.
    pub values: Vec<f32>,
    /// Class ids of the transcript.
    pub target: Vec<usize>,
}

/// The model with its gradients and labels.
#[derive(Clone, Debug)]
pub struct CtcModel {
    /// `rnn.*`, torch names; its input is `stack · bands` wide.
    pub rnn: Recurrent<f32>,
    /// `head.weight [L+1, D·H]`, `head.bias [L+1]`.
    pub head: Linear<f32>,
    /// The characters of labels 1…L.
    pub labels: Vec<char>,
    stack: usize,
    augment: bool,
    dropout: Dropout<f32>,
    work: Work,
}

/// The buffers of a training step, kept between steps.
#[derive(Clone, Debug, Default)]
struct Work {
    rnn: Kept<f32>,
    /// The logits `[T·B, L+1]` and their gradient.
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    ctc: CtcWork,
    /// The gradient of the recurrent output.
    dy: Tensor<f32>,
}

/// Steps after stacking `frames` frames `stack` at a time (a partial last group counts).
pub fn stacked_len(frames: usize, stack: usize) -> usize {
    frames.div_ceil(stack.max(1))
}

impl CtcModel {
    /// A freshly initialised model reading `bands` features per frame.
    pub fn new(config: &CtcConfig, bands: usize, labels: Vec<char>, rng: &mut Rng) -> Result<Self> {
        if labels.is_empty() {
            return Err(Error::Input("a CTC model needs at least one label".into()));
        }
        if config.stack == 0 || config.stack > 16 {
            return Err(Error::Input(format!(
                "--stack must be 1 to 16 frames, got {}",
                config.stack
            )));
        }
        let rnn = RecurrentConfig::new(config.cell, bands * config.stack, config.hidden_size)
            .with_layers(config.num_layers)
            .with_bidirectional(config.bidirectional)
            .with_dropout(config.dropout)
            .init(rng)?;
        let head = Linear::new(rnn.config().output_size(), labels.len() + 1, rng);
        Ok(CtcModel {
            rnn,
            head,
            labels,
            stack: config.stack,
            augment: config.augment,
            dropout: Default::default(),
            work: Work::default(),
        })
    }

    /// The sizes (dropout as configured for training).
    pub fn config(&self) -> CtcConfig {
        let r = self.rnn.config();
        CtcConfig {
            cell: r.cell,
            hidden_size: r.hidden_size,
            num_layers: r.num_layers,
            bidirectional: r.bidirectional,
            dropout: r.dropout,
            stack: self.stack,
            augment: self.augment,
        }
    }

    /// Features per frame.
    pub fn bands(&self) -> usize {
        self.rnn.config().input_size / self.stack
    }

    /// Output classes: the blank and the labels.
    pub fn classes(&self) -> usize {
        self.labels.len() + 1
    }

    /// Sets whether training utterances are perturbed.
    pub fn set_augment(&mut self, augment: bool) {
        self.augment = augment;
    }

    /// Sets the dropout used in training.
    pub fn set_dropout(&mut self, dropout: f32) -> Result<()> {
        let cfg = self.rnn.config().clone().with_dropout(dropout);
        cfg.validate()?;
        self.rnn = Recurrent::from_params(cfg, self.rnn.cells().to_vec())?;
        Ok(())
    }

    /// The class ids of `text`; a character outside the labels is an error naming it
    /// and `what` (e.g. the file and line).
    pub fn encode(&self, text: &str, what: &str) -> Result<Vec<usize>> {
        text.chars()
            .map(|c| {
                self.labels
                    .iter()
                    .position(|&l| l == c)
                    .map(|i| i + 1)
                    .ok_or_else(|| {
                        Error::Input(format!(
                            "{what}: the character {c:?} is not one of the model's labels {:?}",
                            self.labels.iter().collect::<String>()
                        ))
                    })
            })
            .collect()
    }

    /// The text of class ids (the blank and unknown ids are skipped).
    pub fn text(&self, ids: &[usize]) -> String {
        ids.iter()
            .filter_map(|&i| i.checked_sub(1).and_then(|i| self.labels.get(i)))
            .collect()
    }

    /// Stacks and pads utterances' features into one time-major batch.
    pub fn batch(&self, utts: &[&Utterance]) -> Result<DenseBatch> {
        let mut batch = DenseBatch::default();
        self.batch_into(utts, &mut batch)?;
        Ok(batch)
    }

    /// [`CtcModel::batch`] into `out`, reusing its storage.
    pub fn batch_into(&self, utts: &[&Utterance], out: &mut DenseBatch) -> Result<()> {
        let bands = self.bands();
        if let Some(u) = utts
            .iter()
            .find(|u| u.values.len() != u.frames * bands || u.frames == 0)
        {
            return Err(Error::Input(format!(
                "an utterance has {} values for {} frames, but the model reads {bands} features per frame (and at least one frame)",
                u.values.len(),
                u.frames
            )));
        }
        out.lengths.clear();
        out.lengths
            .extend(utts.iter().map(|u| stacked_len(u.frames, self.stack)));
        let (steps, b, width) = (
            out.lengths.iter().copied().max().unwrap_or(0),
            utts.len(),
            bands * self.stack,
        );
        let data = out.padded(steps, b, width);
        for (j, u) in utts.iter().enumerate() {
            // Frame f goes to step f / k, slot f % k: consecutive frames side by side.
            for (f, row) in u.values.chunks_exact(bands).enumerate() {
                let (t, slot) = (f / self.stack, f % self.stack);
                data[(t * b + j) * width + slot * bands..][..bands].copy_from_slice(row);
            }
        }
        Ok(())
    }

    /// Log-probabilities `[T, B, classes]` in inference mode (rows past a sequence's end are padding).
    pub fn log_probs(&mut self, batch: &DenseBatch) -> Result<Vec<f32>> {
        let (y, _) = self.rnn.forward(&batch.x, Some(&batch.lengths), None)?;
        let mut out = vec![0.0; y.shape()[0] * y.shape()[1] * self.classes()];
        self.head
            .forward(y.data(), y.shape()[0] * y.shape()[1], &mut out);
        crate::loss::log_softmax_rows(&mut out, self.classes());
        Ok(out)
    }

    /// Forward with dropout, CTC loss (torch's mean reduction, infeasible targets as 0)
    /// and backward: adds the gradients of that loss to every parameter. Returns it.
    pub fn train_step(
        &mut self,
        batch: &DenseBatch,
        targets: &[&[usize]],
        rng: &mut Rng,
    ) -> Result<f64> {
        let classes = self.classes();
        let Work {
            rnn,
            logits,
            dlogits,
            ctc,
            dy,
        } = &mut self.work;
        let lengths = Some(&batch.lengths[..]);
        self.rnn
            .forward_into(&batch.x, lengths, None, Some(rng), rnn.forward())?;
        let y = &mut rnn.y;
        self.dropout
            .forward(y.data_mut(), self.rnn.config().dropout, rng);
        let rows = y.shape()[0] * y.shape()[1];
        let logits = overwritten(logits, rows * classes);
        self.head.forward(y.data(), rows, logits);
        let dlogits = overwritten(dlogits, logits.len());
        let opts = CtcOptions {
            blank: BLANK,
            reduction: Reduction::Mean,
            zero_infinity: true,
        };
        let lengths = &batch.lengths;
        let loss = ctc_loss_with(logits, classes, lengths, targets, &opts, Some(dlogits), ctc)?;
        // Every element of dy is written by the head's backward pass.
        dy.reshape_overwritten(y.shape());
        self.head
            .backward(y.data(), dlogits, rows, Some(dy.data_mut()));
        self.dropout.backward(dy.data_mut());
        self.rnn
            .backward_into(dy, None, &mut |_| {}, rnn.backward())?;
        Ok(loss)
    }

    /// Writes the model as the PyTorch `CtcRecognizer` state dict plus `extra` tensors
    /// and `metadata`, atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut meta = metadata;
        meta.insert(super::META_TASK.into(), "ctc".into());
        meta.insert(
            crate::model::META_CELL.into(),
            self.rnn.config().cell.name().into(),
        );
        let labels: Vec<String> = self.labels.iter().map(|c| c.to_string()).collect();
        meta.insert(
            META_LABELS.into(),
            serde_json::to_string(&labels).expect("strings"),
        );
        meta.insert(META_STACK.into(), self.stack.to_string());
        let named = checkpoint::named_params(self, "");
        checkpoint::save_named(path, &named, extra, &meta)
    }

    /// Reads a checkpoint written by [`CtcModel::save`] (or by PyTorch for the same
    /// module), checking every shape; returns the open file for its other metadata.
    pub fn load(
        source: impl crate::checkpoint::CheckpointSource,
    ) -> Result<(CtcModel, TensorFile)> {
        let file = source.open()?;
        super::expect_task(&file, "ctc")?;
        let cell = super::meta_cell(&file)?;
        let names: Vec<String> = meta_json(&file, META_LABELS)?;
        let mut labels = Vec::with_capacity(names.len());
        for n in &names {
            let mut chars = n.chars();
            match (chars.next(), chars.next()) {
                (Some(c), None) if !labels.contains(&c) => labels.push(c),
                _ => {
                    return Err(file.error(format!(
                        "metadata `{META_LABELS}`: {n:?} is not one character, or is repeated"
                    )))
                }
            }
        }
        let stack: usize = file
            .metadata()
            .get(META_STACK)
            .ok_or_else(|| file.error(format!("metadata `{META_STACK}` is missing")))?
            .parse()
            .ok()
            .filter(|k| (1..=16).contains(k))
            .ok_or_else(|| file.error(format!("metadata `{META_STACK}` must be 1 to 16")))?;
        let (rnn_cfg, rnn_params) = checkpoint::recurrent_config(&file, "rnn.", cell)?;
        if labels.is_empty() || rnn_cfg.input_size % stack != 0 {
            return Err(file.error(format!(
                "needs at least one label and an input width ({}) divisible by the stacking ({stack})",
                rnn_cfg.input_size
            )));
        }
        let (k, w) = (labels.len() + 1, rnn_cfg.output_size());
        file.expect_float("head.weight", &[k, w])?;
        file.expect_float("head.bias", &[k])?;
        checkpoint::check_model_memory(&file, rnn_params + (k * w + k) as u64)?;
        let rnn = Recurrent::from_state_dict(&file, "rnn.", cell)?;
        let head = Linear::from_params(
            file.get("head.weight", Some(&[k, w]))?,
            file.get("head.bias", Some(&[k]))?,
        )?;
        Ok((
            CtcModel {
                rnn,
                head,
                labels,
                stack,
                augment: false,
                dropout: Default::default(),
                work: Work::default(),
            },
            file,
        ))
    }

    /// FLOPs (multiply-adds ×2) of one forward step.
    pub fn flops_per_step(&self) -> u64 {
        let r = self.rnn.config();
        let (d, g, h) = (
            r.directions() as u64,
            r.cell.gates() as u64,
            r.hidden_size as u64,
        );
        let rnn: u64 = (0..r.num_layers as u64)
            .map(|l| {
                let input = if l == 0 { r.input_size as u64 } else { d * h };
                d * 2 * (input + h) * g * h
            })
            .sum();
        rnn + 2 * d * h * self.classes() as u64
    }
}

super::params_of_rnn_and_head!(CtcModel);

/// How the label sequence is read off the log-probabilities.
pub enum Decoder<'a, S: LabelScorer> {
    /// Best path: the likeliest class per frame, repeats merged, blanks dropped.
    Greedy,
    /// Prefix beam search, optionally with a label language model.
    Beam {
        /// Beam width, LM weight and insertion bonus.
        opts: BeamOptions,
        /// The language model, if any.
        lm: Option<&'a mut S>,
    },
}

/// Character and whole-string error counts of transcripts against references.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CtcScores {
    /// Utterances scored.
    pub utterances: usize,
    /// Transcripts not equal to their reference.
    pub wrong: usize,
    /// Σ edit distances (characters) to the references.
    pub edits: usize,
    /// Σ reference lengths (characters).
    pub reference_chars: usize,
}

impl CtcScores {
    /// Scores `outputs` against `references` (class ids, in the same order).
    pub fn new(outputs: &[Vec<usize>], references: &[&[usize]]) -> Self {
        let mut s = CtcScores {
            utterances: outputs.len(),
            ..Default::default()
        };
        for (o, r) in outputs.iter().zip(references) {
            let d = edit_distance(o, r);
            s.wrong += usize::from(d > 0);
            s.edits += d;
            s.reference_chars += r.len();
        }
        s
    }

    /// Character error rate: edits ÷ reference characters.
    pub fn cer(&self) -> f64 {
        self.edits as f64 / self.reference_chars.max(1) as f64
    }

    /// Fraction of transcripts exactly right.
    pub fn string_accuracy(&self) -> f64 {
        1.0 - self.wrong as f64 / self.utterances.max(1) as f64
    }
}

/// Transcribes `utts` (class ids per utterance) in batches of `batch`, and returns the
/// mean CTC loss (torch's mean reduction, infeasible targets as 0) when `with_loss`.
pub fn transcribe<S: LabelScorer>(
    model: &mut CtcModel,
    utts: &[&Utterance],
    batch: usize,
    decoder: &mut Decoder<'_, S>,
    with_loss: bool,
) -> Result<(Vec<Vec<usize>>, f64)> {
    let classes = model.classes();
    let (mut outputs, mut loss_sum) = (Vec::with_capacity(utts.len()), 0.0);
    for chunk in utts.chunks(batch.max(1)) {
        let b = model.batch(chunk)?;
        let lp = model.log_probs(&b)?;
        let n = chunk.len();
        if with_loss {
            let targets: Vec<&[usize]> = chunk.iter().map(|u| u.target.as_slice()).collect();
            let opts = CtcOptions {
                blank: BLANK,
                reduction: Reduction::Mean,
                zero_infinity: true,
            };
            loss_sum += ctc_loss(&lp, classes, &b.lengths, &targets, &opts, None)?.value * n as f64;
        }
        // One utterance's rows, contiguous.
        let rows = |j: usize| -> Vec<f32> {
            (0..b.lengths[j])
                .flat_map(|t| lp[(t * n + j) * classes..][..classes].iter().copied())
                .collect()
        };
        match decoder {
            Decoder::Greedy => {
                for j in 0..n {
                    outputs.push(best_path(&rows(j), b.lengths[j], classes, BLANK));
                }
            }
            Decoder::Beam { opts, lm: None } => {
                let found: Vec<Vec<usize>> = (0..n)
                    .into_par_iter()
                    .map(|j| {
                        let hyps = prefix_beam_search::<S>(
                            &rows(j),
                            b.lengths[j],
                            classes,
                            BLANK,
                            opts,
                            None,
                        )?;
                        Ok(hyps
                            .into_iter()
                            .next()
                            .map(|h| h.labels)
                            .unwrap_or_default())
                    })
                    .collect::<Result<_>>()?;
                outputs.extend(found);
            }
            Decoder::Beam { opts, lm: Some(lm) } => {
                for j in 0..n {
                    let hyps = prefix_beam_search(
                        &rows(j),
                        b.lengths[j],
                        classes,
                        BLANK,
                        opts,
                        Some(&mut **lm),
                    )?;
                    outputs.push(
                        hyps.into_iter()
                            .next()
                            .map(|h| h.labels)
                            .unwrap_or_default(),
                    );
                }
            }
        }
    }
    Ok((outputs, loss_sum / utts.len().max(1) as f64))
}

/// A [`CtcModel`] with its training and validation utterances.
pub struct CtcTask {
    /// The model.
    pub model: CtcModel,
    train: Vec<Utterance>,
    dev: Vec<Utterance>,
    batch: usize,
    seed: u64,
    order: EpochOrder,
    metadata: HashMap<String, String>,
    shard: Shard,
    /// The batch of the last step, its storage reused by the next.
    inputs: DenseBatch,
    /// Storage for a step's utterances and their targets (see [`super::recycled`]).
    utts: Vec<&'static Utterance>,
    targets: Vec<&'static [usize]>,
}

impl CtcTask {
    /// Trains `model` on `train`, validating on `dev`; `metadata` (e.g. the feature
    /// settings) goes into every checkpoint.
    pub fn new(
        model: CtcModel,
        train: Vec<Utterance>,
        dev: Vec<Utterance>,
        batch: usize,
        seed: u64,
        metadata: HashMap<String, String>,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::Input("no training utterances".into()));
        }
        Ok(CtcTask {
            model,
            train,
            dev,
            batch,
            seed,
            order: EpochOrder::default(),
            shard: Shard::WHOLE,
            inputs: DenseBatch::default(),
            utts: Vec::new(),
            targets: Vec::new(),
            metadata,
        })
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(|u| u.frames).collect()
    }
}

super::params_of_model!(CtcTask);

/// A label scorer that is never built: the type of "no language model".
pub enum NoLm {}

impl LabelScorer for NoLm {
    type State = ();
    fn start(&mut self) -> Self::State {
        match *self {}
    }
    fn score(&mut self, _: &(), _: usize) -> Result<(f32, ())> {
        match *self {}
    }
}

impl Task for CtcTask {
    type Config = CtcConfig;

    fn kind(&self) -> &'static str {
        "ctc"
    }

    fn selection(&self) -> Selection {
        if self.dev.is_empty() {
            Selection::MinLoss
        } else {
            Selection::MaxScore("string_accuracy")
        }
    }

    fn describe(&self) -> String {
        let lengths = self.lengths();
        let frames: usize = lengths.iter().sum();
        format!(
            "training on {} utterances ({:.1} h of audio at 100 frames/s, stacked ×{}), validating on {}, {} labels + blank, padding {:.1} %",
            self.train.len(),
            frames as f64 / 360_000.0,
            self.model.stack,
            self.dev.len(),
            self.model.labels.len(),
            100.0 * padding_fraction(&lengths, &bucketed_batches(&lengths, self.batch, self.seed, 0))
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.batch.max(1))
    }

    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        _ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        let train = &self.train;
        let lengths = || train.iter().map(|u| u.frames).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        let (batch, own) = super::share(self.shard, batch);
        let mut utts = super::recycled(std::mem::take(&mut self.utts));
        utts.extend(batch.iter().map(|&i| &train[i]));
        // Perturbed copies are new every step (augmentation only).
        let perturbed: Vec<Utterance>;
        if self.model.augment {
            let bands = self.model.bands();
            perturbed = utts
                .iter()
                .map(|u| {
                    let (values, frames) =
                        augment(&u.values, u.frames, bands, &Augment::default(), rng);
                    Utterance {
                        frames,
                        values,
                        target: u.target.clone(),
                    }
                })
                .collect();
            utts.clear();
            utts.extend(perturbed.iter());
        }
        let mut targets = super::recycled(std::mem::take(&mut self.targets));
        targets.extend(utts.iter().map(|u| u.target.as_slice()));
        let model = &mut self.model;
        let inputs = &mut self.inputs;
        let step = model.batch_into(&utts, inputs).and_then(|()| {
            let tokens = if own { inputs.lengths.iter().sum() } else { 0 };
            let loss = model.train_step(inputs, &targets, rng)?;
            Ok(BatchLoss { loss, tokens })
        });
        self.utts = super::recycled(utts);
        self.targets = super::recycled(targets);
        step
    }

    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        self.shard = shard;
        Ok(())
    }

    fn shard_weight(&mut self, epoch: u64, k: usize) -> f64 {
        let train = &self.train;
        let lengths = || train.iter().map(|u| u.frames).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        // The loss is the mean over utterances (each over its target's length).
        super::share_weight(self.shard, batch, |_| 1)
    }

    fn validate(&mut self) -> Result<Option<Metrics>> {
        if self.dev.is_empty() {
            return Ok(None);
        }
        let utts: Vec<&Utterance> = self.dev.iter().collect();
        let (outputs, loss) =
            transcribe::<NoLm>(&mut self.model, &utts, 64, &mut Decoder::Greedy, true)?;
        let refs: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
        let s = CtcScores::new(&outputs, &refs);
        Ok(Some(Metrics {
            loss,
            scores: [
                ("string_accuracy".to_string(), s.string_accuracy()),
                ("cer".to_string(), s.cer()),
            ]
            .into(),
        }))
    }

    fn flops_per_token(&self) -> u64 {
        self.model.flops_per_step()
    }

    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut metadata = metadata;
        metadata.extend(self.metadata.clone());
        self.model.save(path, extra, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(stack: usize) -> CtcModel {
        let cfg = CtcConfig {
            cell: CellKind::Lstm,
            hidden_size: 4,
            num_layers: 1,
            bidirectional: true,
            dropout: 0.0,
            stack,
            augment: false,
        };
        CtcModel::new(&cfg, 2, vec!['a', 'b', ' '], &mut Rng::new(1)).unwrap()
    }

    #[test]
    fn stacking_puts_consecutive_frames_side_by_side() {
        let m = model(3);
        let u = Utterance {
            frames: 4,
            values: (0..8).map(|v| v as f32).collect(),
            target: vec![1],
        };
        let b = m.batch(&[&u]).unwrap();
        assert_eq!(b.lengths, vec![2]);
        assert_eq!(b.x.shape(), &[2, 1, 6]);
        assert_eq!(
            b.x.data(),
            &[0., 1., 2., 3., 4., 5., 6., 7., 0., 0., 0., 0.]
        );
    }

    #[test]
    fn labels_encode_and_decode_and_unknown_characters_are_named() {
        let m = model(1);
        assert_eq!(m.encode("ab a", "x").unwrap(), vec![1, 2, 3, 1]);
        assert_eq!(m.text(&[1, 2, 3, 1, 0, 9]), "ab a");
        let e = m.encode("abc", "train.tsv:7").unwrap_err().to_string();
        assert!(e.contains("train.tsv:7") && e.contains("'c'"), "{e}");
    }

    #[test]
    fn scores_count_characters_and_strings() {
        let s = CtcScores::new(&[vec![1, 2], vec![1]], &[&[1, 2], &[1, 2, 3]]);
        assert_eq!((s.wrong, s.edits, s.reference_chars), (1, 2, 5));
        assert_eq!(s.string_accuracy(), 0.5);
        assert!((s.cer() - 0.4).abs() < 1e-12);
    }
}
