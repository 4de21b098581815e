//! The encoder–decoder against its PyTorch module (`tools/task_modules.py::Seq2seq`):
//! teacher-forced logits, attention weights, loss, the gradient of every parameter and
//! greedy decoding. The fixtures in tests/fixtures/seq2seq are made, from the
//! repository root, by `~/torch/bin/python tools/seq2seq_fixtures.py tests/fixtures/seq2seq`: each
//! `NAME.safetensors` is a checkpoint written by PyTorch, `NAME.expect.safetensors`
//! its inputs and torch's results in float64.

use rnnkit::checkpoint::TensorFile;
use rnnkit::seq2seq::{PairBatch, Seq2seq};
use rnnkit::Parameters;
use std::path::PathBuf;

const CASES: &[&str] = &[
    "lstm_bi2_general",
    "gru_uni1_dot",
    "lstm_bi1_additive",
    "rnn_tanh_bi1_none",
    "gru_bi2_additive",
];

fn fixture(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/seq2seq")
        .join(file)
}

fn ids(f: &TensorFile, name: &str) -> Vec<usize> {
    f.get_ints(name)
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect()
}

fn assert_close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: rnnkit {g} vs torch {w}"
        );
    }
}

#[test]
fn logits_attention_loss_gradients_and_greedy_outputs_equal_torchs() {
    for name in CASES {
        let (mut model, _) = Seq2seq::load(&fixture(&format!("{name}.safetensors"))).unwrap();
        let e = TensorFile::open(fixture(&format!("{name}.expect.safetensors"))).unwrap();
        let batch = PairBatch {
            src: ids(&e, "src"),
            src_len: ids(&e, "src_len"),
            tgt_in: ids(&e, "tgt_in"),
            tgt_out: ids(&e, "tgt_out"),
            tgt_len: ids(&e, "tgt_len"),
        };
        let logits = model.forward(&batch, None).unwrap();
        let want = e.get::<f64>("logits", None).unwrap();
        assert_close(&format!("{name} logits"), &logits, want.data(), 1e-5);
        if let Ok(attn) = e.get::<f64>("attn", None) {
            assert_close(
                &format!("{name} attention"),
                &model.last_attention(),
                attn.data(),
                1e-5,
            );
        }
        let mut d = vec![0.0; logits.len()];
        let loss = model.loss(&batch, &logits, Some(&mut d)).unwrap();
        let want_loss = e.get::<f64>("loss", None).unwrap().data()[0];
        assert!(
            (loss.mean - want_loss).abs() < 1e-5,
            "{name} loss {} vs {want_loss}",
            loss.mean
        );
        model.zero_grad();
        model.backward(&batch, &d).unwrap();
        let mut checked = 0;
        model.visit_params_mut(&mut |n, _, g| {
            let want = e
                .get::<f64>(&format!("grad.{n}"), None)
                .unwrap_or_else(|err| panic!("{name}: no torch gradient of {n}: {err}"));
            assert_close(&format!("{name} grad.{n}"), g.data(), want.data(), 1e-5);
            checked += 1;
        });
        let torch_grads = e.names().iter().filter(|n| n.starts_with("grad.")).count();
        assert_eq!(
            checked, torch_grads,
            "{name}: every torch gradient compared"
        );
        // Greedy decoding of the same sources.
        let b = batch.size();
        let s = batch.src_steps();
        let sources: Vec<Vec<usize>> = (0..b)
            .map(|j| {
                (0..batch.src_len[j])
                    .map(|t| batch.src[t * b + j])
                    .collect()
            })
            .collect();
        let decoded = model.greedy(&sources).unwrap();
        let greedy = e.get_ints("greedy").unwrap();
        let m = greedy.len() / b;
        for (j, d) in decoded.iter().enumerate() {
            let want: Vec<usize> = greedy[j * m..][..m]
                .iter()
                .take_while(|&&v| v >= 0)
                .map(|&v| v as usize)
                .collect();
            assert_eq!(d.ids, want, "{name}: greedy output of source {j} (S = {s})");
        }
    }
}
