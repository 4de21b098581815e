//! Truncated BPTT at equal compute: the char LM trained with windows of several
//! lengths on the same number of characters (so the same arithmetic), the hidden
//! state carried across windows and the gradient cut at their edges, each scored on
//! the same held-out text read the same way.

use crate::data::{Streams, Vocab};
use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::model::{CharLm, CharLmConfig};
use crate::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::task::char_lm::{check_training_memory, evaluate, Batching, CharLmRecipe, CharLmTask};
use crate::task::Task;
use std::time::Instant;

/// Validation windows: every run is scored on the held-out text read in windows of
/// this many characters, the state carried, so the figures compare.
const VAL_WINDOW: usize = 100;

/// The runs of a sweep.
#[derive(Clone, Debug)]
pub struct TruncationConfig {
    /// The model.
    pub model: CharLmConfig,
    /// Streams per batch.
    pub batch: usize,
    /// Training characters of every run (the compute budget).
    pub chars: usize,
    /// Adam's learning rate.
    pub lr: f32,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    /// Share of the text held out (its end).
    pub val_frac: f64,
    /// Seed of the weights and dropout (the same for every length).
    pub seed: u64,
}

/// What one truncation length reached.
#[derive(Clone, Debug)]
pub struct TruncationResult {
    /// Window length (BPTT truncation).
    pub seq_len: usize,
    /// Updates made (the budget over the window: longer windows update less often).
    pub updates: usize,
    /// Validation loss at the end, nats per character.
    pub val_loss: f64,
    /// Seconds of training.
    pub seconds: f64,
}

/// Trains a fresh model on `text` with windows of `seq_len` characters for
/// `cfg.chars` characters and scores it on the held-out end of the text.
pub fn train_truncated(
    text: &str,
    cfg: &TruncationConfig,
    seq_len: usize,
) -> Result<TruncationResult> {
    if seq_len == 0 || cfg.batch == 0 || !(0.0..1.0).contains(&cfg.val_frac) || cfg.val_frac == 0.0
    {
        return Err(Error::Config(
            "truncation sweeps need a window and a batch of at least 1 and a held-out share in (0, 1)"
                .into(),
        ));
    }
    let vocab = Vocab::from_text(text)?;
    check_training_memory(&cfg.model, vocab.len(), cfg.batch, seq_len)?;
    let ids = vocab.encode(text)?;
    let n_val = (ids.len() as f64 * cfg.val_frac) as usize;
    let val = Streams::new(
        ids[ids.len() - n_val..].to_vec(),
        cfg.batch.min(n_val.saturating_sub(1) / VAL_WINDOW).max(1),
        VAL_WINDOW,
        "held-out text",
    )?;
    let mut rng = Rng::new(cfg.seed);
    let model = CharLm::new(&cfg.model, vocab, &mut rng)?;
    let recipe = CharLmRecipe {
        model: cfg.model.clone(),
        seq_len,
        carry_state: true,
        batching: Batching::Streams,
    };
    // The held-out end is cut off by `val`; the task trains on the rest only.
    let mut task = CharLmTask::new(model, &recipe, cfg.batch, cfg.val_frac, cfg.seed, text)?;
    let per_epoch = task.batches_per_epoch();
    let updates = (cfg.chars / (cfg.batch * seq_len)).max(1);
    let mut opt = Optimizer::new(OptimizerKind::Adam, 0.0);
    let start = Instant::now();
    for u in 0..updates {
        let (epoch, k) = ((u / per_epoch) as u64, u % per_epoch);
        if k == 0 {
            task.start_epoch(epoch);
        }
        let loss = task.train_batch(epoch, k, &mut rng, &mut |_| {})?;
        if !loss.loss.is_finite() {
            return Err(Error::Input(format!(
                "window {seq_len}: the training loss became non-finite at update {}; lower the learning rate",
                u + 1
            )));
        }
        if cfg.clip > 0.0 {
            clip_grad_norm(&mut task, cfg.clip);
        }
        opt.step(&mut task, cfg.lr);
        task.zero_grad();
    }
    let seconds = start.elapsed().as_secs_f64();
    Ok(TruncationResult {
        seq_len,
        updates,
        val_loss: evaluate(&mut task.model, &val)?,
        seconds,
    })
}
