//! The training loop for character language models: char-rnn batching with the
//! hidden state carried across batches (truncated BPTT), Adam or SGD, gradient
//! clipping, learning-rate decay, validation, atomic checkpoints, and exact resume.

mod state;

pub use state::{stored_recipe, TrainState};

use crate::data::{fingerprint, Streams, Vocab};
use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::model::{CharLm, CharLmConfig, Precision};
use crate::optim::{clip_grad_norm, clip_grad_value, Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::RecurrentState;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What defines the numbers a run produces; stored in checkpoints and required to
/// match when a run is resumed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    /// Model sizes and dropout.
    pub model: CharLmConfig,
    /// Number of parallel text streams per batch.
    pub batch: usize,
    /// Timesteps per batch (the truncation length of BPTT).
    pub seq_len: usize,
    /// Initial learning rate.
    pub lr: f32,
    /// Factor applied to the learning rate at the end of each epoch after `decay_after`.
    pub lr_decay: f32,
    /// Number of epochs at the initial learning rate before decay starts.
    pub decay_after: u64,
    /// Global gradient-norm limit.
    pub grad_clip: Option<f64>,
    /// Per-element gradient limit.
    pub clip_value: Option<f32>,
    /// Update rule.
    pub optimizer: OptimizerKind,
    /// SGD momentum.
    pub momentum: f32,
    /// Fraction of the text, at its end, held out for validation.
    pub val_frac: f64,
    /// Seed of initialisation and dropout.
    pub seed: u64,
    /// Carry the hidden state from batch to batch (else start each batch from zeros).
    pub carry_state: bool,
    /// Arithmetic of the matrix products (absent in checkpoints before it existed: f32).
    #[serde(default)]
    pub precision: Precision,
}

impl Recipe {
    /// Fails with a message naming the setting if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        self.model.validate()?;
        let bad = |m: String| Err(Error::Config(m));
        if self.batch == 0 || self.seq_len == 0 {
            return bad("batch and seq-len must be at least 1".into());
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("learning rate must be positive, got {}", self.lr));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return bad(format!("lr-decay must be in (0, 1], got {}", self.lr_decay));
        }
        if self.grad_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad("grad-clip must be positive".into());
        }
        if self.clip_value.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad("clip-value must be positive".into());
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!("momentum must be in [0, 1), got {}", self.momentum));
        }
        if !(0.0..0.5).contains(&self.val_frac) {
            return bad(format!(
                "val-frac must be in [0, 0.5), got {}",
                self.val_frac
            ));
        }
        Ok(())
    }

    /// The learning rate of the step that starts after `epochs_done` whole epochs.
    pub fn lr_at(&self, epochs_done: u64) -> f32 {
        let n = epochs_done.saturating_sub(self.decay_after);
        (self.lr as f64 * (self.lr_decay as f64).powi(n.min(i32::MAX as u64) as i32)) as f32
    }

    /// Every setting in which `self` differs from `stored`, as `name: stored → asked`.
    pub fn differences(&self, stored: &Recipe) -> Vec<String> {
        let (a, b) = (flatten(stored), flatten(self));
        a.iter()
            .zip(&b)
            .filter(|(x, y)| x.1 != y.1)
            .map(|(x, y)| format!("{} is {} in the checkpoint but {} was asked", x.0, x.1, y.1))
            .collect()
    }
}

fn flatten(r: &Recipe) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
        match v {
            serde_json::Value::Object(m) => m
                .iter()
                .for_each(|(k, v)| walk(&format!("{prefix}{k}."), v, out)),
            other => out.push((prefix.trim_end_matches('.').to_string(), other.to_string())),
        }
    }
    let mut out = Vec::new();
    walk(
        "",
        &serde_json::to_value(r).expect("serialisable"),
        &mut out,
    );
    out
}

/// When a run stops (the first bound reached) and what it writes where.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig {
    /// What defines the numbers.
    pub recipe: Recipe,
    /// Stop after this many optimizer steps, counted from the start of training.
    pub steps: Option<u64>,
    /// Stop after this many passes over the training text.
    pub epochs: Option<f64>,
    /// Stop after this much wall time in this process.
    pub time_limit: Option<Duration>,
    /// Validate every this many steps (and at the end).
    pub eval_every: u64,
    /// Write `latest.safetensors` every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Folder for checkpoints and metrics.
    pub out_dir: PathBuf,
    /// Continue the run saved in this checkpoint.
    pub resume: Option<PathBuf>,
}

/// Progress of one optimizer step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done, counted from the start of training.
    pub step: u64,
    /// The step at which the run will stop (if bounded by steps or epochs).
    pub total_steps: Option<u64>,
    /// Passes over the training text done.
    pub epoch: f64,
    /// Training loss of this step (nats per character).
    pub loss: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Training throughput so far in this process.
    pub tokens_per_sec: f64,
}

/// One validation, as written to `metrics.jsonl`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalReport {
    /// Steps done.
    pub step: u64,
    /// Passes over the training text done.
    pub epoch: f64,
    /// Mean training loss since the previous validation (nats per character).
    pub train_nats_per_char: f64,
    /// Validation loss (nats per character); absent without validation text.
    pub val_nats_per_char: Option<f64>,
    /// Learning rate at this step.
    pub lr: f32,
}

/// Facts about a run as it starts.
#[derive(Clone, Debug)]
pub struct StartInfo {
    /// Characters in the vocabulary.
    pub vocab_size: usize,
    /// Characters of training text.
    pub train_chars: usize,
    /// Characters of validation text.
    pub val_chars: usize,
    /// Batches in one epoch.
    pub batches_per_epoch: usize,
    /// Number of parameters.
    pub parameters: usize,
    /// The step the run starts from (non-zero when resumed).
    pub start_step: u64,
    /// The step at which it will stop, if known.
    pub total_steps: Option<u64>,
}

/// Receives progress; the CLI draws it.
pub trait Observer {
    /// Called once before the first step.
    fn on_start(&mut self, _info: &StartInfo) {}
    /// Called after every optimizer step.
    fn on_step(&mut self, _report: &StepReport) {}
    /// Called after every validation with the whole history so far.
    fn on_eval(&mut self, _history: &[EvalReport]) {}
    /// Called after a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
    /// Polled after every step; returning true stops the run cleanly.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    /// Steps done, counted from the start of training.
    pub steps: u64,
    /// Passes over the training text done.
    pub epochs: f64,
    /// Mean training loss over the last validation interval.
    pub train_nats_per_char: f64,
    /// Last validation loss.
    pub val_nats_per_char: Option<f64>,
    /// Training throughput in this process.
    pub tokens_per_sec: f64,
    /// The latest checkpoint.
    pub checkpoint: PathBuf,
    /// The checkpoint with the lowest validation loss.
    pub best_checkpoint: Option<PathBuf>,
    /// Whether the run was stopped by the observer (Ctrl-C) before its bound.
    pub interrupted: bool,
}

/// File name of the latest checkpoint in the output folder.
pub const LATEST: &str = "latest.safetensors";
/// File name of the best (lowest validation loss) checkpoint.
pub const BEST: &str = "best.safetensors";
/// File name of the metrics log.
pub const METRICS: &str = "metrics.jsonl";

/// Trains a character language model on `text` as `cfg` says.
pub fn run(cfg: &TrainConfig, text: &str, observer: &mut dyn Observer) -> Result<Summary> {
    cfg.recipe.validate()?;
    if cfg.eval_every == 0 || cfg.checkpoint_every == 0 {
        return Err(Error::Config(
            "eval-every and checkpoint-every must be at least 1".into(),
        ));
    }
    if cfg.steps.is_none() && cfg.epochs.is_none() && cfg.time_limit.is_none() {
        return Err(Error::Config(
            "give a bound: steps, epochs or a time limit".into(),
        ));
    }
    if cfg.epochs.is_some_and(|e| !(e > 0.0 && e.is_finite())) {
        return Err(Error::Config("epochs must be positive".into()));
    }
    let recipe = &cfg.recipe;
    let data_fingerprint = fingerprint(text);
    let (mut model, mut st) = match &cfg.resume {
        Some(path) => {
            let (model, st) = TrainState::load(path)?;
            let diffs = recipe.differences(&st.recipe);
            if !diffs.is_empty() {
                return Err(Error::Config(format!(
                    "cannot resume {}: {}; drop those flags or start a new run",
                    path.display(),
                    diffs.join("; ")
                )));
            }
            if st.data_fingerprint != data_fingerprint {
                return Err(Error::Config(format!("cannot resume {}: the training text differs from the one it was trained on; give the same --data", path.display())));
            }
            check_memory(recipe, model.vocab().len())?;
            (model, st)
        }
        None => {
            let vocab = Vocab::from_text(text)?;
            check_memory(recipe, vocab.len())?;
            let mut rng = Rng::new(recipe.seed);
            let model = CharLm::new(&recipe.model, vocab, &mut rng)?;
            (
                model,
                TrainState::fresh(recipe.clone(), rng, data_fingerprint),
            )
        }
    };
    model.set_precision(recipe.precision);
    let ids = model.vocab().encode(text)?;
    let n_val = (ids.len() as f64 * recipe.val_frac) as usize;
    let val_ids = ids[ids.len() - n_val..].to_vec();
    let train = Streams::new(
        ids[..ids.len() - n_val].to_vec(),
        recipe.batch,
        recipe.seq_len,
        "training text",
    )?;
    let val = if n_val == 0 {
        None
    } else {
        let streams = recipe
            .batch
            .min((n_val.saturating_sub(1)) / recipe.seq_len)
            .max(1);
        Some(Streams::new(
            val_ids,
            streams,
            recipe.seq_len,
            "validation text (the last --val-frac of the data)",
        )?)
    };
    let batches = train.batches() as u64;
    let total_steps = match (cfg.steps, cfg.epochs) {
        (Some(s), Some(e)) => Some(s.min((e * batches as f64).ceil() as u64)),
        (Some(s), None) => Some(s),
        (None, Some(e)) => Some((e * batches as f64).ceil() as u64),
        (None, None) => None,
    };
    std::fs::create_dir_all(&cfg.out_dir).map_err(|source| Error::Io {
        path: cfg.out_dir.clone(),
        source,
    })?;
    let latest = cfg.out_dir.join(LATEST);
    let best = cfg.out_dir.join(BEST);
    let mut optimizer = Optimizer::new(recipe.optimizer, recipe.momentum);
    st.restore_optimizer(&mut optimizer, &model)?;
    let mut parameters = 0;
    model.visit_params(&mut |_, t| parameters += t.len());
    observer.on_start(&StartInfo {
        vocab_size: model.vocab().len(),
        train_chars: ids.len() - n_val,
        val_chars: n_val,
        batches_per_epoch: batches as usize,
        parameters,
        start_step: st.step,
        total_steps,
    });

    let started = Instant::now();
    let mut train_time = Duration::ZERO;
    let mut tokens = 0u64;
    let (mut inputs, mut targets) = (Vec::new(), Vec::new());
    let mut interrupted = false;
    let mut last_report: Option<EvalReport> = None;
    let tokens_per_sec = |tokens: u64, t: Duration| tokens as f64 / t.as_secs_f64().max(1e-9);
    loop {
        if total_steps.is_some_and(|t| st.step >= t)
            || cfg.time_limit.is_some_and(|l| started.elapsed() >= l)
        {
            break;
        }
        let t0 = Instant::now();
        let k = (st.step % batches) as usize;
        if k == 0 {
            st.carry = None; // a new pass starts the streams again
        }
        let lr = recipe.lr_at(st.step / batches);
        train.batch(k, &mut inputs, &mut targets);
        model.zero_grad();
        let init = if recipe.carry_state {
            st.carry.as_ref()
        } else {
            None
        };
        let (loss, fin) = model.train_step(
            &inputs,
            &targets,
            recipe.seq_len,
            recipe.batch,
            init,
            &mut st.rng,
        )?;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!(
                "the loss became {loss} at step {}; {} holds the last good checkpoint; lower --lr or set --grad-clip",
                st.step + 1,
                latest.display()
            )));
        }
        if let Some(v) = recipe.clip_value {
            clip_grad_value(&mut model, v);
        }
        if let Some(c) = recipe.grad_clip {
            clip_grad_norm(&mut model, c);
        }
        optimizer.step(&mut model, lr);
        st.carry = recipe.carry_state.then_some(fin);
        st.step += 1;
        st.loss_sum += loss;
        st.loss_count += 1;
        train_time += t0.elapsed();
        tokens += (recipe.batch * recipe.seq_len) as u64;
        let epoch = st.step as f64 / batches as f64;
        observer.on_step(&StepReport {
            step: st.step,
            total_steps,
            epoch,
            loss,
            lr,
            tokens_per_sec: tokens_per_sec(tokens, train_time),
        });
        interrupted = observer.should_stop();
        let finished = interrupted
            || total_steps.is_some_and(|t| st.step >= t)
            || cfg.time_limit.is_some_and(|l| started.elapsed() >= l);
        let on_cadence = st.step % cfg.eval_every == 0;
        if on_cadence || finished {
            let val_loss = val.as_ref().map(|v| evaluate(&mut model, v)).transpose()?;
            let train_loss = st.loss_sum / st.loss_count.max(1) as f64;
            let report = EvalReport {
                step: st.step,
                epoch,
                train_nats_per_char: train_loss,
                val_nats_per_char: val_loss,
                lr,
            };
            if let Some(v) = val_loss {
                if st.best_val.is_none_or(|b| v < b) {
                    st.best_val = Some(v);
                    st.save(&model, &optimizer, &best)?;
                    observer.on_checkpoint(&best);
                }
            }
            if on_cadence {
                st.history.push(report.clone());
                st.loss_sum = 0.0;
                st.loss_count = 0;
                write_metrics(&cfg.out_dir.join(METRICS), &st.history)?;
                observer.on_eval(&st.history);
            } else {
                // An end-of-run validation off the cadence is reported but not logged, so a
                // run stopped and resumed logs exactly what an uninterrupted one does.
                observer.on_eval(&[st.history.clone(), vec![report.clone()]].concat());
            }
            last_report = Some(report);
        }
        if st.step % cfg.checkpoint_every == 0 || finished {
            st.save(&model, &optimizer, &latest)?;
            observer.on_checkpoint(&latest);
        }
        if interrupted {
            break;
        }
    }
    if !latest.exists() {
        // Nothing to do (already at the bound): still leave a checkpoint behind.
        st.save(&model, &optimizer, &latest)?;
    }
    let last = last_report.as_ref().or(st.history.last());
    Ok(Summary {
        steps: st.step,
        epochs: st.step as f64 / batches as f64,
        train_nats_per_char: last.map_or(f64::NAN, |e| e.train_nats_per_char),
        val_nats_per_char: last.and_then(|e| e.val_nats_per_char),
        tokens_per_sec: tokens_per_sec(tokens, train_time),
        checkpoint: latest,
        best_checkpoint: best.exists().then_some(best),
        interrupted,
    })
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

/// Mean cross-entropy of predicting characters 2..N of `text` (nats per character),
/// batch 1 from a zero state, fed `chunk` characters at a time so memory stays bounded.
pub fn eval_text(model: &mut CharLm, text: &str, chunk: usize) -> Result<(usize, f64)> {
    crate::kernel::on_pool(|| eval_text_here(model, text, chunk))
}

fn eval_text_here(model: &mut CharLm, text: &str, chunk: usize) -> Result<(usize, f64)> {
    let ids = model.vocab().encode(text)?;
    if ids.len() < 2 {
        return Err(Error::Input(
            "the text needs at least 2 characters to predict one".into(),
        ));
    }
    let chunk = chunk.max(1);
    let mut state: Option<RecurrentState<f32>> = None;
    let mut sum = 0.0;
    let n = ids.len() - 1;
    let mut pos = 0;
    while pos < n {
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
        pos += len;
    }
    Ok((n, sum / n as f64))
}

/// Refuses a run that cannot fit in memory, before anything large is allocated.
fn check_memory(recipe: &Recipe, vocab: usize) -> Result<()> {
    check_training_memory(&recipe.model, vocab, recipe.batch, recipe.seq_len)
}

/// Refuses training `model` with `batch × seq_len` batches if it cannot fit in memory.
pub fn check_training_memory(
    model: &CharLmConfig,
    vocab: usize,
    batch: usize,
    seq_len: usize,
) -> Result<()> {
    let need = model.training_memory(vocab, batch, seq_len);
    match available_memory() {
        Some(avail) if need > avail => Err(Error::Config(format!(
            "this model and batch need about {:.1} GiB but only {:.1} GiB of memory is available; lower --hidden, --layers, --batch or --seq-len",
            need as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// Memory the system can still give this process (Linux `MemAvailable`), in bytes.
fn available_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn write_metrics(path: &Path, history: &[EvalReport]) -> Result<()> {
    let mut s = String::new();
    for e in history {
        s.push_str(&serde_json::to_string(e).expect("serialisable"));
        s.push('\n');
    }
    crate::checkpoint::write_atomic(path, s.as_bytes())
}
