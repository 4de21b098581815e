//! The one training loop for every task: batches → forward, loss, backward →
//! (all-reduce) → clip → optimizer step, with learning-rate decay, validation on the
//! task's own metric, early stopping, atomic `latest`/`best` checkpoints, a metrics
//! log, and exact resume; on one process or data-parallel over several ([`parallel`]).

mod average;
mod log;
pub mod parallel;
mod recipe;
mod state;

pub use log::{write_metrics, LogEntry, METRICS};
pub use parallel::{Alone, Collective, GradientSink, LocalStep, Shard};
pub use recipe::{
    differences, Change, Differences, Recipe, Schedule, Setting, Settings, TrainSettings,
    MAX_TIME_LIMIT_SECS,
};
pub use state::{stored_run, stored_step, StoredRun, TrainState};

use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::model::Precision;
use crate::optim::{clip_grad_norm, clip_grad_value, Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::task::{BatchLoss, Metrics, Task};
use average::WeightAverage;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// File name of the latest checkpoint in the output folder.
pub const LATEST: &str = "latest.safetensors";
/// File name of the best checkpoint (by the task's validation metric).
pub const BEST: &str = "best.safetensors";

/// One run: what defines it, when it stops, where it writes, where it starts from.
#[derive(Clone, Debug, PartialEq)]
pub struct TrainConfig<M> {
    /// What defines the numbers.
    pub recipe: Recipe<M>,
    /// Bounds and cadences.
    pub schedule: Schedule,
    /// Folder for checkpoints and metrics.
    pub out_dir: PathBuf,
    /// Identifies the training data (a resumed run must see the same).
    pub data_fingerprint: u64,
    /// Where the training data came from, recorded so that `--resume` alone finds it.
    pub data_path: Option<PathBuf>,
}

/// Progress of one optimizer step.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done, counted from the start of training.
    pub step: u64,
    /// The step at which the run will stop (if bounded by steps or epochs).
    pub total_steps: Option<u64>,
    /// Passes over the training data done.
    pub epoch: f64,
    /// Training loss of this step.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Training throughput so far in this process (tokens per second).
    pub tokens_per_sec: f64,
}

/// Facts about a run as it starts.
#[derive(Clone, Debug)]
pub struct StartInfo {
    /// What the task says about its data and model.
    pub description: String,
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
    /// Called after every line written to the log, with the whole log so far.
    fn on_log(&mut self, _history: &[LogEntry]) {}
    /// Called after a checkpoint is written.
    fn on_checkpoint(&mut self, _path: &Path) {}
    /// Polled after every step; returning true stops the run cleanly.
    fn should_stop(&mut self) -> bool {
        false
    }
}

/// How a run ended.
#[derive(Clone, Debug)]
pub struct Summary {
    /// Steps done, counted from the start of training.
    pub steps: u64,
    /// Passes over the training data done.
    pub epochs: f64,
    /// Mean training loss over the steps since the previous log line before the end.
    pub train_loss: f64,
    /// The last validation.
    pub val: Option<Metrics>,
    /// The best validation's selection value and step.
    pub best: Option<(f64, u64)>,
    /// Training throughput in this process (tokens per second; of every process in
    /// a data-parallel run).
    pub tokens_per_sec: f64,
    /// Seconds spent in the training steps of this process (validation and
    /// checkpoints left out).
    pub train_secs: f64,
    /// The step this process started from.
    pub start_step: u64,
    /// The latest checkpoint.
    pub checkpoint: PathBuf,
    /// The checkpoint chosen by the validation metric.
    pub best_checkpoint: Option<PathBuf>,
    /// Whether the run was stopped by the observer (Ctrl-C) before its bound.
    pub interrupted: bool,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
}

impl Summary {
    /// The checkpoint to use after training: the best by the validation metric, else the latest.
    pub fn chosen_checkpoint(&self) -> &Path {
        self.best_checkpoint.as_deref().unwrap_or(&self.checkpoint)
    }
}

/// Trains `task` from `st` (fresh or loaded from a checkpoint) as `cfg` says.
pub fn run<T: Task>(
    cfg: &TrainConfig<T::Config>,
    task: &mut T,
    st: TrainState,
    observer: &mut dyn Observer,
) -> Result<Summary> {
    run_parallel(cfg, task, st, observer, &mut Alone)
}

/// [`run`] as one of the processes of a data-parallel run: this process trains on
/// its share of every batch, the gradients are summed over `collective` before
/// clipping and the optimizer step, so every process holds the same weights. Every
/// process validates (same weights, same numbers; the first process's are used by
/// all); only the first process (rank 0) writes the log and the checkpoints, and
/// every decision to stop (bounds, time limit, `observer.should_stop`, divergence,
/// early stopping) is taken by all processes at the same step.
pub fn run_parallel<T: Task>(
    cfg: &TrainConfig<T::Config>,
    task: &mut T,
    mut st: TrainState,
    observer: &mut dyn Observer,
    collective: &mut dyn Collective,
) -> Result<Summary> {
    cfg.recipe.train.validate()?;
    cfg.schedule.validate()?;
    let shard = collective.shard();
    let (parallel, lead) = (!shard.is_whole(), shard.rank == 0);
    task.set_shard(shard)?;
    st.world_size = shard.ranks as u64;
    let (recipe, sched) = (&cfg.recipe.train, &cfg.schedule);
    let batches = task.batches_per_epoch() as u64;
    if batches == 0 {
        return Err(Error::Input(
            "the training data makes no batch; give more data or lower --batch".into(),
        ));
    }
    let total_steps = match (sched.steps, sched.epochs) {
        (Some(s), Some(e)) => Some(s.min((e * batches as f64).ceil() as u64)),
        (Some(s), None) => Some(s),
        (None, Some(e)) => Some((e * batches as f64).ceil() as u64),
        (None, None) => None,
    };
    let time_limit = sched.time_limit.map(Duration::from_secs_f64);
    if lead {
        std::fs::create_dir_all(&cfg.out_dir).map_err(|source| Error::Io {
            path: cfg.out_dir.clone(),
            source,
        })?;
    }
    let latest = cfg.out_dir.join(LATEST);
    let best = cfg.out_dir.join(BEST);
    st.recipe = serde_json::to_string(&cfg.recipe).expect("serialisable");
    st.schedule = sched.clone();
    st.data_path = cfg.data_path.clone();
    // The model and its gradients are allocated; the optimizer's moments are not yet.
    let mut params = 0u64;
    task.visit_params(&mut |_, t| params += t.len() as u64);
    let copies = match recipe.optimizer {
        OptimizerKind::Adam => 2,
        OptimizerKind::Sgd => 1,
    } + u64::from(recipe.average.is_some());
    check_memory(
        params.saturating_mul(4 * copies),
        "the model's size (its optimizer state and weight average do not fit)",
    )?;
    let mut optimizer =
        Optimizer::new(recipe.optimizer, recipe.momentum).with_weight_decay(recipe.weight_decay);
    let mut average = recipe.average.map(|d| WeightAverage::new(task, d));
    st.restore(&mut optimizer, average.as_mut(), task)?;
    let mut parameters = 0;
    task.visit_params(&mut |_, t| parameters += t.len());
    // The log on disk always describes this run up to its current step.
    if lead {
        write_metrics(&cfg.out_dir, &st.history, task.loss_name())?;
    }
    observer.on_start(&StartInfo {
        description: task.describe(),
        batches_per_epoch: batches as usize,
        parameters,
        start_step: st.step,
        total_steps,
    });

    let started = Instant::now();
    let start_step = st.step;
    let mut train_time = Duration::ZERO;
    let mut tokens = 0u64;
    let mut interrupted = false;
    let mut stopped_early = false;
    let mut last_train = f64::NAN;
    let mut last_val: Option<Metrics> = None;
    let tokens_per_sec = |tokens: u64, t: Duration| tokens as f64 / t.as_secs_f64().max(1e-9);
    let out_of_time = |started: Instant| time_limit.is_some_and(|l| started.elapsed() >= l);
    let mut saved_latest = false;
    // Processes agree on the time limit after each step: their clocks differ.
    loop {
        if total_steps.is_some_and(|t| st.step >= t) || (!parallel && out_of_time(started)) {
            break;
        }
        let t0 = Instant::now();
        let (epoch_idx, k) = (st.step / batches, (st.step % batches) as usize);
        if k == 0 {
            task.start_epoch(epoch_idx);
        }
        let lr = recipe.lr_at(epoch_idx);
        task.zero_grad();
        let (out, stop) = if parallel {
            let (out, stop) = parallel_step(
                task,
                collective,
                observer,
                (epoch_idx, k),
                &mut st.rng,
                recipe.precision,
                &|| out_of_time(started),
            )?;
            (out, Some(stop))
        } else {
            // On a thread of the pool: each product split between the cores then
            // costs a hand-over inside the pool, not a wake-up of it from outside.
            let rng = &mut st.rng;
            let out = crate::kernel::on_pool_polling(|| {
                crate::kernel::with_precision(recipe.precision, || {
                    task.train_batch(epoch_idx, k, rng, &mut |_| {})
                })
            })?;
            (out, None)
        };
        if !out.loss.is_finite() {
            let kept = if saved_latest || latest.exists() {
                format!(
                    "{} holds the checkpoint of step {}",
                    latest.display(),
                    st.saved_step
                )
            } else {
                "no checkpoint was written yet".into()
            };
            return Err(Error::Diverged(format!(
                "the loss became {} at step {}; {kept}; lower --lr or set --grad-clip",
                out.loss,
                st.step + 1,
            )));
        }
        // Large parameters are clipped and updated by every thread of the pool.
        crate::kernel::on_pool_polling(|| {
            if let Some(v) = recipe.clip_value {
                clip_grad_value(task, v);
            }
            if let Some(c) = recipe.grad_clip {
                clip_grad_norm(task, c);
            }
            optimizer.step(task, lr);
        });
        st.step += 1;
        if let Some(a) = &mut average {
            a.update(task, st.step);
        }
        st.loss_sum += out.loss;
        st.loss_count += 1;
        train_time += t0.elapsed();
        tokens += out.tokens as u64;
        let epoch = st.step as f64 / batches as f64;
        observer.on_step(&StepReport {
            step: st.step,
            total_steps,
            epoch,
            loss: out.loss,
            lr,
            tokens_per_sec: tokens_per_sec(tokens, train_time),
        });
        let late = match stop {
            Some((asked, late)) => {
                interrupted = asked;
                late
            }
            None => {
                interrupted = observer.should_stop();
                out_of_time(started)
            }
        };
        let mut finished = interrupted || total_steps.is_some_and(|t| st.step >= t) || late;
        let validate = st.step.is_multiple_of(sched.eval_every) || finished;
        let val = if validate {
            // Validation (and a new `best`) sees the averaged weights.
            if let Some(a) = &mut average {
                a.swap(task);
            }
            let val = crate::kernel::on_pool_polling(|| {
                crate::kernel::with_precision(recipe.precision, || task.validate())
            })?;
            if parallel {
                agree(collective, lead, val)?
            } else {
                val
            }
        } else {
            None
        };
        let mut new_best = false;
        if let Some(m) = &val {
            let key = task.selection().key(m).unwrap_or(f64::INFINITY);
            if st.best.is_none_or(|(b, _)| key < b) {
                st.best = Some((key, st.step));
                st.evals_since_best = 0;
                new_best = true;
            } else {
                st.evals_since_best += 1;
                if sched.patience.is_some_and(|p| st.evals_since_best >= p) {
                    stopped_early = true;
                    finished = true;
                }
            }
        }
        if st.step.is_multiple_of(sched.log_every) || validate {
            last_train = st.loss_sum / st.loss_count.max(1) as f64;
            st.history.push(LogEntry {
                step: st.step,
                epoch,
                lr,
                train_loss: last_train,
                val: val.clone(),
            });
            st.loss_sum = 0.0;
            st.loss_count = 0;
            if lead {
                write_metrics(&cfg.out_dir, &st.history, task.loss_name())?;
            }
            observer.on_log(&st.history);
        }
        if val.is_some() {
            last_val = val;
        }
        let mut save =
            |st: &mut TrainState, task: &T, average: Option<&WeightAverage>, path: &Path| {
                save_state(st, task, &optimizer, average, collective, path)
            };
        if new_best && save(&mut st, task, average.as_ref(), &best)? {
            observer.on_checkpoint(&best);
        }
        if let Some(a) = average.as_mut().filter(|a| a.in_model()) {
            a.swap(task); // training continues from the trained weights
        }
        let epoch_end = st.step.is_multiple_of(batches);
        if let (Some(n), true) = (sched.checkpoint_every_epochs, epoch_end) {
            let e = st.step / batches;
            let path = cfg.out_dir.join(format!("epoch-{e}.safetensors"));
            if e.is_multiple_of(n) && save(&mut st, task, average.as_ref(), &path)? {
                observer.on_checkpoint(&path);
            }
        }
        if st.step.is_multiple_of(sched.checkpoint_every) || finished {
            if save(&mut st, task, average.as_ref(), &latest)? {
                observer.on_checkpoint(&latest);
            }
            saved_latest = true;
        }
        if finished {
            break;
        }
    }
    if !saved_latest {
        // Nothing to do (already at the bound): the folder still ends with this run's state.
        save_state(
            &mut st,
            task,
            &optimizer,
            average.as_ref(),
            collective,
            &latest,
        )?;
    }
    if last_train.is_nan() {
        last_train = st.history.last().map_or(f64::NAN, |e| e.train_loss);
    }
    Ok(Summary {
        steps: st.step,
        epochs: st.step as f64 / batches as f64,
        train_loss: last_train,
        val: last_val.or_else(|| st.history.iter().rev().find_map(|e| e.val.clone())),
        best: st.best,
        tokens_per_sec: tokens_per_sec(tokens, train_time),
        train_secs: train_time.as_secs_f64(),
        start_step,
        checkpoint: latest,
        best_checkpoint: best.exists().then_some(best),
        interrupted,
        stopped_early,
    })
}

/// One data-parallel step: this process's share of batch `k` of `epoch` with its
/// gradients summed over every process; returns the whole batch's loss and tokens,
/// and whether any process was asked to stop or ran out of time (`late`).
fn parallel_step<T: Task>(
    task: &mut T,
    collective: &mut dyn Collective,
    observer: &mut dyn Observer,
    (epoch, k): (u64, usize),
    rng: &mut Rng,
    precision: Precision,
    late: &dyn Fn() -> bool,
) -> Result<(BatchLoss, (bool, bool))> {
    let shard = collective.shard();
    let weight = task.shard_weight(epoch, k);
    // Every process draws the same numbers from the run's generator, so that it
    // stays the same everywhere; dropout masks then differ between the shares.
    let mut rng =
        Rng::new(rng.next_u64() ^ (shard.rank as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut step = Step {
        task,
        epoch,
        k,
        rng: &mut rng,
        precision,
    };
    let out = collective.step(&mut step, weight as f32)?;
    let stop = observer.should_stop();
    let mut sums = [
        // A share of weight 0 (an empty one, stood in for by one item) adds nothing.
        if weight == 0.0 {
            0.0
        } else {
            out.loss * weight
        },
        out.tokens as f64,
        f64::from(u8::from(stop)),
        f64::from(u8::from(late())),
    ];
    collective.sum(&mut sums)?;
    let out = BatchLoss {
        loss: sums[0],
        tokens: sums[1] as usize,
    };
    Ok((out, (sums[2] > 0.0, sums[3] > 0.0)))
}

/// A task's training step as a [`Collective`] runs it.
struct Step<'a, T> {
    task: &'a mut T,
    epoch: u64,
    k: usize,
    rng: &'a mut Rng,
    precision: Precision,
}

impl<T: Task> LocalStep for Step<'_, T> {
    fn run(&mut self, ready: &mut GradientSink<'_>) -> Result<BatchLoss> {
        let (task, rng) = (&mut *self.task, &mut *self.rng);
        crate::kernel::with_precision(self.precision, || {
            task.train_batch(self.epoch, self.k, rng, ready)
        })
    }

    fn params(&mut self) -> &mut dyn Parameters<f32> {
        self.task
    }
}

/// The first process's validation, for every process: all take the same decisions
/// about the best checkpoint and early stopping.
fn agree(
    collective: &mut dyn Collective,
    lead: bool,
    val: Option<Metrics>,
) -> Result<Option<Metrics>> {
    let Some(mut m) = val else {
        return Ok(None);
    };
    let mut values: Vec<f64> = std::iter::once(m.loss)
        .chain(m.scores.values().copied())
        .map(|v| if lead { v } else { 0.0 })
        .collect();
    collective.sum(&mut values)?;
    m.loss = values[0];
    for (s, v) in m.scores.values_mut().zip(&values[1..]) {
        *s = *v;
    }
    Ok(Some(m))
}

/// Writes the run's state to `path` on the first process; returns whether it wrote.
/// Every process takes part: the carried state of the whole batch is the sum of the
/// shares' (each holds zeros in the other shares' rows).
fn save_state<T: Task>(
    st: &mut TrainState,
    task: &T,
    optimizer: &Optimizer,
    average: Option<&WeightAverage>,
    collective: &mut dyn Collective,
    path: &Path,
) -> Result<bool> {
    let mut carried = task.carried_state();
    let shard = collective.shard();
    if !shard.is_whole() {
        for (_, t) in &mut carried {
            collective.sum_f32(t.data_mut())?;
        }
    }
    if shard.rank == 0 {
        st.save(task, optimizer, average, carried, path)?;
    }
    Ok(shard.rank == 0)
}

/// Refuses a run that needs `need` bytes if the system cannot give them; `what`
/// says which flags lower the need.
pub fn check_memory(need: u64, what: &str) -> Result<()> {
    match available_memory() {
        Some(avail) if need > avail => Err(Error::Config(format!(
            "this model and batch need about {:.1} GiB but only {:.1} GiB of memory is available; lower {what}",
            need as f64 / (1u64 << 30) as f64,
            avail as f64 / (1u64 << 30) as f64
        ))),
        _ => Ok(()),
    }
}

/// Memory the system can still give this process (Linux `MemAvailable`), in bytes.
pub(crate) fn available_memory() -> Option<u64> {
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
