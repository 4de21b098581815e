//! `rnnkit train`: flags → a validated `TrainConfig`, a progress bar, and the
//! closing sample.

use crate::plot;
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rnnkit::decode::{generate, SamplingConfig};
use rnnkit::model::{CharLm, CharLmConfig, Precision};
use rnnkit::optim::OptimizerKind;
use rnnkit::train::{self, EvalReport, Observer, Recipe, StartInfo, StepReport, TrainConfig};
use rnnkit::{CellKind, Rng};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The corpus used when `--data` is not given: nine Shakespeare plays (see data/README).
const SHAKESPEARE: &str = include_str!("../../../data/shakespeare.txt");

/// `--cell` values, named as in checkpoints.
#[derive(Clone, Copy, ValueEnum)]
pub enum Cell {
    Lstm,
    Gru,
    #[value(name = "rnn_tanh")]
    RnnTanh,
    #[value(name = "rnn_relu")]
    RnnRelu,
    #[value(name = "gru_reset_before")]
    GruResetBefore,
}

#[derive(Clone, Copy, ValueEnum)]
enum Opt {
    Adam,
    Sgd,
}

/// Flags of `rnnkit train`. Settings left out take the default shown, or, with
/// `--resume`, the checkpoint's value; giving one that contradicts the checkpoint is an error.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainOpts {
    /// UTF-8 text to train on [default: the bundled Shakespeare, data/shakespeare.txt].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Recurrent cell [default: lstm].
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Stacked recurrent layers [default: 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    layers: Option<u32>,
    /// Hidden units per layer [default: 256].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    hidden: Option<u32>,
    /// Embedding width [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    embed: Option<u32>,
    /// Dropout between recurrent layers, in [0, 1) [default: 0.1].
    #[arg(long)]
    dropout: Option<f32>,
    /// Parallel text streams per batch [default: 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    batch: Option<u32>,
    /// Timesteps per batch (BPTT length) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
    seq_len: Option<u32>,
    /// Learning rate [default: 0.003].
    #[arg(long)]
    lr: Option<f32>,
    /// Multiply the learning rate by this at the end of every epoch after --decay-after [default: 0.75].
    #[arg(long)]
    lr_decay: Option<f32>,
    /// Epochs at the initial learning rate before decay starts [default: 1].
    #[arg(long)]
    decay_after: Option<u64>,
    /// Clip the global gradient norm to this; 0 turns it off [default: 5].
    #[arg(long)]
    grad_clip: Option<f64>,
    /// Clip every gradient element to [-v, v] [default: off].
    #[arg(long)]
    clip_value: Option<f32>,
    /// Update rule [default: adam].
    #[arg(long, value_enum)]
    optimizer: Option<Opt>,
    /// Momentum for --optimizer sgd [default: 0.9].
    #[arg(long)]
    momentum: Option<f32>,
    /// Stop after this many optimizer steps in all, counted from the start of training (also after --resume) [default: 2000 unless --epochs or --time-limit is given].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Stop after this many passes over the training text (fractions allowed).
    #[arg(long)]
    epochs: Option<f64>,
    /// Stop after this many seconds of wall time.
    #[arg(long)]
    time_limit: Option<f64>,
    /// Fraction of the text, at its end, held out for validation, in [0, 0.5) [default: 0.05].
    #[arg(long)]
    val_frac: Option<f64>,
    /// Validate every N steps (and at the end) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    eval_every: Option<u64>,
    /// Write OUT/latest.safetensors every N steps (and at the end) [default: 200].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    checkpoint_every: Option<u64>,
    /// Output folder for checkpoints, metrics.jsonl and loss.svg [default: runs/char-lm].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Random seed of initialisation and dropout [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Continue the run saved in this checkpoint, exactly where it stopped.
    #[arg(long)]
    resume: Option<PathBuf>,
    /// Start every batch from a zero state instead of carrying it over.
    #[arg(long)]
    no_carry: bool,
    /// Matrix products with bfloat16 operands and f32 sums (CPUs with AVX-512 BF16;
    /// others compute in f32): faster, and no longer PyTorch's float32 numbers.
    #[arg(long)]
    bf16: bool,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
    /// Characters of the closing sample [default: 300].
    #[arg(long, default_value_t = 300)]
    sample_length: usize,
}

pub(crate) fn default_recipe() -> Recipe {
    Recipe {
        model: CharLmConfig {
            cell: CellKind::Lstm,
            embed_size: 64,
            hidden_size: 256,
            num_layers: 2,
            dropout: 0.1,
        },
        batch: 32,
        seq_len: 100,
        lr: 3e-3,
        lr_decay: 0.75,
        decay_after: 1,
        grad_clip: Some(5.0),
        clip_value: None,
        optimizer: OptimizerKind::Adam,
        momentum: 0.9,
        val_frac: 0.05,
        seed: 1,
        carry_state: true,
        precision: Precision::F32,
    }
}

/// Default bound when none is given: about five minutes of the default model on two cores.
pub(crate) const DEFAULT_STEPS: u64 = 2000;
/// Validation cadence when `--eval-every` is not given.
pub(crate) const DEFAULT_EVAL_EVERY: u64 = 100;
/// Checkpoint cadence when `--checkpoint-every` is not given.
pub(crate) const DEFAULT_CHECKPOINT_EVERY: u64 = 200;

impl Cell {
    /// The library's cell kind.
    pub fn kind(self) -> CellKind {
        match self {
            Cell::Lstm => CellKind::Lstm,
            Cell::Gru => CellKind::Gru,
            Cell::RnnTanh => CellKind::RnnTanh,
            Cell::RnnRelu => CellKind::RnnRelu,
            Cell::GruResetBefore => CellKind::GruResetBefore,
        }
    }
}

impl TrainOpts {
    /// Overlays the given flags on `base` (defaults, or the checkpoint's recipe).
    fn recipe(&self, base: Recipe) -> anyhow::Result<Recipe> {
        let mut r = base;
        if let Some(c) = self.cell {
            r.model.cell = c.kind();
        }
        set(&mut r.model.num_layers, self.layers.map(|v| v as usize));
        set(&mut r.model.hidden_size, self.hidden.map(|v| v as usize));
        set(&mut r.model.embed_size, self.embed.map(|v| v as usize));
        set(&mut r.batch, self.batch.map(|v| v as usize));
        set(&mut r.seq_len, self.seq_len.map(|v| v as usize));
        if let Some(d) = self.dropout {
            if !(0.0..1.0).contains(&d) {
                bail!("--dropout must be in [0, 1), got {d}");
            }
            r.model.dropout = d;
        }
        if let Some(lr) = self.lr {
            if !(lr > 0.0 && lr.is_finite()) {
                bail!("--lr must be a positive number, got {lr}");
            }
            r.lr = lr;
        }
        if let Some(d) = self.lr_decay {
            if !(d > 0.0 && d <= 1.0) {
                bail!("--lr-decay must be in (0, 1], got {d}");
            }
            r.lr_decay = d;
        }
        set(&mut r.decay_after, self.decay_after);
        if let Some(c) = self.grad_clip {
            if !(c >= 0.0 && c.is_finite()) {
                bail!("--grad-clip must be ≥ 0 (0 turns clipping off), got {c}");
            }
            r.grad_clip = (c > 0.0).then_some(c);
        }
        if let Some(v) = self.clip_value {
            if !(v > 0.0 && v.is_finite()) {
                bail!("--clip-value must be positive, got {v}");
            }
            r.clip_value = Some(v);
        }
        if let Some(o) = self.optimizer {
            r.optimizer = match o {
                Opt::Adam => OptimizerKind::Adam,
                Opt::Sgd => OptimizerKind::Sgd,
            };
        }
        if let Some(m) = self.momentum {
            if !(0.0..1.0).contains(&m) {
                bail!("--momentum must be in [0, 1), got {m}");
            }
            r.momentum = m;
        }
        if let Some(v) = self.val_frac {
            if !(0.0..0.5).contains(&v) {
                bail!("--val-frac must be in [0, 0.5), got {v}");
            }
            r.val_frac = v;
        }
        set(&mut r.seed, self.seed);
        if self.no_carry {
            r.carry_state = false;
        }
        if self.bf16 {
            r.precision = Precision::Bf16;
        }
        Ok(r)
    }

    fn config(&self) -> anyhow::Result<TrainConfig> {
        let base = match &self.resume {
            Some(p) => {
                train::stored_recipe(p).with_context(|| format!("--resume {}", p.display()))?
            }
            None => default_recipe(),
        };
        let recipe = self.recipe(base)?;
        if let Some(e) = self.epochs {
            if !(e > 0.0 && e.is_finite()) {
                bail!("--epochs must be positive, got {e}");
            }
        }
        let time_limit = match self.time_limit {
            Some(t) if t > 0.0 && t.is_finite() => Some(Duration::from_secs_f64(t)),
            Some(t) => bail!("--time-limit must be a positive number of seconds, got {t}"),
            None => None,
        };
        let steps = match (self.steps, self.epochs, time_limit) {
            (None, None, None) => Some(DEFAULT_STEPS),
            (s, _, _) => s,
        };
        Ok(TrainConfig {
            recipe,
            steps,
            epochs: self.epochs,
            time_limit,
            eval_every: self.eval_every.unwrap_or(DEFAULT_EVAL_EVERY),
            checkpoint_every: self.checkpoint_every.unwrap_or(DEFAULT_CHECKPOINT_EVERY),
            out_dir: self
                .out
                .clone()
                .unwrap_or_else(|| PathBuf::from("runs/char-lm")),
            resume: self.resume.clone(),
        })
    }
}

fn set<T>(slot: &mut T, v: Option<T>) {
    if let Some(v) = v {
        *slot = v;
    }
}

/// Draws progress on stderr and redraws the loss curve at each validation.
struct Progress {
    bar: ProgressBar,
    plot_path: PathBuf,
    stop: Arc<AtomicBool>,
    last_val: Option<f64>,
}

impl Observer for Progress {
    fn on_start(&mut self, i: &StartInfo) {
        self.bar.suspend(|| {
            eprintln!(
                "training on {} characters ({} held out for validation), vocabulary {}, {} parameters, {} batches per epoch{}",
                i.train_chars,
                i.val_chars,
                i.vocab_size,
                i.parameters,
                i.batches_per_epoch,
                if i.start_step > 0 { format!(", resuming at step {}", i.start_step) } else { String::new() }
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

    fn on_eval(&mut self, history: &[EvalReport]) {
        if let Some(e) = history.last() {
            self.last_val = e.val_nats_per_char.or(self.last_val);
        }
        if let Err(e) = plot::loss_curve(history, &self.plot_path) {
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

pub fn run(o: TrainOpts) -> anyhow::Result<ExitCode> {
    let cfg = o.config()?;
    crate::set_threads(o.threads.map(usize::from))?;
    let text = match &o.data {
        Some(p) => rnnkit::data::read_text(p).with_context(|| format!("--data {}", p.display()))?,
        None => SHAKESPEARE.to_string(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    {
        let stop = stop.clone();
        // A second Ctrl-C while the checkpoint is written is ignored: the write is atomic anyway.
        ctrlc::set_handler(move || stop.store(true, Ordering::SeqCst))
            .context("installing the Ctrl-C handler")?;
    }
    let bar = ProgressBar::new(0).with_style(
        ProgressStyle::with_template("{bar:30.cyan/blue} step {pos}/{len} | {msg} | ETA {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let mut progress = Progress {
        bar,
        plot_path: cfg.out_dir.join("loss.svg"),
        stop,
        last_val: None,
    };
    let result = train::run(&cfg, &text, &mut progress);
    progress.bar.finish_and_clear();
    let summary = result?;
    let val = summary
        .val_nats_per_char
        .map_or("n/a".into(), |v| format!("{v:.4}"));
    eprintln!(
        "{} at step {} (epoch {:.2}): train {:.4} nats/char, validation {val} nats/char, {:.0} tokens/s",
        if summary.interrupted { "stopped" } else { "finished" },
        summary.steps,
        summary.epochs,
        summary.train_nats_per_char,
        summary.tokens_per_sec
    );
    eprintln!("checkpoint: {}", summary.checkpoint.display());
    if let Some(b) = &summary.best_checkpoint {
        eprintln!("best:       {}", b.display());
    }
    eprintln!("loss curve: {}", progress.plot_path.display());
    if summary.interrupted {
        eprintln!("interrupted; continue with: rnnkit train --resume {} (plus any --steps/--epochs bound)", summary.checkpoint.display());
        print_json(&o, &summary);
        return Ok(ExitCode::from(130));
    }
    if o.sample_length > 0 {
        closing_sample(&summary.checkpoint, o.sample_length)?;
    }
    print_json(&o, &summary);
    Ok(ExitCode::SUCCESS)
}

fn print_json(o: &TrainOpts, s: &train::Summary) {
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "steps": s.steps,
                "epochs": s.epochs,
                "train_nats_per_char": s.train_nats_per_char,
                "val_nats_per_char": s.val_nats_per_char,
                "tokens_per_sec": s.tokens_per_sec,
                "checkpoint": s.checkpoint,
            })
        );
    }
}

fn closing_sample(checkpoint: &Path, length: usize) -> anyhow::Result<()> {
    let (model, _) = CharLm::load(checkpoint)?;
    let mut text = String::new();
    let cfg = SamplingConfig {
        temperature: 0.8,
        ..Default::default()
    };
    generate(&model, "", length, &cfg, &mut Rng::new(1), &mut |c| {
        text.push(c);
        Ok(())
    })?;
    println!("--- sample ({length} characters, temperature 0.8) ---\n{text}\n---");
    Ok(())
}
