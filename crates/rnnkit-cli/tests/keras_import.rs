//! `rnnkit import --keras`: char models trained in Keras give Keras' logits and greedy
//! text in rnnkit. Fixtures in tests/fixtures/keras, made with Keras 3 (TensorFlow
//! backend) by `~/keras/bin/python tools/keras_fixture.py tests/fixtures/keras`
//! (see tools/README.md). Needs `--features keras` (and libhdf5-dev); without it,
//! only the test of the message that says so runs.

mod common;
use common::*;

/// Without HDF5 support `--keras` says how to get it, before reading anything.
#[cfg(not(feature = "keras"))]
#[test]
fn without_the_feature_keras_says_how_to_build_it() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "import",
            "--keras",
            "model.weights.h5",
            "--vocab-json",
            "[\"a\"]",
            "--out",
            "m.safetensors",
        ],
        dir.path(),
    );
    let e = fails_with(&o, "--features keras");
    assert!(e.contains("libhdf5-dev"), "{e}");
}

#[cfg(feature = "keras")]
mod keras {
    use super::*;
    use rnnkit::model::{CharLm, Precision, Stepper};
    use std::path::{Path, PathBuf};

    /// Held while this process has an HDF5 file open and while it runs the binary:
    /// HDF5 locks the files it opens, and a child started by another test thread
    /// at that moment would inherit the descriptor and its lock.
    static HDF5_FILES: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn hdf5_lock() -> std::sync::MutexGuard<'static, ()> {
        HDF5_FILES.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `rnnkit ARGS` in `dir`, never while a test writes an HDF5 file.
    fn run(args: &[&str], dir: &Path) -> std::process::Output {
        let _files = hdf5_lock();
        rnnkit(args, dir)
    }

    fn fixtures() -> PathBuf {
        repo().join("tests/fixtures/keras")
    }

    fn reference(case: &str) -> serde_json::Value {
        let text = std::fs::read_to_string(fixtures().join(format!("{case}.json"))).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    /// `rnnkit import --keras FILE --vocab-text text.txt EXTRA… --out DIR/out.safetensors`.
    fn import(file: &Path, dir: &Path, extra: &[&str]) -> std::process::Output {
        let out = dir.join("out.safetensors");
        let text = fixtures().join("text.txt");
        let mut args = vec![
            "import",
            "--keras",
            file.to_str().unwrap(),
            "--vocab-text",
            text.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        run(&args, dir)
    }

    fn matrix(v: &serde_json::Value) -> Vec<Vec<f64>> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|row| {
                row.as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap())
                    .collect()
            })
            .collect()
    }

    /// Imports `file`, then checks the logits of the reference input (batch 1, state
    /// carried, both the stepper and the sequence forward pass) and the greedy text;
    /// returns the largest logit error against Keras in float64 and in float32.
    fn check(case: &str, file: &str, extra: &[&str]) -> (f64, f64) {
        let r = reference(case);
        let dir = tempfile::tempdir().unwrap();
        ok(&import(&fixtures().join(file), dir.path(), extra));
        let out = dir.path().join("out.safetensors");
        let (mut model, _) = CharLm::load(out.as_path()).unwrap();
        let c = model.config();
        assert_eq!(c.embed_size as u64, r["embed"].as_u64().unwrap(), "{file}");
        assert_eq!(
            c.hidden_size as u64,
            r["hidden"].as_u64().unwrap(),
            "{file}"
        );
        assert_eq!(c.num_layers as u64, r["layers"].as_u64().unwrap(), "{file}");
        let vocab: Vec<String> = r["vocab"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        let chars: Vec<String> = model
            .vocab()
            .chars()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(chars, vocab, "{file}: vocabulary");
        let ids = model.vocab().encode(r["input"].as_str().unwrap()).unwrap();
        let (want64, want32) = (matrix(&r["logits"]), matrix(&r["logits_f32"]));
        let mut stepper = Stepper::new(&model, Precision::F32).unwrap();
        let (mut err64, mut err32) = (0f64, 0f64);
        for (t, &id) in ids.iter().enumerate() {
            let got = stepper.feed(id).unwrap();
            for (k, &g) in got.iter().enumerate() {
                let (d64, d32) = (
                    (g as f64 - want64[t][k]).abs(),
                    (g as f64 - want32[t][k]).abs(),
                );
                assert!(
                    d64 <= 1e-5,
                    "{file}: step {t}, logit {k}: rnnkit {g} vs Keras {}",
                    want64[t][k]
                );
                err64 = err64.max(d64);
                err32 = err32.max(d32);
            }
        }
        // The sequence forward pass (the training path) agrees at the last step.
        let (last, _) = model.next_logits(&ids, None).unwrap();
        let t = ids.len() - 1;
        for (k, &g) in last.iter().enumerate() {
            let d = (g as f64 - want64[t][k]).abs();
            assert!(
                d <= 1e-5,
                "{file}: sequence pass, logit {k}: {g} vs {}",
                want64[t][k]
            );
        }
        let length = r["greedy_length"].as_u64().unwrap().to_string();
        let o = run(
            &[
                "sample",
                "--checkpoint",
                out.to_str().unwrap(),
                "--prime",
                r["prime"].as_str().unwrap(),
                "--length",
                &length,
                "--temperature",
                "0",
            ],
            dir.path(),
        );
        ok(&o);
        assert_eq!(
            stdout(&o),
            r["greedy_output"].as_str().unwrap(),
            "{file}: greedy continuation"
        );
        (err64, err32)
    }

    #[test]
    fn keras_models_give_keras_logits_and_greedy_text() {
        let cases: [(&str, &str, &[&str]); 7] = [
            ("lstm", "lstm.weights.h5", &[]),
            ("lstm", "lstm_legacy.h5", &[]),
            ("lstm", "lstm_keras2.h5", &[]),
            ("gru", "gru.weights.h5", &[]),
            ("gru_reset_before", "gru_reset_before.weights.h5", &[]),
            ("simple_rnn", "simple_rnn.weights.h5", &[]),
            (
                "simple_rnn_relu_onehot",
                "simple_rnn_relu_onehot.weights.h5",
                &["--activation", "relu"],
            ),
        ];
        for (case, file, extra) in cases {
            let (e64, e32) = check(case, file, extra);
            println!(
                "{file}: max |logit error| {e64:.2e} against Keras in float64, {e32:.2e} in float32"
            );
        }
    }

    #[test]
    fn the_summary_names_the_layers_in_the_model_order() {
        // Custom names sort against the model's order; the file's structure decides.
        let dir = tempfile::tempdir().unwrap();
        let o = import(&fixtures().join("lstm.weights.h5"), dir.path(), &[]);
        ok(&o);
        assert!(
            stdout(&o).contains(
                "layers/embedding (z_embedding) → layers/lstm (b_lstm) → layers/lstm_1 (a_lstm) → \
                 layers/dense (0_dense)"
            ),
            "{}",
            stdout(&o)
        );
    }

    #[test]
    fn a_wrong_activation_gives_other_numbers() {
        // The activation is not in the file: the flag is what decides it.
        let r = reference("simple_rnn_relu_onehot");
        let dir = tempfile::tempdir().unwrap();
        ok(&import(
            &fixtures().join("simple_rnn_relu_onehot.weights.h5"),
            dir.path(),
            &[],
        ));
        let (model, _) = CharLm::load(dir.path().join("out.safetensors").as_path()).unwrap();
        assert_eq!(model.config().cell, rnnkit::CellKind::RnnTanh);
        let ids = model.vocab().encode(r["input"].as_str().unwrap()).unwrap();
        let mut stepper = Stepper::new(&model, Precision::F32).unwrap();
        let want = matrix(&r["logits"]);
        let worst = ids
            .iter()
            .enumerate()
            .map(|(t, &id)| {
                let got = stepper.feed(id).unwrap().to_vec();
                got.iter()
                    .zip(&want[t])
                    .map(|(&g, &w)| (g as f64 - w).abs())
                    .fold(0f64, f64::max)
            })
            .fold(0f64, f64::max);
        assert!(worst > 1e-2, "tanh matched a ReLU model: {worst}");
    }

    /// `import` of `file` fails without a panic, saying `needle`.
    fn refused(file: &Path, extra: &[&str], needle: &str) -> String {
        let dir = tempfile::tempdir().unwrap();
        let e = fails_with(&import(file, dir.path(), extra), needle);
        assert!(!dir.path().join("out.safetensors").exists(), "{e}");
        e
    }

    #[test]
    fn what_is_not_a_keras_char_model_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        refused(&fixtures().join("text.txt"), &[], "not an HDF5 file");
        std::fs::write(d.join("model.keras"), b"PK\x03\x04 a zip").unwrap();
        refused(&d.join("model.keras"), &[], "unzip it");
        refused(&d.join("missing.h5"), &[], "missing.h5");
        let whole = std::fs::read(fixtures().join("lstm.weights.h5")).unwrap();
        std::fs::write(d.join("half.h5"), &whole[..whole.len() / 2]).unwrap();
        refused(&d.join("half.h5"), &[], "written completely");
        refused(
            &fixtures().join("unsupported_bidirectional.weights.h5"),
            &[],
            "is Bidirectional",
        );
        refused(
            &fixtures().join("unsupported_conv1d.weights.h5"),
            &[],
            "class conv1d, which rnnkit does not import",
        );
        // The --vocab-text of another model.
        std::fs::write(d.join("other.txt"), "abc").unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        let o = run(
            &[
                "import",
                "--keras",
                fixtures().join("gru.weights.h5").to_str().unwrap(),
                "--vocab-text",
                d.join("other.txt").to_str().unwrap(),
                "--out",
                "out.safetensors",
            ],
            dir2.path(),
        );
        fails_with(&o, "has 17 rows but the vocabulary has 3 characters");
        // One-hot inputs: the vocabulary must match the first kernel.
        let o = run(
            &[
                "import",
                "--keras",
                fixtures()
                    .join("simple_rnn_relu_onehot.weights.h5")
                    .to_str()
                    .unwrap(),
                "--vocab-text",
                d.join("other.txt").to_str().unwrap(),
                "--out",
                "out.safetensors",
            ],
            dir2.path(),
        );
        fails_with(&o, "one-hot vectors over the vocabulary of 3");
        // Flags: one source, --cell belongs to --state-dict, --activation to --keras.
        let lstm = fixtures().join("lstm.weights.h5");
        let o = run(
            &[
                "import",
                "--keras",
                lstm.to_str().unwrap(),
                "--cell",
                "lstm",
                "--vocab-json",
                "[\"a\"]",
                "--out",
                "o",
            ],
            d,
        );
        fails_with(&o, "cannot be used with");
        let o = run(
            &[
                "import",
                "--state-dict",
                "sd.safetensors",
                "--cell",
                "lstm",
                "--activation",
                "relu",
                "--vocab-json",
                "[\"a\"]",
                "--out",
                "o",
            ],
            d,
        );
        fails_with(&o, "cannot be used with");
    }

    /// A layer of a handmade Keras 3 file: its group, where its datasets are under
    /// it (`vars` or `cell/vars`), and each dataset's name and shape.
    type LayerGroup<'a> = (&'a str, &'a str, &'a [(&'a str, &'a [usize])]);

    /// Writes a Keras 3 weights file of `layers`, every value a float32 zero.
    fn keras3_file(path: &Path, layers: &[LayerGroup]) {
        let _files = hdf5_lock();
        let f = hdf5::File::create(path).unwrap();
        for (group, vars, datasets) in layers {
            let mut g: hdf5::Group = (*f).clone();
            for part in group
                .split('/')
                .chain(vars.split('/'))
                .filter(|p| !p.is_empty())
            {
                g = g.group(part).or_else(|_| g.create_group(part)).unwrap();
            }
            for (name, shape) in datasets.iter() {
                let n: usize = shape.iter().product();
                g.new_dataset::<f32>()
                    .shape(shape.to_vec())
                    .create(*name)
                    .unwrap()
                    .write_raw(&vec![0f32; n])
                    .unwrap();
            }
        }
    }

    #[test]
    fn malformed_keras_files_are_refused_saying_what_is_wrong() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let embedding: LayerGroup = ("layers/embedding", "vars", &[("0", &[17, 8])]);
        let lstm: LayerGroup = (
            "layers/lstm",
            "cell/vars",
            &[("0", &[8, 64]), ("1", &[16, 64]), ("2", &[64])],
        );
        let dense: LayerGroup = ("layers/dense", "vars", &[("0", &[16, 17]), ("1", &[17])]);
        let good = d.join("good.h5");
        keras3_file(&good, &[embedding, lstm, dense]);
        let dir2 = tempfile::tempdir().unwrap();
        ok(&import(&good, dir2.path(), &[]));

        let cases: Vec<(&str, Vec<LayerGroup>, &str)> = vec![
            (
                "two_dense",
                vec![
                    embedding,
                    lstm,
                    dense,
                    ("layers/dense_1", "vars", &[("0", &[17, 17])]),
                ],
                "the file has the layers",
            ),
            (
                "missing_dataset",
                vec![
                    embedding,
                    ("layers/lstm", "cell/vars", &[("0", &[8, 64]), ("2", &[64])]),
                    dense,
                ],
                "should hold datasets 0 to 1",
            ),
            (
                "mismatched",
                vec![
                    embedding,
                    (
                        "layers/lstm",
                        "cell/vars",
                        &[("0", &[8, 64]), ("1", &[16, 60]), ("2", &[64])],
                    ),
                    dense,
                ],
                "do not fit one recurrent layer",
            ),
            (
                "wrong_input",
                vec![
                    embedding,
                    (
                        "layers/lstm",
                        "cell/vars",
                        &[("0", &[9, 64]), ("1", &[16, 64]), ("2", &[64])],
                    ),
                    dense,
                ],
                "takes 9 inputs",
            ),
            ("no_dense", vec![embedding, lstm], "then one Dense"),
            (
                "not_keras",
                vec![("weights", "vars", &[("0", &[3])])],
                "not a Keras weights file",
            ),
            (
                "model_vars",
                vec![embedding, lstm, dense, ("vars", "", &[("0", &[3])])],
                "the model itself holds variables",
            ),
        ];
        for (name, layers, needle) in cases {
            let path = d.join(format!("{name}.h5"));
            keras3_file(&path, &layers);
            let e = refused(&path, &[], needle);
            assert!(!e.trim_end().contains('\n'), "{name}: one line: {e}");
        }
    }

    #[test]
    fn float64_weights_are_read_and_other_types_refused() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // float64 (a model built with dtype="float64"), read as f32.
        let table: Vec<f64> = (0..17 * 8).map(|i| i as f64 / 7.0).collect();
        keras3_file(
            &d.join("f64.h5"),
            &[
                (
                    "layers/lstm",
                    "cell/vars",
                    &[("0", &[8, 64]), ("1", &[16, 64]), ("2", &[64])],
                ),
                ("layers/dense", "vars", &[("0", &[16, 17]), ("1", &[17])]),
            ],
        );
        {
            let _files = hdf5_lock();
            let f = hdf5::File::append(d.join("f64.h5")).unwrap();
            let vars = f
                .group("layers")
                .unwrap()
                .create_group("embedding")
                .unwrap()
                .create_group("vars")
                .unwrap();
            vars.new_dataset::<f64>()
                .shape([17, 8])
                .create("0")
                .unwrap()
                .write_raw(&table)
                .unwrap();
        }
        let out = tempfile::tempdir().unwrap();
        ok(&import(&d.join("f64.h5"), out.path(), &[]));
        let (model, _) = CharLm::load(out.path().join("out.safetensors").as_path()).unwrap();
        let got = model.embed.as_ref().unwrap().weight.data();
        for (k, (&g, &w)) in got.iter().zip(&table).enumerate() {
            assert_eq!(g, w as f32, "embedding value {k}");
        }
        // Integers where Keras keeps floats.
        {
            let _files = hdf5_lock();
            let f = hdf5::File::create(d.join("int.h5")).unwrap();
            let vars = f
                .create_group("layers")
                .unwrap()
                .create_group("embedding")
                .unwrap()
                .create_group("vars")
                .unwrap();
            vars.new_dataset::<i64>()
                .shape([17, 8])
                .create("0")
                .unwrap()
                .write_raw(&vec![0i64; 17 * 8])
                .unwrap();
        }
        refused(&d.join("int.h5"), &[], "not float32 or float64");
        // Shapes whose values the file never wrote (HDF5 allocates a dataset's bytes
        // when it is written): refused before anything of that size is allocated.
        {
            let _files = hdf5_lock();
            let f = hdf5::File::create(d.join("huge.h5")).unwrap();
            let layers = f.create_group("layers").unwrap();
            let vars = layers
                .create_group("embedding")
                .unwrap()
                .create_group("vars")
                .unwrap();
            vars.new_dataset::<f32>()
                .shape([17, 8])
                .create("0")
                .unwrap()
                .write_raw(&vec![0f32; 17 * 8])
                .unwrap();
            let cell = layers
                .create_group("lstm")
                .unwrap()
                .create_group("cell")
                .unwrap()
                .create_group("vars")
                .unwrap();
            let h = 4096;
            cell.new_dataset::<f32>()
                .shape([8, 4 * h])
                .create("0")
                .unwrap();
            cell.new_dataset::<f32>()
                .shape([h, 4 * h])
                .create("1")
                .unwrap();
            cell.new_dataset::<f32>()
                .shape([4 * h])
                .create("2")
                .unwrap();
            let dense = layers
                .create_group("dense")
                .unwrap()
                .create_group("vars")
                .unwrap();
            dense
                .new_dataset::<f32>()
                .shape([h, 17])
                .create("0")
                .unwrap();
        }
        refused(&d.join("huge.h5"), &[], "never written");
    }
}
