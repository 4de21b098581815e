//! What a run is made of: the optimisation settings every task shares, the task's own
//! part, and the schedule (bounds and cadences). All three are stored in checkpoints;
//! on resume, each setting says whether it may change.

use crate::error::{Error, Result};
use crate::kernel::Precision;
use crate::limits::{MAX_BATCH, MAX_EPOCHS};
use crate::optim::OptimizerKind;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// Whether a setting may differ when a run is resumed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// Changes the model or the data: resuming with another value is refused.
    Fixed,
    /// May change; the run is then no longer identical to an uninterrupted one.
    Alters,
    /// May change freely (bounds, cadences, where files go).
    Free,
}

/// One setting as the user names it: its flag, its value as the flag would take it,
/// and whether it may change on resume.
#[derive(Clone, Debug, PartialEq)]
pub struct Setting {
    /// The command-line flag, e.g. `--hidden`.
    pub flag: &'static str,
    /// The value as it would be typed, e.g. `256` or `off`.
    pub value: String,
    /// What changing it on resume means.
    pub change: Change,
}

impl Setting {
    /// A setting with a displayable value.
    pub fn new(flag: &'static str, value: impl std::fmt::Display, change: Change) -> Self {
        Setting {
            flag,
            value: value.to_string(),
            change,
        }
    }
}

/// A part of a recipe that lists its settings under the user's flag names.
pub trait Settings {
    /// Every setting, in a fixed order.
    fn settings(&self) -> Vec<Setting>;
}

/// Optimisation settings shared by every task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TrainSettings {
    /// Sequences per batch.
    pub batch: usize,
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
    /// Decoupled weight decay (AdamW); 0 is none (absent in older checkpoints).
    #[serde(default)]
    pub weight_decay: f32,
    /// Fraction of the training data held out for validation.
    pub val_frac: f64,
    /// Seed of initialisation, data order and dropout.
    pub seed: u64,
    /// Arithmetic of the matrix products (absent in checkpoints before it existed: f32).
    #[serde(default)]
    pub precision: Precision,
    /// Decay of the moving average of the weights that validation, `best` and the
    /// evaluation after training use; `None`: the trained weights themselves (absent
    /// in older checkpoints).
    #[serde(default)]
    pub average: Option<f32>,
}

impl Default for TrainSettings {
    /// Adam at 0.001 without decay, global-norm clipping at 5, batch 32, a tenth held
    /// out for validation, seed 1, f32, no weight averaging (each task's CLI states its
    /// own defaults).
    fn default() -> Self {
        TrainSettings {
            batch: 32,
            lr: 1e-3,
            lr_decay: 1.0,
            decay_after: 0,
            grad_clip: Some(5.0),
            clip_value: None,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            val_frac: 0.1,
            seed: 1,
            precision: Precision::F32,
            average: None,
        }
    }
}

impl TrainSettings {
    /// Fails with a message naming the flag if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::Config(m));
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return bad(format!(
                "--batch must be in [1, {MAX_BATCH}], got {}",
                self.batch
            ));
        }
        if !(self.lr > 0.0 && self.lr.is_finite()) {
            return bad(format!("--lr must be a positive number, got {}", self.lr));
        }
        if !(self.lr_decay > 0.0 && self.lr_decay <= 1.0) {
            return bad(format!(
                "--lr-decay must be in (0, 1], got {}",
                self.lr_decay
            ));
        }
        if self.grad_clip.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad("--grad-clip must be positive (0 turns it off)".into());
        }
        if self.clip_value.is_some_and(|c| !(c > 0.0 && c.is_finite())) {
            return bad("--clip-value must be positive".into());
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            return bad(format!(
                "--weight-decay must be in [0, 1), got {}",
                self.weight_decay
            ));
        }
        if !(0.0..1.0).contains(&self.momentum) {
            return bad(format!(
                "--momentum must be in [0, 1), got {}",
                self.momentum
            ));
        }
        if self.average.is_some_and(|d| !(d > 0.0 && d < 1.0)) {
            return bad("--average must be in (0, 1) (0 turns averaging off)".into());
        }
        if !(0.0..0.5).contains(&self.val_frac) {
            return bad(format!(
                "--val-frac must be in [0, 0.5), got {}",
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
}

impl Settings for TrainSettings {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "off".into());
        vec![
            Setting::new("--batch", self.batch, Fixed),
            Setting::new("--lr", self.lr, Alters),
            Setting::new("--lr-decay", self.lr_decay, Alters),
            Setting::new("--decay-after", self.decay_after, Alters),
            Setting::new(
                "--grad-clip",
                opt(self.grad_clip.map(|v| v.to_string())),
                Alters,
            ),
            Setting::new(
                "--clip-value",
                opt(self.clip_value.map(|v| v.to_string())),
                Alters,
            ),
            Setting::new(
                "--optimizer",
                match self.optimizer {
                    OptimizerKind::Adam => "adam",
                    OptimizerKind::Sgd => "sgd",
                },
                Fixed,
            ),
            Setting::new("--momentum", self.momentum, Alters),
            Setting::new("--weight-decay", self.weight_decay, Alters),
            Setting::new("--average", opt(self.average.map(|v| v.to_string())), Fixed),
            Setting::new("--val-frac", self.val_frac, Fixed),
            Setting::new("--seed", self.seed, Fixed),
            Setting::new(
                "--bf16",
                match self.precision {
                    Precision::F32 => "off",
                    Precision::Bf16 => "on",
                },
                Fixed,
            ),
        ]
    }
}

/// When a run stops and how often it validates, logs and writes checkpoints.
/// Every field may change on resume.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Stop after this many optimizer steps, counted from the start of training.
    pub steps: Option<u64>,
    /// Stop after this many passes over the training data.
    pub epochs: Option<f64>,
    /// Stop after this many seconds of wall time in one process.
    pub time_limit: Option<f64>,
    /// Validate every this many steps (and at the end).
    pub eval_every: u64,
    /// Write `latest.safetensors` every this many steps (and at the end).
    pub checkpoint_every: u64,
    /// Also keep `epoch-N.safetensors` at the end of every this many epochs.
    #[serde(default)]
    pub checkpoint_every_epochs: Option<u64>,
    /// Log the training loss every this many steps.
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Stop when the validation metric has not improved for this many validations.
    #[serde(default)]
    pub patience: Option<u64>,
}

fn default_log_every() -> u64 {
    10
}

impl Default for Schedule {
    /// Ten epochs, validation every 100 steps, a checkpoint every 500, a log line every 10.
    fn default() -> Self {
        Schedule {
            steps: None,
            epochs: Some(10.0),
            time_limit: None,
            eval_every: 100,
            checkpoint_every: 500,
            checkpoint_every_epochs: None,
            log_every: 10,
            patience: None,
        }
    }
}

pub use crate::limits::MAX_TIME_LIMIT_SECS;

impl Schedule {
    /// Fails with a message naming the flag if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(Error::Config(m.into()));
        if self.eval_every == 0 || self.checkpoint_every == 0 || self.log_every == 0 {
            return bad("--eval-every, --checkpoint-every and --log-every must be at least 1");
        }
        if self.steps.is_none() && self.epochs.is_none() && self.time_limit.is_none() {
            return bad("give a bound: --steps, --epochs or --time-limit");
        }
        if self.steps == Some(0) {
            return bad("--steps must be at least 1");
        }
        if self.epochs.is_some_and(|e| !(e > 0.0 && e <= MAX_EPOCHS)) {
            return Err(Error::Config(format!(
                "--epochs must be a positive number (at most {MAX_EPOCHS:e})"
            )));
        }
        if self
            .time_limit
            .is_some_and(|t| !(t > 0.0 && t <= MAX_TIME_LIMIT_SECS))
        {
            return Err(Error::Config(format!(
                "--time-limit must be a positive number of seconds (at most {MAX_TIME_LIMIT_SECS:e})"
            )));
        }
        if self.checkpoint_every_epochs == Some(0) || self.patience == Some(0) {
            return bad("--checkpoint-every-epochs and --patience must be at least 1");
        }
        Ok(())
    }
}

impl Settings for Schedule {
    fn settings(&self) -> Vec<Setting> {
        use Change::Free;
        let opt = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        vec![
            Setting::new("--steps", opt(self.steps.map(|v| v.to_string())), Free),
            Setting::new("--epochs", opt(self.epochs.map(|v| v.to_string())), Free),
            Setting::new(
                "--time-limit",
                opt(self.time_limit.map(|v| v.to_string())),
                Free,
            ),
            Setting::new("--eval-every", self.eval_every, Free),
            Setting::new("--checkpoint-every", self.checkpoint_every, Free),
            Setting::new(
                "--checkpoint-every-epochs",
                opt(self.checkpoint_every_epochs.map(|v| v.to_string())),
                Free,
            ),
            Setting::new("--log-every", self.log_every, Free),
            Setting::new(
                "--patience",
                opt(self.patience.map(|v| v.to_string())),
                Free,
            ),
        ]
    }
}

/// Everything that defines the numbers of a run: the task's part (model sizes, data
/// settings) and the shared optimisation settings, stored flat in one JSON object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(bound = "M: Serialize + DeserializeOwned")]
pub struct Recipe<M> {
    /// The task's own settings.
    #[serde(flatten)]
    pub task: M,
    /// The shared optimisation settings.
    #[serde(flatten)]
    pub train: TrainSettings,
}

impl<M: Settings> Settings for Recipe<M> {
    fn settings(&self) -> Vec<Setting> {
        let mut s = self.task.settings();
        s.extend(self.train.settings());
        s
    }
}

/// How a resumed run's settings differ from the checkpoint's.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Differences {
    /// Changes that would break the run, as `--flag is X in the checkpoint but Y was asked`.
    pub refused: Vec<String>,
    /// Accepted changes that make the run differ from an uninterrupted one.
    pub altered: Vec<String>,
}

/// Compares `asked` with `stored` setting by setting.
pub fn differences(stored: &dyn Settings, asked: &dyn Settings) -> Differences {
    let mut d = Differences::default();
    for (s, a) in stored.settings().iter().zip(asked.settings()) {
        if s.value == a.value {
            continue;
        }
        let line = format!(
            "{} is {} in the checkpoint but {} was asked",
            s.flag, s.value, a.value
        );
        match a.change {
            Change::Fixed => d.refused.push(line),
            Change::Alters => d
                .altered
                .push(format!("{} {} → {}", s.flag, s.value, a.value)),
            Change::Free => {}
        }
    }
    d
}
