//! Hidden Markov models against hmmlearn 0.3.3: its own golden values (the
//! Wikipedia weather and umbrella examples of its test suite) and the fixtures of
//! `~/torch/bin/python tools/hmm_fixtures.py` (`tests/fixtures/hmm/`); EM monotonicity,
//! sampling, supervised estimation, the tagger and classifier checkpoints, bad input.

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::data::{parse_conllu, parse_ts, TagColumn};
use rnnkit::hmm::{
    DiscreteHmm, EmSettings, GaussianHmm, HmmClassifier, HmmClassifierConfig, HmmTagger,
    HmmTaggerConfig,
};
use rnnkit::{Rng, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(name: &str) -> TensorFile {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/hmm")
        .join(name);
    TensorFile::open(&p).unwrap_or_else(|e| panic!("{e}"))
}

fn f64s(f: &TensorFile, name: &str) -> Vec<f64> {
    f.get::<f64>(name, None).unwrap().data().to_vec()
}

fn ints(f: &TensorFile, name: &str) -> Vec<usize> {
    f.get_ints(name)
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn close(what: &str, got: &[f64], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, hmmlearn {w}"
        );
    }
}

/// hmmlearn's test_categorical_hmm.py, `TestCategoricalAgainstWikipedia`: Rainy/Sunny,
/// walk/shop/clean.
fn weather() -> DiscreteHmm {
    DiscreteHmm::new(
        vec![0.6, 0.4],
        vec![0.7, 0.3, 0.4, 0.6],
        vec![0.1, 0.4, 0.5, 0.6, 0.3, 0.1],
    )
    .unwrap()
}

#[test]
fn weather_example_matches_hmmlearn_golden_values() {
    let h = weather();
    let obs = [0, 1, 2]; // walk, shop, clean
    let (path, score) = h.viterbi(&obs).unwrap();
    assert_eq!(path, vec![1, 0, 0], "Sunny, Rainy, Rainy");
    assert_eq!((score.exp() * 1e5).round() / 1e5, 0.01344);
    close(
        "posteriors",
        &h.posteriors(&obs).unwrap(),
        &[
            0.23170303, 0.76829697, 0.62406281, 0.37593719, 0.86397706, 0.13602294,
        ],
        1e-6,
    );
    // hmmlearn 0.3.3 `score([[0], [1], [2]])`.
    assert!((h.log_likelihood(&obs).unwrap() - -3.3928721329161653).abs() < 1e-12);
}

#[test]
fn umbrella_example_matches_hmmlearn_golden_values() {
    // hmmlearn's test_base.py, `TestBaseAgainstWikipedia`: frame probabilities
    // 0.9/0.2 (umbrella) and 0.1/0.8 (none), as a categorical model.
    let h = DiscreteHmm::new(
        vec![0.5, 0.5],
        vec![0.7, 0.3, 0.3, 0.7],
        vec![0.9, 0.1, 0.2, 0.8],
    )
    .unwrap();
    let obs = [0, 0, 1, 0, 0];
    let ll = h.log_likelihood(&obs).unwrap();
    assert_eq!((ll * 1e4).round() / 1e4, -3.3725);
    let (path, score) = h.viterbi(&obs).unwrap();
    assert_eq!(path, vec![0, 0, 1, 0, 0]);
    assert_eq!((score * 1e4).round() / 1e4, -4.4590);
}

/// Splits a concatenated `[ΣT, w]` array into the fixture's sequences.
fn split<T: Clone>(v: &[T], lengths: &[usize], w: usize) -> Vec<Vec<T>> {
    let mut out = Vec::new();
    let mut at = 0;
    for &n in lengths {
        out.push(v[at * w..(at + n) * w].to_vec());
        at += n;
    }
    out
}

#[test]
fn categorical_hmm_matches_hmmlearn_fixture() {
    let f = fixture("categorical.safetensors");
    let mut h = DiscreteHmm::new(
        f64s(&f, "start"),
        f64s(&f, "transition"),
        f64s(&f, "emission"),
    )
    .unwrap();
    let k = h.states();
    let lengths = ints(&f, "lengths");
    let seqs = split(&ints(&f, "obs"), &lengths, 1);
    let paths = split(&ints(&f, "viterbi_path"), &lengths, 1);
    let posts = split(&f64s(&f, "posteriors"), &lengths, k);
    let (ll, vs) = (f64s(&f, "loglik"), f64s(&f, "viterbi_score"));
    for (n, obs) in seqs.iter().enumerate() {
        close(
            &format!("loglik {n}"),
            &[h.log_likelihood(obs).unwrap()],
            &[ll[n]],
            1e-10,
        );
        let (path, score) = h.viterbi(obs).unwrap();
        assert_eq!(path, paths[n], "viterbi path {n}");
        close(&format!("viterbi score {n}"), &[score], &[vs[n]], 1e-10);
        close(
            &format!("posteriors {n}"),
            &h.posteriors(obs).unwrap(),
            &posts[n],
            1e-9,
        );
    }
    let refs: Vec<&[usize]> = seqs.iter().map(|s| s.as_slice()).collect();
    let before = h.em_step(&refs).unwrap();
    close("em loglik", &[before], &f64s(&f, "em_loglik"), 1e-10);
    close("em start", &h.chain.start, &f64s(&f, "em_start"), 1e-9);
    close(
        "em transition",
        &h.chain.trans,
        &f64s(&f, "em_transition"),
        1e-9,
    );
    close("em emission", &h.emit, &f64s(&f, "em_emission"), 1e-9);
}

#[test]
fn gaussian_hmm_matches_hmmlearn_fixture() {
    let f = fixture("gaussian.safetensors");
    let mut h = GaussianHmm::new(
        f64s(&f, "start"),
        f64s(&f, "transition"),
        f64s(&f, "means"),
        f64s(&f, "vars"),
    )
    .unwrap();
    let (k, d) = (h.states(), h.dims());
    let lengths = ints(&f, "lengths");
    let seqs = split(&f64s(&f, "obs"), &lengths, d);
    let paths = split(&ints(&f, "viterbi_path"), &lengths, 1);
    let posts = split(&f64s(&f, "posteriors"), &lengths, k);
    let (ll, vs) = (f64s(&f, "loglik"), f64s(&f, "viterbi_score"));
    for (n, obs) in seqs.iter().enumerate() {
        close(
            &format!("loglik {n}"),
            &[h.log_likelihood(obs).unwrap()],
            &[ll[n]],
            1e-10,
        );
        let (path, score) = h.viterbi(obs).unwrap();
        assert_eq!(path, paths[n], "viterbi path {n}");
        close(&format!("viterbi score {n}"), &[score], &[vs[n]], 1e-10);
        close(
            &format!("posteriors {n}"),
            &h.posteriors(obs).unwrap(),
            &posts[n],
            1e-9,
        );
    }
    let refs: Vec<&[f64]> = seqs.iter().map(|s| s.as_slice()).collect();
    let before = h.em_step(&refs, 0.0).unwrap();
    close("em loglik", &[before], &f64s(&f, "em_loglik"), 1e-10);
    close("em start", &h.chain.start, &f64s(&f, "em_start"), 1e-9);
    close(
        "em transition",
        &h.chain.trans,
        &f64s(&f, "em_transition"),
        1e-9,
    );
    close("em means", &h.means, &f64s(&f, "em_means"), 1e-9);
    close("em vars", &h.vars, &f64s(&f, "em_vars"), 1e-9);
}

fn assert_never_decreases(history: &[f64]) {
    assert!(history.len() > 3, "EM ran {} iterations", history.len());
    for (i, w) in history.windows(2).enumerate() {
        assert!(
            w[1] >= w[0] - 1e-9 * w[0].abs(),
            "EM log-likelihood fell at iteration {}: {} → {}",
            i + 1,
            w[0],
            w[1]
        );
    }
    assert!(
        history.last().unwrap() > &history[0],
        "EM gained nothing: {history:?}"
    );
}

#[test]
fn baum_welch_never_decreases_the_log_likelihood() {
    let truth = DiscreteHmm::new(
        vec![0.8, 0.1, 0.1],
        vec![0.8, 0.1, 0.1, 0.1, 0.8, 0.1, 0.2, 0.2, 0.6],
        vec![0.7, 0.1, 0.1, 0.1, 0.1, 0.7, 0.1, 0.1, 0.1, 0.1, 0.4, 0.4],
    )
    .unwrap();
    let mut rng = Rng::new(3);
    let seqs: Vec<Vec<usize>> = (0..20).map(|i| truth.sample(20 + i, &mut rng).0).collect();
    let refs: Vec<&[usize]> = seqs.iter().map(|s| s.as_slice()).collect();
    let mut guess = DiscreteHmm::new(
        vec![0.3, 0.3, 0.4],
        vec![0.4, 0.3, 0.3, 0.3, 0.4, 0.3, 0.3, 0.3, 0.4],
        vec![
            0.3, 0.2, 0.25, 0.25, 0.2, 0.3, 0.25, 0.25, 0.25, 0.25, 0.3, 0.2,
        ],
    )
    .unwrap();
    let em = EmSettings {
        max_iter: 60,
        tol: 0.0,
    };
    assert_never_decreases(&guess.fit(&refs, &em).unwrap());

    let g = GaussianHmm::new(
        vec![0.5, 0.5],
        vec![0.9, 0.1, 0.2, 0.8],
        vec![-2.0, 0.0, 2.0, 1.0],
        vec![0.5, 1.0, 1.0, 0.3],
    )
    .unwrap();
    let seqs: Vec<Vec<f64>> = (0..10).map(|_| g.sample(30, &mut rng).0).collect();
    let refs: Vec<&[f64]> = seqs.iter().map(|s| s.as_slice()).collect();
    let mut fit = GaussianHmm::init_from_data(&refs, 2, 2, 1e-3, &mut Rng::new(5)).unwrap();
    let history = fit.fit(&refs, &em, 1e-3).unwrap();
    assert_never_decreases(&history);
}

#[test]
fn sampling_is_seeded_and_supervised_estimation_recovers_the_model() {
    let h = weather();
    assert_eq!(
        h.sample(50, &mut Rng::new(9)),
        h.sample(50, &mut Rng::new(9))
    );
    assert_ne!(
        h.sample(50, &mut Rng::new(9)),
        h.sample(50, &mut Rng::new(10))
    );
    let mut rng = Rng::new(4);
    let data: Vec<(Vec<usize>, Vec<usize>)> = (0..2000).map(|_| h.sample(30, &mut rng)).collect();
    let refs: Vec<(&[usize], &[usize])> = data
        .iter()
        .map(|(o, s)| (o.as_slice(), s.as_slice()))
        .collect();
    let est = DiscreteHmm::estimate(&refs, 2, 3, 1.0).unwrap();
    close("start", &est.chain.start, &h.chain.start, 0.05);
    close("transition", &est.chain.trans, &h.chain.trans, 0.02);
    close("emission", &est.emit, &h.emit, 0.02);
    // Smoothing: a symbol never seen still gets mass.
    let est = DiscreteHmm::estimate(&[(&[0, 0], &[0, 0])], 2, 3, 0.5).unwrap();
    assert!(est.emit.iter().all(|&p| p > 0.0), "{:?}", est.emit);
}

fn one_line(e: impl std::fmt::Display) -> String {
    let s = e.to_string();
    assert!(!s.contains('\n'), "a multi-line error: {s}");
    s
}

#[test]
fn bad_input_is_a_one_line_error() {
    let h = weather();
    let e = one_line(h.log_likelihood(&[0, 3, 1]).unwrap_err());
    assert!(
        e.contains("symbol 3 at position 1") && e.contains("alphabet of 3"),
        "{e}"
    );
    let e = one_line(h.viterbi(&[]).unwrap_err());
    assert!(e.contains("no steps"), "{e}");
    let e = one_line(
        DiscreteHmm::new(vec![0.5, 0.6], vec![1.0, 0.0, 0.0, 1.0], vec![1.0, 1.0]).unwrap_err(),
    );
    assert!(e.contains("sum to 1.1"), "{e}");
    let g = GaussianHmm::new(vec![1.0], vec![1.0], vec![0.0, 0.0], vec![1.0, 1.0]).unwrap();
    for bad in [f64::NAN, f64::INFINITY] {
        let e = one_line(g.log_likelihood(&[0.0, 1.0, bad, 0.0]).unwrap_err());
        assert!(
            e.contains("feature 0 of step 1") && e.contains("finite"),
            "{e}"
        );
    }
    let e = one_line(g.posteriors(&[]).unwrap_err());
    assert!(e.contains("no steps"), "{e}");
    let e = one_line(g.log_likelihood(&[1.0, 2.0, 3.0]).unwrap_err());
    assert!(e.contains("whole steps of 2"), "{e}");
    let e = one_line(GaussianHmm::new(vec![1.0], vec![1.0], vec![0.0], vec![0.0]).unwrap_err());
    assert!(e.contains("positive"), "{e}");
    // An impossible sequence: no posteriors, log-likelihood −∞, no panic.
    let sure = DiscreteHmm::new(vec![1.0], vec![1.0], vec![1.0, 0.0]).unwrap();
    assert_eq!(sure.log_likelihood(&[1]).unwrap(), f64::NEG_INFINITY);
    assert!(one_line(sure.posteriors(&[0, 1]).unwrap_err()).contains("probability 0"));
}

const CONLLU: &str = "\
1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tdog\tdog\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\truns\trun\tVERB\tVBZ\t_\t0\troot\t_\t_
4\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tA\ta\tDET\tDT\t_\t2\tdet\t_\t_
2\tcat\tcat\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsleeps\tsleep\tVERB\tVBZ\t_\t0\troot\t_\t_
4\tquietly\tquietly\tADV\tRB\t_\t3\tadvmod\t_\t_
5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

1\tThe\tthe\tDET\tDT\t_\t2\tdet\t_\t_
2\tbird\tbird\tNOUN\tNN\t_\t3\tnsubj\t_\t_
3\tsings\tsing\tVERB\tVBZ\t_\t0\troot\t_\t_
4\tloudly\tloudly\tADV\tRB\t_\t3\tadvmod\t_\t_
5\t.\t.\tPUNCT\t.\t_\t3\tpunct\t_\t_

";

fn tiny_tagger() -> HmmTagger {
    let sents = parse_conllu(CONLLU, "tiny").unwrap();
    HmmTagger::train(&sents, &HmmTaggerConfig::default()).unwrap()
}

#[test]
fn tagger_learns_tags_uses_suffixes_and_round_trips() {
    let t = tiny_tagger();
    let sents = parse_conllu(CONLLU, "tiny").unwrap();
    let s = t.evaluate(&sents);
    assert_eq!((s.tokens, s.correct), (14, 14), "{s:?}");
    let l = t.config.lambdas;
    assert!((l.iter().sum::<f64>() - 1.0).abs() < 1e-12, "{l:?}");
    // Unknown words: "-ly" was an adverb, "-s" after a noun a verb.
    let tags: Vec<&str> = t
        .tag_words(&["A", "fish", "swims", "slowly", "."])
        .into_iter()
        .map(|i| t.tags[i].as_str())
        .collect();
    assert_eq!(tags[3], "ADV", "{tags:?}");
    assert_eq!(tags[4], "PUNCT", "{tags:?}");
    assert!(t.is_unknown("fish") && !t.is_unknown("DOG"));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    t.save(&p).unwrap();
    let back = HmmTagger::load(p.as_path()).unwrap();
    assert_eq!(back.column(), TagColumn::Upos);
    assert_eq!(
        back.tag_words(&["A", "fish", "swims", "slowly", "."]),
        t.tag_words(&["A", "fish", "swims", "slowly", "."])
    );
    assert!(back.tag_words(&[]).is_empty());
}

#[test]
fn tagger_refuses_more_tags_than_it_can_hold() {
    let rows: String = (1..=300)
        .map(|i| format!("{i}\tw{i}\t_\tT{i}\t_\t_\t0\tdep\t_\t_\n"))
        .collect();
    let sents = parse_conllu(&format!("{rows}\n"), "many").unwrap();
    let e = one_line(HmmTagger::train(&sents, &HmmTaggerConfig::default()).unwrap_err());
    assert!(
        e.contains("300 different tags") && e.contains("at most 256"),
        "{e}"
    );
    let bad_order = HmmTaggerConfig {
        order: 4,
        ..Default::default()
    };
    let e = one_line(HmmTagger::train(&sents, &bad_order).unwrap_err());
    assert!(e.contains("order must be 2 or 3"), "{e}");
}

#[test]
fn bigram_tagger_puts_no_weight_on_trigrams() {
    let sents = parse_conllu(CONLLU, "tiny").unwrap();
    let config = HmmTaggerConfig {
        order: 2,
        ..Default::default()
    };
    let t = HmmTagger::train(&sents, &config).unwrap();
    let l = t.config.lambdas;
    assert!(l[2] == 0.0 && (l[0] + l[1] - 1.0).abs() < 1e-12, "{l:?}");
    assert_eq!(t.evaluate(&sents).correct, 14);
}

/// Rewrites checkpoint `p` with tensor `name` replaced by `value` (same metadata).
fn rewrite(p: &Path, name: &str, value: Tensor<f64>) {
    let f = TensorFile::open(p).unwrap();
    let mut tensors: Vec<(String, Tensor<f64>)> = f
        .names()
        .into_iter()
        .map(|n| {
            let t = f.get::<f64>(&n, None).unwrap();
            (n, t)
        })
        .collect();
    for (n, t) in tensors.iter_mut() {
        if n == name {
            *t = value.clone();
        }
    }
    let refs: Vec<(String, &Tensor<f64>)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let meta: HashMap<String, String> = f.metadata().clone();
    checkpoint::save(p, &refs, &meta).unwrap();
}

#[test]
fn tagger_checkpoint_with_wrong_shapes_or_sums_is_refused() {
    let t = tiny_tagger();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("t.safetensors");
    let k = t.tags.len();
    t.save(&p).unwrap();
    rewrite(
        &p,
        "tag_prior",
        Tensor::from_vec(&[k + 1], vec![0.1; k + 1]).unwrap(),
    );
    let e = one_line(HmmTagger::load(p.as_path()).unwrap_err());
    assert!(e.contains("`tag_prior` has shape [6], expected [5]"), "{e}");
    t.save(&p).unwrap();
    let mut prior = TensorFile::open(&p)
        .unwrap()
        .get::<f64>("tag_prior", None)
        .unwrap();
    prior.data_mut()[0] += 0.25;
    rewrite(&p, "tag_prior", prior);
    let e = one_line(HmmTagger::load(p.as_path()).unwrap_err());
    assert!(e.contains("`tag_prior`: probabilities sum to 1.2"), "{e}");
    t.save(&p).unwrap();
    let mut tr = TensorFile::open(&p)
        .unwrap()
        .get::<f64>("transition", None)
        .unwrap();
    tr.data_mut()[7] = -0.5;
    rewrite(&p, "transition", tr);
    let e = one_line(HmmTagger::load(p.as_path()).unwrap_err());
    assert!(
        e.contains("`transition` row (0, 1): entry 1 is -0.5"),
        "{e}"
    );
    // A classifier checkpoint is not a tagger.
    let e = one_line(HmmClassifier::load(p.as_path()).unwrap_err());
    assert!(e.contains("`tag-hmm` task"), "{e}");
}

fn toy_ts(n: usize) -> String {
    let mut s = String::from("@problemName Toy\n@univariate false\n@dimensions 2\n@equalLength false\n@classLabel true up down\n@data\n");
    let mut rng = Rng::new(n as u64);
    for i in 0..n {
        let up = i % 2 == 0;
        let len = 6 + i % 5;
        let a: Vec<String> = (0..len)
            .map(|t| {
                format!(
                    "{:.3}",
                    if up { t as f64 } else { -(t as f64) } + 0.3 * rng.normal()
                )
            })
            .collect();
        let b: Vec<String> = (0..len).map(|_| format!("{:.3}", rng.normal())).collect();
        s.push_str(&format!(
            "{}:{}:{}\n",
            a.join(","),
            b.join(","),
            if up { "up" } else { "down" }
        ));
    }
    s
}

#[test]
fn classifier_separates_classes_round_trips_and_refuses_bad_checkpoints() {
    let data = parse_ts(&toy_ts(40), "toy").unwrap();
    let idx: Vec<usize> = (0..data.cases.len()).collect();
    let config = HmmClassifierConfig {
        states: 3,
        em_iters: 30,
        ..Default::default()
    };
    let mut fits = Vec::new();
    let c = HmmClassifier::train(&data, &idx, &config, &mut |f| fits.push(f.clone())).unwrap();
    assert_eq!(fits.len(), 2);
    assert!(
        fits.iter().all(|f| f.iterations >= 2 && f.cases == 20),
        "{fits:?}"
    );
    let test = parse_ts(&toy_ts(20), "toy").unwrap();
    let refs: Vec<_> = test.cases.iter().collect();
    let (loss, s) = c.evaluate(&refs).unwrap();
    assert!(
        s.accuracy >= 0.95 && loss < 0.5,
        "accuracy {} loss {loss}",
        s.accuracy
    );
    let (_, proba) = c.predict(&test.cases[0]).unwrap();
    assert!((proba.iter().sum::<f64>() - 1.0).abs() < 1e-9);

    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.safetensors");
    c.save(&p).unwrap();
    assert_eq!(HmmClassifier::load(p.as_path()).unwrap(), c);
    rewrite(
        &p,
        "vars",
        Tensor::from_vec(&[2, 3, 3], vec![1.0; 18]).unwrap(),
    );
    let e = one_line(HmmClassifier::load(p.as_path()).unwrap_err());
    assert!(
        e.contains("`vars` has shape [2, 3, 3], expected [2, 3, 2]"),
        "{e}"
    );
    c.save(&p).unwrap();
    rewrite(
        &p,
        "start",
        Tensor::from_vec(&[2, 3], vec![0.5; 6]).unwrap(),
    );
    let e = one_line(HmmClassifier::load(p.as_path()).unwrap_err());
    assert!(
        e.contains("class \"up\"") && e.contains("sum to 1.5"),
        "{e}"
    );
    // NaN features and empty series are refused with the case named.
    let mut bad = test.cases[0].clone();
    bad.values[3] = f32::NAN;
    let e = one_line(c.evaluate(&[&bad]).unwrap_err());
    assert!(e.contains("case 1") && e.contains("finite"), "{e}");
    bad.values.clear();
    bad.len = 0;
    let e = one_line(c.predict(&bad).unwrap_err());
    assert!(e.contains("no steps"), "{e}");
}
