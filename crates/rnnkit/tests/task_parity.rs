//! The classify and tag checkpoints against their PyTorch modules
//! (`tools/task_modules.py`: `SequenceClassifier`, `Tagger`), both ways. The fixtures in
//! tests/fixtures/tasks are made, from the repository root, by
//! `~/torch/bin/python tools/task_fixtures.py tests/fixtures/tasks`:
//! `rnnkit_*.safetensors` by a few steps of `rnnkit classify train` / `rnnkit tag train`
//! (then loaded into torch), `torch_*.safetensors` by the torch modules (then loaded
//! here); each `NAME.logits.safetensors` holds the inputs and torch's logits (float64)
//! of the model in `NAME.safetensors`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::data::{sentences_from_plain, Sentence, Series};
use rnnkit::task::classifier::Classifier;
use rnnkit::task::tagger::Tagger;
use rnnkit::{CellKind, PoolKind};
use std::path::PathBuf;

/// Largest |rnnkit − torch| allowed on a logit.
const TOL: f64 = 1e-5;

/// (cell, layers, bidirectional, pool) of the classifiers `rnnkit classify train` made.
const RNNKIT_CLASSIFIERS: &[(&str, usize, bool, PoolKind)] = &[
    ("lstm", 1, false, PoolKind::Last),
    ("lstm", 1, false, PoolKind::Mean),
    ("lstm", 1, false, PoolKind::Max),
    ("lstm", 1, true, PoolKind::Last),
    ("lstm", 1, true, PoolKind::Mean),
    ("lstm", 1, true, PoolKind::Max),
    ("gru", 1, false, PoolKind::Last),
    ("gru", 1, false, PoolKind::Mean),
    ("gru", 1, false, PoolKind::Max),
    ("gru", 1, true, PoolKind::Last),
    ("gru", 1, true, PoolKind::Mean),
    ("gru", 1, true, PoolKind::Max),
    ("lstm", 2, true, PoolKind::Mean),
];

/// The same for the classifiers PyTorch wrote.
const TORCH_CLASSIFIERS: &[(&str, usize, bool, PoolKind)] = &[
    ("lstm", 2, true, PoolKind::Last),
    ("gru", 2, false, PoolKind::Mean),
    ("gru", 1, true, PoolKind::Max),
    ("rnn_tanh", 1, true, PoolKind::Max),
    ("rnn_relu", 1, false, PoolKind::Last),
];

/// (cell, sentence layers, character hidden width) of the taggers.
const RNNKIT_TAGGERS: &[(&str, usize, usize)] = &[("lstm", 1, 3), ("gru", 2, 3)];
const TORCH_TAGGERS: &[(&str, usize, usize)] = &[("lstm", 2, 3), ("lstm", 1, 0)];

fn fixture_path(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/tasks")
        .join(file)
}

fn classifier_name(
    origin: &str,
    &(cell, layers, bi, pool): &(&str, usize, bool, PoolKind),
) -> String {
    let dir = if bi { "bi" } else { "uni" };
    format!("{origin}_classify_{cell}_{layers}l_{dir}_{pool}")
}

fn tagger_name(origin: &str, &(cell, layers, char_hidden): &(&str, usize, usize)) -> String {
    let chars = if char_hidden == 0 { "_nochars" } else { "" };
    format!("{origin}_tag_{cell}_{layers}l{chars}")
}

/// Torch's inputs and logits for `name`, after checking they belong to its checkpoint.
fn reference(name: &str) -> TensorFile {
    let file = TensorFile::open(fixture_path(&format!("{name}.logits.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    assert_eq!(
        file.metadata()["checkpoint"],
        format!("{name}.safetensors"),
        "{name}: the logits file names another checkpoint"
    );
    file
}

fn lengths(file: &TensorFile) -> Vec<usize> {
    let ints = file.get_ints("lengths").expect("lengths");
    ints.into_iter().map(|l| l as usize).collect()
}

/// Row-major multi-index of flat position `i` in `shape`.
fn index_of(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for (k, &n) in shape.iter().enumerate().rev() {
        idx[k] = i % n;
        i /= n;
    }
    idx
}

/// Every `got[i]` within [`TOL`] of `want[i]`; a failure names the tensor, the index
/// of the largest difference, both values and how many entries are off.
fn assert_close(what: &str, got: &[f32], want: &[f64], shape: &[usize]) {
    assert_eq!(got.len(), want.len(), "{what}: sizes for shape {shape:?}");
    let diff = |i: usize| (got[i] as f64 - want[i]).abs();
    let off = (0..got.len())
        .filter(|&i| diff(i) > TOL || diff(i).is_nan())
        .count();
    if let Some(i) = (0..got.len()).max_by(|&a, &b| diff(a).total_cmp(&diff(b))) {
        assert!(
            off == 0,
            "{what}{:?}: rnnkit {} vs torch {} (|Δ| {:e} > {TOL:e}; {off} of {} entries off)",
            index_of(i, shape),
            got[i],
            want[i],
            diff(i),
            got.len()
        );
    }
}

fn check_classifier(name: &str, &(cell, layers, bi, pool): &(&str, usize, bool, PoolKind)) {
    let (mut model, _) = Classifier::load(&fixture_path(&format!("{name}.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = model.config();
    assert_eq!(
        (
            config.cell,
            config.num_layers,
            config.bidirectional,
            config.pool
        ),
        (CellKind::from_name(cell).unwrap(), layers, bi, pool),
        "{name}: the checkpoint is not the model its name says"
    );
    let file = reference(name);
    let values = file.get::<f32>("values", None).unwrap();
    let &[b, t, c] = values.shape() else {
        panic!("{name}: values has shape {:?}", values.shape())
    };
    let series: Vec<Series> = lengths(&file)
        .into_iter()
        .enumerate()
        .map(|(j, len)| Series {
            values: values.data()[j * t * c..][..len * c].to_vec(),
            len,
            label: 0,
        })
        .collect();
    let cases: Vec<&Series> = series.iter().collect();
    let batch = model.batch(&cases).unwrap();
    let logits = model.logits(&batch).unwrap();
    let want = file.get::<f64>("logits", None).unwrap();
    assert_eq!(
        want.shape(),
        [b, model.labels.len()],
        "{name}: logits shape"
    );
    assert_close(
        &format!("{name} logits"),
        &logits,
        want.data(),
        want.shape(),
    );
}

fn check_tagger(name: &str, &(cell, layers, char_hidden): &(&str, usize, usize)) {
    let (mut model, _) = Tagger::load(&fixture_path(&format!("{name}.safetensors")))
        .unwrap_or_else(|e| panic!("{name}: {e}"));
    let config = model.config();
    assert_eq!(
        (config.cell, config.num_layers, config.char_hidden),
        (CellKind::from_name(cell).unwrap(), layers, char_hidden),
        "{name}: the checkpoint is not the model its name says"
    );
    let file = reference(name);
    let sentences: Vec<Sentence> = sentences_from_plain(&file.metadata()["sentences"]);
    let lengths = lengths(&file);
    assert_eq!(
        sentences.iter().map(Sentence::len).collect::<Vec<_>>(),
        lengths,
        "{name}: words per sentence"
    );
    // The word encoding: torch's id 0 (`<unk>`) exactly where rnnkit finds no word.
    let word_ids = file.get_ints("word_ids").unwrap();
    let steps = lengths.iter().copied().max().unwrap();
    for (j, s) in sentences.iter().enumerate() {
        for i in 0..s.len() {
            assert_eq!(
                model.is_unknown(s.form(i)),
                word_ids[j * steps + i] == 0,
                "{name}: sentence {j} word {i} {:?}",
                s.form(i)
            );
        }
    }
    let refs: Vec<&Sentence> = sentences.iter().collect();
    let logits = model.logits(&refs).unwrap(); // [T, B, K]
    let want = file.get::<f64>("logits", None).unwrap(); // [B, T, K]
    let (b, k) = (sentences.len(), model.tags.len());
    assert_eq!(logits.shape(), [steps, b, k], "{name}: rnnkit logits shape");
    assert_eq!(want.shape(), [b, steps, k], "{name}: torch logits shape");
    // Torch's [B, T, K] in rnnkit's time-major order; padding positions included.
    let mut batch_first = vec![0.0f32; logits.len()];
    for t in 0..steps {
        for j in 0..b {
            batch_first[(j * steps + t) * k..][..k]
                .copy_from_slice(&logits.data()[(t * b + j) * k..][..k]);
        }
    }
    assert_close(
        &format!("{name} logits [B, T, K]"),
        &batch_first,
        want.data(),
        want.shape(),
    );
}

#[test]
fn rnnkit_classifiers_give_torch_logits() {
    for case in RNNKIT_CLASSIFIERS {
        check_classifier(&classifier_name("rnnkit", case), case);
    }
}

#[test]
fn torch_classifiers_give_torch_logits_in_rnnkit() {
    for case in TORCH_CLASSIFIERS {
        check_classifier(&classifier_name("torch", case), case);
    }
}

#[test]
fn rnnkit_taggers_give_torch_logits() {
    for case in RNNKIT_TAGGERS {
        check_tagger(&tagger_name("rnnkit", case), case);
    }
}

#[test]
fn torch_taggers_give_torch_logits_in_rnnkit() {
    for case in TORCH_TAGGERS {
        check_tagger(&tagger_name("torch", case), case);
    }
}

/// What the fixtures' long words rely on: only the first and last 12 characters of a
/// word count (here two-byte ones, so counting bytes would cut elsewhere).
#[test]
fn long_words_are_read_by_their_first_and_last_12_characters() {
    let name = tagger_name("torch", &TORCH_TAGGERS[0]);
    let (mut model, _) = Tagger::load(&fixture_path(&format!("{name}.safetensors"))).unwrap();
    let mut scores = |word: &str| {
        let s = sentences_from_plain(&format!("the {word} sees a cat ."));
        model.logits(&[&s[0]]).unwrap().data().to_vec()
    };
    let base = scores("ééééééééééééQQQQüüüüüüüüüüüü");
    assert_eq!(base, scores("ééééééééééééZZZZZZZZüüüüüüüüüüüü"));
    assert_ne!(base, scores("éééééééééééaQQQQüüüüüüüüüüüü"));
    assert_ne!(base, scores("ééééééééééééQQQQaüüüüüüüüüüü"));
}

/// A fixture that `tools/task_fixtures.py` writes but no test reads would prove nothing.
#[test]
fn every_fixture_is_checked() {
    let mut listed: Vec<String> = RNNKIT_CLASSIFIERS
        .iter()
        .map(|c| classifier_name("rnnkit", c))
        .chain(
            TORCH_CLASSIFIERS
                .iter()
                .map(|c| classifier_name("torch", c)),
        )
        .chain(RNNKIT_TAGGERS.iter().map(|c| tagger_name("rnnkit", c)))
        .chain(TORCH_TAGGERS.iter().map(|c| tagger_name("torch", c)))
        .collect();
    let mut found: Vec<String> = std::fs::read_dir(fixture_path(""))
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().into_string().unwrap();
            name.strip_suffix(".logits.safetensors").map(String::from)
        })
        .collect();
    listed.sort();
    found.sort();
    assert_eq!(found, listed);
}
