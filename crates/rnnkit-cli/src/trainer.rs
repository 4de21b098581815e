//! What every task's `train` shares: the trainer's flags, resume and output-folder
//! rules, the progress bar, the loss picture, the summary and the resume hint.

use crate::{plot, run_lock};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rnnkit::limits::{flag_range, MAX_BATCH};
use rnnkit::optim::OptimizerKind;
use rnnkit::task::{Selection, Task};
use rnnkit::train::{
    self, LogEntry, Observer, Recipe, Schedule, Settings, StartInfo, StepReport, StoredRun,
    Summary, TrainConfig, TrainSettings, TrainState, BEST, LATEST, METRICS,
};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// `--optimizer` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Opt {
    Adam,
    Sgd,
}

/// Flags of the trainer, shared by `train`, `classify train` and `tag train`. Settings
/// left out take the task's default, or, with `--resume`, the checkpoint's value.
#[derive(Args, Clone)]
pub struct TrainerOpts {
    /// Sequences per batch.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_BATCH)))]
    pub batch: Option<u32>,
    /// Learning rate.
    #[arg(long)]
    pub lr: Option<f32>,
    /// Multiply the learning rate by this at the end of every epoch after --decay-after.
    #[arg(long)]
    pub lr_decay: Option<f32>,
    /// Epochs at the initial learning rate before decay starts.
    #[arg(long)]
    pub decay_after: Option<u64>,
    /// Clip the global gradient norm to this; 0 turns it off.
    #[arg(long)]
    pub grad_clip: Option<f64>,
    /// Clip every gradient element to [-v, v].
    #[arg(long)]
    pub clip_value: Option<f32>,
    /// Update rule.
    #[arg(long, value_enum)]
    pub optimizer: Option<Opt>,
    /// Momentum for --optimizer sgd.
    #[arg(long)]
    pub momentum: Option<f32>,
    /// Decoupled weight decay (AdamW): each step shrinks every weight by lr × this.
    #[arg(long)]
    pub weight_decay: Option<f32>,
    /// Validate, keep `best` and evaluate with a moving average of the weights of this
    /// decay (e.g. 0.999: about the last thousand steps); 0 turns it off.
    #[arg(long)]
    pub average: Option<f32>,
    /// Stop after this many optimizer steps in all, counted from the start of training (also after --resume).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub steps: Option<u64>,
    /// Stop after this many passes over the training data (fractions allowed).
    #[arg(long)]
    pub epochs: Option<f64>,
    /// Stop after this many seconds of wall time.
    #[arg(long)]
    pub time_limit: Option<f64>,
    /// Stop when the validation metric has not improved for this many validations.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub patience: Option<u64>,
    /// Fraction of the training data held out for validation, in [0, 0.5).
    #[arg(long)]
    pub val_frac: Option<f64>,
    /// Validate every N steps (and at the end).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub eval_every: Option<u64>,
    /// Write OUT/latest.safetensors every N steps (and at the end).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every: Option<u64>,
    /// Also keep OUT/epoch-N.safetensors at the end of every N-th epoch.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub checkpoint_every_epochs: Option<u64>,
    /// Log the mean training loss every N steps.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub log_every: Option<u64>,
    /// Output folder for checkpoints, metrics.jsonl and loss.svg.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Random seed of initialisation, data order and dropout.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Continue the run saved in this checkpoint where it stopped, in its folder, on its data.
    #[arg(long, conflicts_with = "init")]
    pub resume: Option<PathBuf>,
    /// Start a new run from the weights of this model checkpoint (fine-tuning).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// Replace the run already in --out (its checkpoints and logs are deleted).
    #[arg(long)]
    pub force: bool,
    /// Matrix products with bfloat16 operands and f32 sums (CPUs with AVX-512 BF16;
    /// others compute in f32): faster, and no longer PyTorch's float32 numbers.
    #[arg(long)]
    pub bf16: bool,
    /// Matrix products in float32, PyTorch's numbers (for a task whose recipe uses bf16).
    #[arg(long, conflicts_with = "bf16")]
    pub f32: bool,
    /// Draw the loss picture with a logarithmic loss axis.
    #[arg(long)]
    pub log_scale: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    pub json: bool,
    /// Under mpirun: sum each layer's gradients while the backward pass goes on
    /// with the layers below (off: one all-reduce after the backward pass).
    #[cfg(feature = "mpi")]
    #[arg(long, value_enum, default_value = "on")]
    pub mpi_overlap: Switch,
}

/// `on` or `off`.
#[cfg(feature = "mpi")]
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Switch {
    On,
    Off,
}

/// The flags' settings resolved against the defaults or the resumed checkpoint.
pub struct Resolved<M> {
    /// The recipe to train with.
    pub recipe: Recipe<M>,
    /// Bounds and cadences.
    pub schedule: Schedule,
    /// The output folder.
    pub out_dir: PathBuf,
    /// The checkpoint resumed and what it stores.
    pub resume: Option<(PathBuf, StoredRun<M>)>,
    /// Lines about accepted changes of the run on resume.
    pub altered: Vec<String>,
}

impl<M> Resolved<M> {
    /// The data file to read: the flag, else the one the resumed run recorded.
    pub fn data_path(&self, flag: &Option<PathBuf>) -> Option<PathBuf> {
        flag.clone()
            .or_else(|| self.resume.as_ref().and_then(|(_, s)| s.data_path.clone()))
    }

    /// The file named by the flag, else the path the resumed run recorded under `key`.
    pub fn recorded_path(&self, flag: &Option<PathBuf>, key: &str) -> Option<PathBuf> {
        flag.clone().or_else(|| {
            let (_, stored) = self.resume.as_ref()?;
            stored.metadata.get(key).map(PathBuf::from)
        })
    }
}

/// The checks a run makes of its resolved settings before it reads any data;
/// `None` (a resumed run, whose settings are in its checkpoint) checks nothing here.
pub fn check<M>(resolved: Option<anyhow::Result<Resolved<M>>>) -> anyhow::Result<()> {
    if let Some(r) = resolved {
        let r = r?;
        r.recipe.train.validate()?;
        r.schedule.validate()?;
    }
    Ok(())
}

/// Overlays `o` and the task's own flags (`task_flags`) on the defaults or on the
/// resumed checkpoint's settings, and checks what resume may change.
pub fn resolve<M>(
    o: &TrainerOpts,
    default: Recipe<M>,
    default_schedule: Schedule,
    default_out: &str,
    task_flags: impl FnOnce(&mut M) -> anyhow::Result<()>,
) -> anyhow::Result<Resolved<M>>
where
    M: Settings + Clone + Serialize + DeserializeOwned,
{
    let resume = match &o.resume {
        Some(p) => Some((
            p.clone(),
            train::stored_run::<M>(p).with_context(|| format!("--resume {}", p.display()))?,
        )),
        None => None,
    };
    let (mut recipe, mut schedule) = match &resume {
        Some((_, s)) => (
            s.recipe.clone(),
            s.schedule.clone().unwrap_or(default_schedule),
        ),
        None => (default, default_schedule),
    };
    task_flags(&mut recipe.task)?;
    overlay_train(o, &mut recipe.train)?;
    overlay_schedule(o, &mut schedule)?;
    let mut altered = Vec::new();
    if let Some((p, stored)) = &resume {
        let d = train::differences(&stored.recipe, &recipe);
        if !d.refused.is_empty() {
            bail!(
                "cannot resume {}: {}; these change the model or the data, so drop those flags (or start a new run with --init {} to train these weights anew)",
                p.display(),
                d.refused.join("; "),
                p.display()
            );
        }
        altered = d.altered;
    }
    let out_dir = match (&o.out, &resume) {
        (Some(out), _) => out.clone(),
        (None, Some((p, _))) => p
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf),
        (None, None) => PathBuf::from(default_out),
    };
    Ok(Resolved {
        recipe,
        schedule,
        out_dir,
        resume,
        altered,
    })
}

fn overlay_train(o: &TrainerOpts, r: &mut TrainSettings) -> anyhow::Result<()> {
    set(&mut r.batch, o.batch.map(|v| v as usize));
    set(&mut r.lr, o.lr);
    set(&mut r.lr_decay, o.lr_decay);
    set(&mut r.decay_after, o.decay_after);
    if let Some(c) = o.grad_clip {
        if !(c >= 0.0 && c.is_finite()) {
            bail!("--grad-clip must be ≥ 0 (0 turns clipping off), got {c}");
        }
        r.grad_clip = (c > 0.0).then_some(c);
    }
    if o.clip_value.is_some() {
        r.clip_value = o.clip_value;
    }
    if let Some(opt) = o.optimizer {
        r.optimizer = match opt {
            Opt::Adam => OptimizerKind::Adam,
            Opt::Sgd => OptimizerKind::Sgd,
        };
    }
    set(&mut r.momentum, o.momentum);
    set(&mut r.weight_decay, o.weight_decay);
    if let Some(d) = o.average {
        r.average = (d != 0.0).then_some(d);
    }
    set(&mut r.val_frac, o.val_frac);
    set(&mut r.seed, o.seed);
    if o.bf16 {
        r.precision = rnnkit::model::Precision::Bf16;
    }
    if o.f32 {
        r.precision = rnnkit::model::Precision::F32;
    }
    r.validate()?;
    Ok(())
}

fn overlay_schedule(o: &TrainerOpts, s: &mut Schedule) -> anyhow::Result<()> {
    if o.steps.is_some() || o.epochs.is_some() || o.time_limit.is_some() {
        // Bounds given replace the stored ones together: the first reached stops the run.
        s.steps = o.steps;
        s.epochs = o.epochs;
        s.time_limit = o.time_limit;
    }
    set(&mut s.eval_every, o.eval_every);
    set(&mut s.checkpoint_every, o.checkpoint_every);
    set(&mut s.log_every, o.log_every);
    if o.checkpoint_every_epochs.is_some() {
        s.checkpoint_every_epochs = o.checkpoint_every_epochs;
    }
    if o.patience.is_some() {
        s.patience = o.patience;
    }
    s.validate()?;
    Ok(())
}

/// Sets `slot` to `v` when the flag was given.
pub fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// The files a run writes in its folder (besides `epoch-N.safetensors`).
pub(crate) const RUN_FILES: [&str; 4] = [LATEST, BEST, METRICS, plot::LOSS_SVG];

/// Makes `out` ready for the run: a new run refuses a folder that holds another run
/// unless `force` (which deletes that run's files); a resumed run rewinds the folder
/// to the resumed step when it resumes from an earlier checkpoint of the same folder.
fn prepare_out_dir<M>(r: &Resolved<M>, force: bool) -> anyhow::Result<()> {
    let out = &r.out_dir;
    let epoch_files = || -> Vec<PathBuf> {
        std::fs::read_dir(out)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".safetensors"))
            })
            .collect()
    };
    let used: Vec<PathBuf> = RUN_FILES
        .iter()
        .map(|f| out.join(f))
        .filter(|p| p.exists())
        .chain(epoch_files())
        .collect();
    let own_folder = r.resume.as_ref().is_some_and(|(p, _)| {
        let dir = p.parent().filter(|d| !d.as_os_str().is_empty());
        let dir = dir.unwrap_or(Path::new("."));
        same_dir(dir, out)
    });
    if used.is_empty() {
        return Ok(());
    }
    if own_folder {
        let (_, stored) = r.resume.as_ref().expect("own folder implies resume");
        for f in [LATEST, BEST] {
            let p = out.join(f);
            if let Ok(s) = train::stored_step(&p) {
                if s > stored.step {
                    if f == BEST {
                        std::fs::remove_file(&p)
                            .with_context(|| format!("removing {}", p.display()))?;
                    }
                    eprintln!(
                        "rewinding {} from step {s} to step {}: {} now describe the run from there",
                        out.display(),
                        stored.step,
                        if f == BEST {
                            "best.safetensors was from a later step and is removed; the log and latest.safetensors"
                        } else {
                            "the log and latest.safetensors"
                        }
                    );
                }
            }
        }
        return Ok(());
    }
    if !force {
        bail!(
            "{} already holds a run ({}); continue it with --resume {}, choose another --out, or pass --force to replace it",
            out.display(),
            used.iter()
                .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
                .collect::<Vec<_>>()
                .join(", "),
            out.join(LATEST).display()
        );
    }
    for p in used {
        std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
    }
    Ok(())
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => a == b,
    }
}

/// Absolute form of a path for the record (so a resume from elsewhere finds it).
pub fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

/// Draws progress on stderr and redraws the loss picture at each log line (on
/// the first process of a data-parallel run; the others only poll for Ctrl-C).
struct Progress {
    draw: bool,
    bar: ProgressBar,
    plot_path: PathBuf,
    stop: Arc<AtomicBool>,
    last_val: Option<f64>,
    loss_name: &'static str,
    selection: Selection,
    log_scale: bool,
}

impl Observer for Progress {
    fn on_start(&mut self, i: &StartInfo) {
        if !self.draw {
            return;
        }
        self.bar.suspend(|| {
            eprintln!(
                "{}, {} parameters, {} batches per epoch{}",
                i.description,
                i.parameters,
                i.batches_per_epoch,
                if i.start_step > 0 {
                    format!(", resuming at step {}", i.start_step)
                } else {
                    String::new()
                }
            )
        });
        if let Some(t) = i.total_steps {
            self.bar.set_length(t);
        }
        self.bar.set_position(i.start_step);
        self.bar.reset_eta();
    }

    fn on_step(&mut self, r: &StepReport) {
        self.bar.set_position(r.step);
        let val = self.last_val.map_or("-".into(), |v| format!("{v:.3}"));
        self.bar.set_message(format!(
            "epoch {:.2} | loss {:.3} | val {val} | {:.0} tok/s",
            r.epoch, r.loss, r.tokens_per_sec
        ));
    }

    fn on_log(&mut self, history: &[LogEntry]) {
        if !self.draw {
            return;
        }
        if let Some(v) = history.last().and_then(|e| e.val.as_ref()) {
            self.last_val = Some(match self.selection {
                Selection::MinLoss => v.loss,
                Selection::MaxScore(s) => v.scores.get(s).copied().unwrap_or(v.loss),
            });
        }
        let style = plot::Style {
            loss_name: self.loss_name,
            log_scale: self.log_scale,
        };
        if let Err(e) = plot::loss_curve(history, &style, &self.plot_path) {
            self.bar.suspend(|| {
                eprintln!(
                    "warning: could not draw {}: {e:#}",
                    self.plot_path.display()
                )
            });
        }
    }

    fn should_stop(&mut self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

/// Where a run starts: a resumed checkpoint (its training state is read from it)
/// or a fresh model with the generator that initialised it (dropout continues it).
pub enum Start {
    /// The open checkpoint being resumed.
    Resumed(rnnkit::checkpoint::TensorFile),
    /// A new run.
    Fresh(rnnkit::Rng),
}

/// A run ready to go: the resolved settings, the task and where it starts.
pub struct Ready<T: Task> {
    /// Settings.
    pub resolved: Resolved<T::Config>,
    /// The model with its data.
    pub task: T,
    /// Fresh or resumed.
    pub start: Start,
    /// Identifies the training data.
    pub data_fingerprint: u64,
    /// The training data's file, if any (recorded for resume).
    pub data_path: Option<PathBuf>,
}

/// How a finished run went, for the task's closing words.
pub struct Finished {
    /// The trainer's summary.
    pub summary: Summary,
    /// Exit status so far (130 after Ctrl-C).
    pub code: ExitCode,
    /// Whether this process speaks for the run: false on every process of a
    /// data-parallel run but the first, which say nothing more.
    pub lead: bool,
}

/// Runs the trainer with a progress bar and Ctrl-C handling, then prints the summary
/// and, when interrupted, the command that continues the run. `command` is how the
/// user calls this task's training (e.g. `rnnkit train`).
pub fn train<T: Task>(o: &TrainerOpts, run: Ready<T>, command: &str) -> anyhow::Result<Finished> {
    let Ready {
        resolved,
        mut task,
        start,
        data_fingerprint,
        data_path,
    } = run;
    let state = match start {
        Start::Resumed(file) => {
            task.restore_carried_state(&file)?;
            TrainState::load(file, data_fingerprint)?
        }
        Start::Fresh(rng) => TrainState::fresh(rng, data_fingerprint),
    };
    let shard = shard();
    let lead = shard.rank == 0;
    if lead && o.resume.is_some() && state.world_size != shard.ranks as u64 {
        eprintln!(
            "resuming a run of {} process(es) on {}: the batches, their order and the carried state are the same, but each process's dropout draws and the order in which gradients are summed differ, so the run is no longer bit-identical to an uninterrupted one",
            state.world_size, shard.ranks
        );
    }
    if !lead {
        return train_quietly(o, &resolved, task, state, data_fingerprint, data_path);
    }
    if !resolved.altered.is_empty() {
        eprintln!(
            "resuming with changed settings ({}): the run is no longer identical to an uninterrupted one",
            resolved.altered.join(", ")
        );
    }
    let args: Vec<String> = std::env::args_os()
        .map(|a| shell_quote(&a.to_string_lossy()))
        .collect();
    let _lock = run_lock::acquire(&resolved.out_dir, &args.join(" "))?;
    prepare_out_dir(&resolved, o.force)?;
    let (cfg, stop) = config_and_stop(&resolved, data_fingerprint, data_path)?;
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} | {msg} | ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = Progress {
        draw: true,
        bar,
        plot_path: cfg.out_dir.join(plot::LOSS_SVG),
        stop,
        last_val: None,
        loss_name: task.loss_name(),
        selection: task.selection(),
        log_scale: o.log_scale,
    };
    let mut collective = collective(o);
    let result = match collective.as_mut() {
        Some(c) => train::run_parallel(&cfg, &mut task, state, &mut progress, c.as_mut()),
        None => train::run(&cfg, &mut task, state, &mut progress),
    };
    progress.bar.finish_and_clear();
    let summary = result?;
    #[cfg(feature = "mpi")]
    if let Some(c) = &collective {
        report_communication(c.as_ref(), &summary, shard);
    }
    let loss_name = task
        .loss_name()
        .replace('_', "/")
        .replace("nats/per/char", "nats/char");
    let val = match &summary.val {
        Some(v) => {
            let mut s = format!("{:.4} {loss_name}", v.loss);
            for (k, x) in &v.scores {
                s.push_str(&format!(", {k} {x:.4}"));
            }
            s
        }
        None => "n/a".into(),
    };
    eprintln!(
        "{} at step {} (epoch {:.2}): train {:.4} {loss_name}, validation {val}, {:.0} tokens/s",
        if summary.interrupted {
            "stopped"
        } else if summary.stopped_early {
            "stopped early (no improvement in --patience validations)"
        } else {
            "finished"
        },
        summary.steps,
        summary.epochs,
        summary.train_loss,
        summary.tokens_per_sec
    );
    eprintln!("checkpoint: {}", summary.checkpoint.display());
    if let (Some(b), Some((_, step))) = (&summary.best_checkpoint, summary.best) {
        eprintln!(
            "best:       {} (step {step}, by {})",
            b.display(),
            task.selection().name()
        );
    }
    eprintln!("loss curve: {}", progress.plot_path.display());
    let code = if summary.interrupted {
        let launch = match shard.is_whole() {
            true => String::new(),
            false => format!("mpirun -np {} ", shard.ranks),
        };
        eprintln!(
            "interrupted; continue with: {launch}{command} --resume {}",
            shell_quote(&absolute(&summary.checkpoint).display().to_string())
        );
        ExitCode::from(130)
    } else {
        ExitCode::SUCCESS
    };
    Ok(Finished {
        summary,
        code,
        lead: true,
    })
}

/// This process's share of every batch: all of it unless MPI started several processes.
fn shard() -> rnnkit::train::Shard {
    #[cfg(feature = "mpi")]
    return crate::mpi_run::shard();
    #[cfg(not(feature = "mpi"))]
    rnnkit::train::Shard::WHOLE
}

/// The processes to sum gradients over, when there are several.
#[cfg(feature = "mpi")]
fn collective(o: &TrainerOpts) -> Option<Box<crate::mpi_run::MpiCollective>> {
    (!shard().is_whole()).then(|| {
        Box::new(crate::mpi_run::MpiCollective::new(
            o.mpi_overlap == Switch::On,
        ))
    })
}

/// The processes to sum gradients over: none without MPI.
#[cfg(not(feature = "mpi"))]
fn collective(_: &TrainerOpts) -> Option<Box<train::Alone>> {
    None
}

/// One line on how much of a step the sums took (first process of a data-parallel run).
#[cfg(feature = "mpi")]
fn report_communication(
    c: &crate::mpi_run::MpiCollective,
    s: &Summary,
    shard: rnnkit::train::Shard,
) {
    let steps = c.steps.max(1) as f64;
    let comm_ms = c.comm.as_secs_f64() * 1e3 / steps;
    let step_ms = s.train_secs * 1e3 / s.steps.saturating_sub(s.start_step).max(1) as f64;
    eprintln!(
        "data-parallel over {} processes: {} gradient values summed per step ({} buckets started during the backward pass); communication {comm_ms:.2} ms of a {step_ms:.1} ms step ({:.1} %)",
        shard.ranks,
        c.values,
        c.started,
        100.0 * comm_ms / step_ms.max(1e-9)
    );
}

/// The run's configuration, and the flag a Ctrl-C handler (installed here) raises.
fn config_and_stop<M: Clone>(
    resolved: &Resolved<M>,
    data_fingerprint: u64,
    data_path: Option<PathBuf>,
) -> anyhow::Result<(TrainConfig<M>, Arc<AtomicBool>)> {
    let cfg = TrainConfig {
        recipe: resolved.recipe.clone(),
        schedule: resolved.schedule.clone(),
        out_dir: resolved.out_dir.clone(),
        data_fingerprint,
        data_path: data_path.as_deref().map(absolute),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the checkpoint is written is ignored: the write is atomic anyway.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    Ok((cfg, stop))
}

/// A process of a data-parallel run other than the first: trains its share, polls
/// for Ctrl-C, and leaves the folder, the progress and the summary to the first.
fn train_quietly<T: Task>(
    o: &TrainerOpts,
    resolved: &Resolved<T::Config>,
    mut task: T,
    state: TrainState,
    data_fingerprint: u64,
    data_path: Option<PathBuf>,
) -> anyhow::Result<Finished> {
    let (cfg, stop) = config_and_stop(resolved, data_fingerprint, data_path)?;
    let mut progress = Progress {
        draw: false,
        bar: ProgressBar::hidden(),
        plot_path: PathBuf::new(),
        stop,
        last_val: None,
        loss_name: task.loss_name(),
        selection: task.selection(),
        log_scale: false,
    };
    let mut collective = collective(o);
    let summary = match collective.as_mut() {
        Some(c) => train::run_parallel(&cfg, &mut task, state, &mut progress, c.as_mut())?,
        None => train::run(&cfg, &mut task, state, &mut progress)?,
    };
    let code = match summary.interrupted {
        true => ExitCode::from(130),
        false => ExitCode::SUCCESS,
    };
    Ok(Finished {
        summary,
        code,
        lead: false,
    })
}

/// The `--json` line of a task trained with a validation metric (classify, tag).
pub fn summary_json(s: &Summary) -> serde_json::Value {
    serde_json::json!({
        "steps": s.steps,
        "epochs": s.epochs,
        "train_loss": s.train_loss,
        "val_loss": s.val.as_ref().map(|v| v.loss),
        "val_accuracy": s.val.as_ref().and_then(|v| v.scores.get("accuracy")),
        "tokens_per_sec": s.tokens_per_sec,
        "checkpoint": s.checkpoint,
    })
}

/// `s` quoted for a POSIX shell when it needs it.
fn shell_quote(s: &str) -> String {
    if s.chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+:=,@".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Help text defaults: appends `[default: V]` to the help of every flag of `cmd`
/// named in `settings`, so `--help` shows the values the task really uses.
pub fn with_defaults(mut cmd: clap::Command, settings: &[rnnkit::train::Setting]) -> clap::Command {
    for s in settings {
        let id = s.flag.trim_start_matches("--").replace('-', "_");
        if cmd.get_arguments().any(|a| a.get_id() == id.as_str()) {
            let value = s.value.clone();
            cmd = cmd.mut_arg(id, |a| {
                let help = a.get_help().map(|h| h.to_string()).unwrap_or_default();
                a.help(format!("{help} [default: {value}]"))
            });
        }
    }
    cmd
}
