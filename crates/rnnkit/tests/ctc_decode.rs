//! CTC decoders against hand-made matrices and an exhaustive sum over alignments.

use rnnkit::data::Vocab;
use rnnkit::decode::ctc::{
    best_path, prefix_beam_search, BeamOptions, CharLmScorer, Hypothesis, LabelScorer,
};
use rnnkit::model::{CharLm, CharLmConfig, Precision};
use rnnkit::{CellKind, Rng};
use std::collections::{HashMap, HashSet};

/// Row-major `[T, C]` log-probabilities from probabilities.
fn logs(rows: &[&[f64]]) -> Vec<f32> {
    rows.iter()
        .flat_map(|r| r.iter().map(|&p| p.ln() as f32))
        .collect()
}

/// A random `[t, c]` log-softmax matrix; `spread` sharpens it.
fn random_log_probs(rng: &mut Rng, t: usize, c: usize, spread: f64) -> Vec<f32> {
    (0..t)
        .flat_map(|_| {
            let raw: Vec<f64> = (0..c).map(|_| rng.normal() * spread).collect();
            let lse = raw.iter().map(|v| v.exp()).sum::<f64>().ln();
            raw.into_iter().map(move |v| (v - lse) as f32)
        })
        .collect()
}

/// No language model.
type NoLm = Bigram;

fn search(lp: &[f32], t: usize, c: usize, beam: usize) -> Vec<Hypothesis> {
    let opts = BeamOptions {
        beam,
        ..Default::default()
    };
    prefix_beam_search::<NoLm>(lp, t, c, 0, &opts, None).unwrap()
}

/// log P(l | x) for every labelling l, summed over all Cᵀ alignments (blank 0), in
/// f64 from the f32 inputs the decoder reads.
fn brute_force(lp: &[f32], t: usize, c: usize) -> HashMap<Vec<usize>, f64> {
    let mut out: HashMap<Vec<usize>, f64> = HashMap::new();
    let mut path = vec![0usize; t];
    for code in 0..c.pow(t as u32) {
        let mut k = code;
        for p in path.iter_mut() {
            *p = k % c;
            k /= c;
        }
        let logp: f64 = path
            .iter()
            .enumerate()
            .map(|(f, &s)| lp[f * c + s] as f64)
            .sum();
        let mut labels = Vec::new();
        let mut prev = None;
        for &s in &path {
            if s != 0 && prev != Some(s) {
                labels.push(s);
            }
            prev = Some(s);
        }
        let e = out.entry(labels).or_insert(0.0);
        *e += logp.exp();
    }
    out.into_iter().map(|(l, p)| (l, p.ln())).collect()
}

#[test]
fn best_path_merges_repeats_and_keeps_those_split_by_a_blank() {
    // Classes: 0 blank, 1 "a", 2 "b".
    let a_blank_a = logs(&[&[0.1, 0.8, 0.1], &[0.8, 0.1, 0.1], &[0.1, 0.8, 0.1]]);
    assert_eq!(best_path(&a_blank_a, 3, 3, 0), vec![1, 1]);
    let a_a_a = logs(&[&[0.1, 0.8, 0.1], &[0.1, 0.8, 0.1], &[0.1, 0.8, 0.1]]);
    assert_eq!(best_path(&a_a_a, 3, 3, 0), vec![1]);
    let ab_b = logs(&[
        &[0.1, 0.8, 0.1],
        &[0.1, 0.1, 0.8],
        &[0.1, 0.1, 0.8],
        &[0.8, 0.1, 0.1],
        &[0.1, 0.1, 0.8],
    ]);
    assert_eq!(best_path(&ab_b, 5, 3, 0), vec![1, 2, 2]);
    // The blank may be any class: with class 1 as the blank, class 0 is a label.
    assert_eq!(best_path(&ab_b, 5, 3, 1), vec![2, 0, 2]);
    assert!(best_path(&[], 0, 3, 0).is_empty());
}

#[test]
fn prefix_search_agrees_with_best_path_on_sharp_matrices() {
    let a_blank_a = logs(&[&[0.1, 0.8, 0.1], &[0.8, 0.1, 0.1], &[0.1, 0.8, 0.1]]);
    assert_eq!(search(&a_blank_a, 3, 3, 8)[0].labels, vec![1, 1]);
    let a_a_a = logs(&[&[0.1, 0.8, 0.1], &[0.1, 0.8, 0.1], &[0.1, 0.8, 0.1]]);
    let hyps = search(&a_a_a, 3, 3, 8);
    assert_eq!(hyps[0].labels, vec![1]);
    // "a a" needs a blank between: its one alignment is a, blank, a (0.8·0.1·0.8).
    let aa = hyps.iter().find(|h| h.labels == [1, 1]).unwrap();
    assert!((aa.ctc_log_prob - (0.8f32.ln() * 2.0 + 0.1f32.ln()) as f64).abs() < 1e-6);
}

#[test]
fn prefix_search_finds_the_labelling_that_best_path_misses() {
    // Blank 0.6, "a" 0.4 in both frames: the best path is blank, blank (""; 0.36),
    // but "a" has three alignments: 0.16 + 0.24 + 0.24 = 0.64.
    let lp = logs(&[&[0.6, 0.4], &[0.6, 0.4]]);
    assert!(best_path(&lp, 2, 2, 0).is_empty());
    let hyps = search(&lp, 2, 2, 4);
    assert_eq!(hyps[0].labels, vec![1]);
    assert!((hyps[0].ctc_log_prob - 0.64f64.ln()).abs() < 1e-6);
    assert_eq!(hyps[1].labels, Vec::<usize>::new());
    assert!((hyps[1].ctc_log_prob - 0.36f64.ln()).abs() < 1e-6);
    assert_eq!(hyps.len(), 2);
}

#[test]
fn wide_beam_equals_the_sum_over_all_alignments() {
    let mut rng = Rng::new(11);
    let mut best_path_lost = 0;
    for case in 0..40 {
        let t = 1 + case % 6;
        let c = 3 + case % 2;
        // Flat matrices make many labellings compete; sharp ones few.
        let lp = random_log_probs(&mut rng, t, c, [0.5, 1.0, 3.0][case % 3]);
        let exact = brute_force(&lp, t, c);
        let hyps = search(&lp, t, c, 10_000);
        // Every labelling is kept, each with its exact probability.
        assert_eq!(hyps.len(), exact.len(), "case {case}: T {t}, C {c}");
        for h in &hyps {
            let want = exact[&h.labels];
            assert!(
                (h.ctc_log_prob - want).abs() < 1e-9,
                "case {case}: {:?} has log P {} but the sum over alignments is {want}",
                h.labels,
                h.ctc_log_prob
            );
            assert_eq!(h.score, h.ctc_log_prob);
        }
        let argmax = exact
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1))
            .map(|(l, _)| l.clone())
            .unwrap();
        assert!(
            (exact[&hyps[0].labels] - exact[&argmax]).abs() < 1e-12,
            "case {case}: the search's best {:?} is not the most probable {argmax:?}",
            hyps[0].labels
        );
        if best_path(&lp, t, c, 0) != hyps[0].labels {
            best_path_lost += 1;
        }
        // A narrow beam still ranks what it keeps, best first.
        let narrow = search(&lp, t, c, 2);
        assert!(narrow.len() <= 2 && narrow.windows(2).all(|w| w[0].score >= w[1].score));
    }
    // The flat cases are where summing over alignments matters.
    assert!(best_path_lost > 0, "no case where best path was wrong");
}

#[test]
fn no_frames_give_the_empty_hypothesis() {
    let hyps = search(&[], 0, 3, 4);
    assert_eq!(
        hyps,
        vec![Hypothesis {
            labels: vec![],
            score: 0.0,
            ctc_log_prob: 0.0
        }]
    );
}

/// A bigram LM over labels 1..=3 (state: the last label, 0 at the start), with an
/// end probability per last label.
#[derive(Clone)]
struct Bigram {
    table: [[f32; 4]; 4],
    end: [f32; 4],
    calls: usize,
}

impl Default for Bigram {
    fn default() -> Self {
        Bigram {
            table: [[(1.0f32 / 3.0).ln(); 4]; 4],
            end: [0.0; 4],
            calls: 0,
        }
    }
}

impl LabelScorer for Bigram {
    type State = usize;
    fn start(&mut self) -> usize {
        0
    }
    fn score(&mut self, state: &usize, label: usize) -> rnnkit::Result<(f32, usize)> {
        self.calls += 1;
        Ok((self.table[*state][label], label))
    }
    fn end(&mut self, state: &usize) -> rnnkit::Result<f32> {
        Ok(self.end[*state])
    }
}

/// Acoustically "ac" (labels 1, 3) narrowly beats "ab" (1, 2).
fn ab_or_ac() -> Vec<f32> {
    logs(&[
        &[0.05, 0.9, 0.025, 0.025],
        &[0.1, 0.0001, 0.4, 0.4999],
        &[0.9, 0.0333, 0.0333, 0.0334],
    ])
}

#[test]
fn a_language_model_changes_the_ranking() {
    let lp = ab_or_ac();
    let plain = search(&lp, 3, 4, 16);
    assert_eq!(plain[0].labels, vec![1, 3]);
    let mut lm = Bigram::default();
    lm.table[1][2] = 0.9f32.ln();
    lm.table[1][3] = 0.05f32.ln();
    let opts = BeamOptions {
        beam: 16,
        lm_weight: 1.0,
        insertion_bonus: 0.5,
        prune: None,
    };
    let hyps = prefix_beam_search(&lp, 3, 4, 0, &opts, Some(&mut lm)).unwrap();
    assert_eq!(hyps[0].labels, vec![1, 2]);
    // score = log P_ctc + α (Σ log p_lm + end) + β |l|, and log P_ctc is unchanged.
    let ab = &hyps[0];
    let ctc = plain
        .iter()
        .find(|h| h.labels == [1, 2])
        .unwrap()
        .ctc_log_prob;
    assert!((ab.ctc_log_prob - ctc).abs() < 1e-12);
    let want = ctc + (lm.table[0][1] + lm.table[1][2]) as f64 + 2.0 * 0.5;
    assert!((ab.score - want).abs() < 1e-6, "{} vs {want}", ab.score);

    // The end of the text counts too: forbid ending after "b".
    lm.end[2] = -20.0;
    let hyps = prefix_beam_search(&lp, 3, 4, 0, &opts, Some(&mut lm)).unwrap();
    assert_ne!(hyps[0].labels, vec![1, 2]);
    let ab = hyps.iter().find(|h| h.labels == [1, 2]).unwrap();
    assert!((ab.score - (want - 20.0)).abs() < 1e-6);
}

#[test]
fn insertion_bonus_favours_longer_texts() {
    // "a" (one label) against "aa" (through a middle blank), "a" far likelier.
    let lp = logs(&[&[0.2, 0.8], &[0.6, 0.4], &[0.2, 0.8]]);
    let plain = search(&lp, 3, 2, 8);
    assert_eq!(plain[0].labels, vec![1]);
    let opts = BeamOptions {
        beam: 8,
        insertion_bonus: 3.0,
        ..Default::default()
    };
    let hyps = prefix_beam_search::<NoLm>(&lp, 3, 2, 0, &opts, None).unwrap();
    assert_eq!(hyps[0].labels, vec![1, 1]);
}

#[test]
fn zero_weights_equal_no_language_model() {
    let mut rng = Rng::new(5);
    let lp = random_log_probs(&mut rng, 12, 4, 1.0);
    let mut lm = Bigram::default();
    lm.table[1][2] = -30.0;
    lm.end[3] = f32::NEG_INFINITY;
    let opts = BeamOptions {
        beam: 5,
        ..Default::default()
    };
    let with = prefix_beam_search(&lp, 12, 4, 0, &opts, Some(&mut lm)).unwrap();
    let without = prefix_beam_search::<NoLm>(&lp, 12, 4, 0, &opts, None).unwrap();
    assert_eq!(with, without);
}

/// Remembers every (prefix, label) it is asked to score.
#[derive(Default)]
struct Recorder {
    seen: HashSet<(Vec<usize>, usize)>,
    repeats: usize,
}

impl LabelScorer for Recorder {
    type State = Vec<usize>;
    fn start(&mut self) -> Vec<usize> {
        Vec::new()
    }
    fn score(&mut self, state: &Vec<usize>, label: usize) -> rnnkit::Result<(f32, Vec<usize>)> {
        if !self.seen.insert((state.clone(), label)) {
            self.repeats += 1;
        }
        let mut next = state.clone();
        next.push(label);
        Ok(((0.3 * label as f32).sin() - 2.0, next))
    }
}

#[test]
fn each_prefix_is_scored_by_the_lm_once() {
    // Prefixes stay in the beam for many frames; rescoring them every frame would
    // ask the LM the same question again and again.
    let mut rng = Rng::new(8);
    let lp = random_log_probs(&mut rng, 15, 4, 1.0);
    let mut lm = Recorder::default();
    let opts = BeamOptions {
        beam: 4,
        lm_weight: 0.5,
        ..Default::default()
    };
    prefix_beam_search(&lp, 15, 4, 0, &opts, Some(&mut lm)).unwrap();
    assert_eq!(
        lm.repeats,
        0,
        "{} questions, {} repeated",
        lm.seen.len(),
        lm.repeats
    );
    assert!(lm.seen.len() < 15 * 4 * 3);
}

#[test]
fn pruning_skips_unlikely_labels() {
    let mut rng = Rng::new(2);
    let lp = random_log_probs(&mut rng, 10, 4, 3.0);
    let full = search(&lp, 10, 4, 8);
    let opts = BeamOptions {
        beam: 8,
        prune: Some(-0.01),
        ..Default::default()
    };
    // Nearly every label is pruned: the search still answers, with fewer prefixes.
    let pruned = prefix_beam_search::<NoLm>(&lp, 10, 4, 0, &opts, None).unwrap();
    assert!(!pruned.is_empty() && pruned.len() <= full.len());
    let opts = BeamOptions {
        prune: Some(-1e30),
        ..opts
    };
    assert_eq!(
        prefix_beam_search::<NoLm>(&lp, 10, 4, 0, &opts, None).unwrap(),
        full
    );
}

#[test]
fn impossible_inputs_are_errors() {
    let lp = vec![0.0f32; 6];
    let opts = BeamOptions::default();
    let run = |lp: &[f32], t, c, blank, opts: &BeamOptions| {
        prefix_beam_search::<NoLm>(lp, t, c, blank, opts, None)
    };
    let beam0 = BeamOptions { beam: 0, ..opts };
    assert!(run(&lp, 2, 3, 0, &beam0)
        .unwrap_err()
        .to_string()
        .contains("beam"));
    assert!(run(&lp, 3, 3, 0, &opts)
        .unwrap_err()
        .to_string()
        .contains("6 log-probabilities given for 3 frames × 3 classes"));
    assert!(run(&lp, 2, 3, 3, &opts)
        .unwrap_err()
        .to_string()
        .contains("blank is class 3"));
    assert!(run(&[], 0, 0, 0, &opts).is_err());
    assert!(run(&lp, usize::MAX, 2, 0, &opts).is_err());
    let mut nan = lp.clone();
    nan[4] = f32::NAN;
    assert!(run(&nan, 2, 3, 0, &opts)
        .unwrap_err()
        .to_string()
        .contains("class 1 at frame 1"));
    for bad in [
        BeamOptions {
            lm_weight: f32::NAN,
            ..opts
        },
        BeamOptions {
            insertion_bonus: f32::INFINITY,
            ..opts
        },
        BeamOptions {
            prune: Some(f32::NAN),
            ..opts
        },
    ] {
        assert!(run(&lp, 2, 3, 0, &bad).is_err(), "{bad:?}");
    }
}

/// A language model that fails, to check errors come out of the search.
struct Failing;

impl LabelScorer for Failing {
    type State = ();
    fn start(&mut self) {}
    fn score(&mut self, _: &(), label: usize) -> rnnkit::Result<(f32, ())> {
        Err(rnnkit::Error::Input(format!("label {label} refused")))
    }
}

#[test]
fn language_model_errors_are_returned() {
    let lp = ab_or_ac();
    let opts = BeamOptions {
        lm_weight: 1.0,
        ..Default::default()
    };
    let err = prefix_beam_search(&lp, 3, 4, 0, &opts, Some(&mut Failing)).unwrap_err();
    assert!(err.to_string().contains("refused"), "{err}");
}

fn tiny_lm(cell: CellKind) -> CharLm {
    let cfg = CharLmConfig {
        cell,
        embed_size: 5,
        hidden_size: 8,
        num_layers: 2,
        dropout: 0.0,
    };
    let vocab = Vocab::from_chars("\n abc".chars().collect()).unwrap();
    CharLm::new(&cfg, vocab, &mut Rng::new(3)).unwrap()
}

/// Σ log p(text[i] | prime + text[..i]) by the model's ordinary (batch) forward.
fn forward_log_prob(model: &mut CharLm, prime: &str, text: &str) -> f64 {
    let ids = model.vocab().encode(&format!("{prime}{text}")).unwrap();
    let p = prime.chars().count();
    (p..ids.len())
        .map(|i| {
            let (logits, _) = model.next_logits(&ids[..i], None).unwrap();
            let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
            let lse = max
                + logits
                    .iter()
                    .map(|&v| (v as f64 - max).exp())
                    .sum::<f64>()
                    .ln();
            logits[ids[i]] as f64 - lse
        })
        .sum()
}

#[test]
fn char_lm_scorer_matches_the_model_forward() {
    // Labels: 0 blank, 1 'a', 2 'b', 3 'c', 4 ' '.
    let labels = [None, Some('a'), Some('b'), Some('c'), Some(' ')];
    for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        let mut model = tiny_lm(cell);
        let text = [1, 2, 4, 3, 3, 1];
        let want = forward_log_prob(&mut model, "\n", "ab cca");
        let want_primed = forward_log_prob(&mut model, "ba", "ab cca");
        let mut scorer = CharLmScorer::from_map(&model, &labels, Precision::F32).unwrap();
        let mut state = scorer.start();
        let mut got = 0.0f64;
        for &l in &text {
            let (logp, next) = scorer.score(&state, l).unwrap();
            got += logp as f64;
            state = next;
        }
        assert!((got - want).abs() < 1e-4, "{cell:?}: {got} vs {want}");
        assert_eq!(scorer.end(&state).unwrap(), 0.0);

        // Branching from a shared prefix: each branch sees its own history.
        let s0 = scorer.start();
        let (_, sa) = scorer.score(&s0, 1).unwrap();
        let (_, sab) = scorer.score(&sa, 2).unwrap();
        let (_, sac) = scorer.score(&sa, 3).unwrap();
        let (b_after_ab, _) = scorer.score(&sab, 2).unwrap();
        let (b_after_ac, _) = scorer.score(&sac, 2).unwrap();
        let ab_b = forward_log_prob(&mut model, "\nab", "b");
        let ac_b = forward_log_prob(&mut model, "\nac", "b");
        assert!((b_after_ab as f64 - ab_b).abs() < 1e-4);
        assert!((b_after_ac as f64 - ac_b).abs() < 1e-4);

        let mut scorer = CharLmScorer::from_map(&model, &labels, Precision::F32)
            .unwrap()
            .with_prime("ba")
            .unwrap()
            .with_end('\n')
            .unwrap();
        let mut state = scorer.start();
        let mut got = 0.0f64;
        for &l in &text {
            let (logp, next) = scorer.score(&state, l).unwrap();
            got += logp as f64;
            state = next;
        }
        assert!((got - want_primed).abs() < 1e-4, "{cell:?} primed");
        let end = scorer.end(&state).unwrap() as f64;
        let want_end = forward_log_prob(&mut model, "baab cca", "\n");
        assert!((end - want_end).abs() < 1e-4);
    }
}

#[test]
fn char_lm_scorer_drives_the_beam_search() {
    let model = tiny_lm(CellKind::Lstm);
    let labels = [None, Some('a'), Some('b'), Some('c')];
    let lp = ab_or_ac();
    let mut scorer = CharLmScorer::from_map(&model, &labels, Precision::F32)
        .unwrap()
        .with_end('\n')
        .unwrap();
    let opts = BeamOptions {
        beam: 8,
        lm_weight: 0.8,
        insertion_bonus: 0.3,
        prune: None,
    };
    let hyps = prefix_beam_search(&lp, 3, 4, 0, &opts, Some(&mut scorer)).unwrap();
    let mut model = model;
    for h in &hyps {
        // Every score is log P_ctc + α (log P_lm(text) + log p(end)) + β |l|.
        let text: String = h.labels.iter().map(|&l| labels[l].unwrap()).collect();
        let lm = forward_log_prob(&mut model, "\n", &text)
            + forward_log_prob(&mut model, &format!("\n{text}"), "\n");
        let want = h.ctc_log_prob + 0.8 * lm + 0.3 * h.labels.len() as f64;
        assert!(
            (h.score - want).abs() < 1e-4,
            "{text:?}: {} vs {want}",
            h.score
        );
    }
    assert!(hyps.windows(2).all(|w| w[0].score >= w[1].score));
}

#[test]
fn char_lm_scorer_refuses_unknown_characters_and_the_blank() {
    let model = tiny_lm(CellKind::Gru);
    let err = CharLmScorer::from_map(&model, &[None, Some('a'), Some('z')], Precision::F32)
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("label 2 is character 'z'"),
        "{err}"
    );
    let mut scorer = CharLmScorer::from_map(&model, &[None, Some('a')], Precision::F32).unwrap();
    let s = scorer.start();
    assert!(scorer.score(&s, 0).is_err());
    assert!(scorer.score(&s, 2).is_err());
    let scorer = CharLmScorer::from_map(&model, &[None, Some('a')], Precision::F32).unwrap();
    assert!(scorer.with_prime("").is_err());
    assert!(CharLmScorer::new(&model, &['a', 'z']).is_err());
}

#[test]
fn char_lm_scorer_new_puts_the_blank_first() {
    // `new` takes the characters of labels 1…L, as a CTC model lists them.
    let model = tiny_lm(CellKind::Lstm);
    let mut by_list = CharLmScorer::new(&model, &['c', 'a', ' ']).unwrap();
    let map = [None, Some('c'), Some('a'), Some(' ')];
    let mut by_map = CharLmScorer::from_map(&model, &map, Precision::F32).unwrap();
    let (s, t) = (by_list.start(), by_map.start());
    for label in 1..4 {
        assert_eq!(
            by_list.score(&s, label).unwrap().0,
            by_map.score(&t, label).unwrap().0
        );
    }
    assert!(by_list.score(&s, 0).is_err());
}
