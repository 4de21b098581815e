//! Saving and loading a layer's parameters under torch's names, and every way a
//! file can be wrong: each is a clear error that names the file and the tensor.

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};
use std::collections::HashMap;

fn bilstm() -> Recurrent<f32> {
    RecurrentConfig::new(CellKind::Lstm, 5, 6)
        .with_layers(2)
        .with_bidirectional(true)
        .init(&mut Rng::new(1))
        .unwrap()
}

#[test]
fn round_trip_keeps_every_parameter_and_torch_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rnn.safetensors");
    let layer = bilstm();
    layer.save_params(&path, "rnn.", &HashMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();
    assert!(file.names().contains(&"rnn.bias_hh_l1_reverse".to_string()));
    assert_eq!(file.shape("rnn.weight_ih_l1"), Some(vec![24, 12]));
    let loaded = Recurrent::<f32>::from_state_dict(&file, "rnn.", CellKind::Lstm).unwrap();
    assert_eq!(loaded.config(), layer.config());
    assert_eq!(loaded.cells(), layer.cells());
    // No temporary file is left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn init_follows_torch_default_range() {
    let layer = RecurrentConfig::new(CellKind::Gru, 3, 16)
        .init::<f32>(&mut Rng::new(2))
        .unwrap();
    let k = 0.25;
    layer.visit_params(&mut |n, t| {
        assert!(
            t.data().iter().all(|v| v.abs() <= k),
            "{n} outside U(-1/sqrt(H), 1/sqrt(H))"
        )
    });
}

fn write(dir: &std::path::Path, tensors: &[(&str, Tensor<f32>)]) -> std::path::PathBuf {
    let path = dir.join("bad.safetensors");
    let refs: Vec<(String, &Tensor<f32>)> =
        tensors.iter().map(|(n, t)| (n.to_string(), t)).collect();
    checkpoint::save(&path, &refs, &HashMap::new()).unwrap();
    path
}

fn load_err(path: &std::path::Path) -> String {
    let layer_result = TensorFile::open(path).and_then(|f| {
        let mut l = bilstm();
        checkpoint::load_params(&mut l, &f, "")
    });
    layer_result.unwrap_err().to_string()
}

#[test]
fn missing_tensor_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let mut named = Vec::new();
    bilstm().visit_params(&mut |n, t| named.push((n.to_string(), t.clone())));
    named.retain(|(n, _)| n != "weight_hh_l1_reverse");
    let tensors: Vec<(&str, Tensor<f32>)> =
        named.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let msg = load_err(&write(dir.path(), &tensors));
    assert!(
        msg.contains("bad.safetensors") && msg.contains("`weight_hh_l1_reverse` is missing"),
        "{msg}"
    );
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let mut named = Vec::new();
    bilstm().visit_params(&mut |n, t| named.push((n.to_string(), t.clone())));
    named[0].1 = Tensor::zeros(&[24, 4]);
    let tensors: Vec<(&str, Tensor<f32>)> =
        named.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
    let msg = load_err(&write(dir.path(), &tensors));
    assert!(
        msg.contains("`weight_ih_l0` has shape [24, 4], expected [24, 5]"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let data = vec![0u8; 24 * 5 * 2];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::I16, vec![24, 5], &data).unwrap();
    std::fs::write(
        &path,
        safetensors::serialize([("weight_ih_l0", view)], None).unwrap(),
    )
    .unwrap();
    let msg = load_err(&path);
    // Floats of any width load (BF16 and F16 as well); integers are named and refused.
    assert!(msg.contains("`weight_ih_l0` has dtype I16"), "{msg}");
}

#[test]
fn truncated_hostile_and_foreign_files_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    bilstm().save_params(&good, "", &HashMap::new()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("truncated", bytes[..bytes.len() / 2].to_vec()),
        ("absurd header length", {
            let mut b = bytes.clone();
            b[..8].copy_from_slice(&u64::MAX.to_le_bytes());
            b
        }),
        ("offsets outside the file", {
            let header =
                br#"{"weight_ih_l0":{"dtype":"F32","shape":[24,5],"data_offsets":[0,480000]}}"#;
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header);
            b.extend_from_slice(&[0; 480]);
            b
        }),
        ("shape not fitting offsets", {
            let header = br#"{"weight_ih_l0":{"dtype":"F32","shape":[1000000,1000000],"data_offsets":[0,480]}}"#;
            let mut b = (header.len() as u64).to_le_bytes().to_vec();
            b.extend_from_slice(header);
            b.extend_from_slice(&[0; 480]);
            b
        }),
        (
            "text file",
            b"hello, world, this is not a checkpoint at all".to_vec(),
        ),
    ];
    for (what, b) in cases {
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, &b).unwrap();
        let err = TensorFile::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("x.safetensors") && err.contains("not a valid safetensors file"),
            "{what}: {err}"
        );
    }
    let err = TensorFile::open(dir.path().join("nope.safetensors"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.safetensors") && err.contains("No such file"),
        "{err}"
    );
}

#[test]
fn state_dict_of_another_cell_kind_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lstm.safetensors");
    bilstm().save_params(&path, "", &HashMap::new()).unwrap();
    let file = TensorFile::open(&path).unwrap();
    // 24 rows is a multiple of 3, so a GRU of hidden 8 is tried: its weight_hh shape [24, 8] then disagrees.
    let err = Recurrent::<f32>::from_state_dict(&file, "", CellKind::Gru)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("weight_hh_l0") && err.contains("expected [24, 8]"),
        "{err}"
    );
    let err = Recurrent::<f32>::from_state_dict(&file, "model.", CellKind::Lstm)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`model.weight_ih_l0` is missing"), "{err}");
}

#[test]
fn bad_shapes_and_lengths_at_forward_are_errors() {
    let mut l = bilstm();
    assert!(l
        .forward(&Tensor::zeros(&[4, 2, 3]), None, None)
        .unwrap_err()
        .to_string()
        .contains("input must be [T, B, 5]"));
    let x = Tensor::zeros(&[4, 2, 5]);
    assert!(l
        .forward(&x, Some(&[4]), None)
        .unwrap_err()
        .to_string()
        .contains("1 lengths given for a batch of 2"));
    assert!(l
        .forward(&x, Some(&[4, 5]), None)
        .unwrap_err()
        .to_string()
        .contains("length 5 of sequence 1 exceeds"));
    let mut fresh = bilstm();
    assert!(
        fresh.backward(&Tensor::zeros(&[4, 2, 12]), None).is_err(),
        "backward before forward"
    );
    l.forward(&x, None, None).unwrap();
    assert!(l
        .backward(&Tensor::zeros(&[4, 2, 6]), None)
        .unwrap_err()
        .to_string()
        .contains("output gradient"));
    let bad = RecurrentConfig::new(CellKind::Lstm, 5, 0)
        .init::<f32>(&mut Rng::new(0))
        .unwrap_err();
    assert!(bad.to_string().contains("hidden_size must be at least 1"));
}

#[test]
fn inference_is_deterministic_and_dropout_only_in_training() {
    let cfg = RecurrentConfig::new(CellKind::Lstm, 5, 6)
        .with_layers(2)
        .with_dropout(0.5);
    let mut l: Recurrent<f32> = cfg.init(&mut Rng::new(3)).unwrap();
    let mut rng = Rng::new(9);
    let x = Tensor::from_vec(&[3, 2, 5], (0..30).map(|_| rng.uniform() as f32).collect()).unwrap();
    let a = l.forward(&x, None, None).unwrap();
    let b = l.forward(&x, None, None).unwrap();
    assert_eq!(a, b);
    let c = l.forward_train(&x, None, None, &mut Rng::new(1)).unwrap();
    assert_ne!(a.0, c.0, "dropout changes the training output");
    let d = l.forward_train(&x, None, None, &mut Rng::new(1)).unwrap();
    assert_eq!(c, d, "same seed, same masks");
}
