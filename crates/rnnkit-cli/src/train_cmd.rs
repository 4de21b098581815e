//! `rnnkit train`: the character language model's flags, its data and model, then
//! the shared trainer, then a closing sample.

use crate::trainer::{self, set, Ready, Resolved, Start, TrainerOpts};
use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use rnnkit::data::{fingerprint, read_text, Vocab};
use rnnkit::decode::{generate, SamplingConfig};
use rnnkit::limits::{flag_range, MAX_LAYERS, MAX_SEQ_LEN, MAX_WIDTH};
use rnnkit::model::{CharLm, CharLmConfig, Precision};
use rnnkit::optim::OptimizerKind;
use rnnkit::task::char_lm::{
    check_training_memory, extend_vocab, Batching, CharLmRecipe, CharLmTask,
};
use rnnkit::train::{Recipe, Schedule, Settings, TrainSettings};
use rnnkit::{CellKind, Rng};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The corpus used when `--data` is not given: nine Shakespeare plays (see data/README).
pub(crate) const SHAKESPEARE: &str = include_str!("../../../data/shakespeare.txt");

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

/// `--batching` values.
#[derive(Clone, Copy, ValueEnum)]
enum BatchingFlag {
    Streams,
    Shuffled,
}

/// `--preset` values.
#[derive(Clone, Copy, ValueEnum)]
enum Preset {
    /// The Keras text-generation recipe: embed 256, one LSTM layer of 1024, batch 64,
    /// seq 100, shuffled windows, Adam at 0.001, 10 epochs, a checkpoint every 5 epochs.
    Keras,
}

/// Flags of `rnnkit train`. Settings left out take the default shown, or, with
/// `--resume`, the checkpoint's value.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct TrainOpts {
    /// UTF-8 text to train on [default: the bundled Shakespeare, data/shakespeare.txt].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Recurrent cell.
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Stacked recurrent layers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: Option<u32>,
    /// Hidden units per layer.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: Option<u32>,
    /// Embedding width; 0 feeds one-hot vectors straight into the first layer.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(0, MAX_WIDTH)))]
    embed: Option<u32>,
    /// Dropout between recurrent layers, in [0, 1).
    #[arg(long)]
    dropout: Option<f32>,
    /// Timesteps per batch (BPTT length).
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_SEQ_LEN)))]
    seq_len: Option<u32>,
    /// Start every batch from a zero state instead of carrying it over.
    #[arg(long)]
    no_carry: bool,
    /// How the text becomes batches: carried streams (char-rnn) or shuffled windows (Keras).
    #[arg(long, value_enum)]
    batching: Option<BatchingFlag>,
    /// A whole recipe at once; other flags still override it.
    #[arg(long, value_enum)]
    preset: Option<Preset>,
    /// Characters of the closing sample [default: 300].
    #[arg(long, default_value_t = 300)]
    sample_length: usize,
    #[command(flatten)]
    common: TrainerOpts,
}

/// The default recipe of `rnnkit train`.
pub(crate) fn default_recipe() -> Recipe<CharLmRecipe> {
    Recipe {
        task: CharLmRecipe {
            model: CharLmConfig {
                cell: CellKind::Lstm,
                embed_size: 64,
                hidden_size: 256,
                num_layers: 2,
                dropout: 0.1,
            },
            seq_len: 100,
            carry_state: true,
            batching: Batching::Streams,
        },
        train: TrainSettings {
            batch: 32,
            lr: 3e-3,
            lr_decay: 0.75,
            decay_after: 1,
            grad_clip: Some(5.0),
            clip_value: None,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            val_frac: 0.05,
            seed: 1,
            precision: Precision::F32,
            average: None,
        },
    }
}

/// The default bounds and cadences: 2000 steps (about five minutes of the default
/// model on two cores), validation every 100, a checkpoint every 200.
pub(crate) fn default_schedule() -> Schedule {
    Schedule {
        steps: Some(2000),
        epochs: None,
        time_limit: None,
        eval_every: 100,
        checkpoint_every: 200,
        checkpoint_every_epochs: None,
        log_every: 10,
        patience: None,
    }
}

fn keras_preset() -> (Recipe<CharLmRecipe>, Schedule) {
    let mut r = default_recipe();
    r.task.model = CharLmConfig {
        cell: CellKind::Lstm,
        embed_size: 256,
        hidden_size: 1024,
        num_layers: 1,
        dropout: 0.0,
    };
    r.task.batching = Batching::Shuffled;
    r.task.carry_state = false;
    r.train.batch = 64;
    r.train.lr = 1e-3;
    r.train.lr_decay = 1.0;
    r.train.grad_clip = None;
    let s = Schedule {
        steps: None,
        epochs: Some(10.0),
        checkpoint_every_epochs: Some(5),
        ..default_schedule()
    };
    (r, s)
}

/// Every default `--help` shows for `rnnkit train`.
pub(crate) fn shown_defaults() -> Vec<rnnkit::train::Setting> {
    let mut s = default_recipe().settings();
    s.extend(default_schedule().settings());
    s
}

impl TrainOpts {
    /// Overlays the model and data flags on `m`.
    fn overlay(&self, m: &mut CharLmRecipe) -> anyhow::Result<()> {
        if let Some(c) = self.cell {
            m.model.cell = c.kind();
        }
        set(&mut m.model.num_layers, self.layers.map(|v| v as usize));
        set(&mut m.model.hidden_size, self.hidden.map(|v| v as usize));
        set(&mut m.model.embed_size, self.embed.map(|v| v as usize));
        set(&mut m.seq_len, self.seq_len.map(|v| v as usize));
        if let Some(d) = self.dropout {
            if !(0.0..1.0).contains(&d) {
                bail!("--dropout must be in [0, 1), got {d}");
            }
            m.model.dropout = d;
        }
        if self.no_carry {
            m.carry_state = false;
        }
        if let Some(b) = self.batching {
            m.batching = match b {
                BatchingFlag::Streams => Batching::Streams,
                BatchingFlag::Shuffled => Batching::Shuffled,
            };
        }
        Ok(())
    }

    fn size_flags_given(&self) -> bool {
        self.cell.is_some()
            || self.layers.is_some()
            || self.hidden.is_some()
            || self.embed.is_some()
    }
}

/// The flags resolved against the defaults (or the resumed checkpoint).
fn settings(o: &TrainOpts) -> anyhow::Result<Resolved<CharLmRecipe>> {
    let (base, base_schedule) = match o.preset {
        Some(Preset::Keras) => keras_preset(),
        None => (default_recipe(), default_schedule()),
    };
    if o.common.init.is_some() && o.size_flags_given() {
        bail!("--cell, --layers, --hidden and --embed come from the --init checkpoint; drop them");
    }
    trainer::resolve(&o.common, base, base_schedule, "runs/char-lm", |m| {
        o.overlay(m)
    })
}

/// Checks the flags of `rnnkit train` as a run would, opening no file.
pub(crate) fn check(o: &TrainOpts) -> anyhow::Result<()> {
    trainer::check(o.common.resume.is_none().then(|| settings(o)))
}

pub fn run(o: TrainOpts) -> anyhow::Result<ExitCode> {
    let c = &o.common;
    let mut resolved = settings(&o)?;
    crate::set_threads(c.threads.map(usize::from))?;
    let data_path = resolved.data_path(&o.data);
    let text = match &data_path {
        Some(p) => read_text(p).with_context(|| format!("--data {}", p.display()))?,
        None => SHAKESPEARE.to_string(),
    };
    let data_fingerprint = fingerprint(&text);
    let seed = resolved.recipe.train.seed;
    let (model, start) = match (&resolved.resume, &c.init) {
        (Some((p, _)), _) => {
            let (model, file) =
                CharLm::load(p).with_context(|| format!("--resume {}", p.display()))?;
            (model, Start::Resumed(file))
        }
        (None, Some(init)) => {
            let (model, _) =
                CharLm::load(init).with_context(|| format!("--init {}", init.display()))?;
            let mut rng = Rng::new(seed);
            let (model, added) = extend_vocab(model, &text, &mut rng)?;
            if !added.is_empty() {
                eprintln!(
                    "--init: the text has {} characters the model does not know ({}); they get new, freshly initialised embedding rows and outputs",
                    added.len(),
                    added.iter().map(|c| format!("{c:?}")).collect::<Vec<_>>().join(" ")
                );
            }
            let dropout = resolved.recipe.task.model.dropout;
            resolved.recipe.task.model = CharLmConfig {
                dropout,
                ..model.config()
            };
            (model, Start::Fresh(rng))
        }
        (None, None) => {
            let vocab = Vocab::from_text(&text)?;
            let r = &resolved.recipe;
            check_training_memory(&r.task.model, vocab.len(), r.train.batch, r.task.seq_len)?;
            let mut rng = Rng::new(seed);
            let model = CharLm::new(&r.task.model, vocab, &mut rng)?;
            (model, Start::Fresh(rng))
        }
    };
    let r = &resolved.recipe;
    let mut model = model;
    model.set_dropout(r.task.model.dropout)?;
    model.set_precision(r.train.precision);
    check_training_memory(
        &model.config(),
        model.vocab().len(),
        r.train.batch,
        r.task.seq_len,
    )?;
    let task = CharLmTask::new(model, &r.task, r.train.batch, r.train.val_frac, seed, &text)?;
    let ready = Ready {
        resolved,
        task,
        start,
        data_fingerprint,
        data_path,
    };
    let finished = trainer::train(c, ready, "rnnkit train")?;
    if !finished.lead {
        return Ok(finished.code);
    }
    let s = &finished.summary;
    if !s.interrupted && o.sample_length > 0 {
        closing_sample(&s.checkpoint, o.sample_length)?;
    }
    if c.json {
        println!(
            "{}",
            serde_json::json!({
                "steps": s.steps,
                "epochs": s.epochs,
                "train_nats_per_char": s.train_loss,
                "val_nats_per_char": s.val.as_ref().map(|v| v.loss),
                "tokens_per_sec": s.tokens_per_sec,
                "checkpoint": s.checkpoint,
            })
        );
    }
    Ok(finished.code)
}

fn closing_sample(checkpoint: &Path, length: usize) -> anyhow::Result<()> {
    use std::io::Write;
    let (model, _) = CharLm::load(checkpoint)?;
    let cfg = SamplingConfig {
        temperature: 0.8,
        ..Default::default()
    };
    // Streamed as drawn: --sample-length sizes no buffer. (A `Stdout`, not its lock:
    // the characters are written from the thread pool.)
    let mut out = std::io::BufWriter::new(std::io::stdout());
    writeln!(out, "--- sample ({length} characters, temperature 0.8) ---")?;
    let mut buf = [0u8; 4];
    generate(&model, "", length, &cfg, &mut Rng::new(1), &mut |c| {
        out.write_all(c.encode_utf8(&mut buf).as_bytes())
            .map_err(|source| rnnkit::Error::Io {
                path: "<stdout>".into(),
                source,
            })
    })?;
    writeln!(out, "\n---")?;
    out.flush()?;
    Ok(())
}
