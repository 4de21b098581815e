//! The buffers a model keeps from one training step to the next (so that a warmed-up
//! step allocates nothing) are never read stale: a step after steps of other shapes
//! (longer, wider batches, other lengths) gives exactly what the same step of a fresh
//! copy of the model gives, loss and every gradient, for the recurrent layer's
//! `*_into` passes, the char LM, the classifier, the CTC recogniser, the tagger and
//! the encoder–decoder.

use rnnkit::bench::{classify, ctc, seq2seq, tag};
use rnnkit::data::{Series, TagColumn, Vocab};
use rnnkit::kernel::Precision;
use rnnkit::layer::{Kept, PoolKind};
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::seq2seq::{AttentionKind, PairBatch, Seq2seq, Seq2seqConfig};
use rnnkit::task::classifier::{Classifier, ClassifierConfig, DenseBatch, Standardizer};
use rnnkit::task::ctc::{CtcConfig, CtcModel, Utterance};
use rnnkit::task::tagger::{Tagger, TaggerConfig};
use rnnkit::{CellKind, Parameters, RecurrentConfig, RecurrentState, Rng, Tensor};

/// Every gradient of `m`, in order.
fn grads<M: Parameters<f32>>(m: &mut M) -> Vec<f32> {
    let mut out = Vec::new();
    m.visit_params_mut(&mut |_, _, g| out.extend_from_slice(g.data()));
    out
}

/// Runs `step` on `model` for each of `before` and then `last`, and on a fresh copy
/// for `last` alone; the last step's result and gradients must be the same.
fn same_as_fresh<M, B, R>(model: &mut M, before: &[B], last: &B, step: impl Fn(&mut M, &B) -> R)
where
    M: Parameters<f32> + Clone,
    R: PartialEq + std::fmt::Debug,
{
    let mut fresh = model.clone();
    for b in before {
        model.zero_grad();
        step(model, b);
    }
    model.zero_grad();
    let kept = step(model, last);
    let new = step(&mut fresh, last);
    assert_eq!(kept, new, "the step's result");
    let (g, want) = (grads(model), grads(&mut fresh));
    assert_eq!(g.len(), want.len());
    let differ = g.iter().zip(&want).filter(|(a, b)| a != b).count();
    assert_eq!(differ, 0, "{differ} of {} gradients differ", g.len());
}

fn random(shape: &[usize], rng: &mut Rng) -> Tensor<f32> {
    let n = shape.iter().product();
    let data = (0..n).map(|_| rng.uniform_in(-1.0, 1.0) as f32).collect();
    Tensor::from_vec(shape, data).unwrap()
}

#[test]
fn recurrent_passes_into_kept_buffers() {
    for cell in [CellKind::Lstm, CellKind::Gru] {
        let config = RecurrentConfig::new(cell, 5, 4)
            .with_layers(2)
            .with_bidirectional(true);
        let mut rng = Rng::new(1);
        let rnn = config.init::<f32>(&mut rng).unwrap();
        // A long padded batch, then a short one from a given state, into the same
        // buffers; against the allocating passes of a fresh layer.
        let long = (random(&[7, 3, 5], &mut rng), Some(vec![7, 4, 2]), None);
        let mut init = RecurrentState::zeros(&config, 2);
        init.h = random(init.h.shape(), &mut rng);
        if let Some(c) = &mut init.c {
            *c = random(c.shape(), &mut rng);
        }
        let short = (random(&[3, 2, 5], &mut rng), None, Some(init));
        let dy = |x: &Tensor<f32>| {
            let mut rng = Rng::new(x.len() as u64);
            random(&[x.shape()[0], x.shape()[1], 8], &mut rng)
        };
        let mut kept = Kept::default();
        type Case = (Tensor<f32>, Option<Vec<usize>>, Option<RecurrentState<f32>>);
        let mut layer = rnn.clone();
        let mut run_kept = |rnn: &mut rnnkit::Recurrent<f32>, (x, len, init): &Case| {
            let (len, init) = (len.as_deref(), init.as_ref());
            rnn.forward_into(x, len, init, None, kept.forward())
                .unwrap();
            let d_final = kept.fin.clone();
            rnn.backward_into(&dy(x), Some(&d_final), &mut |_| {}, kept.backward())
                .unwrap();
            (
                kept.y.clone(),
                kept.fin.clone(),
                kept.dx.clone(),
                kept.d_init.clone(),
            )
        };
        run_kept(&mut layer, &long);
        layer.zero_grad();
        let got = run_kept(&mut layer, &short);
        let mut fresh = rnn.clone();
        let (x, _, init) = &short;
        let (y, fin) = fresh.forward(x, None, init.as_ref()).unwrap();
        let (dx, d_init) = fresh.backward(&dy(x), Some(&fin)).unwrap();
        assert_eq!(got, (y, fin, dx, d_init), "{cell}");
        assert_eq!(grads(&mut layer), grads(&mut fresh), "{cell}");
    }
}

#[test]
fn char_lm_steps_of_other_shapes() {
    let chars: Vec<char> = ('a'..='z').collect();
    for precision in [Precision::F32, Precision::Bf16] {
        if !rnnkit::kernel::packed_supported(precision) {
            continue;
        }
        let config = CharLmConfig {
            cell: CellKind::Lstm,
            embed_size: 8,
            hidden_size: 24,
            num_layers: 2,
            dropout: 0.1,
        };
        let vocab = Vocab::from_chars(chars.clone()).unwrap();
        let mut model = CharLm::new(&config, vocab, &mut Rng::new(2)).unwrap();
        model.set_precision(precision);
        let batch = |steps: usize, b: usize, seed: u64| {
            let mut rng = Rng::new(seed);
            let ids: Vec<usize> = (0..steps * b).map(|_| rng.below(26)).collect();
            let targets: Vec<usize> = (0..steps * b).map(|_| rng.below(26)).collect();
            (ids, targets, steps, b)
        };
        let step =
            |m: &mut CharLm, (ids, targets, steps, b): &(Vec<usize>, Vec<usize>, usize, usize)| {
                let (loss, fin) = m
                    .train_step(ids, targets, *steps, *b, None, &mut Rng::new(9))
                    .unwrap();
                (loss, fin.clone())
            };
        same_as_fresh(
            &mut model,
            &[batch(12, 8, 3), batch(5, 3, 4)],
            &batch(7, 5, 5),
            step,
        );
    }
}

#[test]
fn classifier_steps_of_other_shapes() {
    let cfg = |min_len, max_len, batch, seed| classify::ClassifyBenchConfig {
        model: ClassifierConfig {
            cell: CellKind::Gru,
            hidden_size: 16,
            num_layers: 2,
            bidirectional: true,
            dropout: 0.1,
            pool: PoolKind::Max,
        },
        channels: 3,
        classes: 4,
        min_len,
        max_len,
        batch,
        steps: 1,
        seed,
        precision: Precision::F32,
    };
    let sets =
        [cfg(20, 30, 12, 1), cfg(3, 9, 5, 2), cfg(5, 15, 7, 3)].map(|c| classify::series(&c));
    let all: Vec<&Series> = sets.iter().flatten().collect();
    let norm = Standardizer::fit(&all, 3);
    let labels = (0..4).map(|k| format!("c{k}")).collect();
    let config = cfg(1, 1, 1, 1).model;
    let mut model = Classifier::new(&config, 3, labels, norm, &mut Rng::new(2)).unwrap();
    let step = |m: &mut Classifier, s: &Vec<Series>| {
        let cases: Vec<&Series> = s.iter().collect();
        let targets: Vec<usize> = cases.iter().map(|s| s.label).collect();
        let mut batch = DenseBatch::default();
        m.batch_into(&cases, &mut batch).unwrap();
        m.train_step(&batch, &targets, &mut Rng::new(9)).unwrap()
    };
    same_as_fresh(&mut model, &sets[..2], &sets[2], step);
}

#[test]
fn ctc_steps_of_other_shapes() {
    let cfg = |frames, batch, seed| ctc::CtcBenchConfig {
        model: CtcConfig {
            cell: CellKind::Lstm,
            hidden_size: 12,
            num_layers: 2,
            bidirectional: true,
            dropout: 0.1,
            stack: 3,
            augment: false,
        },
        bands: 5,
        labels: 6,
        frames,
        batch,
        steps: 1,
        seed,
        precision: Precision::F32,
    };
    let sets = [
        cfg((60, 90), 10, 1),
        cfg((10, 30), 4, 2),
        cfg((30, 50), 6, 3),
    ]
    .map(|c| ctc::utterances(&c));
    let labels = (0..6).map(|i| char::from(b'a' + i as u8)).collect();
    let config = cfg((1, 1), 1, 1).model;
    let mut model = CtcModel::new(&config, 5, labels, &mut Rng::new(2)).unwrap();
    let step = |m: &mut CtcModel, u: &Vec<Utterance>| {
        let utts: Vec<_> = u.iter().collect();
        let targets: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
        let mut batch = DenseBatch::default();
        m.batch_into(&utts, &mut batch).unwrap();
        m.train_step(&batch, &targets, &mut Rng::new(9)).unwrap()
    };
    same_as_fresh(&mut model, &sets[..2], &sets[2], step);
}

#[test]
fn tagger_steps_of_other_shapes() {
    let cfg = |words, chars, seed| tag::TagBenchConfig {
        model: TaggerConfig {
            cell: CellKind::Lstm,
            word_embed: 8,
            char_embed: 6,
            char_hidden: 5,
            hidden_size: 10,
            num_layers: 2,
            dropout: 0.33,
            word_dropout: 0.25,
            min_freq: 1,
            column: TagColumn::Upos,
        },
        tags: 5,
        word_vocab: 60,
        char_vocab: 12,
        words_per_sentence: words,
        chars_per_word: chars,
        batch: 8,
        steps: 1,
        seed,
        precision: Precision::F32,
    };
    let sets = [
        cfg((15, 25), (3, 12), 1),
        cfg((2, 6), (1, 4), 2),
        cfg((5, 12), (2, 8), 3),
    ]
    .map(|c| tag::sentences(&c).1);
    let all: Vec<_> = sets.iter().flatten().cloned().collect();
    let config = cfg((1, 1), (1, 1), 1).model;
    let mut model = Tagger::new(&config, &all, &mut Rng::new(2)).unwrap();
    let step = |m: &mut Tagger, s: &Vec<_>| {
        let batch: Vec<_> = s.iter().collect();
        m.train_step(&batch, &mut Rng::new(9)).unwrap()
    };
    same_as_fresh(&mut model, &sets[..2], &sets[2], step);
}

#[test]
fn seq2seq_steps_of_other_shapes() {
    for (attention, bidirectional) in [
        (AttentionKind::Additive, true),
        (AttentionKind::None, false),
    ] {
        let cfg = |lengths, batch, seed| seq2seq::Seq2seqBenchConfig {
            model: Seq2seqConfig {
                cell: CellKind::Lstm,
                attention,
                embed: 6,
                hidden_size: 8,
                num_layers: 2,
                bidirectional,
                dropout: 0.1,
                label_smoothing: 0.1,
            },
            src_vocab: 12,
            tgt_vocab: 12,
            lengths,
            batch,
            steps: 1,
            decode_sources: 1,
            beam: 2,
            seed,
            precision: Precision::F32,
        };
        let sets = [cfg((12, 20), 9, 1), cfg((2, 5), 3, 2), cfg((4, 10), 5, 3)]
            .map(|c| seq2seq::pairs(&c)[..c.batch].to_vec());
        let mut model = seq2seq::model(&cfg((1, 1), 1, 1), &mut Rng::new(2)).unwrap();
        let step = |m: &mut Seq2seq, pairs: &Vec<(Vec<usize>, Vec<usize>)>| {
            let refs: Vec<(&[usize], &[usize])> = pairs
                .iter()
                .map(|(s, t)| (s.as_slice(), t.as_slice()))
                .collect();
            let mut batch = PairBatch::default();
            batch.fill(&refs).unwrap();
            let loss = m.train_step(&batch, &mut Rng::new(9)).unwrap();
            (loss.mean, m.last_attention())
        };
        same_as_fresh(&mut model, &sets[..2], &sets[2], step);
    }
}
