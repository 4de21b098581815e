//! A new task for the one trainer, written by hand: the parity of a random bit string
//! (is the number of ones odd?), read by an LSTM whose last valid output a linear layer
//! turns into two logits. A task gives the trainer its parameters (by name, with
//! gradients), a training batch, a validation and a way to save itself; the trainer
//! does the rest (Adam, clipping, decay, checkpoints, the metrics log, early stopping).
//!
//! `cargo run --release -p rnnkit --example custom_task`

use rnnkit::checkpoint;
use rnnkit::layer::{Linear, ParamVisitor};
use rnnkit::loss::{argmax_rows, cross_entropy, CrossEntropy};
use rnnkit::task::{BatchLoss, Metrics, Selection, Task, META_TASK};
use rnnkit::train::{self, Change, LogEntry, Observer, Recipe, Schedule, Setting, Settings};
use rnnkit::train::{GradientSink, TrainConfig, TrainSettings, TrainState};
use rnnkit::{CellKind, Parameters, Pool, PoolKind, Recurrent, RecurrentConfig, Rng, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The task's part of the recipe, stored in checkpoints beside the shared settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ParityConfig {
    /// LSTM width.
    hidden_size: usize,
    /// Longest bit string.
    max_len: usize,
}

impl Settings for ParityConfig {
    fn settings(&self) -> Vec<Setting> {
        vec![
            Setting::new("--hidden", self.hidden_size, Change::Fixed),
            Setting::new("--max-len", self.max_len, Change::Fixed),
        ]
    }
}

/// The model (`rnn.*`, `head.*`) and its data.
struct Parity {
    rnn: Recurrent<f32>,
    head: Linear<f32>,
    pool: Pool<f32>,
    config: ParityConfig,
    batch: usize,
    seed: u64,
    /// A fixed validation set: bit strings and their parities.
    val: (Vec<Vec<u8>>, Vec<usize>),
}

/// `count` random bit strings of 1..=max_len bits, with their parities.
fn bit_strings(count: usize, max_len: usize, rng: &mut Rng) -> (Vec<Vec<u8>>, Vec<usize>) {
    let bits: Vec<Vec<u8>> = (0..count)
        .map(|_| {
            (0..=rng.below(max_len))
                .map(|_| rng.below(2) as u8)
                .collect()
        })
        .collect();
    let parity = bits
        .iter()
        .map(|b| b.iter().sum::<u8>() as usize % 2)
        .collect();
    (bits, parity)
}

/// Time-major input `[T, B, 1]` (zeros past each string's end) and the lengths.
fn encode(strings: &[Vec<u8>]) -> (Tensor<f32>, Vec<usize>) {
    let lengths: Vec<usize> = strings.iter().map(Vec::len).collect();
    let (steps, b) = (lengths.iter().copied().max().unwrap_or(0), strings.len());
    let mut x = Tensor::zeros(&[steps, b, 1]);
    for (j, s) in strings.iter().enumerate() {
        for (t, &bit) in s.iter().enumerate() {
            x.data_mut()[t * b + j] = f32::from(bit);
        }
    }
    (x, lengths)
}

impl Parity {
    fn new(config: ParityConfig, batch: usize, seed: u64, rng: &mut Rng) -> rnnkit::Result<Self> {
        let rnn = RecurrentConfig::new(CellKind::Lstm, 1, config.hidden_size).init(rng)?;
        Ok(Parity {
            head: Linear::new(config.hidden_size, 2, rng),
            rnn,
            pool: Pool::new(PoolKind::Last),
            val: bit_strings(1000, config.max_len, &mut Rng::new(seed ^ 0xdead_beef)),
            config,
            batch,
            seed,
        })
    }

    /// Logits `[B, 2]` and the pooled outputs `[B, H]` they came from.
    fn logits(
        &mut self,
        y: &Tensor<f32>,
        lengths: &[usize],
    ) -> rnnkit::Result<(Vec<f32>, Tensor<f32>)> {
        let &[t, b, h] = y.shape() else {
            unreachable!("[T, B, H]")
        };
        let pooled = self.pool.forward(y.data(), (t, b, h), lengths, 1)?;
        let mut logits = vec![0.0; b * 2];
        self.head.forward(pooled.data(), b, &mut logits);
        Ok((logits, pooled))
    }
}

impl Parameters<f32> for Parity {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<f32>)) {
        self.rnn.visit_params(&mut |n, t| f(&format!("rnn.{n}"), t));
        self.head
            .visit_params(&mut |n, t| f(&format!("head.{n}"), t));
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, f32>) {
        self.rnn
            .visit_params_mut(&mut |n, t, g| f(&format!("rnn.{n}"), t, g));
        self.head
            .visit_params_mut(&mut |n, t, g| f(&format!("head.{n}"), t, g));
    }
}

impl Task for Parity {
    type Config = ParityConfig;

    fn kind(&self) -> &'static str {
        "parity"
    }

    fn selection(&self) -> Selection {
        Selection::MaxScore("accuracy")
    }

    fn describe(&self) -> String {
        format!(
            "parity of 1 to {} bits, fresh strings every batch, {} fixed ones for validation",
            self.config.max_len,
            self.val.0.len()
        )
    }

    fn batches_per_epoch(&self) -> usize {
        100
    }

    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        _ready: &mut GradientSink<'_>,
    ) -> rnnkit::Result<BatchLoss> {
        // Batch k of an epoch depends only on (seed, epoch, k), so a resumed run sees the same data.
        let mut data_rng = Rng::new(self.seed ^ (epoch << 20) ^ k as u64);
        let (strings, targets) = bit_strings(self.batch, self.config.max_len, &mut data_rng);
        let (x, lengths) = encode(&strings);
        let (y, _) = self.rnn.forward_train(&x, Some(&lengths), None, rng)?;
        let (logits, pooled) = self.logits(&y, &lengths)?;
        let mut dlogits = vec![0.0; logits.len()];
        let ce = CrossEntropy::default();
        let loss = cross_entropy(&logits, 2, &targets, None, &ce, Some(&mut dlogits))?;
        let mut dpooled = vec![0.0; pooled.len()];
        self.head
            .backward(pooled.data(), &dlogits, strings.len(), Some(&mut dpooled));
        let dy = self.pool.backward(&dpooled)?;
        self.rnn.backward(&dy, None)?;
        let tokens = lengths.iter().sum();
        Ok(BatchLoss {
            loss: loss.mean,
            tokens,
        })
    }

    fn validate(&mut self) -> rnnkit::Result<Option<Metrics>> {
        let (x, lengths) = encode(&self.val.0);
        let (y, _) = self.rnn.forward(&x, Some(&lengths), None)?;
        let (logits, _) = self.logits(&y, &lengths)?;
        let targets = &self.val.1;
        let loss = cross_entropy(&logits, 2, targets, None, &CrossEntropy::default(), None)?;
        let right = argmax_rows(&logits, 2)
            .iter()
            .zip(targets)
            .filter(|(p, t)| p == t)
            .count();
        let accuracy = right as f64 / targets.len() as f64;
        Ok(Some(Metrics {
            loss: loss.mean,
            scores: [("accuracy".to_string(), accuracy)].into(),
        }))
    }

    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        mut metadata: HashMap<String, String>,
    ) -> rnnkit::Result<()> {
        metadata.insert(META_TASK.into(), self.kind().into());
        let named = checkpoint::named_params(self, "");
        let all: Vec<(String, &Tensor<f32>)> = named
            .iter()
            .chain(extra)
            .map(|(n, t)| (n.clone(), t))
            .collect();
        checkpoint::save(path, &all, &metadata)
    }
}

/// Prints every validation.
struct Print;

impl Observer for Print {
    fn on_log(&mut self, history: &[LogEntry]) {
        let e = history.last().expect("called after a line is written");
        if let Some(v) = &e.val {
            println!(
                "step {:5}  train loss {:.4}  val loss {:.4}  val accuracy {:.4}",
                e.step, e.train_loss, v.loss, v.scores["accuracy"]
            );
        }
    }
}

fn main() -> rnnkit::Result<()> {
    let recipe = Recipe {
        task: ParityConfig {
            hidden_size: 32,
            max_len: 40,
        },
        train: TrainSettings {
            batch: 64,
            lr: 1e-2,
            grad_clip: Some(1.0),
            val_frac: 0.0,
            ..TrainSettings::default()
        },
    };
    let schedule = Schedule {
        steps: Some(1200),
        epochs: None,
        time_limit: Some(60.0),
        checkpoint_every: 1000,
        log_every: 20,
        ..Schedule::default()
    };
    let mut rng = Rng::new(recipe.train.seed);
    let mut task = Parity::new(
        recipe.task.clone(),
        recipe.train.batch,
        recipe.train.seed,
        &mut rng,
    )?;
    let config = TrainConfig {
        recipe,
        schedule,
        out_dir: std::env::temp_dir().join("rnnkit-examples/parity"),
        data_fingerprint: 0,
        data_path: None,
    };
    let summary = train::run(&config, &mut task, TrainState::fresh(rng, 0), &mut Print)?;
    let last = summary.val.expect("validated at the end");
    let (_, best_step) = summary.best.expect("validated at least once");
    println!(
        "final validation accuracy {:.4}; best at step {best_step}, kept in {}",
        last.scores["accuracy"],
        summary
            .best_checkpoint
            .expect("written with the best")
            .display()
    );
    Ok(())
}
