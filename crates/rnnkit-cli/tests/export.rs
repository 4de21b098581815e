//! `rnnkit export` end to end: checkpoints of every model kind → ONNX files that are
//! the graphs the library exports (whose numerics `crates/rnnkit/tests/onnx_export.rs`
//! and `tools/onnx_check.py` prove), and clear errors for what cannot be exported.

use crate::common::*;

use prost::Message;
use rnnkit::data::{parse_conllu, TagColumn, TokenVocab, Vocab};
use rnnkit::export::{self, proto::ModelProto, Exported, Options};
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::seq2seq::{AttentionKind, Seq2seq, Seq2seqConfig};
use rnnkit::task::classifier::{Classifier, ClassifierConfig, Standardizer};
use rnnkit::task::ctc::{CtcConfig, CtcModel};
use rnnkit::task::tagger::{Tagger, TaggerConfig};
use rnnkit::{CellKind, PoolKind, Rng, Tensor};
use std::collections::HashMap;
use std::path::Path;

fn read(path: &Path) -> ModelProto {
    ModelProto::decode(&std::fs::read(path).unwrap()[..]).unwrap()
}

fn names(vs: &[rnnkit::export::proto::ValueInfoProto]) -> Vec<String> {
    vs.iter().map(|v| v.name.clone().unwrap()).collect()
}

fn metadata(m: &ModelProto) -> HashMap<String, String> {
    m.metadata_props
        .iter()
        .map(|p| (p.key.clone().unwrap(), p.value.clone().unwrap()))
        .collect()
}

/// Runs `rnnkit export` on `ckpt` and checks each written file is `want`'s graph
/// (the description names the checkpoint the CLI read).
fn export_and_compare(dir: &Path, ckpt: &str, out: &str, want: &[Exported]) -> Vec<ModelProto> {
    ok(&rnnkit(
        &["export", "--checkpoint", ckpt, "--out", out],
        dir,
    ));
    let mut got = Vec::new();
    for w in want {
        let path = if w.role == "model" {
            dir.join(out)
        } else {
            dir.join(out.replace(".onnx", &format!(".{}.onnx", w.role)))
        };
        let m = read(&path);
        let g = m.graph.as_ref().unwrap();
        let wg = w.model.graph.as_ref().unwrap();
        assert_eq!(names(&g.input), names(&wg.input), "{}", path.display());
        assert_eq!(names(&g.output), names(&wg.output), "{}", path.display());
        assert_eq!(g.initializer, wg.initializer, "{}: weights", path.display());
        assert_eq!(g.node, wg.node, "{}: nodes", path.display());
        assert!(m.doc_string.as_deref().unwrap().contains(ckpt));
        assert_eq!(m.opset_import[0].version, Some(export::DEFAULT_OPSET));
        got.push(m);
    }
    got
}

#[test]
fn every_model_kind_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let mut rng = Rng::new(3);
    let o = Options::default();

    // Char LM (no task metadata): tokens and states in, logits and states out.
    let cfg = CharLmConfig {
        cell: CellKind::Lstm,
        embed_size: 4,
        hidden_size: 8,
        num_layers: 2,
        dropout: 0.0,
    };
    let lm = CharLm::new(&cfg, Vocab::from_text("abc d\n").unwrap(), &mut rng).unwrap();
    lm.save(&d.join("lm.safetensors"), &[], HashMap::new())
        .unwrap();
    let m = export_and_compare(
        d,
        "lm.safetensors",
        "lm.onnx",
        &[export::char_lm(&lm, &o).unwrap()],
    );
    let g = m[0].graph.as_ref().unwrap();
    assert_eq!(names(&g.input), ["tokens", "h0", "c0"]);
    assert_eq!(names(&g.output), ["logits", "hn", "cn"]);
    assert_eq!(metadata(&m[0])["rnnkit.vocab"], lm.vocab().to_json());
    let ops: Vec<&str> = g
        .node
        .iter()
        .map(|n| n.op_type.as_deref().unwrap())
        .collect();
    assert_eq!(
        ops.iter().filter(|&&o| o == "LSTM").count(),
        2,
        "one LSTM per layer"
    );

    // Classifier.
    let ccfg = ClassifierConfig {
        cell: CellKind::Gru,
        hidden_size: 6,
        num_layers: 1,
        bidirectional: true,
        dropout: 0.0,
        pool: PoolKind::Mean,
    };
    let norm = Standardizer {
        mean: Tensor::zeros(&[2]),
        std: Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap(),
    };
    let clf = Classifier::new(&ccfg, 2, vec!["up".into(), "down".into()], norm, &mut rng).unwrap();
    clf.save(&d.join("clf.safetensors"), &[], HashMap::new())
        .unwrap();
    let m = export_and_compare(
        d,
        "clf.safetensors",
        "clf.onnx",
        &[export::classifier(&clf, &o).unwrap()],
    );
    assert_eq!(metadata(&m[0])["rnnkit.labels"], r#"["up","down"]"#);
    let gru = m[0]
        .graph
        .as_ref()
        .unwrap()
        .node
        .iter()
        .find(|n| n.op_type.as_deref() == Some("GRU"))
        .unwrap();
    let dir = gru
        .attribute
        .iter()
        .find(|a| a.name.as_deref() == Some("direction"))
        .unwrap();
    assert_eq!(dir.s.as_deref(), Some(&b"bidirectional"[..]));

    // Tagger.
    let train = parse_conllu(
        "1\tDogs\tdog\tNOUN\tNNS\t_\t2\tnsubj\t_\t_\n2\trun\trun\tVERB\tVBP\t_\t0\troot\t_\t_\n\n",
        "t",
    )
    .unwrap();
    let tcfg = TaggerConfig {
        cell: CellKind::Lstm,
        word_embed: 4,
        char_embed: 3,
        char_hidden: 3,
        hidden_size: 5,
        num_layers: 1,
        dropout: 0.0,
        word_dropout: 0.0,
        min_freq: 1,
        column: TagColumn::Upos,
    };
    let tagger = Tagger::new(&tcfg, &train, &mut rng).unwrap();
    tagger
        .save(&d.join("tag.safetensors"), &[], HashMap::new())
        .unwrap();
    let m = export_and_compare(
        d,
        "tag.safetensors",
        "tag.onnx",
        &[export::tagger(&tagger, &o).unwrap()],
    );
    assert_eq!(
        names(&m[0].graph.as_ref().unwrap().input),
        ["words", "chars", "char_lengths", "lengths"]
    );

    // Encoder–decoder: two graphs beside --out.
    let scfg = Seq2seqConfig {
        cell: CellKind::Gru,
        attention: AttentionKind::Additive,
        embed: 4,
        hidden_size: 6,
        num_layers: 1,
        bidirectional: true,
        dropout: 0.0,
        label_smoothing: 0.0,
    };
    let src = TokenVocab::new(["a", "b"].map(String::from).to_vec()).unwrap();
    let tgt = TokenVocab::new(["</s>", "<s>", "x"].map(String::from).to_vec()).unwrap();
    let s2s: Seq2seq<f32> = Seq2seq::new(&scfg, src, tgt, Default::default(), &mut rng).unwrap();
    s2s.save(&d.join("g2p.safetensors"), &[], HashMap::new())
        .unwrap();
    let [enc, dec] = export::seq2seq(&s2s, &o).unwrap();
    let m = export_and_compare(d, "g2p.safetensors", "g2p.onnx", &[enc, dec]);
    assert_eq!(
        names(&m[1].graph.as_ref().unwrap().output),
        ["logits", "feed_out", "h_out", "attention"]
    );
    assert!(
        !d.join("g2p.onnx").exists(),
        "only the two graphs are written"
    );

    // CTC.
    let ctc_cfg = CtcConfig {
        cell: CellKind::Lstm,
        hidden_size: 5,
        num_layers: 1,
        bidirectional: true,
        dropout: 0.0,
        stack: 3,
        augment: false,
    };
    let ctc = CtcModel::new(&ctc_cfg, 4, "ab".chars().collect(), &mut rng).unwrap();
    ctc.save(&d.join("ctc.safetensors"), &[], HashMap::new())
        .unwrap();
    let m = export_and_compare(
        d,
        "ctc.safetensors",
        "ctc.onnx",
        &[export::ctc(&ctc, &o).unwrap()],
    );
    assert_eq!(metadata(&m[0])["rnnkit.stack"], "3");

    // Another opset.
    ok(&rnnkit(
        &[
            "export",
            "--checkpoint",
            "lm.safetensors",
            "--out",
            "lm13.onnx",
            "--opset",
            "13",
        ],
        d,
    ));
    assert_eq!(read(&d.join("lm13.onnx")).opset_import[0].version, Some(13));
}

#[test]
fn what_cannot_be_exported_is_refused_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let d = tmp.path();
    let o = rnnkit(
        &[
            "export",
            "--checkpoint",
            "missing.safetensors",
            "--out",
            "m.onnx",
        ],
        d,
    );
    fails_with(&o, "missing.safetensors");
    std::fs::write(d.join("junk.safetensors"), b"not a checkpoint at all").unwrap();
    let o = rnnkit(
        &[
            "export",
            "--checkpoint",
            "junk.safetensors",
            "--out",
            "m.onnx",
        ],
        d,
    );
    fails_with(&o, "junk.safetensors");
    let o = rnnkit(
        &[
            "export",
            "--checkpoint",
            "junk.safetensors",
            "--out",
            "m.onnx",
            "--opset",
            "12",
        ],
        d,
    );
    fails_with(&o, "--opset");

    // An HMM checkpoint: no ONNX operator for it.
    let meta = HashMap::from([("rnnkit.task".to_string(), "tag-hmm".to_string())]);
    rnnkit::checkpoint::save_named(
        &d.join("hmm.safetensors"),
        &[("x".into(), Tensor::zeros(&[1]))],
        &[],
        &meta,
    )
    .unwrap();
    let o = rnnkit(
        &[
            "export",
            "--checkpoint",
            "hmm.safetensors",
            "--out",
            "m.onnx",
        ],
        d,
    );
    fails_with(&o, "hidden Markov model");

    // A folder that does not exist: an error, no panic, nothing written.
    let mut rng = Rng::new(1);
    let cfg = CharLmConfig {
        cell: CellKind::Gru,
        embed_size: 0,
        hidden_size: 4,
        num_layers: 1,
        dropout: 0.0,
    };
    let lm = CharLm::new(&cfg, Vocab::from_text("ab").unwrap(), &mut rng).unwrap();
    lm.save(&d.join("lm.safetensors"), &[], HashMap::new())
        .unwrap();
    let o = rnnkit(
        &[
            "export",
            "--checkpoint",
            "lm.safetensors",
            "--out",
            "no/such/dir/m.onnx",
        ],
        d,
    );
    fails_with(&o, "no/such/dir");
    assert!(!d.join("m.onnx").exists());
}
