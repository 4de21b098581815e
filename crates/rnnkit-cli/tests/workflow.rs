//! End-to-end tests of the everyday workflow around a checkpoint: scoring texts
//! that do not fit the vocabulary, bringing PyTorch state dicts in, and behaving as
//! a well-mannered Unix filter. Each test runs the real binary in a temporary folder.

use crate::common::*;

use rnnkit::checkpoint::{self, TensorFile};
use rnnkit::data::Vocab;
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::{CellKind, Rng, Tensor};
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn succeeds(o: &Output) -> String {
    assert!(o.status.success(), "{}", stderr(o));
    String::from_utf8(o.stdout.clone()).expect("UTF-8 stdout")
}

/// A failure saying `needle` on one line; returns it.
fn fails_with(o: &Output, needle: &str) -> String {
    let e = crate::common::fails_with(o, needle);
    assert_eq!(e.trim_end().lines().count(), 1, "one line: {e}");
    e
}

/// The vocabulary of the test models: lowercase letters, space and newline.
const VOCAB_TEXT: &str = "the quick brown fox jumps over the lazy dog\n";

/// A freshly initialised 1-layer model of `cell` (no training: the weights are random
/// but fixed by the seed, which is all these tests need).
fn tiny_model(cell: CellKind) -> CharLm {
    let config = CharLmConfig {
        cell,
        embed_size: 8,
        hidden_size: 16,
        num_layers: 1,
        dropout: 0.0,
    };
    CharLm::new(
        &config,
        Vocab::from_text(VOCAB_TEXT).unwrap(),
        &mut Rng::new(7),
    )
    .unwrap()
}

/// `tiny_model(lstm)` saved as `name` in `dir`.
fn tiny_checkpoint(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    tiny_model(CellKind::Lstm)
        .save(&p, &[], HashMap::new())
        .unwrap();
    p
}

/// Tensors as (name, f32 values), from a model or a file.
fn tensors_of(model: &CharLm) -> Vec<(String, Tensor<f32>)> {
    checkpoint::named_params(model, "")
}

fn save_plain(path: &Path, tensors: &[(String, Tensor<f32>)], meta: &HashMap<String, String>) {
    let refs: Vec<(String, &Tensor<f32>)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save(path, &refs, meta).unwrap();
}

/// Writes a safetensors file by hand, so a test can store any dtype: each tensor is
/// (name, dtype, shape, little-endian bytes), laid out in the order given.
fn write_safetensors(
    path: &Path,
    tensors: &[(String, &str, Vec<usize>, Vec<u8>)],
    meta: &HashMap<String, String>,
) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!(meta));
    let mut data = Vec::new();
    for (name, dtype, shape, bytes) in tensors {
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": dtype,
                "shape": shape,
                "data_offsets": [data.len(), data.len() + bytes.len()],
            }),
        );
        data.extend_from_slice(bytes);
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(path, file).unwrap();
}

/// f32 → IEEE half, truncating the mantissa (values below the smallest normal flush to 0).
fn f16_bits(x: f32) -> u16 {
    let b = x.to_bits();
    let sign = ((b >> 16) & 0x8000) as u16;
    if x.abs() < 6.103_515_6e-5 {
        return sign;
    }
    let exp = ((b >> 23) & 0xff) as i32 - 127 + 15;
    assert!((1..31).contains(&exp), "{x} out of f16 range");
    sign | ((exp as u16) << 10) | ((b >> 13) & 0x3ff) as u16
}

fn eval_json(dir: &Path, checkpoint: &str, text: &str, extra: &[&str]) -> serde_json::Value {
    let mut args = vec!["eval", "--checkpoint", checkpoint, "--text", text, "--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(succeeds(&rnnkit(&args, dir)).trim()).unwrap()
}

fn nats(j: &serde_json::Value) -> f64 {
    j["nats_per_char"].as_f64().unwrap()
}

// ---- 7: texts with characters outside the vocabulary ----

/// A text with twelve '9's and one '#' that the vocabulary lacks.
const GPL_LIKE: &str = "version 9 of the license 99 or any later version 999 \
    see the gnu general public license 99999 for more # details 9";

#[test]
fn eval_lists_every_unknown_character_with_its_count_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    std::fs::write(d.join("gpl.txt"), GPL_LIKE).unwrap();
    let e = fails_with(
        &rnnkit(
            &["eval", "--checkpoint", "m.safetensors", "--text", "gpl.txt"],
            d,
        ),
        "13 characters (2 distinct) are not in the model's vocabulary: '9' ×12, '#' ×1",
    );
    assert!(
        e.contains("--text gpl.txt")
            && e.contains("--unknown skip")
            && e.contains("--unknown replace"),
        "{e}"
    );
}

#[test]
fn eval_unknown_skip_and_replace_score_the_text_without_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    std::fs::write(d.join("gpl.txt"), GPL_LIKE).unwrap();
    let skipped: String = GPL_LIKE.chars().filter(|c| !"9#".contains(*c)).collect();
    let replaced: String = GPL_LIKE
        .chars()
        .map(|c| if "9#".contains(c) { 'x' } else { c })
        .collect();
    std::fs::write(d.join("skipped.txt"), &skipped).unwrap();
    std::fs::write(d.join("replaced.txt"), &replaced).unwrap();

    let skip = eval_json(d, "m.safetensors", "gpl.txt", &["--unknown", "skip"]);
    let clean = eval_json(d, "m.safetensors", "skipped.txt", &[]);
    assert_eq!(skip["unknown"], 13);
    assert_eq!(clean["unknown"], 0);
    assert_eq!(
        skip["chars"].as_u64().unwrap() as usize,
        skipped.chars().count() - 1
    );
    assert_eq!(
        nats(&skip),
        nats(&clean),
        "skipping = scoring the text without them"
    );

    let rep = eval_json(
        d,
        "m.safetensors",
        "gpl.txt",
        &["--unknown", "replace", "--replace-with", "x"],
    );
    assert_eq!(rep["unknown"], 13);
    assert_eq!(
        rep["chars"].as_u64().unwrap() as usize,
        GPL_LIKE.chars().count() - 1
    );
    assert_eq!(
        nats(&rep),
        nats(&eval_json(d, "m.safetensors", "replaced.txt", &[]))
    );

    // The default replacement is a space; the text report says what was done.
    let out = succeeds(&rnnkit(
        &[
            "eval",
            "--checkpoint",
            "m.safetensors",
            "--text",
            "gpl.txt",
            "--unknown",
            "replace",
        ],
        d,
    ));
    assert!(
        out.contains("unknown chars:   13 replaced by ' ': '9' ×12, '#' ×1"),
        "{out}"
    );
}

#[test]
fn eval_reads_crlf_as_lf_when_the_vocabulary_has_no_cr() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    let unix = "the lazy dog\njumps over\nthe quick fox\n";
    std::fs::write(d.join("unix.txt"), unix).unwrap();
    std::fs::write(d.join("windows.txt"), unix.replace('\n', "\r\n")).unwrap();
    let a = eval_json(d, "m.safetensors", "unix.txt", &[]);
    let b = eval_json(d, "m.safetensors", "windows.txt", &[]);
    assert_eq!((&a["chars"], nats(&a)), (&b["chars"], nats(&b)));
    assert_eq!(b["unknown"], 0);
    let help = succeeds(&rnnkit(&["eval", "--help"], d));
    assert!(help.contains(r"(\r\n) are read as \n"), "{help}");
}

#[test]
fn eval_replace_needs_a_character_the_vocabulary_has() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A vocabulary without a space.
    let model = CharLm::new(
        &tiny_model(CellKind::Gru).config(),
        Vocab::from_text("abc").unwrap(),
        &mut Rng::new(1),
    )
    .unwrap();
    model
        .save(&d.join("m.safetensors"), &[], HashMap::new())
        .unwrap();
    std::fs::write(d.join("t.txt"), "abc abc").unwrap();
    let base = ["eval", "--checkpoint", "m.safetensors", "--text", "t.txt"];
    let with = |extra: &[&str]| rnnkit(&[&base[..], extra].concat(), d);
    fails_with(&with(&["--unknown", "replace"]), "pass --replace-with C");
    fails_with(
        &with(&["--unknown", "replace", "--replace-with", "z"]),
        "the replacement 'z' is not in the model's vocabulary either",
    );
    fails_with(
        &with(&["--replace-with", "a"]),
        "--replace-with needs --unknown replace",
    );
    succeeds(&with(&["--unknown", "replace", "--replace-with", "a"]));
}

// ---- 8: PyTorch state dicts ----

#[test]
fn plain_state_dict_error_says_which_metadata_to_add() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    save_plain(
        &d.join("sd.safetensors"),
        &tensors_of(&tiny_model(CellKind::Lstm)),
        &HashMap::new(),
    );
    std::fs::write(d.join("t.txt"), "the dog").unwrap();
    for args in [
        &["sample", "--checkpoint", "sd.safetensors"][..],
        &["eval", "--checkpoint", "sd.safetensors", "--text", "t.txt"],
    ] {
        let e = fails_with(
            &rnnkit(args, d),
            r#"safetensors.torch.save_file(sd, path, metadata={"rnnkit.cell": "lstm", "rnnkit.vocab": json.dumps(list(chars))})"#,
        );
        assert!(
            e.contains("metadata `rnnkit.cell`") && e.contains("rnnkit import"),
            "{e}"
        );
    }
}

#[test]
fn renamed_tensors_are_listed_against_the_expected_names() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let m = tiny_model(CellKind::Lstm);
    let mut tensors: Vec<(String, Tensor<f32>)> = tensors_of(&m)
        .into_iter()
        .map(|(n, t)| {
            let n = n
                .replace("rnn.", "lstm.")
                .replace("embed.", "encoder.")
                .replace("head.", "decoder.");
            (n, t)
        })
        .collect();
    for i in 0..30 {
        tensors.push((format!("zz.extra{i:02}"), Tensor::zeros(&[1])));
    }
    let meta = HashMap::from([
        ("rnnkit.cell".to_string(), "lstm".to_string()),
        ("rnnkit.vocab".to_string(), m.vocab().to_json()),
    ]);
    save_plain(&d.join("renamed.safetensors"), &tensors, &meta);
    let e = fails_with(
        &rnnkit(&["sample", "--checkpoint", "renamed.safetensors"], d),
        "`rnn.weight_ih_l0`, `head.weight`, `head.bias` missing",
    );
    for needle in [
        "Expected embed.weight [V, E] (none for one-hot inputs); rnn.weight_ih_l{k}",
        "The file has 37 tensors: decoder.bias [28], decoder.weight [28, 16], encoder.weight [28, 8], lstm.bias_hh_l0 [64]",
        "… and 17 more",
        "the recurrent weights are under `lstm.`",
    ] {
        assert!(e.contains(needle), "lacks {needle:?}: {e}");
    }
    assert!(!e.contains("zz.extra29"), "the list is bounded: {e}");
}

#[test]
fn torch_pickle_files_get_a_safetensors_hint() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // torch.save writes a zip archive (since 1.6) or, with the legacy format, a pickle.
    std::fs::write(
        d.join("zip.pt"),
        b"PK\x03\x04\x00\x00\x08\x08\x00\x00archive/data.pkl",
    )
    .unwrap();
    std::fs::write(
        d.join("legacy.pt"),
        b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.",
    )
    .unwrap();
    for f in ["zip.pt", "legacy.pt"] {
        let e = fails_with(
            &rnnkit(&["sample", "--checkpoint", f], d),
            "this is a PyTorch pickle file (torch.save), not safetensors",
        );
        assert!(
            e.contains("st.save_file({k: v.contiguous()") && !e.contains("header too large"),
            "{e}"
        );
    }
}

#[test]
fn f16_bf16_and_f64_checkpoints_load() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = tiny_model(CellKind::Lstm);
    let p = tiny_checkpoint(d, "f32.safetensors");
    let meta = TensorFile::open(&p).unwrap().metadata().clone();
    std::fs::write(
        d.join("t.txt"),
        "the quick brown fox jumps over the lazy dog\n".repeat(3),
    )
    .unwrap();
    let reference = nats(&eval_json(d, "f32.safetensors", "t.txt", &[]));
    let halves = |dtype: &str, bits: fn(f32) -> u16| {
        let tensors: Vec<(String, &str, Vec<usize>, Vec<u8>)> = tensors_of(&model)
            .into_iter()
            .map(|(n, t)| {
                let bytes = t
                    .data()
                    .iter()
                    .flat_map(|&v| bits(v).to_le_bytes())
                    .collect();
                (n, dtype, t.shape().to_vec(), bytes)
            })
            .collect();
        write_safetensors(&d.join(format!("{dtype}.safetensors")), &tensors, &meta);
    };
    halves("F16", f16_bits);
    halves("BF16", |x| (x.to_bits() >> 16) as u16);
    let f64_tensors: Vec<(String, Tensor<f64>)> = tensors_of(&model)
        .into_iter()
        .map(|(n, t)| {
            let data = t.data().iter().map(|&v| v as f64).collect();
            (n, Tensor::from_vec(t.shape(), data).unwrap())
        })
        .collect();
    let refs: Vec<(String, &Tensor<f64>)> =
        f64_tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    checkpoint::save(d.join("F64.safetensors"), &refs, &meta).unwrap();

    assert_eq!(
        nats(&eval_json(d, "F64.safetensors", "t.txt", &[])),
        reference,
        "F64 holds every f32"
    );
    for (dtype, tol) in [("F16", 2e-3), ("BF16", 1e-2)] {
        let got = nats(&eval_json(d, &format!("{dtype}.safetensors"), "t.txt", &[]));
        assert!(
            (got - reference).abs() <= tol * reference,
            "{dtype}: {got} vs {reference}"
        );
        let out = succeeds(&rnnkit(
            &[
                "sample",
                "--checkpoint",
                &format!("{dtype}.safetensors"),
                "--length",
                "20",
            ],
            d,
        ));
        assert_eq!(out.chars().count(), 20, "{dtype}: {out:?}");
    }
}

#[test]
fn import_writes_a_checkpoint_that_sample_and_eval_accept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "reference.safetensors");
    std::fs::write(d.join("train.txt"), VOCAB_TEXT.repeat(2)).unwrap();
    std::fs::write(d.join("t.txt"), "the lazy dog jumps\n").unwrap();
    // The state dict alone, as PyTorch would save it: no metadata, F16 weights.
    let sd: Vec<(String, &str, Vec<usize>, Vec<u8>)> = tensors_of(&tiny_model(CellKind::Gru))
        .into_iter()
        .map(|(n, t)| {
            let bytes = t
                .data()
                .iter()
                .flat_map(|&v| f16_bits(v).to_le_bytes())
                .collect();
            (n, "F16", t.shape().to_vec(), bytes)
        })
        .collect();
    write_safetensors(&d.join("sd.safetensors"), &sd, &HashMap::new());
    let vocab_json = Vocab::from_text(VOCAB_TEXT).unwrap().to_json();
    for (vocab_flag, vocab_value, out) in [
        ("--vocab-text", "train.txt", "a.safetensors"),
        ("--vocab-json", vocab_json.as_str(), "b.safetensors"),
    ] {
        let msg = succeeds(&rnnkit(
            &[
                "import",
                "--state-dict",
                "sd.safetensors",
                vocab_flag,
                vocab_value,
                "--cell",
                "gru",
                "--out",
                out,
            ],
            d,
        ));
        assert!(
            msg.contains("gru × 1 layers of 16 (embedding 8), vocabulary of 28"),
            "{msg}"
        );
        let f = TensorFile::open(d.join(out)).unwrap();
        assert_eq!(f.metadata()["rnnkit.cell"], "gru");
        assert_eq!(f.metadata()["rnnkit.vocab"], vocab_json);
        let j = eval_json(d, out, "t.txt", &[]);
        assert_eq!(j["chars"], 18);
        assert!(
            nats(&j) > 2.0 && nats(&j) < 5.0,
            "random model, ~ln 28: {j}"
        );
        let s = succeeds(&rnnkit(
            &["sample", "--checkpoint", out, "--length", "10"],
            d,
        ));
        assert_eq!(s.chars().count(), 10);
    }
    let (a, b) = (
        TensorFile::open(d.join("a.safetensors")).unwrap(),
        TensorFile::open(d.join("b.safetensors")).unwrap(),
    );
    assert_eq!(a.names(), b.names());
    for n in a.names() {
        let same = a.get::<f32>(&n, None).unwrap() == b.get::<f32>(&n, None).unwrap();
        assert!(same, "tensor {n} differs between the two imports");
    }
}

#[test]
fn import_checks_every_shape_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let tensors = tensors_of(&tiny_model(CellKind::Lstm));
    save_plain(&d.join("sd.safetensors"), &tensors, &HashMap::new());
    let mut extra = tensors.clone();
    extra.push(("norm.weight".into(), Tensor::zeros(&[16])));
    save_plain(&d.join("extra.safetensors"), &extra, &HashMap::new());
    std::fs::write(d.join("more.txt"), format!("{VOCAB_TEXT}!")).unwrap();
    std::fs::write(d.join("right.txt"), VOCAB_TEXT).unwrap();
    let import = |sd: &str, text: &str, cell: &str| {
        rnnkit(
            &[
                "import",
                "--state-dict",
                sd,
                "--vocab-text",
                text,
                "--cell",
                cell,
                "--out",
                "c.safetensors",
            ],
            d,
        )
    };
    fails_with(
        &import("sd.safetensors", "more.txt", "lstm"),
        "`embed.weight` has 28 rows but the vocabulary has 29 characters",
    );
    fails_with(
        &import("sd.safetensors", "right.txt", "gru"),
        "tensor `rnn.weight_ih_l0` has 64 rows, not a multiple of 3 as a gru needs",
    );
    fails_with(
        &import("sd.safetensors", "right.txt", "rnn_tanh"),
        "tensor `rnn.weight_hh_l0` has shape [64, 16], expected [64, 64]",
    );
    fails_with(
        &import("extra.safetensors", "right.txt", "lstm"),
        "1 tensors are not part of a 1-layer lstm CharLM: norm.weight",
    );
    let o = import("sd.safetensors", "right.txt", "transformer");
    assert!(
        !o.status.success() && stderr(&o).contains("expected one of rnn_tanh, rnn_relu, lstm"),
        "{}",
        stderr(&o)
    );
    assert!(
        !d.join("c.safetensors").exists(),
        "nothing written on error"
    );
    succeeds(&import("sd.safetensors", "right.txt", "lstm"));
}

// ---- 9: file errors and closed pipes ----

#[test]
fn missing_files_are_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    for args in [
        &[
            "eval",
            "--checkpoint",
            "m.safetensors",
            "--text",
            "nope.txt",
        ][..],
        &[
            "eval",
            "--checkpoint",
            "nope.safetensors",
            "--text",
            "nope.txt",
        ],
        &["sample", "--checkpoint", "nope.safetensors"],
        &[
            "import",
            "--state-dict",
            "nope.safetensors",
            "--vocab-json",
            r#"["a"]"#,
            "--cell",
            "lstm",
            "--out",
            "o.safetensors",
        ],
    ] {
        let e = fails_with(&rnnkit(args, d), "nope.");
        assert_eq!(e.matches("No such file or directory").count(), 1, "{e}");
        assert_eq!(e.matches("nope.").count(), 1, "{e}");
    }
}

#[test]
fn sample_into_a_closed_pipe_stops_quietly_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    // `rnnkit sample … | head -c 16`: the reader leaves long before the end.
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args([
            "sample",
            "--checkpoint",
            "m.safetensors",
            "--length",
            "100000000",
        ])
        .current_dir(d)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut head = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut head).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "", "nothing said");
}

#[test]
fn any_command_printing_to_a_closed_stdout_exits_quietly_with_success() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    tiny_checkpoint(d, "m.safetensors");
    std::fs::write(d.join("t.txt"), "the quick dog").unwrap();
    for args in [
        &[
            "eval",
            "--checkpoint",
            "m.safetensors",
            "--text",
            "t.txt",
            "--json",
        ][..],
        &["eval", "--checkpoint", "m.safetensors", "--text", "t.txt"],
        // bench prints with println!: the closed pipe ends it through the panic hook.
        &[
            "bench",
            "--hidden",
            "8",
            "--layers",
            "1",
            "--embed",
            "4",
            "--batch",
            "2",
            "--seq-len",
            "5",
            "--steps",
            "2",
            "--sample-chars",
            "5",
            "--json",
        ],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
            .args(args)
            .current_dir(d)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is printed
        let o = child.wait_with_output().unwrap();
        assert_eq!(o.status.code(), Some(0), "{args:?}: {}", stderr(&o));
        assert_eq!(stderr(&o), "", "{args:?}");
    }
}
