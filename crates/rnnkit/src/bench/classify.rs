//! Training throughput of the sequence classifier ([`Classifier`]) on random series:
//! standardise and pad a batch, forward with dropout, pooled cross-entropy, backward,
//! global-norm clip 5, Adam — one `rnnkit classify train` step.

use super::{time_task_steps, TaskReport, TASK_WARMUP_STEPS};
use crate::data::Series;
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::rng::Rng;
use crate::task::classifier::{Classifier, ClassifierConfig, Standardizer};

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct ClassifyBenchConfig {
    /// The model, dropout included.
    pub model: ClassifierConfig,
    /// Input channels C.
    pub channels: usize,
    /// Classes K.
    pub classes: usize,
    /// Fewest steps of a series.
    pub min_len: usize,
    /// Most steps of a series.
    pub max_len: usize,
    /// Series per batch.
    pub batch: usize,
    /// Timed training steps, each on its own batch (after [`TASK_WARMUP_STEPS`]).
    pub steps: usize,
    /// Seed of the data ([`series`]); the model and dropout use `seed + 1`.
    pub seed: u64,
    /// Arithmetic of the matrix products.
    pub precision: Precision,
}

impl ClassifyBenchConfig {
    fn validate(&self) -> Result<()> {
        let c = self;
        if c.channels == 0 || c.classes < 2 || c.batch == 0 || c.steps == 0 {
            return Err(Error::Config(
                "channels ≥ 1, classes ≥ 2, batch ≥ 1 and steps ≥ 1 are needed".into(),
            ));
        }
        if c.min_len == 0 || c.min_len > c.max_len {
            return Err(Error::Config(format!(
                "series lengths must satisfy 1 ≤ --min-len ≤ --max-len, got {} and {}",
                c.min_len, c.max_len
            )));
        }
        let m = &c.model;
        let (d, g, h) = (
            if m.bidirectional { 2.0 } else { 1.0 },
            m.cell.gates() as f64,
            m.hidden_size as f64,
        );
        let series = ((TASK_WARMUP_STEPS + c.steps) * c.batch) as f64;
        let data = series * c.max_len as f64 * c.channels as f64;
        // Per layer and padded step: gates twice, a few H-wide buffers and the input.
        let layer = d * (2.0 * g * h + 6.0 * h) + (c.channels as f64).max(d * h);
        let activations = (c.batch * c.max_len) as f64 * m.num_layers as f64 * layer;
        crate::train::check_memory(
            (4.0 * (data + activations)) as u64,
            "--hidden, --layers, --batch, --max-len, --channels or --steps",
        )
    }
}

/// The `(TASK_WARMUP_STEPS + steps) · batch` random series of the benchmark, batch
/// after batch, from `Rng::new(seed)`: for each series its length
/// `min_len + below(max_len − min_len + 1)`, its class `below(classes)`, then its
/// `len · channels` values `uniform_in(−1, 1)` step by step. `bench/pytorch_ref.py`
/// draws the same numbers.
pub fn series(cfg: &ClassifyBenchConfig) -> Vec<Series> {
    let mut rng = Rng::new(cfg.seed);
    let n = (TASK_WARMUP_STEPS + cfg.steps) * cfg.batch;
    (0..n)
        .map(|_| {
            let len = cfg.min_len + rng.below(cfg.max_len - cfg.min_len + 1);
            let label = rng.below(cfg.classes);
            let values = (0..len * cfg.channels)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            Series { values, len, label }
        })
        .collect()
}

/// Counted FLOPs of one training step on `batch` series with `tokens` valid steps in all:
///
/// `3 · (tokens · Σ_l D·2·(in_l + H)·G·H + batch · 2·D·H·K)`, with `in_0 = C`,
/// `in_l = D·H` for `l > 0`, D directions and G gates (4 LSTM, 3 GRU, 1 RNN):
/// the multiply-adds ×2 of the recurrent layers over the valid steps plus the head's,
/// ×3 for forward and backward (≈ 2× forward). Padding, standardisation, pooling,
/// dropout, clipping and Adam are not counted.
pub fn flops(cfg: &ClassifyBenchConfig, tokens: usize, batch: usize) -> f64 {
    let m = &cfg.model;
    let d = if m.bidirectional { 2.0 } else { 1.0 };
    let (g, h) = (m.cell.gates() as f64, m.hidden_size as f64);
    let per_token: f64 = (0..m.num_layers)
        .map(|l| {
            let input = if l == 0 { cfg.channels as f64 } else { d * h };
            d * 2.0 * (input + h) * g * h
        })
        .sum();
    let head = 2.0 * d * h * cfg.classes as f64;
    3.0 * (tokens as f64 * per_token + batch as f64 * head)
}

/// Runs the measurement: [`TASK_WARMUP_STEPS`] untimed steps, then `steps` timed
/// ones, each on its own batch of [`series`]; tokens are valid timesteps.
pub fn run(cfg: &ClassifyBenchConfig) -> Result<TaskReport> {
    cfg.validate()?;
    let cases = series(cfg);
    let all: Vec<&Series> = cases.iter().collect();
    let norm = Standardizer::fit(&all, cfg.channels);
    let labels = (0..cfg.classes).map(|k| format!("c{k}")).collect();
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut model = Classifier::new(&cfg.model, cfg.channels, labels, norm, &mut rng)?;
    let batches: Vec<&[Series]> = cases.chunks(cfg.batch).collect();
    let work: Vec<(usize, f64)> = batches
        .iter()
        .map(|b| {
            let tokens = b.iter().map(|s| s.len).sum();
            (tokens, flops(cfg, tokens, b.len()))
        })
        .collect();
    time_task_steps("classify", &mut model, &work, cfg.precision, |m, i| {
        let cases: Vec<&Series> = batches[i].iter().collect();
        let targets: Vec<usize> = cases.iter().map(|s| s.label).collect();
        let batch = m.batch(&cases)?;
        m.train_step(&batch, &targets, &mut rng)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::PoolKind;
    use crate::CellKind;

    fn config() -> ClassifyBenchConfig {
        ClassifyBenchConfig {
            model: ClassifierConfig {
                cell: CellKind::Lstm,
                hidden_size: 8,
                num_layers: 2,
                bidirectional: true,
                dropout: 0.2,
                pool: PoolKind::Max,
            },
            channels: 3,
            classes: 4,
            min_len: 2,
            max_len: 6,
            batch: 5,
            steps: 2,
            seed: 7,
            precision: Precision::F32,
        }
    }

    #[test]
    fn series_are_seeded_and_within_the_asked_sizes() {
        let cfg = config();
        let s = series(&cfg);
        assert_eq!(s.len(), (TASK_WARMUP_STEPS + 2) * 5);
        assert_eq!(s, series(&cfg), "same seed, same series");
        for (i, x) in s.iter().enumerate() {
            assert!((2..=6).contains(&x.len), "series {i} has {} steps", x.len);
            assert!(x.label < 4, "series {i} has class {}", x.label);
            assert_eq!(x.values.len(), x.len * 3, "series {i}");
            assert!(
                x.values.iter().all(|v| (-1.0..1.0).contains(v)),
                "series {i}"
            );
        }
    }

    #[test]
    fn flops_count_both_directions_every_layer_and_the_head() {
        // Layer 0: 2·2·(3 + 8)·4·8 = 1408 per step; layer 1: 2·2·(16 + 8)·4·8 = 3072;
        // head: 2·2·8·4 = 128 per series.
        let f = flops(&config(), 10, 2);
        assert_eq!(f, 3.0 * (10.0 * (1408.0 + 3072.0) + 2.0 * 128.0));
    }

    #[test]
    fn a_short_run_reports_positive_figures() {
        let r = run(&config()).unwrap();
        assert_eq!(r.task, "classify");
        assert!(r.train_tokens_per_sec > 0.0 && r.train_gflops > 0.0 && r.step_seconds > 0.0);
        assert!(
            (2.0 * 5.0..=6.0 * 5.0).contains(&r.tokens_per_step),
            "{r:?}"
        );
    }

    #[test]
    fn impossible_lengths_are_refused() {
        let cfg = ClassifyBenchConfig {
            min_len: 9,
            ..config()
        };
        let e = run(&cfg).unwrap_err().to_string();
        assert!(e.contains("--min-len"), "{e}");
    }
}
