//! Training throughput of the encoder–decoder ([`Seq2seq`]) on random pairs shaped like
//! grapheme-to-phoneme data (teacher-forced forward with dropout, cross-entropy,
//! backward, global-norm clip 5, Adam — one `rnnkit seq2seq train` step), and its
//! decoding speed one source at a time, greedy and with a beam.

use super::{time_task_steps, TaskReport, TASK_WARMUP_STEPS};
use crate::data::{Split, TokenVocab, SPECIALS};
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::rng::Rng;
use crate::seq2seq::{PairBatch, Seq2seq, Seq2seqConfig};
use serde::Serialize;
use std::time::Instant;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct Seq2seqBenchConfig {
    /// The model, dropout included.
    pub model: Seq2seqConfig,
    /// Source tokens.
    pub src_vocab: usize,
    /// Target tokens, the two specials not counted.
    pub tgt_vocab: usize,
    /// Fewest and most source tokens of a pair (the target has one more, as many, or
    /// one fewer, at least 1).
    pub lengths: (usize, usize),
    /// Pairs per batch.
    pub batch: usize,
    /// Timed training steps, each on its own batch (after [`TASK_WARMUP_STEPS`]).
    pub steps: usize,
    /// Sources decoded one at a time, greedy and with the beam.
    pub decode_sources: usize,
    /// Width of the timed beam.
    pub beam: usize,
    /// Seed of the data ([`pairs`]); the model and dropout use `seed + 1`.
    pub seed: u64,
    /// Arithmetic of the matrix products.
    pub precision: Precision,
}

/// Measured figures; field names are the `--json` keys.
#[derive(Clone, Debug, Serialize)]
pub struct Seq2seqReport {
    /// Training figures; tokens are source tokens plus target tokens (end token included).
    #[serde(flatten)]
    pub train: TaskReport,
    /// Sources decoded per second, one at a time, greedy.
    pub greedy_words_per_sec: f64,
    /// Sources decoded per second, one at a time, with a beam of `beam`.
    pub beam_words_per_sec: f64,
    /// Width of that beam.
    pub beam: usize,
}

impl Seq2seqBenchConfig {
    fn validate(&self) -> Result<()> {
        let (lo, hi) = self.lengths;
        if self.src_vocab == 0 || self.tgt_vocab == 0 || self.batch == 0 || self.steps == 0 {
            return Err(Error::Config(
                "vocabularies, batch and steps must be at least 1".into(),
            ));
        }
        if lo == 0 || lo > hi {
            return Err(Error::Config(format!(
                "source lengths must satisfy 1 ≤ min ≤ max, got {lo} and {hi}"
            )));
        }
        if self.beam == 0 {
            return Err(Error::Config("--beam must be at least 1".into()));
        }
        self.model.validate()?;
        let h = self.model.hidden_size as f64;
        let g = self.model.cell.gates() as f64;
        // Per target step and pair: the saved gates, states, attention and inputs.
        let per_step = self.model.num_layers as f64 * (2.0 * g * h + 8.0 * h) + (hi + 2) as f64 * h;
        crate::train::check_memory(
            (4.0 * per_step * (hi + 2) as f64 * self.batch as f64 * 2.0) as u64,
            "--hidden, --layers or --batch",
        )
    }
}

/// The `(TASK_WARMUP_STEPS + steps) · batch` random pairs, batch after batch, from
/// `Rng::new(seed)`: for each pair its source length `lo + below(hi − lo + 1)`, its
/// target length `max(1, len + below(3) − 1)`, then the source ids `below(src_vocab)`
/// and the target ids `below(tgt_vocab)` (before the specials are added).
pub fn pairs(cfg: &Seq2seqBenchConfig) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut rng = Rng::new(cfg.seed);
    let (lo, hi) = cfg.lengths;
    (0..(TASK_WARMUP_STEPS + cfg.steps) * cfg.batch)
        .map(|_| {
            let len = lo + rng.below(hi - lo + 1);
            let tlen = (len + rng.below(3)).saturating_sub(1).max(1);
            let src = (0..len).map(|_| rng.below(cfg.src_vocab)).collect();
            let tgt = (0..tlen)
                .map(|_| SPECIALS.len() + rng.below(cfg.tgt_vocab))
                .collect();
            (src, tgt)
        })
        .collect()
}

/// Counted FLOPs of one training step: 3 × (Σ source tokens × the encoder's
/// multiply-adds ×2 per token + Σ target tokens (end included) × the decoder's,
/// attention at the batch's mean source length) — see [`Seq2seq::flops`].
pub fn flops(model: &Seq2seq, batch: &[(Vec<usize>, Vec<usize>)]) -> (usize, f64) {
    let src: usize = batch.iter().map(|(s, _)| s.len()).sum();
    let tgt: usize = batch.iter().map(|(_, t)| t.len() + 1).sum();
    let (enc, dec) = model.flops(src as f64 / batch.len().max(1) as f64);
    (
        src + tgt,
        3.0 * (src as f64 * enc as f64 + tgt as f64 * dec as f64),
    )
}

/// The benchmark's model: `cfg.model` over vocabularies of `t0`, `t1`, … (the
/// target's after `</s>` and `<s>`).
pub fn model(cfg: &Seq2seqBenchConfig, rng: &mut Rng) -> Result<Seq2seq> {
    let names = |n: usize, specials: bool| {
        let mut v: Vec<String> = if specials {
            SPECIALS.iter().map(|s| s.to_string()).collect()
        } else {
            Vec::new()
        };
        v.extend((0..n).map(|i| format!("t{i}")));
        TokenVocab::new(v).expect("distinct")
    };
    Seq2seq::new(
        &cfg.model,
        names(cfg.src_vocab, false),
        names(cfg.tgt_vocab, true),
        (Split::Space, Split::Space),
        rng,
    )
}

/// Runs the measurement: training steps, then batch-1 decoding of the first
/// `decode_sources` sources (greedy, then with the beam; a few untimed first).
pub fn run(cfg: &Seq2seqBenchConfig) -> Result<Seq2seqReport> {
    cfg.validate()?;
    let data = pairs(cfg);
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut model = model(cfg, &mut rng)?;
    let batches: Vec<&[(Vec<usize>, Vec<usize>)]> = data.chunks(cfg.batch).collect();
    let work: Vec<(usize, f64)> = batches.iter().map(|b| flops(&model, b)).collect();
    let mut batch = PairBatch::default();
    let train = time_task_steps("seq2seq", &mut model, &work, cfg.precision, |m, i| {
        let refs: Vec<(&[usize], &[usize])> = batches[i]
            .iter()
            .map(|(s, t)| (s.as_slice(), t.as_slice()))
            .collect();
        batch.fill(&refs)?;
        Ok(m.train_step(&batch, &mut rng)?.mean)
    })?;
    let sources: Vec<&Vec<usize>> = data
        .iter()
        .map(|(s, _)| s)
        .take(cfg.decode_sources.max(1))
        .collect();
    let mut time = |beam: usize| -> Result<f64> {
        for s in sources.iter().take(3) {
            model.beam(s, beam, 1.0)?;
        }
        let t0 = Instant::now();
        for s in &sources {
            model.beam(s, beam, 1.0)?;
        }
        Ok(sources.len() as f64 / t0.elapsed().as_secs_f64())
    };
    let greedy = time(1)?;
    let beam = time(cfg.beam)?;
    Ok(Seq2seqReport {
        train,
        greedy_words_per_sec: greedy,
        beam_words_per_sec: beam,
        beam: cfg.beam,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seq2seq::AttentionKind;
    use crate::CellKind;

    #[test]
    fn pairs_are_seeded_and_a_short_run_reports_positive_figures() {
        let cfg = Seq2seqBenchConfig {
            model: Seq2seqConfig {
                cell: CellKind::Lstm,
                attention: AttentionKind::General,
                embed: 4,
                hidden_size: 8,
                num_layers: 1,
                bidirectional: true,
                dropout: 0.1,
                label_smoothing: 0.0,
            },
            src_vocab: 5,
            tgt_vocab: 6,
            lengths: (2, 5),
            batch: 4,
            steps: 2,
            decode_sources: 3,
            beam: 2,
            seed: 3,
            precision: Precision::F32,
        };
        let p = pairs(&cfg);
        assert_eq!(p, pairs(&cfg));
        assert_eq!(p.len(), (TASK_WARMUP_STEPS + 2) * 4);
        for (s, t) in &p {
            assert!((2..=5).contains(&s.len()) && !t.is_empty() && t.len() <= s.len() + 1);
            assert!(s.iter().all(|&i| i < 5) && t.iter().all(|&i| (2..8).contains(&i)));
        }
        let r = run(&cfg).unwrap();
        assert!(r.train.train_tokens_per_sec > 0.0 && r.train.train_gflops > 0.0);
        assert!(r.greedy_words_per_sec > 0.0 && r.beam_words_per_sec > 0.0);
        let bad = Seq2seqBenchConfig {
            lengths: (6, 5),
            ..cfg
        };
        assert!(run(&bad).unwrap_err().to_string().contains("min ≤ max"));
    }
}
