//! Throughput measurement of the char language model on synthetic tokens:
//! training steps (forward, cross-entropy, backward, global-norm clip 5, Adam)
//! and batch-1 sampling with the state carried; [`classify`], [`tag`], [`seq2seq`] and
//! [`ctc`] time the training steps of the other tasks on synthetic data.

pub mod classify;
pub mod ctc;
pub mod peak;
pub mod seq2seq;
pub mod tag;

use crate::cell::CellKind;
use crate::data::Vocab;
use crate::decode::{sample, SamplingConfig};
use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::limits::{MAX_BATCH, MAX_BENCH_VOCAB, MAX_SEQ_LEN};
use crate::model::{CharLm, CharLmConfig, Precision, Stepper, Weights};
use crate::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use crate::rng::Rng;
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct BenchConfig {
    /// Model sizes.
    pub model: CharLmConfig,
    /// Vocabulary size.
    pub vocab: usize,
    /// Sequences per training batch.
    pub batch: usize,
    /// Timesteps per training batch.
    pub seq_len: usize,
    /// Timed training steps (after one untimed warm-up step).
    pub steps: usize,
    /// Timed sampled characters (after a few untimed ones).
    pub sample_chars: usize,
    /// Arithmetic of the training step's matrix products.
    pub precision: Precision,
}

/// Measured figures; field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    /// Median training throughput over the timed steps.
    pub train_tokens_per_sec: f64,
    /// Model FLOPs per token × 3 (forward + backward) × tokens per second, in GFLOP/s.
    pub train_gflops: f64,
    /// Median seconds per training step.
    pub step_seconds: f64,
    /// Mean microseconds per sampled character (batch 1, temperature 1, state carried).
    pub sample_us_per_char: f64,
    /// The same with the weights held in bfloat16 ([`Weights::Bf16`]).
    pub sample_bf16_us_per_char: f64,
    /// The same with int8 weights ([`Weights::Int8`]).
    pub sample_int8_us_per_char: f64,
    /// Threads the f32 stepper shares each character's step between
    /// ([`Stepper::threads`]: one for weights under 512 KiB a layer); the bandwidth
    /// of its bound is theirs.
    pub sample_threads: usize,
    /// The same for bf16 weights.
    pub sample_bf16_threads: usize,
    /// The same for int8 weights.
    pub sample_int8_threads: usize,
    /// Peak resident memory of the process, in MiB (Linux; 0 elsewhere).
    pub peak_rss_mb: f64,
    /// Worker threads used.
    pub threads: usize,
    /// This machine's f32 FMA and bf16 peaks, measured with the same threads.
    #[serde(flatten)]
    pub limits: peak::Limits,
    /// `train_gflops` as a percentage of the peak of the training's arithmetic (the
    /// FMA peak in f32, the bf16 products' unit's peak with bf16 where the CPU has one).
    pub train_peak_percent: f64,
    /// The FLOPs a step executes ([`crate::model::CharLmConfig::executed_flops_per_step`])
    /// per second, in GFLOP/s: below `train_gflops`, which counts the first layer's
    /// input products a row per token as PyTorch runs them, where an embedding feeds it.
    pub train_executed_gflops: f64,
    /// `train_executed_gflops` as a percentage of the same peak.
    pub train_executed_peak_percent: f64,
    /// Bytes of weights batch-1 sampling reads per character in f32: every recurrent
    /// weight and the head, but in place of the first layer's `W_ih` one row of the
    /// stepper's table of projected inputs where it has one (and no embedding row).
    pub sample_weight_bytes: usize,
    /// Read bandwidth measured on a working set of `sample_weight_bytes` with
    /// `sample_threads` threads, in GB/s.
    pub sample_read_gbs: f64,
    /// The least time per character that bandwidth allows: weight bytes ÷ bandwidth, in µs.
    pub sample_bound_us_per_char: f64,
    /// The same for bf16 weights (half the bytes, bandwidth measured on that size).
    pub sample_bf16_bound_us_per_char: f64,
    /// The same for int8 weights (a quarter of the bytes).
    pub sample_int8_bound_us_per_char: f64,
}

/// Training throughput as a percentage of the peak that bounds it.
pub fn peak_percent(gflops: f64, limits: &peak::Limits, precision: Precision) -> f64 {
    let peak = match (precision, limits.bf16_peak_gflops) {
        (Precision::Bf16, Some(b)) => b,
        _ => limits.fma_peak_gflops,
    };
    100.0 * gflops / peak
}

/// Runs the measurement.
pub fn run(cfg: &BenchConfig) -> Result<BenchReport> {
    let within = |name: &str, v: usize, min: usize, max: usize| {
        if (min..=max).contains(&v) {
            Ok(())
        } else {
            Err(Error::Config(format!(
                "--{name} must be in [{min}, {max}], got {v}"
            )))
        }
    };
    within("vocab", cfg.vocab, 2, MAX_BENCH_VOCAB)?;
    within("batch", cfg.batch, 1, MAX_BATCH)?;
    within("seq-len", cfg.seq_len, 1, MAX_SEQ_LEN)?;
    within("steps", cfg.steps, 1, usize::MAX)?;
    crate::task::char_lm::check_training_memory(&cfg.model, cfg.vocab, cfg.batch, cfg.seq_len)?;
    let chars: Vec<char> = (0..cfg.vocab).map(bench_char).collect();
    let mut rng = Rng::new(1);
    let mut model = CharLm::new(&cfg.model, Vocab::from_chars(chars)?, &mut rng)?;
    model.set_precision(cfg.precision);
    let mut optimizer = Optimizer::new(OptimizerKind::Adam, 0.0);
    let n = cfg.batch * cfg.seq_len;
    let inputs: Vec<usize> = (0..n).map(|_| rng.below(cfg.vocab)).collect();
    let targets: Vec<usize> = (0..n).map(|_| rng.below(cfg.vocab)).collect();
    // Grown as steps are timed: the flag's value sizes no allocation up front.
    let mut times = Vec::with_capacity(cfg.steps.min(1024));
    for i in 0..=cfg.steps {
        let t0 = Instant::now();
        model.zero_grad();
        // On the pool, as the trainer runs its steps.
        let loss = crate::kernel::on_pool_polling(|| -> Result<f64> {
            let (loss, _) =
                model.train_step(&inputs, &targets, cfg.seq_len, cfg.batch, None, &mut rng)?;
            clip_grad_norm(&mut model, 5.0);
            optimizer.step(&mut model, 1e-3);
            Ok(loss)
        })?;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!("benchmark loss became {loss}")));
        }
        if i > 0 {
            times.push(t0.elapsed().as_secs_f64());
        }
    }
    times.sort_by(f64::total_cmp);
    let step_seconds = times[times.len() / 2];
    let tokens_per_sec = n as f64 / step_seconds;
    let flops = 3.0 * cfg.model.flops_per_token(cfg.vocab) as f64;

    let mut sample_us = [0.0; 3];
    // The threads the stepper shares a character's step between (for a small model,
    // whichever of one and two was faster): its bound is their bandwidth.
    let mut sample_threads = [1; 3];
    let mut reads_table = false;
    let kinds = [Weights::F32, Weights::Bf16, Weights::Int8];
    for ((us, threads), weights) in sample_us.iter_mut().zip(&mut sample_threads).zip(kinds) {
        let mut stepper = Stepper::new(&model, weights)?;
        reads_table = stepper.reads_table();
        *us = crate::kernel::on_pool(|| time_sampling(&mut stepper, cfg.sample_chars, &mut rng))?;
        // Once tuned: a small model may have found its step faster on both threads.
        *threads = stepper.threads();
    }
    let limits = peak::measure();
    // What a character reads: every weight but the embedding's, in the stepper's
    // precision, except W_ih0 where one f32 row of the stepper's table replaces it.
    let (mut weights, mut table_row) = (0, 0);
    model.visit_params(&mut |name, w| {
        if name == "rnn.weight_ih_l0" && reads_table {
            table_row = w.shape()[0];
        } else if !name.starts_with("embed") {
            weights += w.len();
        }
    });
    let (f32_bytes, bf16_bytes, int8_bytes) = (
        4 * (weights + table_row),
        2 * weights + 4 * table_row,
        weights + 4 * table_row,
    );
    let (f32_gbs, bf16_gbs, int8_gbs) = (
        peak::read_bandwidth_gbs(f32_bytes, sample_threads[0]),
        peak::read_bandwidth_gbs(bf16_bytes, sample_threads[1]),
        peak::read_bandwidth_gbs(int8_bytes, sample_threads[2]),
    );
    let train_gflops = flops * tokens_per_sec / 1e9;
    let executed = cfg
        .model
        .executed_flops_per_step(cfg.vocab, cfg.batch, cfg.seq_len) as f64;
    let train_executed_gflops = executed / step_seconds / 1e9;
    Ok(BenchReport {
        train_tokens_per_sec: tokens_per_sec,
        train_gflops,
        train_peak_percent: peak_percent(train_gflops, &limits, cfg.precision),
        train_executed_gflops,
        train_executed_peak_percent: peak_percent(train_executed_gflops, &limits, cfg.precision),
        limits,
        sample_weight_bytes: f32_bytes,
        sample_read_gbs: f32_gbs,
        sample_bound_us_per_char: f32_bytes as f64 / f32_gbs / 1e3,
        sample_bf16_bound_us_per_char: bf16_bytes as f64 / bf16_gbs / 1e3,
        sample_int8_bound_us_per_char: int8_bytes as f64 / int8_gbs / 1e3,
        step_seconds,
        sample_us_per_char: sample_us[0],
        sample_bf16_us_per_char: sample_us[1],
        sample_int8_us_per_char: sample_us[2],
        sample_threads: sample_threads[0],
        sample_bf16_threads: sample_threads[1],
        sample_int8_threads: sample_threads[2],
        peak_rss_mb: peak_rss_mb(),
        threads: rayon::current_num_threads(),
    })
}

/// Untimed training steps before the timed ones in the task benchmarks: the first
/// steps allocate buffers of each new batch shape.
pub const TASK_WARMUP_STEPS: usize = 3;

/// Measured training figures of a task; field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct TaskReport {
    /// `classify` or `tag`.
    pub task: &'static str,
    /// Valid tokens (timesteps or words) of the timed steps ÷ their total seconds.
    pub train_tokens_per_sec: f64,
    /// Counted FLOPs of the timed steps (see each task's `flops`) ÷ their seconds, in GFLOP/s.
    pub train_gflops: f64,
    /// Median seconds per training step.
    pub step_seconds: f64,
    /// Mean valid tokens per timed step.
    pub tokens_per_step: f64,
    /// Peak resident memory of the process, in MiB (Linux; 0 elsewhere).
    pub peak_rss_mb: f64,
    /// Worker threads used.
    pub threads: usize,
    /// This machine's f32 FMA and bf16 peaks, measured with the same threads.
    #[serde(flatten)]
    pub limits: peak::Limits,
    /// `train_gflops` as a percentage of the peak of the training's arithmetic.
    pub train_peak_percent: f64,
}

/// Runs [`TASK_WARMUP_STEPS`] + `work.len() − TASK_WARMUP_STEPS` training steps of
/// `model` as the trainer does (zero the gradients, `forward_backward(model, i)` in
/// `precision` returning the loss, global-norm clip 5, Adam lr 1e-3) and reports the
/// timed ones; `work[i]` is (valid tokens, counted FLOPs) of step `i`'s batch.
fn time_task_steps<M: Parameters<f32> + Send>(
    task: &'static str,
    model: &mut M,
    work: &[(usize, f64)],
    precision: Precision,
    mut forward_backward: impl FnMut(&mut M, usize) -> Result<f64> + Send,
) -> Result<TaskReport> {
    if work.len() <= TASK_WARMUP_STEPS {
        return Err(Error::Config("at least 1 timed step is needed".into()));
    }
    let mut optimizer = Optimizer::new(OptimizerKind::Adam, 0.0);
    let mut times = Vec::with_capacity(work.len());
    for i in 0..work.len() {
        let t0 = Instant::now();
        model.zero_grad();
        // On the pool, as the trainer runs its steps.
        let loss = crate::kernel::on_pool_polling(|| -> Result<f64> {
            let loss = crate::kernel::with_precision(precision, || forward_backward(model, i))?;
            clip_grad_norm(model, 5.0);
            optimizer.step(model, 1e-3);
            Ok(loss)
        })?;
        if !loss.is_finite() {
            return Err(Error::Diverged(format!("benchmark loss became {loss}")));
        }
        times.push(t0.elapsed().as_secs_f64());
    }
    let (times, work) = (&mut times[TASK_WARMUP_STEPS..], &work[TASK_WARMUP_STEPS..]);
    let seconds: f64 = times.iter().sum();
    let tokens: usize = work.iter().map(|w| w.0).sum();
    let flops: f64 = work.iter().map(|w| w.1).sum();
    times.sort_by(f64::total_cmp);
    let limits = peak::measure();
    let train_gflops = flops / seconds / 1e9;
    Ok(TaskReport {
        task,
        train_tokens_per_sec: tokens as f64 / seconds,
        train_gflops,
        step_seconds: times[times.len() / 2],
        tokens_per_step: tokens as f64 / times.len() as f64,
        peak_rss_mb: peak_rss_mb(),
        threads: rayon::current_num_threads(),
        train_peak_percent: peak_percent(train_gflops, &limits, precision),
        limits,
    })
}

/// The character of synthetic token `i` (< [`MAX_BENCH_VOCAB`]): distinct code points
/// from U+0100 on, stepping over the surrogates U+D800–U+DFFF, which are no characters.
fn bench_char(i: usize) -> char {
    const SURROGATES: u32 = 0xE000 - 0xD800;
    let cp = 0x100 + i as u32;
    let cp = if cp >= 0xD800 { cp + SURROGATES } else { cp };
    char::from_u32(cp).expect("below U+10FFFF and outside the surrogates")
}

/// Mean microseconds per character of batch-1 sampling with the state carried, once
/// the stepper has chosen how to read its weights (its first few hundred characters,
/// untimed).
fn time_sampling(stepper: &mut Stepper, chars: usize, rng: &mut Rng) -> Result<f64> {
    let sampling = SamplingConfig::default();
    let mut id = 0;
    let mut warm = 0;
    while warm < 10 || stepper.tuning() {
        id = sample(stepper.feed(id)?, &sampling, rng);
        warm += 1;
    }
    let t0 = Instant::now();
    for _ in 0..chars {
        id = sample(stepper.feed(id)?, &sampling, rng);
    }
    Ok(t0.elapsed().as_secs_f64() * 1e6 / chars.max(1) as f64)
}

/// Peak resident set size (VmHWM) of this process in MiB; 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

/// The model of a benchmark row: `cell`, layers × hidden, embedding width.
pub fn model(cell: CellKind, layers: usize, hidden: usize, embed: usize) -> CharLmConfig {
    CharLmConfig {
        cell,
        embed_size: embed,
        hidden_size: hidden,
        num_layers: layers,
        dropout: 0.0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_vocab_60000_has_no_surrogate_char() {
        // Token 0xD700 used to map to U+D800, and `char::from_u32` refused it.
        let chars: Vec<char> = (0..MAX_BENCH_VOCAB).map(bench_char).collect();
        let mut sorted = chars.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), MAX_BENCH_VOCAB, "distinct characters");
        assert!(Vocab::from_chars(chars).is_ok());
    }

    #[test]
    fn executed_flops_take_the_first_input_products_over_the_vocabulary() {
        let m = model(CellKind::Lstm, 1, 1024, 256);
        let counted = 3 * m.flops_per_token(65) * 6400;
        // Three products of 2·E·4H per row, over 65 rows instead of 6400.
        let left_out = 3 * 2 * 256 * 4096 * (6400 - 65);
        assert_eq!(m.executed_flops_per_step(65, 64, 100), counted - left_out);
        assert!((0.79..0.81).contains(&(1.0 - left_out as f64 / counted as f64)));
        // No embedding (one-hot inputs) or fewer rows than ids: all of it runs.
        let one_hot = model(CellKind::Gru, 2, 64, 0);
        let all = 3 * one_hot.flops_per_token(65) * 6400;
        assert_eq!(one_hot.executed_flops_per_step(65, 64, 100), all);
        let few = 3 * m.flops_per_token(65) * 40;
        assert_eq!(m.executed_flops_per_step(65, 4, 10), few);
    }
}
