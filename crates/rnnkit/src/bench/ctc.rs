//! Training throughput of the CTC recogniser ([`CtcModel`]) on random features: stack
//! and pad a batch, forward with dropout, linear, CTC loss and its gradient, backward,
//! global-norm clip 5, Adam — one `rnnkit ctc train` step.

use super::{time_task_steps, TaskReport, TASK_WARMUP_STEPS};
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::rng::Rng;
use crate::task::ctc::{stacked_len, CtcConfig, CtcModel, Utterance};

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct CtcBenchConfig {
    /// The model, dropout and stacking included.
    pub model: CtcConfig,
    /// Features per 10 ms frame.
    pub bands: usize,
    /// Labels besides the blank.
    pub labels: usize,
    /// Fewest and most frames of an utterance.
    pub frames: (usize, usize),
    /// Utterances per batch.
    pub batch: usize,
    /// Timed training steps, each on its own batch (after [`TASK_WARMUP_STEPS`]).
    pub steps: usize,
    /// Seed of the data ([`utterances`]); the model and dropout use `seed + 1`.
    pub seed: u64,
    /// Arithmetic of the matrix products.
    pub precision: Precision,
}

impl CtcBenchConfig {
    fn validate(&self) -> Result<()> {
        let c = self;
        if c.bands == 0 || c.labels == 0 || c.batch == 0 || c.steps == 0 || c.model.stack == 0 {
            return Err(Error::Config(
                "bands, labels, batch, steps and stack must all be at least 1".into(),
            ));
        }
        let (lo, hi) = c.frames;
        if lo < 4 * c.model.stack || lo > hi || hi > 100_000 {
            return Err(Error::Config(format!(
                "utterance lengths must satisfy 4·stack ≤ min ≤ max ≤ 100000 frames, got {lo}-{hi}"
            )));
        }
        let m = &c.model;
        let (d, g, h) = (
            if m.bidirectional { 2.0 } else { 1.0 },
            m.cell.gates() as f64,
            m.hidden_size as f64,
        );
        let utts = ((TASK_WARMUP_STEPS + c.steps) * c.batch) as f64;
        let data = utts * hi as f64 * c.bands as f64;
        let steps = (c.batch * stacked_len(hi, m.stack)) as f64;
        let layer = d * (2.0 * g * h + 6.0 * h) + ((c.bands * m.stack) as f64).max(d * h);
        let activations = steps * (m.num_layers as f64 * layer + 3.0 * (c.labels + 1) as f64);
        crate::train::check_memory(
            (4.0 * (data + activations)) as u64,
            "--hidden, --layers, --batch, --max-len, --bands or --steps",
        )
    }
}

/// The `(TASK_WARMUP_STEPS + steps) · batch` random utterances of the benchmark, batch
/// after batch, from `Rng::new(seed)`: for each its frames `lo + below(hi − lo + 1)`, a
/// target of `1 + below(⌈frames/stack⌉ / 4)` labels each `1 + below(labels)`, then its
/// `frames · bands` values `uniform_in(−1, 1)`. `bench/pytorch_ref.py` draws the same numbers.
pub fn utterances(cfg: &CtcBenchConfig) -> Vec<Utterance> {
    let mut rng = Rng::new(cfg.seed);
    let n = (TASK_WARMUP_STEPS + cfg.steps) * cfg.batch;
    let (lo, hi) = cfg.frames;
    (0..n)
        .map(|_| {
            let frames = lo + rng.below(hi - lo + 1);
            let len = 1 + rng.below(stacked_len(frames, cfg.model.stack) / 4);
            let target = (0..len).map(|_| 1 + rng.below(cfg.labels)).collect();
            let values = (0..frames * cfg.bands)
                .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
                .collect();
            Utterance {
                frames,
                values,
                target,
            }
        })
        .collect()
}

/// Counted FLOPs of one training step over `steps` valid (stacked) steps in all:
/// 3 × the multiply-adds ×2 of the recurrent layers and the output layer per step
/// (forward and backward ≈ 3× forward). The CTC recursion, stacking, dropout, clipping
/// and Adam are not counted.
pub fn flops(model: &CtcModel, steps: usize) -> f64 {
    3.0 * steps as f64 * model.flops_per_step() as f64
}

/// Runs the measurement: [`TASK_WARMUP_STEPS`] untimed steps, then `steps` timed ones,
/// each on its own batch of [`utterances`]; tokens are valid stacked steps.
pub fn run(cfg: &CtcBenchConfig) -> Result<TaskReport> {
    cfg.validate()?;
    let utts = utterances(cfg);
    let labels: Vec<char> = (0..cfg.labels).map(super::bench_char).collect();
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut model = CtcModel::new(&cfg.model, cfg.bands, labels, &mut rng)?;
    let batches: Vec<&[Utterance]> = utts.chunks(cfg.batch).collect();
    let work: Vec<(usize, f64)> = batches
        .iter()
        .map(|b| {
            let steps = b
                .iter()
                .map(|u| stacked_len(u.frames, cfg.model.stack))
                .sum();
            (steps, flops(&model, steps))
        })
        .collect();
    time_task_steps("ctc", &mut model, &work, cfg.precision, |m, i| {
        let utts: Vec<&Utterance> = batches[i].iter().collect();
        let targets: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
        let batch = m.batch(&utts)?;
        m.train_step(&batch, &targets, &mut rng)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CellKind;

    fn config() -> CtcBenchConfig {
        CtcBenchConfig {
            model: CtcConfig {
                cell: CellKind::Lstm,
                hidden_size: 8,
                num_layers: 2,
                bidirectional: true,
                dropout: 0.1,
                stack: 3,
            },
            bands: 5,
            labels: 4,
            frames: (12, 40),
            batch: 3,
            steps: 2,
            seed: 7,
            precision: Precision::F32,
        }
    }

    #[test]
    fn utterances_are_seeded_feasible_and_within_the_asked_sizes() {
        let cfg = config();
        let u = utterances(&cfg);
        assert_eq!(u.len(), (TASK_WARMUP_STEPS + 2) * 3);
        assert_eq!(u, utterances(&cfg));
        for x in &u {
            assert!((12..=40).contains(&x.frames));
            assert_eq!(x.values.len(), x.frames * 5);
            // At most a quarter of the steps: feasible even with every label repeated.
            assert!(!x.target.is_empty() && 2 * x.target.len() <= stacked_len(x.frames, 3));
            assert!(x.target.iter().all(|&l| (1..=4).contains(&l)));
        }
    }

    #[test]
    fn a_short_run_reports_positive_figures_and_bad_sizes_are_refused() {
        let r = run(&config()).unwrap();
        assert_eq!(r.task, "ctc");
        assert!(r.train_tokens_per_sec > 0.0 && r.train_gflops > 0.0);
        let bad = CtcBenchConfig {
            frames: (5, 40),
            ..config()
        };
        assert!(run(&bad).is_err());
    }
}
