//! One whole training step of the char language model equals PyTorch's: embedding,
//! 2-layer recurrent stack, head, cross-entropy, backward, global-norm clipping and
//! an Adam update. Fixtures: `~/torch/bin/python tools/charlm_grad_fixture.py tests/fixtures/charlm_step`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::model::CharLm;
use rnnkit::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use rnnkit::{Parameters, RecurrentState, Rng, Tensor};
use std::path::PathBuf;

fn max_rel(got: &Tensor<f32>, want: &Tensor<f64>) -> f64 {
    assert_eq!(got.shape(), want.shape());
    let scale = want
        .data()
        .iter()
        .fold(0.0f64, |m, v| m.max(v.abs()))
        .max(1e-12);
    got.data()
        .iter()
        .zip(want.data())
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max)
        / scale
}

#[test]
fn one_training_step_matches_pytorch() {
    for cell in ["lstm", "gru", "rnn_tanh"] {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!(
            "../../tests/fixtures/charlm_step/{cell}.safetensors"
        ));
        let (mut model, _) = CharLm::load(&path).unwrap();
        let file = TensorFile::open(&path).unwrap();
        let shape = file.shape("step.inputs").unwrap();
        let (steps, batch) = (shape[0], shape[1]);
        let ids = |n: &str| {
            file.get_ints(n)
                .unwrap()
                .into_iter()
                .map(|v| v as usize)
                .collect::<Vec<_>>()
        };
        let (inputs, targets) = (ids("step.inputs"), ids("step.targets"));
        let init = RecurrentState {
            h: file.get("step.h0", None).unwrap(),
            c: file
                .shape("step.c0")
                .map(|_| file.get("step.c0", None).unwrap()),
        };
        let scalar = |n: &str| file.get::<f64>(n, None).unwrap().data()[0];

        model.zero_grad();
        let (loss, _) = model
            .train_step(
                &inputs,
                &targets,
                steps,
                batch,
                Some(&init),
                &mut Rng::new(0),
            )
            .unwrap();
        let want = scalar("step.loss");
        assert!(
            (loss - want).abs() <= 1e-6 * want,
            "{cell}: loss {loss} vs torch {want}"
        );
        let mut grads = Vec::new();
        model.visit_params_mut(&mut |n, _, g| grads.push((n.to_string(), g.clone())));
        for (n, g) in &grads {
            let e = max_rel(g, &file.get(&format!("step.grad.{n}"), None).unwrap());
            assert!(
                e <= 1e-4,
                "{cell}: gradient of {n} off by {e:e} (relative to its largest element)"
            );
        }

        let max_norm = file.metadata()["step.max_norm"].parse::<f64>().unwrap();
        let norm = clip_grad_norm(&mut model, max_norm);
        let want = scalar("step.grad_norm");
        assert!(
            (norm - want).abs() <= 1e-5 * want,
            "{cell}: grad norm {norm} vs torch {want}"
        );
        // Clipping scales every gradient by max_norm / (norm + 1e-6), as torch does.
        let coef = (max_norm / (want + 1e-6)).min(1.0);
        model.visit_params_mut(&mut |n, _, g| {
            let want = file.get::<f64>(&format!("step.grad.{n}"), None).unwrap();
            let scaled =
                Tensor::from_vec(want.shape(), want.data().iter().map(|v| v * coef).collect())
                    .unwrap();
            let e = max_rel(g, &scaled);
            assert!(e <= 1e-4, "{cell}: clipped gradient of {n} off by {e:e}");
        });
        let lr = file.metadata()["step.lr"].parse::<f32>().unwrap();
        Optimizer::new(OptimizerKind::Adam, 0.0).step(&mut model, lr);
        model.visit_params(&mut |n, p| {
            let want = file.get::<f64>(&format!("step.updated.{n}"), None).unwrap();
            let e = p
                .data()
                .iter()
                .zip(want.data())
                .map(|(&a, &b)| (a as f64 - b).abs())
                .fold(0.0, f64::max);
            assert!(e <= 1e-5, "{cell}: {n} after Adam off by {e:e}");
        });
    }
}
