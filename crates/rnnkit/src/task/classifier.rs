//! Sequence classification (many-to-one) on multichannel time series: standardised
//! features → recurrent stack (uni- or bidirectional, variable lengths) → pooling over
//! valid steps → linear → softmax. Stored as the PyTorch module
//! `tools/task_modules.py::SequenceClassifier` (`rnn.*`, `head.*`, buffers `norm.mean`, `norm.std`).

use super::{
    bucketed_batches, meta_json, padding_fraction, BatchLoss, EpochOrder, Metrics, Selection, Task,
};
use crate::checkpoint::{self, TensorFile};
use crate::data::{Series, TsDataset};
use crate::error::{Error, Result};
use crate::layer::{Kept, Linear, Pool, PoolKind, Recurrent, RecurrentConfig};
use crate::loss::{argmax_rows, cross_entropy, CrossEntropy};
use crate::rng::Rng;
use crate::tensor::{overwritten, Tensor};
use crate::train::{Change, GradientSink, Setting, Settings, Shard};
use crate::CellKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the class names (JSON array, index = class id).
pub const META_LABELS: &str = "rnnkit.labels";
/// Metadata key of the pooling.
pub const META_POOL: &str = "rnnkit.pool";

/// Sizes of a [`Classifier`]; channels and classes come from the data.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClassifierConfig {
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
    /// How the outputs over time become one vector.
    pub pool: PoolKind,
}

impl Settings for ClassifierConfig {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        vec![
            Setting::new("--cell", self.cell, Fixed),
            Setting::new("--layers", self.num_layers, Fixed),
            Setting::new("--hidden", self.hidden_size, Fixed),
            Setting::new("--bidirectional", self.bidirectional, Fixed),
            Setting::new("--pool", self.pool.name(), Fixed),
            Setting::new("--dropout", self.dropout, Alters),
        ]
    }
}

/// Per-channel standardisation `(x − mean) / std`, fitted on training data.
#[derive(Clone, Debug, PartialEq)]
pub struct Standardizer {
    /// `norm.mean [C]`.
    pub mean: Tensor<f32>,
    /// `norm.std [C]` (never zero: constant channels get 1).
    pub std: Tensor<f32>,
}

impl Standardizer {
    /// Mean and standard deviation of every channel over all steps of `cases`.
    pub fn fit(cases: &[&Series], channels: usize) -> Self {
        let (mut sum, mut sq, mut n) = (vec![0f64; channels], vec![0f64; channels], 0usize);
        for s in cases {
            for row in s.values.chunks_exact(channels) {
                for (c, &v) in row.iter().enumerate() {
                    sum[c] += v as f64;
                    sq[c] += v as f64 * v as f64;
                }
                n += 1;
            }
        }
        let n = n.max(1) as f64;
        let mean: Vec<f32> = sum.iter().map(|s| (s / n) as f32).collect();
        let std: Vec<f32> = sum
            .iter()
            .zip(&sq)
            .map(|(s, q)| {
                let var = (q / n - (s / n) * (s / n)).max(0.0);
                if var > 1e-12 {
                    var.sqrt() as f32
                } else {
                    1.0
                }
            })
            .collect();
        Standardizer {
            mean: Tensor::from_vec(&[channels], mean).expect("sized"),
            std: Tensor::from_vec(&[channels], std).expect("sized"),
        }
    }

    fn apply(&self, row: &[f32], out: &mut [f32]) {
        for (((o, &v), &m), &s) in out
            .iter_mut()
            .zip(row)
            .zip(self.mean.data())
            .zip(self.std.data())
        {
            *o = (v - m) / s;
        }
    }
}

/// The model with its gradients, class names and normalisation.
#[derive(Clone, Debug)]
pub struct Classifier {
    /// `rnn.*`, torch names.
    pub rnn: Recurrent<f32>,
    /// `head.weight [K, D·H]`, `head.bias [K]`.
    pub head: Linear<f32>,
    /// Input standardisation.
    pub norm: Standardizer,
    /// Class names, index = class id.
    pub labels: Vec<String>,
    pool: Pool<f32>,
    dropout: crate::layer::Dropout<f32>,
    work: Work,
}

/// The buffers of a training step, kept between steps.
#[derive(Clone, Debug, Default)]
struct Work {
    rnn: Kept<f32>,
    /// The pooled outputs `[B, D·H]`, the logits `[B, K]` and their gradients.
    pooled: Tensor<f32>,
    logits: Vec<f32>,
    dlogits: Vec<f32>,
    dpooled: Vec<f32>,
    /// The gradient of the recurrent output.
    dy: Tensor<f32>,
}

/// A padded, time-major batch of dense sequences.
#[derive(Clone, Debug, Default)]
pub struct DenseBatch {
    /// `[T, B, C]`, zeros past each sequence's end.
    pub x: Tensor<f32>,
    /// Valid steps of each sequence.
    pub lengths: Vec<usize>,
}

/// Pools the recurrent output `y [T, B, W]` into `out [B, W]`.
fn pool_into(
    pool: &mut Pool<f32>,
    y: &Tensor<f32>,
    lengths: &[usize],
    directions: usize,
    out: &mut Tensor<f32>,
) -> Result<()> {
    let &[t, b, w] = y.shape() else {
        unreachable!("the recurrent layer returns [T, B, W]")
    };
    pool.forward_into(y.data(), (t, b, w), lengths, directions, out)
}

impl DenseBatch {
    /// Makes `x` `[steps, b, width]` of zeros, reusing its storage; returns its values.
    pub(crate) fn padded(&mut self, steps: usize, b: usize, width: usize) -> &mut [f32] {
        self.x.reshape_overwritten(&[steps, b, width]);
        let x = self.x.data_mut();
        x.fill(0.0);
        x
    }
}

impl Classifier {
    /// A freshly initialised model for `channels` inputs and `labels.len()` classes.
    pub fn new(
        config: &ClassifierConfig,
        channels: usize,
        labels: Vec<String>,
        norm: Standardizer,
        rng: &mut Rng,
    ) -> Result<Self> {
        if labels.len() < 2 {
            return Err(Error::Input(format!(
                "a classifier needs at least 2 classes, got {}",
                labels.len()
            )));
        }
        let rnn = Self::recurrent(config, channels).init(rng)?;
        let head = Linear::new(rnn.config().output_size(), labels.len(), rng);
        Ok(Classifier {
            rnn,
            head,
            norm,
            labels,
            pool: Pool::new(config.pool),
            work: Work::default(),
            dropout: Default::default(),
        })
    }

    fn recurrent(config: &ClassifierConfig, channels: usize) -> RecurrentConfig {
        RecurrentConfig::new(config.cell, channels, config.hidden_size)
            .with_layers(config.num_layers)
            .with_bidirectional(config.bidirectional)
            .with_dropout(config.dropout)
    }

    /// The sizes (dropout as configured for training).
    pub fn config(&self) -> ClassifierConfig {
        let r = self.rnn.config();
        ClassifierConfig {
            cell: r.cell,
            hidden_size: r.hidden_size,
            num_layers: r.num_layers,
            bidirectional: r.bidirectional,
            dropout: r.dropout,
            pool: self.pool.kind(),
        }
    }

    /// Input channels.
    pub fn channels(&self) -> usize {
        self.rnn.config().input_size
    }

    /// Sets the dropout used in training.
    pub fn set_dropout(&mut self, dropout: f32) -> Result<()> {
        let cfg = self.rnn.config().clone().with_dropout(dropout);
        cfg.validate()?;
        self.rnn = Recurrent::from_params(cfg, self.rnn.cells().to_vec())?;
        Ok(())
    }

    /// Standardises and pads `cases` into one time-major batch.
    pub fn batch(&self, cases: &[&Series]) -> Result<DenseBatch> {
        let mut batch = DenseBatch::default();
        self.batch_into(cases, &mut batch)?;
        Ok(batch)
    }

    /// [`Classifier::batch`] into `out`, reusing its storage.
    pub fn batch_into(&self, cases: &[&Series], out: &mut DenseBatch) -> Result<()> {
        let c = self.channels();
        if let Some(s) = cases
            .iter()
            .find(|s| s.values.len() != s.len * c || s.len == 0)
        {
            return Err(Error::Input(format!(
                "a series has {} values for {} steps, but the model reads {c} channels per step (and at least one step)",
                s.values.len(),
                s.len
            )));
        }
        let steps = cases.iter().map(|s| s.len).max().unwrap_or(0);
        let b = cases.len();
        let x = out.padded(steps, b, c);
        for (j, s) in cases.iter().enumerate() {
            for (t, row) in s.values.chunks_exact(c).enumerate() {
                self.norm.apply(row, &mut x[(t * b + j) * c..][..c]);
            }
        }
        out.lengths.clear();
        out.lengths.extend(cases.iter().map(|s| s.len));
        Ok(())
    }

    /// How the outputs over time become one vector.
    pub fn pool_kind(&self) -> PoolKind {
        self.pool.kind()
    }

    /// Logits `[B, K]` in inference mode.
    pub fn logits(&mut self, batch: &DenseBatch) -> Result<Vec<f32>> {
        let (y, _) = self.rnn.forward(&batch.x, Some(&batch.lengths), None)?;
        let mut pooled = Tensor::default();
        let dirs = self.rnn.config().directions();
        pool_into(&mut self.pool, &y, &batch.lengths, dirs, &mut pooled)?;
        let b = batch.lengths.len();
        let mut logits = vec![0.0; b * self.labels.len()];
        self.head.forward(pooled.data(), b, &mut logits);
        Ok(logits)
    }

    /// Forward with dropout, mean cross-entropy of `targets` (class ids), backward:
    /// adds the gradients of that mean to every parameter. Returns the loss.
    pub fn train_step(
        &mut self,
        batch: &DenseBatch,
        targets: &[usize],
        rng: &mut Rng,
    ) -> Result<f64> {
        self.train_step_with(batch, targets, rng, &mut |_| {})
    }

    /// [`Classifier::train_step`], handing each group of finished gradients to
    /// `ready` as the backward pass goes (the head's, then each recurrent layer's).
    pub fn train_step_with(
        &mut self,
        batch: &DenseBatch,
        targets: &[usize],
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<f64> {
        let b = batch.lengths.len();
        let k = self.labels.len();
        let Work {
            rnn,
            pooled,
            logits,
            dlogits,
            dpooled,
            dy,
        } = &mut self.work;
        let lengths = Some(&batch.lengths[..]);
        self.rnn
            .forward_into(&batch.x, lengths, None, Some(rng), rnn.forward())?;
        let dirs = self.rnn.config().directions();
        pool_into(&mut self.pool, &rnn.y, &batch.lengths, dirs, pooled)?;
        self.dropout
            .forward(pooled.data_mut(), self.rnn.config().dropout, rng);
        let logits = overwritten(logits, b * k);
        self.head.forward(pooled.data(), b, logits);
        let dlogits = overwritten(dlogits, logits.len());
        let loss = cross_entropy(
            logits,
            k,
            targets,
            None,
            &CrossEntropy::default(),
            Some(dlogits),
        )?;
        let dpooled = overwritten(dpooled, pooled.len());
        self.head.backward(pooled.data(), dlogits, b, Some(dpooled));
        ready(&[&self.head.grad_weight, &self.head.grad_bias]);
        self.dropout.backward(dpooled);
        self.pool.backward_into(dpooled, dy)?;
        self.rnn.backward_into(dy, None, ready, rnn.backward())?;
        Ok(loss.mean)
    }

    /// Writes the model as the PyTorch `SequenceClassifier` state dict plus `extra`
    /// tensors and `metadata`, atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut meta = metadata;
        meta.insert(super::META_TASK.into(), "classify".into());
        meta.insert(
            crate::model::META_CELL.into(),
            self.rnn.config().cell.name().into(),
        );
        meta.insert(
            META_LABELS.into(),
            serde_json::to_string(&self.labels).expect("strings"),
        );
        meta.insert(META_POOL.into(), self.pool.kind().name().into());
        let mut named = checkpoint::named_params(self, "");
        named.push(("norm.mean".into(), self.norm.mean.clone()));
        named.push(("norm.std".into(), self.norm.std.clone()));
        checkpoint::save_named(path, &named, extra, &meta)
    }

    /// Reads a checkpoint written by [`Classifier::save`] (or by PyTorch for the same
    /// module), checking every shape; returns the open file for any training state.
    pub fn load(
        source: impl crate::checkpoint::CheckpointSource,
    ) -> Result<(Classifier, TensorFile)> {
        let file = source.open()?;
        super::expect_task(&file, "classify")?;
        let cell = super::meta_cell(&file)?;
        let labels: Vec<String> = meta_json(&file, META_LABELS)?;
        let pool = file
            .metadata()
            .get(META_POOL)
            .map(|p| {
                PoolKind::from_name(p).ok_or_else(|| {
                    file.error(format!(
                        "metadata `{META_POOL}` is {p:?}; expected last, mean or max"
                    ))
                })
            })
            .transpose()?
            .unwrap_or_default();
        // Every tensor's dtype and shape against the others, from the header, before
        // anything is allocated.
        let (rnn_cfg, rnn_params) = checkpoint::recurrent_config(&file, "rnn.", cell)?;
        let (c, k, w) = (rnn_cfg.input_size, labels.len(), rnn_cfg.output_size());
        if k < 2 {
            return Err(file.error(format!(
                "metadata `{META_LABELS}` must name at least 2 classes"
            )));
        }
        file.expect_float("head.weight", &[k, w])?;
        file.expect_float("head.bias", &[k])?;
        file.expect_float("norm.mean", &[c])?;
        file.expect_float("norm.std", &[c])?;
        // Each is a tensor of the file, so the products fit.
        checkpoint::check_model_memory(&file, rnn_params + (k * w + k + 2 * c) as u64)?;
        let rnn = Recurrent::from_state_dict(&file, "rnn.", cell)?;
        let head = Linear::from_params(
            file.get("head.weight", Some(&[k, w]))?,
            file.get("head.bias", Some(&[k]))?,
        )?;
        let norm = Standardizer {
            mean: file.get("norm.mean", Some(&[c]))?,
            std: file.get("norm.std", Some(&[c]))?,
        };
        if let Some(i) = norm
            .std
            .data()
            .iter()
            .position(|s| !(s.is_finite() && *s > 0.0))
        {
            return Err(file.error(format!("`norm.std` entry {i} must be positive")));
        }
        Ok((
            Classifier {
                rnn,
                head,
                norm,
                labels,
                pool: Pool::new(pool),
                work: Work::default(),
                dropout: Default::default(),
            },
            file,
        ))
    }

    /// Class ids and probabilities `[B, K]` of a batch.
    pub fn predict(&mut self, batch: &DenseBatch) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut logits = self.logits(batch)?;
        let k = self.labels.len();
        let ids = argmax_rows(&logits, k);
        crate::loss::softmax_rows(&mut logits, k);
        Ok((ids, logits))
    }
}

super::params_of_rnn_and_head!(Classifier);

/// Accuracy, macro-F1 and the confusion matrix of predictions against truth.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassScores {
    /// Cases scored.
    pub cases: usize,
    /// Fraction predicted right.
    pub accuracy: f64,
    /// Mean over classes of F1 (a class never predicted nor present counts as 1, as
    /// scikit-learn's `zero_division=1`; absent but predicted counts as 0).
    pub macro_f1: f64,
    /// `confusion[truth][predicted]`.
    pub confusion: Vec<Vec<usize>>,
}

impl ClassScores {
    /// Scores `predicted` against `truth` over `classes` classes.
    pub fn new(truth: &[usize], predicted: &[usize], classes: usize) -> Self {
        let mut confusion = vec![vec![0usize; classes]; classes];
        for (&t, &p) in truth.iter().zip(predicted) {
            confusion[t][p] += 1;
        }
        let right: usize = (0..classes).map(|c| confusion[c][c]).sum();
        let f1: f64 = (0..classes)
            .map(|c| {
                let tp = confusion[c][c] as f64;
                let actual: usize = confusion[c].iter().sum();
                let predicted: usize = confusion.iter().map(|r| r[c]).sum();
                if actual + predicted == 0 {
                    1.0
                } else {
                    2.0 * tp / (actual + predicted) as f64
                }
            })
            .sum::<f64>()
            / classes.max(1) as f64;
        ClassScores {
            cases: truth.len(),
            accuracy: right as f64 / truth.len().max(1) as f64,
            macro_f1: f1,
            confusion,
        }
    }
}

/// Loss and scores of `model` on `cases`, in batches of `batch`.
pub fn evaluate(
    model: &mut Classifier,
    cases: &[&Series],
    batch: usize,
) -> Result<(f64, ClassScores)> {
    let k = model.labels.len();
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    let mut loss_sum = 0.0;
    for chunk in cases.chunks(batch.max(1)) {
        let b = model.batch(chunk)?;
        let logits = model.logits(&b)?;
        let targets: Vec<usize> = chunk.iter().map(|s| s.label).collect();
        let l = cross_entropy(&logits, k, &targets, None, &CrossEntropy::default(), None)?;
        loss_sum += l.mean * chunk.len() as f64;
        predicted.extend(argmax_rows(&logits, k));
        truth.extend(targets);
    }
    let scores = ClassScores::new(&truth, &predicted, k);
    Ok((loss_sum / cases.len().max(1) as f64, scores))
}

/// The training cases split into training and validation parts, stratified: within
/// every class, a seeded shuffle and the last `val_frac` (rounded) held out.
pub fn stratified_split(data: &TsDataset, val_frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = Rng::new(seed ^ 0x7f4a_7c15_9e37_79b9);
    let (mut train, mut val) = (Vec::new(), Vec::new());
    for class in 0..data.labels.len() {
        let mut idx: Vec<usize> = (0..data.cases.len())
            .filter(|&i| data.cases[i].label == class)
            .collect();
        rng.shuffle(&mut idx);
        let n_val = (idx.len() as f64 * val_frac).round() as usize;
        let n_val = n_val.min(idx.len().saturating_sub(1));
        val.extend_from_slice(&idx[idx.len() - n_val..]);
        train.extend_from_slice(&idx[..idx.len() - n_val]);
    }
    train.sort_unstable();
    val.sort_unstable();
    (train, val)
}

/// A [`Classifier`] with its training and validation cases.
pub struct ClassifyTask {
    /// The model.
    pub model: Classifier,
    train: Vec<Series>,
    val: Vec<Series>,
    batch: usize,
    seed: u64,
    order: EpochOrder,
    shard: Shard,
    /// The batch of the last step, its storage reused by the next.
    inputs: DenseBatch,
    /// Storage for a step's cases and their labels (see [`super::recycled`]).
    cases: Vec<&'static Series>,
    targets: Vec<usize>,
}

impl ClassifyTask {
    /// Forward and backward on this process's cases of batch `k`.
    fn step(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        let train = &self.train;
        let lengths = || train.iter().map(|s| s.len).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        let (batch, own) = super::share(self.shard, batch);
        let mut cases = super::recycled(std::mem::take(&mut self.cases));
        cases.extend(batch.iter().map(|&i| &train[i]));
        let targets = &mut self.targets;
        targets.clear();
        targets.extend(cases.iter().map(|s| s.label));
        let tokens = cases.iter().map(|s| s.len).sum();
        let loss = self
            .model
            .batch_into(&cases, &mut self.inputs)
            .and_then(|()| {
                self.model
                    .train_step_with(&self.inputs, targets, rng, ready)
            });
        self.cases = super::recycled(cases);
        let loss = loss?;
        Ok(BatchLoss {
            loss,
            tokens: if own { tokens } else { 0 },
        })
    }

    /// Takes the cases `train` and `val` of `data` for `model`.
    pub fn new(
        model: Classifier,
        data: &TsDataset,
        (train, val): (&[usize], &[usize]),
        batch: usize,
        seed: u64,
    ) -> Result<Self> {
        let pick = |idx: &[usize]| {
            idx.iter()
                .map(|&i| data.cases[i].clone())
                .collect::<Vec<_>>()
        };
        if data.channels != model.channels() {
            return Err(Error::Input(format!(
                "the data has {} channels but the model reads {}",
                data.channels,
                model.channels()
            )));
        }
        if train.is_empty() {
            return Err(Error::Input("no training cases".into()));
        }
        Ok(ClassifyTask {
            model,
            train: pick(train),
            val: pick(val),
            batch,
            seed,
            order: EpochOrder::default(),
            shard: Shard::WHOLE,
            inputs: DenseBatch::default(),
            cases: Vec::new(),
            targets: Vec::new(),
        })
    }

    /// Fraction of padding in one epoch's batches.
    pub fn padding_fraction(&self) -> f64 {
        let lengths: Vec<usize> = self.train.iter().map(|s| s.len).collect();
        padding_fraction(
            &lengths,
            &bucketed_batches(&lengths, self.batch, self.seed, 0),
        )
    }
}

super::params_of_model!(ClassifyTask);

impl Task for ClassifyTask {
    type Config = ClassifierConfig;

    fn kind(&self) -> &'static str {
        "classify"
    }

    fn selection(&self) -> Selection {
        if self.val.is_empty() {
            Selection::MinLoss
        } else {
            Selection::MaxScore("accuracy")
        }
    }

    fn describe(&self) -> String {
        format!(
            "training on {} series ({} held out for validation), {} channels, {} classes, padding {:.1} %",
            self.train.len(),
            self.val.len(),
            self.model.channels(),
            self.model.labels.len(),
            100.0 * self.padding_fraction()
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
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        self.step(epoch, k, rng, ready)
    }

    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        self.shard = shard;
        Ok(())
    }

    fn shard_weight(&mut self, epoch: u64, k: usize) -> f64 {
        let train = &self.train;
        let lengths = || train.iter().map(|s| s.len).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        super::share_weight(self.shard, batch, |_| 1)
    }

    fn validate(&mut self) -> Result<Option<Metrics>> {
        if self.val.is_empty() {
            return Ok(None);
        }
        let cases: Vec<&Series> = self.val.iter().collect();
        let (loss, s) = evaluate(&mut self.model, &cases, self.batch)?;
        Ok(Some(Metrics {
            loss,
            scores: [
                ("accuracy".to_string(), s.accuracy),
                ("macro_f1".to_string(), s.macro_f1),
            ]
            .into(),
        }))
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
