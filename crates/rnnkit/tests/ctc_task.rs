//! The `ctc` task's model against the PyTorch module `tools/task_modules.py::CtcRecognizer`:
//! a checkpoint written by PyTorch loads, its log-probabilities match, and one training
//! step (dropout 0) gives PyTorch's mean CTC loss and the gradient of every parameter.
//! Fixtures: `~/torch/bin/python tools/ctc_task_fixture.py tests/fixtures/tasks/ctc`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::task::ctc::{CtcModel, Utterance};
use rnnkit::{Parameters, Rng};
use std::path::PathBuf;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tasks/ctc")
}

fn close(what: &str, got: &[f32], want: &[f64], tol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: sizes");
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs())).max(1e-3);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g as f64 - w).abs() <= tol * scale,
            "{what}[{i}]: {g} vs torch {w}"
        );
    }
}

#[test]
fn pytorch_checkpoints_give_pytorchs_outputs_loss_and_gradients() {
    for name in ["lstm_bi_2l_stack3", "gru_uni_1l_stack1"] {
        let (mut model, _) = CtcModel::load(dir().join(format!("{name}.safetensors")).as_path())
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = TensorFile::open(dir().join(format!("{name}.expected.safetensors"))).unwrap();
        let values = want.get::<f32>("values", None).unwrap();
        let &[b, t, f] = values.shape() else { panic!() };
        let ints = |k: &str| -> Vec<usize> {
            want.get_ints(k)
                .unwrap()
                .iter()
                .map(|&v| v as usize)
                .collect()
        };
        let lengths = ints("lengths");
        let flat = ints("targets");
        let mut utts = Vec::new();
        let mut at = 0;
        for (j, n) in ints("target_lengths").into_iter().enumerate() {
            let frames = lengths[j];
            let values = values.data()[j * t * f..][..frames * f].to_vec();
            utts.push(Utterance {
                frames,
                values,
                target: flat[at..at + n].to_vec(),
            });
            at += n;
        }
        let refs: Vec<&Utterance> = utts.iter().collect();
        let batch = model.batch(&refs).unwrap();
        let lp = model.log_probs(&batch).unwrap();
        let want_lp = want.get::<f64>("log_probs", None).unwrap();
        // Rows past a sequence's end are padding in both; compare the valid ones.
        let classes = model.classes();
        for (j, &n) in batch.lengths.iter().enumerate() {
            for step in 0..n {
                let at = (step * b + j) * classes;
                close(
                    &format!("{name}: log_probs[{step}, {j}]"),
                    &lp[at..at + classes],
                    &want_lp.data()[at..at + classes],
                    1e-5,
                );
            }
        }
        let targets: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
        let loss = model
            .train_step(&batch, &targets, &mut Rng::new(0))
            .unwrap();
        let want_loss = want.get::<f64>("loss", Some(&[1])).unwrap().data()[0];
        assert!(
            (loss - want_loss).abs() < 1e-5,
            "{name}: loss {loss} vs {want_loss}"
        );
        let mut seen = 0;
        model.visit_params_mut(&mut |n, _, g| {
            let w = want.get::<f64>(&format!("grad.{n}"), None).unwrap();
            close(&format!("{name}: grad.{n}"), g.data(), w.data(), 1e-4);
            seen += 1;
        });
        assert!(seen >= 6, "{name}: {seen} parameters");
    }
}
