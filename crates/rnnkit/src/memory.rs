//! How far back a cell remembers: synthetic tasks whose answer depends on inputs a
//! known number of steps back, a model trained on each with a fixed budget, and a
//! verdict against a stated threshold.
//!
//! - **adding** (Hochreiter and Schmidhuber 1997): T steps of `(value, marker)`, values
//!   U(0, 1), one marker in each half; the target is the sum of the two marked values,
//!   read after the last step. Predicting the mean scores MSE = 2·(1/12) ≈ 0.167;
//!   solved at MSE ≤ 0.01.
//! - **copy** (delayed recall): 5 symbols of 8, T − 1 blanks, a go marker, then the 5
//!   symbols must be written in order. Chance: 1/8 per symbol; solved at 95 % of the
//!   symbols right.
//! - **recall**: a symbol, then T − 1 random symbols of the same 8 (distractors, not
//!   blanks); after the last, name the first. Chance 1/8; solved at 95 %.
//!
//! The model is one recurrent layer and a linear head on the output steps, trained by
//! Adam or SGD with global-norm clipping (optional) on fresh batches, scored on a held-out
//! set. Scaling the recurrent weights at initialisation shows exploding gradients.

use crate::cell::{CellKind, CellParams};
use crate::error::{Error, Result};
use crate::layer::{Linear, Parameters, Recurrent, RecurrentConfig};
use crate::loss::{argmax_rows, mse, softmax_cross_entropy};
use crate::online::{count, Model};
use crate::optim::{clip_grad_norm, grad_norm, Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::tensor::Tensor;
use std::time::Instant;

/// Symbols of the copy and recall tasks.
const SYMBOLS: usize = 8;
/// Symbols the copy task writes back.
const COPY_LEN: usize = 5;
/// Sequences of the held-out set.
const TEST_SEQUENCES: usize = 512;

/// A task with a known dependency distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemoryTask {
    /// The sum of two marked numbers among T.
    Adding,
    /// 5 symbols written back after T blanks.
    Copy,
    /// The first of T symbols named after the last.
    Recall,
}

impl MemoryTask {
    /// `adding`, `copy` or `recall`.
    pub fn name(self) -> &'static str {
        match self {
            MemoryTask::Adding => "adding",
            MemoryTask::Copy => "copy",
            MemoryTask::Recall => "recall",
        }
    }

    /// The score and the direction in which it is better: test MSE (lower) or the
    /// share of symbols right (higher).
    pub fn metric(self) -> &'static str {
        match self {
            MemoryTask::Adding => "mse",
            _ => "accuracy",
        }
    }

    /// The score that solves the task: at most this MSE, or at least this accuracy.
    pub fn threshold(self) -> f64 {
        match self {
            MemoryTask::Adding => 0.01,
            _ => 0.95,
        }
    }

    /// Whether `score` solves the task.
    pub fn solved(self, score: f64) -> bool {
        match self {
            MemoryTask::Adding => score <= self.threshold(),
            _ => score >= self.threshold(),
        }
    }

    /// The score of a model that learned nothing.
    pub fn chance(self) -> f64 {
        match self {
            MemoryTask::Adding => 1.0 / 6.0,
            _ => 1.0 / SYMBOLS as f64,
        }
    }

    /// The threshold, in words.
    pub fn threshold_text(self) -> &'static str {
        match self {
            MemoryTask::Adding => "test MSE ≤ 0.01 (learning nothing: 0.167)",
            _ => "≥ 95 % of the recalled symbols right (chance: 12.5 %)",
        }
    }

    fn input_width(self) -> usize {
        match self {
            MemoryTask::Adding => 2,
            // The symbols, the blank and the go marker.
            MemoryTask::Copy => SYMBOLS + 2,
            MemoryTask::Recall => SYMBOLS,
        }
    }

    fn outputs(self) -> usize {
        match self {
            MemoryTask::Adding => 1,
            _ => SYMBOLS,
        }
    }

    /// Timesteps of a sequence at distance `length`.
    fn steps(self, length: usize) -> usize {
        match self {
            MemoryTask::Copy => length + 2 * COPY_LEN,
            _ => length,
        }
    }

    /// Output steps (the last ones) that carry a target.
    fn answers(self) -> usize {
        match self {
            MemoryTask::Copy => COPY_LEN,
            _ => 1,
        }
    }

    /// A batch: inputs `[steps, batch, width]` (time-major) and the targets of the
    /// answer steps, `[answers, batch]` (symbols; the adding task's sum as a float).
    fn batch(self, length: usize, batch: usize, rng: &mut Rng) -> (Tensor<f32>, Vec<f64>) {
        let (steps, width) = (self.steps(length), self.input_width());
        let mut x = Tensor::zeros(&[steps, batch, width]);
        let mut targets = vec![0.0; self.answers() * batch];
        let xd = x.data_mut();
        let mut set = |t: usize, b: usize, i: usize, v: f32| xd[(t * batch + b) * width + i] = v;
        for b in 0..batch {
            match self {
                MemoryTask::Adding => {
                    let half = length / 2;
                    let marks = [rng.below(half.max(1)), half + rng.below(length - half)];
                    for t in 0..length {
                        let v = rng.uniform();
                        set(t, b, 0, v as f32);
                        if marks.contains(&t) {
                            set(t, b, 1, 1.0);
                            targets[b] += v;
                        }
                    }
                }
                MemoryTask::Copy => {
                    for k in 0..COPY_LEN {
                        let s = rng.below(SYMBOLS);
                        set(k, b, s, 1.0);
                        targets[k * batch + b] = s as f64;
                    }
                    for t in COPY_LEN..steps {
                        let go = t == COPY_LEN + length - 1;
                        set(t, b, if go { SYMBOLS + 1 } else { SYMBOLS }, 1.0);
                    }
                }
                MemoryTask::Recall => {
                    for t in 0..length {
                        let s = rng.below(SYMBOLS);
                        set(t, b, s, 1.0);
                        if t == 0 {
                            targets[b] = s as f64;
                        }
                    }
                }
            }
        }
        (x, targets)
    }
}

/// One training run.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// The task.
    pub task: MemoryTask,
    /// The recurrence.
    pub cell: CellKind,
    /// Hidden units.
    pub hidden: usize,
    /// Dependency distance T (≥ 2).
    pub length: usize,
    /// Training updates (the budget).
    pub steps: usize,
    /// Sequences per update.
    pub batch: usize,
    /// The optimiser (SGD shows an exploding gradient as a step of its size; Adam
    /// rescales every step).
    pub optimizer: OptimizerKind,
    /// The learning rate.
    pub lr: f32,
    /// Global gradient-norm clip (0: none).
    pub clip: f64,
    /// Every recurrent weight matrix is multiplied by this after initialisation
    /// (above about 1 the gradients of a vanilla RNN explode).
    pub weight_scale: f64,
    /// Seed of the weights and the training batches.
    pub seed: u64,
}

/// One point of the training curve: means over a hundredth of the run.
#[derive(Clone, Copy, Debug)]
pub struct MemoryPoint {
    /// Updates made.
    pub step: usize,
    /// Mean training loss.
    pub loss: f64,
    /// Mean global gradient norm before clipping.
    pub grad_norm: f64,
}

/// What a run learned.
#[derive(Clone, Debug)]
pub struct MemoryReport {
    /// The training curve.
    pub curve: Vec<MemoryPoint>,
    /// The held-out score (see [`MemoryTask::metric`]).
    pub score: f64,
    /// Whether the score passes the task's threshold.
    pub solved: bool,
    /// Parameters of the model.
    pub params: usize,
    /// Seconds of training.
    pub seconds: f64,
    /// The trained recurrent layer.
    pub layer: Recurrent<f32>,
    /// Set when training stopped on a non-finite loss (the score is then NaN).
    pub diverged: Option<usize>,
}

/// Trains a model on `cfg.task` at distance `cfg.length` and scores it on sequences
/// it never saw (drawn from a generator of their own).
pub fn train_memory(cfg: &MemoryConfig) -> Result<MemoryReport> {
    if cfg.length < 2 || cfg.steps == 0 || cfg.batch == 0 {
        return Err(Error::Config(format!(
            "the memory tasks need a length of at least 2, one update and one sequence a batch (got {}, {}, {})",
            cfg.length, cfg.steps, cfg.batch
        )));
    }
    let task = cfg.task;
    // What a step keeps per timestep and sequence: the input, the cell's gates and
    // states, the outputs and their gradients.
    let per_row = task.input_width() + cfg.hidden * (cfg.cell.gates() + 5);
    let floats = (task.steps(cfg.length) as u64)
        .saturating_mul(cfg.batch as u64)
        .saturating_mul(per_row as u64);
    crate::train::check_memory(floats.saturating_mul(4), "--lengths, --batch or --hidden")?;
    let mut rng = Rng::new(cfg.seed);
    let config = RecurrentConfig::new(cfg.cell, task.input_width(), cfg.hidden);
    let mut layer = config.init::<f32>(&mut rng)?;
    layer.visit_params_mut(&mut |name, t, _| {
        if name.starts_with("weight_hh") {
            t.data_mut()
                .iter_mut()
                .for_each(|v| *v = (*v as f64 * cfg.weight_scale) as f32);
        }
    });
    let mut head = Linear::new(cfg.hidden, task.outputs(), &mut rng);
    let mut opt = Optimizer::new(cfg.optimizer, 0.0);
    let every = (cfg.steps / 100).max(1);
    let (mut curve, mut window, mut norms, mut diverged) = (Vec::new(), 0.0, 0.0, None);
    let start = Instant::now();
    for step in 1..=cfg.steps {
        let (x, targets) = task.batch(cfg.length, cfg.batch, &mut rng);
        let (y, _) = layer.forward_train(&x, None, None, &mut rng)?;
        let mut model = Model {
            rnn: &mut layer,
            head: &mut head,
        };
        let (loss, dy) = loss_and_grad(task, &mut model, &y, &targets)?;
        if !loss.is_finite() {
            diverged = Some(step);
            // What came before the blow-up is part of the story.
            if step > 1 && !(step - 1).is_multiple_of(every) {
                let n = ((step - 2) % every + 1) as f64;
                curve.push(MemoryPoint {
                    step: step - 1,
                    loss: window / n,
                    grad_norm: norms / n,
                });
            }
            break;
        }
        model.rnn.backward(&dy, None)?;
        let norm = if cfg.clip > 0.0 {
            clip_grad_norm(&mut model, cfg.clip)
        } else {
            grad_norm(&mut model)
        };
        opt.step(&mut model, cfg.lr);
        model.zero_grad();
        window += loss;
        norms += norm;
        if step.is_multiple_of(every) || step == cfg.steps {
            let n = ((step - 1) % every + 1) as f64;
            curve.push(MemoryPoint {
                step,
                loss: window / n,
                grad_norm: norms / n,
            });
            (window, norms) = (0.0, 0.0);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let score = match diverged {
        Some(_) => f64::NAN,
        None => test_score(cfg, &mut layer, &mut head)?,
    };
    let params = count(&Model {
        rnn: &mut layer,
        head: &mut head,
    });
    Ok(MemoryReport {
        curve,
        score,
        solved: task.solved(score),
        params,
        seconds,
        layer,
        diverged,
    })
}

/// The held-out score, in chunks so memory stays bounded at long lengths.
fn test_score(
    cfg: &MemoryConfig,
    layer: &mut Recurrent<f32>,
    head: &mut Linear<f32>,
) -> Result<f64> {
    let mut rng = Rng::new(cfg.seed ^ 0x07e5_75e7);
    let (mut total, mut n) = (0.0, 0);
    let chunk = 64;
    for _ in 0..TEST_SEQUENCES / chunk {
        let (x, targets) = cfg.task.batch(cfg.length, chunk, &mut rng);
        let (y, _) = layer.forward(&x, None, None)?;
        let answers = answer_rows(cfg.task, &y);
        let mut out = vec![0.0f32; answers.len() / cfg.hidden * cfg.task.outputs()];
        head.forward(&answers, answers.len() / cfg.hidden, &mut out);
        match cfg.task {
            MemoryTask::Adding => {
                let t: Vec<f32> = targets.iter().map(|&v| v as f32).collect();
                total += mse(&out, &t, None)? * t.len() as f64;
            }
            _ => {
                let right = argmax_rows(&out, SYMBOLS)
                    .iter()
                    .zip(&targets)
                    .filter(|(&p, &t)| p == t as usize)
                    .count();
                total += right as f64;
            }
        }
        n += targets.len();
    }
    Ok(total / n as f64)
}

/// The outputs of the answer steps, `[answers · B, H]` (the last steps of `y`).
fn answer_rows(task: MemoryTask, y: &Tensor<f32>) -> Vec<f32> {
    let &[steps, batch, h] = y.shape() else {
        unreachable!("a layer's output is [T, B, H]")
    };
    y.data()[(steps - task.answers()) * batch * h..].to_vec()
}

/// The mean loss over the answer steps and its gradient on the layer's output
/// `[T, B, H]`, with the head's gradients added.
fn loss_and_grad(
    task: MemoryTask,
    model: &mut Model<'_, Recurrent<f32>>,
    y: &Tensor<f32>,
    targets: &[f64],
) -> Result<(f64, Tensor<f32>)> {
    let h = y.shape()[2];
    let answers = answer_rows(task, y);
    let rows = answers.len() / h;
    let k = task.outputs();
    let mut out = vec![0.0f32; rows * k];
    model.head.forward(&answers, rows, &mut out);
    let mut d_out = vec![0.0f32; rows * k];
    let loss = match task {
        MemoryTask::Adding => {
            let t: Vec<f32> = targets.iter().map(|&v| v as f32).collect();
            mse(&out, &t, Some(&mut d_out))?
        }
        _ => {
            let t: Vec<usize> = targets.iter().map(|&v| v as usize).collect();
            softmax_cross_entropy(&out, &t, k, Some(&mut d_out))
        }
    };
    let mut dy = Tensor::zeros(y.shape());
    let offset = dy.len() - answers.len();
    model
        .head
        .backward(&answers, &d_out, rows, Some(&mut dy.data_mut()[offset..]));
    Ok((loss, dy))
}

/// The trained layer in f64, for exact gradient-flow measurements.
pub fn to_f64(layer: &Recurrent<f32>) -> Result<Recurrent<f64>> {
    let cfg = layer.config().clone();
    let cells = layer
        .cells()
        .iter()
        .enumerate()
        .map(|(idx, p)| {
            let l = idx / cfg.directions();
            let mut q =
                CellParams::<f64>::zeros(cfg.cell, cfg.layer_input_size(l), cfg.hidden_size);
            for ((_, dst), (_, src)) in q.named_mut().zip(p.named()) {
                *dst = src.cast();
            }
            q
        })
        .collect();
    Recurrent::from_params(cfg, cells)
}

/// One input sequence of the task at distance `length` (≥ 2), `[steps, 1, width]` in
/// f64: what [`crate::gradflow::gradient_flow`] reads to measure a model on its task.
pub fn probe(task: MemoryTask, length: usize, seed: u64) -> Tensor<f64> {
    task.batch(length.max(2), 1, &mut Rng::new(seed)).0.cast()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_hold_what_each_task_promises() {
        let mut rng = Rng::new(3);
        let (x, t) = MemoryTask::Adding.batch(9, 4, &mut rng);
        assert_eq!(x.shape(), &[9, 4, 2]);
        for (b, &target) in t.iter().enumerate() {
            let at = |s: usize, i: usize| x.data()[(s * 4 + b) * 2 + i] as f64;
            let marks: Vec<usize> = (0..9).filter(|&s| at(s, 1) == 1.0).collect();
            assert_eq!(marks.len(), 2, "two markers");
            assert!(marks[0] < 4 && marks[1] >= 4, "one in each half: {marks:?}");
            let sum: f64 = marks.iter().map(|&s| at(s, 0)).sum();
            assert!((sum - target).abs() < 1e-6);
        }
        let (x, t) = MemoryTask::Copy.batch(6, 3, &mut rng);
        assert_eq!(x.shape(), &[16, 3, 10]);
        let hot = |s: usize, b: usize| {
            (0..10)
                .find(|&i| x.data()[(s * 3 + b) * 10 + i] == 1.0)
                .unwrap()
        };
        for b in 0..3 {
            for k in 0..COPY_LEN {
                assert_eq!(hot(k, b) as f64, t[k * 3 + b]);
            }
            // The go marker comes T − 1 blanks after the symbols.
            assert_eq!(hot(COPY_LEN + 5, b), SYMBOLS + 1);
            for s in (COPY_LEN..16).filter(|&s| s != COPY_LEN + 5) {
                assert_eq!(hot(s, b), SYMBOLS);
            }
        }
        let (x, t) = MemoryTask::Recall.batch(7, 2, &mut rng);
        assert_eq!(x.shape(), &[7, 2, 8]);
        for (b, &first) in t.iter().enumerate() {
            assert_eq!(x.data()[b * 8 + first as usize], 1.0);
        }
    }

    fn cfg(task: MemoryTask, cell: CellKind, length: usize, steps: usize) -> MemoryConfig {
        MemoryConfig {
            task,
            cell,
            hidden: 16,
            length,
            steps,
            batch: 32,
            optimizer: OptimizerKind::Adam,
            lr: 1e-2,
            clip: 1.0,
            weight_scale: 1.0,
            seed: 1,
        }
    }

    #[test]
    fn an_lstm_learns_a_short_adding_problem_and_chance_is_not_solved() {
        let r = train_memory(&cfg(MemoryTask::Adding, CellKind::Lstm, 6, 400)).unwrap();
        assert!(r.solved, "MSE {} after 400 updates", r.score);
        assert!(r.curve.first().unwrap().loss > r.curve.last().unwrap().loss);
        // One update learns nothing: the score stays near the chance level.
        let r = train_memory(&cfg(MemoryTask::Recall, CellKind::Gru, 6, 1)).unwrap();
        assert!(!r.solved && r.score < 0.4, "accuracy {}", r.score);
    }

    #[test]
    fn bad_settings_are_errors() {
        let mut c = cfg(MemoryTask::Copy, CellKind::Gru, 1, 10);
        assert!(train_memory(&c).is_err());
        c.length = 4;
        c.steps = 0;
        assert!(train_memory(&c).is_err());
    }

    #[test]
    fn the_f64_copy_computes_what_the_layer_does() {
        let r = train_memory(&cfg(MemoryTask::Recall, CellKind::Lstm, 4, 3)).unwrap();
        let mut layer = r.layer.clone();
        let x = probe(MemoryTask::Recall, 4, 5);
        let (y32, _) = layer.forward(&x.cast(), None, None).unwrap();
        let (y64, _) = to_f64(&r.layer).unwrap().forward(&x, None, None).unwrap();
        for (a, b) in y32.data().iter().zip(y64.data()) {
            assert!((*a as f64 - b).abs() < 1e-5);
        }
    }
}
