//! Tasks: a model together with its data, behind the one trait the trainer drives.
//! A task says how to train on batch k of an epoch, how to validate, what to carry
//! between batches and how to save itself; the trainer does everything else.

pub mod char_lm;
pub mod classifier;
pub mod ctc;
pub mod seq2seq;
pub mod tagger;

use crate::checkpoint::TensorFile;
use crate::error::Result;
use crate::layer::Parameters;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::train::{GradientSink, Settings, Shard};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::path::Path;

/// `impl Parameters<f32>` for a task struct by handing the visitor to its `model` field.
macro_rules! params_of_model {
    ($task:ty) => {
        impl $crate::layer::Parameters<f32> for $task {
            fn visit_params(&self, f: &mut dyn FnMut(&str, &$crate::tensor::Tensor<f32>)) {
                self.model.visit_params(f)
            }

            fn visit_params_mut(&mut self, f: &mut $crate::layer::ParamVisitor<'_, f32>) {
                self.model.visit_params_mut(f)
            }
        }
    };
}
use params_of_model;

/// `impl Parameters<f32>` for a model made of a recurrent stack `rnn` and an output
/// layer `head`, under the PyTorch module's names: `rnn.weight_ih_l0`, …,
/// `head.weight`, `head.bias`.
macro_rules! params_of_rnn_and_head {
    ($model:ty) => {
        impl $crate::layer::Parameters<f32> for $model {
            fn visit_params(&self, f: &mut dyn FnMut(&str, &$crate::tensor::Tensor<f32>)) {
                self.rnn.visit_params(&mut |n, t| {
                    $crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t))
                });
                f("head.weight", &self.head.weight);
                f("head.bias", &self.head.bias);
            }

            fn visit_params_mut(&mut self, f: &mut $crate::layer::ParamVisitor<'_, f32>) {
                self.rnn.visit_params_mut(&mut |n, t, g| {
                    $crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t, g))
                });
                f(
                    "head.weight",
                    &mut self.head.weight,
                    &mut self.head.grad_weight,
                );
                f("head.bias", &mut self.head.bias, &mut self.head.grad_bias);
            }
        }
    };
}
use params_of_rnn_and_head;

/// Metadata key naming the task of a checkpoint (absent in char-LM checkpoints).
pub const META_TASK: &str = "rnnkit.task";

/// Loss and scores of one validation.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    /// Mean loss.
    pub loss: f64,
    /// Task scores by name (e.g. `accuracy`, `macro_f1`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub scores: BTreeMap<String, f64>,
}

/// Which validation number chooses the best checkpoint and drives early stopping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Selection {
    /// The lowest validation loss.
    MinLoss,
    /// The highest value of the named score.
    MaxScore(&'static str),
}

impl Selection {
    /// The selection value of `m` as a number where lower is better. Equal scores
    /// (common on small validation sets) are told apart by the lower loss: scores are
    /// fractions of cases, so a loss term under 1e-3 never outweighs one case in a thousand.
    pub fn key(self, m: &Metrics) -> Option<f64> {
        match self {
            Selection::MinLoss => Some(m.loss),
            Selection::MaxScore(name) => m
                .scores
                .get(name)
                .map(|v| -v + 1e-6 * m.loss.clamp(0.0, 999.0)),
        }
    }

    /// The name shown to users.
    pub fn name(self) -> &'static str {
        match self {
            Selection::MinLoss => "validation loss",
            Selection::MaxScore(name) => name,
        }
    }
}

/// The loss of one training batch.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BatchLoss {
    /// Mean loss over the batch.
    pub loss: f64,
    /// Input tokens (timesteps × sequences, padding excluded) the batch processed.
    pub tokens: usize,
}

/// A model with its training and validation data, as the trainer drives it (on a
/// thread of the pool, hence `Send`).
pub trait Task: Parameters<f32> + Send {
    /// The task's own part of the recipe (model sizes, data settings).
    type Config: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned + Settings;

    /// Name in checkpoints (`rnnkit.task`) and in messages.
    fn kind(&self) -> &'static str;
    /// Unit of the loss in logs (`nats_per_char` for the char LM, else `loss`).
    fn loss_name(&self) -> &'static str {
        "loss"
    }
    /// What chooses the best checkpoint.
    fn selection(&self) -> Selection;
    /// One line about the data and the model, printed as training starts.
    fn describe(&self) -> String;
    /// Batches in one pass over the training data.
    fn batches_per_epoch(&self) -> usize;
    /// Called before the first batch of every epoch (a carried state starts afresh).
    fn start_epoch(&mut self, _epoch: u64) {}
    /// Forward with dropout, loss and backward on batch `k` of epoch `epoch` (whose
    /// order depends only on the seed and the epoch); adds the gradients of the mean loss.
    /// A task may hand each group of gradients to `ready` as soon as the backward pass
    /// has finished it (data-parallel training sums them meanwhile); what it does not
    /// hand over is summed after its backward pass.
    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss>;
    /// Data-parallel training: trains from now on on share `shard` of every batch
    /// (the batches, their order and their count stay those of the whole run). Under
    /// a shard, [`Task::carried_state`] gives the whole batch's tensors with zeros in
    /// the other shares' rows (summed over the processes they are the whole state),
    /// and [`Task::restore_carried_state`] takes the whole batch's tensors.
    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        if shard.is_whole() {
            return Ok(());
        }
        Err(crate::Error::Config(format!(
            "the `{}` task cannot be trained on several processes yet; run it as one process",
            self.kind()
        )))
    }
    /// The part of batch `k`'s mean loss that this process's share carries: the terms
    /// its loss averages (tokens or sequences) over those of the whole batch; 1 when
    /// unsharded. Weighed by it, the shares' gradients sum to the whole batch's.
    fn shard_weight(&mut self, _epoch: u64, _k: usize) -> f64 {
        1.0
    }
    /// Loss and scores on the validation data, if there is any.
    fn validate(&mut self) -> Result<Option<Metrics>>;
    /// State carried from batch to batch that a resumed run needs, as named tensors.
    fn carried_state(&self) -> Vec<(String, Tensor<f32>)> {
        Vec::new()
    }
    /// Restores what [`Task::carried_state`] stored.
    fn restore_carried_state(&mut self, _file: &TensorFile) -> Result<()> {
        Ok(())
    }
    /// Multiply-adds ×2 per token of one forward pass, for throughput reports.
    fn flops_per_token(&self) -> u64 {
        0
    }
    /// Writes the model (torch-style names and the task's metadata) with `extra`
    /// tensors and `metadata`, atomically.
    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()>;
}

/// Fails unless the checkpoint's `rnnkit.task` is `kind`.
pub(crate) fn expect_task(file: &TensorFile, kind: &str) -> Result<()> {
    match file.metadata().get(META_TASK) {
        Some(k) if k == kind => Ok(()),
        Some(k) => Err(file.error(format!(
            "this is a checkpoint of the `{k}` task, not of `{kind}`; use the `{k}` command with it"
        ))),
        None => Err(file.error(format!(
            "metadata `{META_TASK}` is missing: not an rnnkit `{kind}` checkpoint (a char-LM checkpoint goes to `rnnkit sample` and `rnnkit eval`)"
        ))),
    }
}

/// The cell kind named in a checkpoint's metadata.
pub(crate) fn meta_cell(file: &TensorFile) -> Result<crate::CellKind> {
    let key = crate::model::META_CELL;
    let name = file
        .metadata()
        .get(key)
        .ok_or_else(|| file.error(format!("metadata `{key}` is missing")))?;
    crate::CellKind::from_name(name).ok_or_else(|| {
        let known: Vec<&str> = crate::CellKind::ALL.iter().map(|k| k.name()).collect();
        file.error(format!(
            "metadata `{key}` is {name:?}; expected one of {}",
            known.join(", ")
        ))
    })
}

/// A JSON value from a checkpoint's metadata.
pub(crate) fn meta_json<T: DeserializeOwned>(file: &TensorFile, key: &str) -> Result<T> {
    let s = file
        .metadata()
        .get(key)
        .ok_or_else(|| file.error(format!("metadata `{key}` is missing")))?;
    serde_json::from_str(s).map_err(|e| file.error(format!("metadata `{key}`: {e}")))
}

/// The batches of one epoch: `n` items in an order fixed by `seed` and `epoch`,
/// grouped by similar `lengths` so that padding costs little. Items are shuffled,
/// sorted by length within pools of 50 batches, cut into batches, and the batches
/// shuffled again (as torchtext's bucket iterator).
pub fn bucketed_batches(lengths: &[usize], batch: usize, seed: u64, epoch: u64) -> Vec<Vec<usize>> {
    let batch = batch.max(1);
    let mut rng = Rng::new(seed ^ 0x9e37_79b9_7f4a_7c15u64.wrapping_mul(epoch.wrapping_add(1)));
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order);
    for pool in order.chunks_mut(batch * 50) {
        pool.sort_by_key(|&i| lengths[i]);
    }
    let mut batches: Vec<Vec<usize>> = order.chunks(batch).map(<[usize]>::to_vec).collect();
    rng.shuffle(&mut batches);
    batches
}

/// The batches of the epoch under way ([`bucketed_batches`]), drawn once per epoch
/// rather than once per batch.
#[derive(Clone, Debug, Default)]
pub struct EpochOrder {
    epoch: Option<u64>,
    batches: Vec<Vec<usize>>,
}

impl EpochOrder {
    /// The items of batch `k` of `epoch` over items of `lengths`, in batches of `batch`
    /// ordered by `seed`; `lengths` is asked for only when a new epoch starts.
    pub fn batch(
        &mut self,
        epoch: u64,
        k: usize,
        lengths: impl FnOnce() -> Vec<usize>,
        batch: usize,
        seed: u64,
    ) -> &[usize] {
        if self.epoch != Some(epoch) {
            self.batches = bucketed_batches(&lengths(), batch, seed, epoch);
            self.epoch = Some(epoch);
        }
        &self.batches[k]
    }
}

/// An empty vector that takes over `v`'s storage, for elements of another type of
/// the same size: a task keeps the references to a step's items between steps in a
/// `Vec<&'static _>` (they point into data borrowed only during the step), so that
/// gathering a batch allocates nothing once warmed up. The standard library collects
/// a mapped `vec::IntoIter` into its own buffer when the element layouts match (the
/// allocation test checks that it still does); where they do not, this allocates
/// nothing either, returning an empty vector.
pub(crate) fn recycled<A, B>(mut v: Vec<A>) -> Vec<B> {
    v.clear();
    v.into_iter().map(|_| unreachable!("cleared")).collect()
}

/// This process's items of `batch` under `shard`, and whether they are its own: a
/// process whose share is empty (a last batch shorter than the processes are many)
/// takes the batch's first item with weight 0, so that every process makes the
/// same sums in the same order.
pub(crate) fn share(shard: Shard, batch: &[usize]) -> (&[usize], bool) {
    let r = shard.range(batch.len());
    match r.is_empty() {
        true => (&batch[..batch.len().min(1)], false),
        false => (&batch[r], true),
    }
}

/// [`Task::shard_weight`] of a batch whose mean loss averages `terms(item)` terms
/// per item (1 for a mean over sequences, the words of a sentence for a mean over words).
pub(crate) fn share_weight(shard: Shard, batch: &[usize], terms: impl Fn(usize) -> usize) -> f64 {
    let (mine, own) = share(shard, batch);
    if !own {
        return 0.0;
    }
    let whole: usize = batch.iter().map(|&i| terms(i)).sum();
    mine.iter().map(|&i| terms(i)).sum::<usize>() as f64 / whole.max(1) as f64
}

/// Fraction of the padded `[T, B]` grid of `batches` that is padding.
pub fn padding_fraction(lengths: &[usize], batches: &[Vec<usize>]) -> f64 {
    let (mut real, mut grid) = (0usize, 0usize);
    for b in batches {
        let max = b.iter().map(|&i| lengths[i]).max().unwrap_or(0);
        real += b.iter().map(|&i| lengths[i]).sum::<usize>();
        grid += max * b.len();
    }
    if grid == 0 {
        0.0
    } else {
        1.0 - real as f64 / grid as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucketed_batches_cover_every_item_once_and_depend_on_seed_and_epoch() {
        let lengths: Vec<usize> = (0..1000).map(|i| (i * 7919) % 97 + 1).collect();
        let a = bucketed_batches(&lengths, 16, 1, 0);
        let mut all: Vec<usize> = a.iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..1000).collect::<Vec<_>>());
        assert_eq!(a, bucketed_batches(&lengths, 16, 1, 0));
        assert_ne!(a, bucketed_batches(&lengths, 16, 1, 1));
        assert_ne!(a, bucketed_batches(&lengths, 16, 2, 0));
        // Bucketing wastes far less than a random order would.
        let pad = padding_fraction(&lengths, &a);
        let mut rng = Rng::new(3);
        let mut order: Vec<usize> = (0..1000).collect();
        rng.shuffle(&mut order);
        let random: Vec<Vec<usize>> = order.chunks(16).map(<[usize]>::to_vec).collect();
        assert!(
            pad < 0.1 && padding_fraction(&lengths, &random) > 0.3,
            "{pad}"
        );
    }
}
