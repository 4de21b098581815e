//! Several consecutive training steps with the hidden state carried from batch to
//! batch (truncated BPTT), Adam and clipping, against PyTorch in float32 from the
//! same initial weights. Fixtures: `~/torch/bin/python tools/charlm_steps_fixture.py tests/fixtures/charlm_steps`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::data::Streams;
use rnnkit::model::CharLm;
use rnnkit::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use rnnkit::{Parameters, Rng};
use std::path::PathBuf;

#[test]
fn consecutive_steps_with_carried_state_match_pytorch() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures");
    let text = std::fs::read_to_string(dir.join("charlm/sonnet.txt")).unwrap();
    for cell in ["lstm", "gru"] {
        let path = dir.join(format!("charlm_steps/{cell}.safetensors"));
        let (mut model, _) = CharLm::load(&path).unwrap();
        let file = TensorFile::open(&path).unwrap();
        let meta = |k: &str| file.metadata()[k].clone();
        let (batch, seq_len): (usize, usize) = (
            meta("steps.batch").parse().unwrap(),
            meta("steps.seq_len").parse().unwrap(),
        );
        let (max_norm, lr): (f64, f32) = (
            meta("steps.max_norm").parse().unwrap(),
            meta("steps.lr").parse().unwrap(),
        );
        let want = file.get::<f64>("steps.losses", None).unwrap();
        let streams =
            Streams::new(model.vocab().encode(&text).unwrap(), batch, seq_len, "text").unwrap();
        let mut optimizer = Optimizer::new(OptimizerKind::Adam, 0.0);
        let (mut inputs, mut targets, mut carry) = (Vec::new(), Vec::new(), None);
        for (k, &w) in want.data().iter().enumerate() {
            streams.batch(k, &mut inputs, &mut targets);
            model.zero_grad();
            let (loss, fin) = model
                .train_step(
                    &inputs,
                    &targets,
                    seq_len,
                    batch,
                    carry.as_ref(),
                    &mut Rng::new(0),
                )
                .unwrap();
            let fin = fin.clone();
            assert!(
                (loss - w).abs() <= 1e-5 * w,
                "{cell} step {}: loss {loss} vs torch {w}",
                k + 1
            );
            clip_grad_norm(&mut model, max_norm);
            optimizer.step(&mut model, lr);
            carry = Some(fin);
        }
        model.visit_params(&mut |n, p| {
            let want = file.get::<f32>(&format!("steps.final.{n}"), None).unwrap();
            let e = p
                .data()
                .iter()
                .zip(want.data())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(
                e <= 1e-4,
                "{cell}: {n} after {} steps off by {e:e}",
                want.len()
            );
        });
    }
}
