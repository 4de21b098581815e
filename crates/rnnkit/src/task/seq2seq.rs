//! Transduction (sequence to sequence of another length) with the encoder–decoder of
//! [`crate::seq2seq`]: the training pairs, validation by greedy decoding, and the scores
//! (sequence and token error rates against every reference of a source).

use super::{bucketed_batches, padding_fraction, BatchLoss, EpochOrder, Metrics, Selection, Task};
use crate::data::Example;
use crate::error::{Error, Result};
use crate::rng::Rng;
use crate::seq2seq::{DecodeOptions, PairBatch, Seq2seq, Seq2seqConfig};
use crate::tensor::Tensor;
use crate::train::{GradientSink, Shard};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// A source with its references, as ids of a model's vocabularies.
#[derive(Clone, Debug, PartialEq)]
pub struct EncodedExample {
    /// Source ids.
    pub source: Vec<usize>,
    /// Reference target ids (no specials), at least one.
    pub targets: Vec<Vec<usize>>,
}

/// The examples as ids of `model`'s vocabularies; an unknown token is an error naming
/// it and its line (`what` names the data).
pub fn encode_examples(
    model: &Seq2seq,
    examples: &[Example],
    what: &str,
) -> Result<Vec<EncodedExample>> {
    examples
        .iter()
        .map(|e| {
            let at = |k: usize| format!("{what}:{}", e.lines.get(k).copied().unwrap_or(0));
            let source = model
                .source_vocab
                .encode(&e.source, &format!("{}: source", at(0)))?;
            let targets = e
                .targets
                .iter()
                .enumerate()
                .map(|(k, t)| model.target_vocab.encode(t, &format!("{}: target", at(k))))
                .collect::<Result<_>>()?;
            Ok(EncodedExample { source, targets })
        })
        .collect()
}

/// Sequence and token error rates of outputs against references.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TransductionScores {
    /// Sources scored.
    pub sources: usize,
    /// Outputs equal to none of their references.
    pub wrong: usize,
    /// Σ over sources of the edit distance to the closest reference.
    pub edits: usize,
    /// Σ over sources of that reference's length.
    pub reference_tokens: usize,
}

impl TransductionScores {
    /// Scores `outputs` against the references of `examples` (in the same order).
    pub fn new(outputs: &[Vec<usize>], examples: &[EncodedExample]) -> Self {
        let mut s = TransductionScores {
            sources: outputs.len(),
            ..Default::default()
        };
        for (out, ex) in outputs.iter().zip(examples) {
            let (dist, len) = ex
                .targets
                .iter()
                .map(|r| (edit_distance(out, r), r.len()))
                .min()
                .unwrap_or((out.len(), 0));
            s.wrong += usize::from(dist > 0);
            s.edits += dist;
            s.reference_tokens += len;
        }
        s
    }

    /// [`TransductionScores::new`] with every id first replaced by its class
    /// (`classes[id]`, e.g. [`TokenVocab::digitless_classes`](crate::data::TokenVocab::digitless_classes)):
    /// tokens of one class count as equal.
    pub fn with_classes(
        outputs: &[Vec<usize>],
        examples: &[EncodedExample],
        classes: &[usize],
    ) -> Self {
        let class = |ids: &[usize]| -> Vec<usize> {
            ids.iter()
                .map(|&i| classes.get(i).copied().unwrap_or(i))
                .collect()
        };
        let outputs: Vec<Vec<usize>> = outputs.iter().map(|o| class(o)).collect();
        let examples: Vec<EncodedExample> = examples
            .iter()
            .map(|e| EncodedExample {
                source: e.source.clone(),
                targets: e.targets.iter().map(|t| class(t)).collect(),
            })
            .collect();
        Self::new(&outputs, &examples)
    }

    /// Sequence (word) error rate: the fraction of outputs equal to no reference.
    pub fn wer(&self) -> f64 {
        self.wrong as f64 / self.sources.max(1) as f64
    }

    /// Token (phoneme) error rate: edits to the closest reference ÷ its length, over all sources.
    pub fn per(&self) -> f64 {
        self.edits as f64 / self.reference_tokens.max(1) as f64
    }
}

/// Levenshtein distance (insertions, deletions, substitutions all cost 1).
pub fn edit_distance<T: PartialEq>(a: &[T], b: &[T]) -> usize {
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    let mut cur = vec![0; b.len() + 1];
    for (i, x) in a.iter().enumerate() {
        cur[0] = i + 1;
        for (j, y) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(x != y))
                .min(prev[j + 1] + 1)
                .min(cur[j] + 1);
        }
        std::mem::swap(&mut prev, &mut cur);
    }
    prev[b.len()]
}

/// Decodes the sources of `examples` with `opts` and scores the outputs; also returns them.
pub fn evaluate(
    model: &mut Seq2seq,
    examples: &[EncodedExample],
    opts: &DecodeOptions,
) -> Result<(TransductionScores, Vec<Vec<usize>>)> {
    let sources: Vec<Vec<usize>> = examples.iter().map(|e| e.source.clone()).collect();
    let outputs: Vec<Vec<usize>> = model
        .decode(&sources, opts)?
        .into_iter()
        .map(|d| d.ids)
        .collect();
    Ok((TransductionScores::new(&outputs, examples), outputs))
}

/// Mean teacher-forced loss per target token over the first reference of each example.
pub fn mean_loss(model: &mut Seq2seq, examples: &[EncodedExample], batch: usize) -> Result<f64> {
    let (mut sum, mut weight) = (0.0, 0.0);
    for chunk in examples.chunks(batch.max(1)) {
        let pairs: Vec<(&[usize], &[usize])> = chunk
            .iter()
            .map(|e| (e.source.as_slice(), e.targets[0].as_slice()))
            .collect();
        let b = PairBatch::new(&pairs)?;
        let logits = model.forward(&b, None)?;
        let l = model.loss(&b, &logits, None)?;
        sum += l.mean * l.weight;
        weight += l.weight;
    }
    Ok(sum / weight.max(1.0))
}

/// Checkpoint metadata: the validation pairs file of a run (a resumed run reads it again).
pub const META_DEV_PATH: &str = "train.dev_path";
/// Checkpoint metadata: the test pairs file of a run.
pub const META_TEST_PATH: &str = "train.test_path";

/// A [`Seq2seq`] with its training pairs (every reference a pair) and validation examples.
pub struct Seq2seqTask {
    /// The model.
    pub model: Seq2seq,
    pairs: Vec<(Vec<usize>, Vec<usize>)>,
    dev: Vec<EncodedExample>,
    batch: usize,
    seed: u64,
    order: EpochOrder,
    files: Vec<(&'static str, String)>,
    shard: Shard,
    /// The batch of the last step, its storage reused by the next.
    inputs: PairBatch,
    /// Storage for a step's (source, target) pairs (see [`super::recycled`]).
    batch_pairs: Vec<(&'static [usize], &'static [usize])>,
}

impl Seq2seqTask {
    /// Trains `model` on every (source, reference) of `train`, validating on `dev`.
    pub fn new(
        model: Seq2seq,
        train: &[EncodedExample],
        dev: Vec<EncodedExample>,
        batch: usize,
        seed: u64,
    ) -> Result<Self> {
        let pairs: Vec<(Vec<usize>, Vec<usize>)> = train
            .iter()
            .flat_map(|e| e.targets.iter().map(|t| (e.source.clone(), t.clone())))
            .collect();
        if pairs.is_empty() {
            return Err(Error::Input("no training pairs".into()));
        }
        Ok(Seq2seqTask {
            model,
            pairs,
            dev,
            batch,
            seed,
            order: EpochOrder::default(),
            shard: Shard::WHOLE,
            inputs: PairBatch::default(),
            batch_pairs: Vec::new(),
            files: Vec::new(),
        })
    }

    /// Records the validation and test files in every checkpoint ([`META_DEV_PATH`],
    /// [`META_TEST_PATH`]), so that a resumed run reads the same ones.
    pub fn with_files(mut self, dev: Option<&Path>, test: Option<&Path>) -> Self {
        for (key, path) in [(META_DEV_PATH, dev), (META_TEST_PATH, test)] {
            if let Some(p) = path {
                let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
                self.files.push((key, abs.display().to_string()));
            }
        }
        self
    }

    fn lengths(&self) -> Vec<usize> {
        self.pairs.iter().map(|(s, _)| s.len()).collect()
    }

    /// Mean source and target (with its end token) lengths of the training pairs.
    fn mean_lengths(&self) -> (f64, f64) {
        let n = self.pairs.len().max(1) as f64;
        let s: usize = self.pairs.iter().map(|(s, _)| s.len()).sum();
        let t: usize = self.pairs.iter().map(|(_, t)| t.len() + 1).sum();
        (s as f64 / n, t as f64 / n)
    }
}

super::params_of_model!(Seq2seqTask);

impl Task for Seq2seqTask {
    type Config = Seq2seqConfig;

    fn kind(&self) -> &'static str {
        "seq2seq"
    }

    fn selection(&self) -> Selection {
        if self.dev.is_empty() {
            Selection::MinLoss
        } else {
            Selection::MaxScore("accuracy")
        }
    }

    fn describe(&self) -> String {
        let lengths = self.lengths();
        let (s, t) = self.mean_lengths();
        format!(
            "training on {} pairs (mean lengths {s:.1} → {t:.1}), validating on {} sources, vocabularies {} → {}, padding {:.1} %",
            self.pairs.len(),
            self.dev.len(),
            self.model.source_vocab.len(),
            self.model.target_vocab.len(),
            100.0 * padding_fraction(&lengths, &bucketed_batches(&lengths, self.batch, self.seed, 0))
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.pairs.len().div_ceil(self.batch.max(1))
    }

    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        _ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        let all = &self.pairs;
        let lengths = || all.iter().map(|(s, _)| s.len()).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        let (batch, own) = super::share(self.shard, batch);
        let mut pairs = super::recycled(std::mem::take(&mut self.batch_pairs));
        pairs.extend(
            batch
                .iter()
                .map(|&i| (all[i].0.as_slice(), all[i].1.as_slice())),
        );
        let tokens = match own {
            true => pairs.iter().map(|(s, t)| s.len() + t.len() + 1).sum(),
            false => 0,
        };
        let filled = self.inputs.fill(&pairs);
        self.batch_pairs = super::recycled(pairs);
        filled?;
        let loss = self.model.train_step(&self.inputs, rng)?;
        Ok(BatchLoss {
            loss: loss.mean,
            tokens,
        })
    }

    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        self.shard = shard;
        Ok(())
    }

    fn shard_weight(&mut self, epoch: u64, k: usize) -> f64 {
        let all = &self.pairs;
        let lengths = || all.iter().map(|(s, _)| s.len()).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        // The loss is the mean over every target token and the end token.
        super::share_weight(self.shard, batch, |i| all[i].1.len() + 1)
    }

    fn validate(&mut self) -> Result<Option<Metrics>> {
        if self.dev.is_empty() {
            return Ok(None);
        }
        let loss = mean_loss(&mut self.model, &self.dev, 256)?;
        let (s, _) = evaluate(&mut self.model, &self.dev, &DecodeOptions::default())?;
        Ok(Some(Metrics {
            loss,
            scores: [
                ("accuracy".to_string(), 1.0 - s.wer()),
                ("wer".to_string(), s.wer()),
                ("per".to_string(), s.per()),
            ]
            .into(),
        }))
    }

    fn flops_per_token(&self) -> u64 {
        let (s, t) = self.mean_lengths();
        let (enc, dec) = self.model.flops(s);
        ((enc as f64 * s + dec as f64 * t) / (s + t)) as u64
    }

    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut metadata = metadata;
        for (k, v) in &self.files {
            metadata.insert(k.to_string(), v.clone());
        }
        self.model.save(path, extra, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edit_distance_and_scores_take_the_closest_reference() {
        assert_eq!(edit_distance(&[1, 2, 3], &[1, 3]), 1);
        assert_eq!(edit_distance::<u8>(&[], &[1, 2]), 2);
        assert_eq!(edit_distance(&[1, 2, 3], &[3, 2, 1]), 2);
        let ex = vec![
            EncodedExample {
                source: vec![0],
                targets: vec![vec![1, 2, 3], vec![1, 2]],
            },
            EncodedExample {
                source: vec![1],
                targets: vec![vec![4, 4, 4, 4]],
            },
        ];
        let s = TransductionScores::new(&[vec![1, 2], vec![4, 5, 4]], &ex);
        assert_eq!((s.wrong, s.edits, s.reference_tokens), (1, 2, 6));
        assert_eq!(s.wer(), 0.5);
        assert!((s.per() - 2.0 / 6.0).abs() < 1e-12);
    }

    #[test]
    fn digitless_classes_score_phonemes_without_their_stress() {
        let tokens = ["</s>", "<s>", "AH0", "AH1", "B", "K2", "K"];
        let vocab =
            crate::data::TokenVocab::new(tokens.iter().map(|t| t.to_string()).collect()).unwrap();
        let classes = vocab.digitless_classes();
        assert_eq!(classes, [0, 1, 2, 2, 4, 5, 5]);
        // Output `AH1 B K`, reference `AH0 B K2`: wrong with stress, right without.
        let ex = vec![EncodedExample {
            source: vec![0],
            targets: vec![vec![2, 4, 5]],
        }];
        let out = [vec![3, 4, 6]];
        let with = TransductionScores::new(&out, &ex);
        assert_eq!((with.wrong, with.edits), (1, 2));
        let without = TransductionScores::with_classes(&out, &ex, &classes);
        assert_eq!(
            (without.wrong, without.edits, without.reference_tokens),
            (0, 0, 3)
        );
        // An id outside the classes stays itself.
        let s = TransductionScores::with_classes(&[vec![9]], &ex, &classes);
        assert_eq!((s.wrong, s.edits), (1, 3));
    }
}
