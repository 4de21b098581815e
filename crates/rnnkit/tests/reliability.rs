//! Hostile and broken inputs get an error, never a panic, an abort or an allocation
//! the input does not back; failed writes keep the previous checkpoint. Tests named
//! for a crash pin the input that caused it.

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::model::CharLm;
use rnnkit::task::classifier::Classifier;
use rnnkit::task::tagger::Tagger;
use rnnkit::Tensor;
use safetensors::tensor::{Dtype, TensorView};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures")
        .join(rel)
}

/// A stored tensor: dtype, shape, little-endian bytes.
type Stored = (Dtype, Vec<usize>, Vec<u8>);

/// The tensors and metadata of a fixture, to be changed and written back.
fn parts(rel: &str) -> (HashMap<String, Stored>, HashMap<String, String>) {
    let bytes = std::fs::read(fixture(rel)).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, (v.dtype(), v.shape().to_vec(), v.data().to_vec())))
        .collect();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    (tensors, meta.metadata().clone().unwrap_or_default())
}

/// Serialises `tensors` and `meta` and opens them from memory, as a loader would a file.
fn file_of(tensors: &HashMap<String, Stored>, meta: &HashMap<String, String>) -> TensorFile {
    let views: Vec<(String, TensorView<'_>)> = tensors
        .iter()
        .map(|(n, (d, s, b))| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    let bytes = safetensors::serialize(views, Some(meta.clone())).unwrap();
    TensorFile::from_bytes("test.safetensors".into(), bytes).unwrap()
}

fn zeros_f32(shape: &[usize]) -> Stored {
    let n: usize = shape.iter().product();
    (Dtype::F32, shape.to_vec(), vec![0; 4 * n])
}

fn message<T>(r: rnnkit::Result<T>) -> String {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn every_fixture_loads_from_memory_as_from_its_file() {
    let (t, m) = parts("charlm/rnnkit_charlm_lstm.safetensors");
    let (a, _) = CharLm::load(file_of(&t, &m)).unwrap();
    let (b, _) = CharLm::load(fixture("charlm/rnnkit_charlm_lstm.safetensors").as_path()).unwrap();
    assert_eq!(a.config(), b.config());
    let (t, m) = parts("tasks/rnnkit_classify_lstm_1l_uni_last.safetensors");
    Classifier::load(file_of(&t, &m)).unwrap();
    let (t, m) = parts("tasks/rnnkit_tag_lstm_1l.safetensors");
    Tagger::load(file_of(&t, &m)).unwrap();
    let (t, m) = parts("tasks/torch_tag_lstm_1l_nochars.safetensors");
    Tagger::load(file_of(&t, &m)).unwrap();
}

/// The crash of issue 9: a 16 MB checkpoint whose `rnn.weight_ih_l0` is `[4·2^20, 1]`
/// made `sample` and `eval` allocate `W_hh [4·2^20, 2^20]` (16 TiB) and abort.
#[test]
fn huge_hidden_size_inferred_from_the_first_tensor_is_refused_before_allocating() {
    let (mut t, m) = parts("charlm/rnnkit_charlm_lstm.safetensors");
    t.insert("rnn.weight_ih_l0".into(), zeros_f32(&[4 << 20, 1]));
    let e = message(CharLm::load(file_of(&t, &m)));
    assert!(e.contains("hidden_size must be at most 65536"), "{e}");
    // Within the bound, the other tensors' shapes refuse it, read from the header.
    t.insert("rnn.weight_ih_l0".into(), zeros_f32(&[4 * 65536, 1]));
    let e = message(CharLm::load(file_of(&t, &m)));
    assert!(
        e.contains("tensor `rnn.weight_hh_l0` has shape") && e.contains("[262144, 65536]"),
        "{e}"
    );
}

#[test]
fn classifier_whose_first_tensor_implies_a_huge_model_is_refused_before_allocating() {
    let (mut t, m) = parts("tasks/rnnkit_classify_lstm_1l_uni_last.safetensors");
    t.insert("rnn.weight_ih_l0".into(), zeros_f32(&[4 * 65536, 1]));
    let e = message(Classifier::load(file_of(&t, &m)));
    assert!(e.contains("tensor `rnn.weight_hh_l0` has shape"), "{e}");
    // The head is checked against the recurrent stack before the stack is built.
    let (mut t, m) = parts("tasks/rnnkit_classify_lstm_1l_uni_last.safetensors");
    t.insert("head.weight".into(), zeros_f32(&[3, 5]));
    let e = message(Classifier::load(file_of(&t, &m)));
    assert!(
        e.contains("tensor `head.weight` has shape [3, 5], expected [3, 4]"),
        "{e}"
    );
}

#[test]
fn tagger_whose_metadata_claims_a_huge_model_is_refused_before_allocating() {
    let (t, mut m) = parts("tasks/rnnkit_tag_lstm_1l.safetensors");
    let config = m["rnnkit.config"].clone();
    // 64 layers of 60000 units: terabytes, were they built before being checked.
    m.insert(
        "rnnkit.config".into(),
        config.replace(
            r#""hidden_size":4,"num_layers":1"#,
            r#""hidden_size":60000,"num_layers":64"#,
        ),
    );
    let e = message(Tagger::load(file_of(&t, &m)));
    assert!(e.contains("tensor `rnn.weight_ih_l0` has shape"), "{e}");
    // An unstored size (the character table without a character network) is bounded too.
    m.insert(
        "rnnkit.config".into(),
        config.replace(
            r#""char_embed":3,"char_hidden":3"#,
            r#""char_embed":1000000000000,"char_hidden":0"#,
        ),
    );
    let e = message(Tagger::load(file_of(&t, &m)));
    assert!(e.contains("widths must be at most 65536"), "{e}");
}

#[test]
fn a_tensor_of_integers_where_floats_belong_is_refused_from_the_header() {
    let (mut t, m) = parts("charlm/rnnkit_charlm_lstm.safetensors");
    let (_, shape, bytes) = t["head.bias"].clone();
    t.insert("head.bias".into(), (Dtype::I32, shape, bytes));
    let e = message(CharLm::load(file_of(&t, &m)));
    assert!(e.contains("tensor `head.bias` has dtype I32"), "{e}");
}

#[test]
fn a_missing_layer_of_a_deep_stack_is_named() {
    let (mut t, m) = parts("tasks/rnnkit_classify_lstm_2l_bi_mean.safetensors");
    t.remove("rnn.weight_hh_l1_reverse");
    let e = message(Classifier::load(file_of(&t, &m)));
    assert!(
        e.contains("tensor `rnn.weight_hh_l1_reverse` is missing"),
        "{e}"
    );
}

fn tiny_tensor(v: f32) -> Tensor<f32> {
    Tensor::from_vec(&[2], vec![v, v]).unwrap()
}

fn saved_value(path: &Path) -> f32 {
    TensorFile::open(path)
        .unwrap()
        .get::<f32>("x", None)
        .unwrap()
        .data()[0]
}

/// A checkpoint write that fails (here: its temporary file cannot be created) gives an
/// error naming the file and leaves the previous checkpoint whole.
#[test]
fn failed_checkpoint_write_leaves_the_previous_checkpoint_intact() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latest.safetensors");
    let meta = HashMap::new();
    checkpoint::save(&path, &[("x".into(), &tiny_tensor(1.0))], &meta).unwrap();
    // The temporary file's name is taken by a folder.
    let blocker = dir
        .path()
        .join(format!(".latest.safetensors.{}.tmp", std::process::id()));
    std::fs::create_dir(&blocker).unwrap();
    let e = checkpoint::save(&path, &[("x".into(), &tiny_tensor(2.0))], &meta).unwrap_err();
    assert!(e.to_string().contains("latest.safetensors"), "{e}");
    assert_eq!(saved_value(&path), 1.0);
    std::fs::remove_dir(&blocker).unwrap();
    checkpoint::save(&path, &[("x".into(), &tiny_tensor(3.0))], &meta).unwrap();
    assert_eq!(saved_value(&path), 3.0);
}

/// A checkpoint path that is a folder: an error, and no temporary file left behind.
#[test]
fn checkpoint_path_that_is_a_folder_is_an_error_without_leftovers() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("latest.safetensors");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"x").unwrap();
    let e =
        checkpoint::save(&path, &[("x".into(), &tiny_tensor(1.0))], &HashMap::new()).unwrap_err();
    assert!(e.to_string().contains("latest.safetensors"), "{e}");
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left, ["latest.safetensors"], "only the folder remains");
    assert!(path.join("keep").exists());
}
