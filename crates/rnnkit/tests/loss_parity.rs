//! `loss::cross_entropy` against torch.nn.functional.cross_entropy (mean reduction) with
//! class weights, ignore indices (inside and outside the classes), masked rows,
//! saturated logits and label smoothing (alone and with all of those), in f64 and f32.
//! The fixture is made, from the repository root, by
//! `~/torch/bin/python tools/loss_fixture.py tests/fixtures/loss/cross_entropy.safetensors`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::loss::{cross_entropy, CrossEntropy};
use rnnkit::Real;
use std::path::PathBuf;

fn fixture() -> TensorFile {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/loss/cross_entropy.safetensors");
    TensorFile::open(path).expect("fixture")
}

/// Checks every case in precision `T`: loss within `tol`·max(1, |loss|), gradient
/// within `tol`·max|grad| elementwise.
fn check<T: Real>(tol: f64) {
    let file = fixture();
    let meta = file.metadata();
    let cases: Vec<&str> = meta["cases"].split(',').collect();
    assert_eq!(cases.len(), 7, "cases: {cases:?}");
    for name in cases {
        let logits = file.get::<T>(&format!("{name}.logits"), None).unwrap();
        let &[rows, classes] = logits.shape() else {
            panic!("{name}.logits: shape {:?}", logits.shape())
        };
        let ints = |key: &str| file.get_ints(&format!("{name}.{key}")).unwrap();
        let targets: Vec<usize> = ints("targets").iter().map(|&t| t as usize).collect();
        let mask: Vec<bool> = ints("mask").iter().map(|&m| m != 0).collect();
        let weights = file.shape(&format!("{name}.weight")).map(|_| {
            file.get::<T>(&format!("{name}.weight"), Some(&[classes]))
                .unwrap()
        });
        let opts = CrossEntropy {
            ignore_index: meta
                .get(&format!("{name}.ignore_index"))
                .map(|s| s.parse().unwrap()),
            class_weights: weights.as_ref().map(|w| w.data()),
            label_smoothing: meta
                .get(&format!("{name}.label_smoothing"))
                .map_or(0.0, |s| s.parse().unwrap()),
        };
        let mut grad = vec![T::of(f64::NAN); rows * classes];
        let got = cross_entropy(
            logits.data(),
            classes,
            &targets,
            Some(&mask),
            &opts,
            Some(&mut grad),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));

        let scalar = |key: &str| {
            file.get::<f64>(&format!("{name}.{key}"), Some(&[1]))
                .unwrap()
        };
        let want_loss = scalar("loss").data()[0];
        let want_weight = scalar("weight_sum").data()[0];
        let want_grad = file
            .get::<f64>(&format!("{name}.grad"), Some(&[rows, classes]))
            .unwrap();
        assert!(
            (got.weight - want_weight).abs() <= tol * want_weight.max(1.0),
            "{name}: weight {} vs {want_weight}",
            got.weight
        );
        if name == "all_ignored" {
            // torch's 0/0; rnnkit reports an empty mean as 0 with weight 0.
            assert!(want_loss.is_nan(), "{name}: torch gave {want_loss}");
            assert_eq!((got.mean, got.weight), (0.0, 0.0), "{name}");
        } else {
            assert!(
                (got.mean - want_loss).abs() <= tol * want_loss.abs().max(1.0),
                "{name}: loss {} vs torch {want_loss}",
                got.mean
            );
        }
        let scale = want_grad.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
        for (i, (&g, &w)) in grad.iter().zip(want_grad.data()).enumerate() {
            let (r, c) = (i / classes, i % classes);
            assert!(
                (g.f64() - w).abs() <= tol * scale.max(1e-300),
                "{name}: grad[{r}][{c}] {} vs torch {w} (max |grad| {scale:e})",
                g.f64()
            );
        }
    }
}

#[test]
fn cross_entropy_matches_torch_in_f64() {
    check::<f64>(1e-12);
}

#[test]
fn cross_entropy_matches_torch_in_f32() {
    check::<f32>(1e-5);
}
