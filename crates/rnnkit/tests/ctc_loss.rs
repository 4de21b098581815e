//! `loss::ctc_loss` against `torch.nn.functional.ctc_loss` (after `log_softmax`) in f64
//! and f32: varied input and target lengths, repeated labels, empty targets and inputs,
//! infeasible targets, a blank that is the last class, a long case (target 256 over 500
//! frames) and every reduction; and an f64 finite-difference check. The fixture is made,
//! from the repository root, by
//! `~/torch/bin/python tools/ctc_fixture.py tests/fixtures/loss/ctc.safetensors`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::loss::{ctc_loss, CtcOptions, Reduction};
use rnnkit::{Real, Rng};
use std::path::PathBuf;

fn fixture() -> TensorFile {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/loss/ctc.safetensors");
    TensorFile::open(path).expect("fixture")
}

/// Worst errors of one precision over all cases: (loss, gradient), each relative to
/// the case's largest value.
fn check<T: Real>(prec: &str, tol: f64) -> (f64, f64) {
    let file = fixture();
    let meta = file.metadata().clone();
    let cases: Vec<&str> = meta["cases"].split(',').collect();
    assert_eq!(cases.len(), 8, "cases: {cases:?}");
    let (mut worst_loss, mut worst_grad) = (0.0f64, 0.0f64);
    for name in cases {
        let logits = file
            .get::<T>(&format!("{name}.{prec}.logits"), None)
            .unwrap();
        let &[frames, b, classes] = logits.shape() else {
            panic!("{name}: shape {:?}", logits.shape())
        };
        let ints = |key: &str| -> Vec<usize> {
            file.get_ints(&format!("{name}.{key}"))
                .unwrap()
                .iter()
                .map(|&v| v as usize)
                .collect()
        };
        let input_lengths = ints("input_lengths");
        let flat = ints("targets");
        let mut targets = Vec::new();
        let mut at = 0;
        for n in ints("target_lengths") {
            targets.push(flat[at..at + n].to_vec());
            at += n;
        }
        let opts = CtcOptions {
            blank: meta[&format!("{name}.blank")].parse().unwrap(),
            reduction: match meta[&format!("{name}.reduction")].as_str() {
                "none" => Reduction::None,
                "sum" => Reduction::Sum,
                _ => Reduction::Mean,
            },
            zero_infinity: meta[&format!("{name}.zero_infinity")] == "true",
        };
        let mut grad = vec![T::of(f64::NAN); frames * b * classes];
        let got = ctc_loss(
            logits.data(),
            classes,
            &input_lengths,
            &targets,
            &opts,
            Some(&mut grad),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        let want = file
            .get::<f64>(&format!("{name}.{prec}.loss"), None)
            .unwrap();
        let got_loss: Vec<f64> = if opts.reduction == Reduction::None {
            got.losses.clone()
        } else {
            vec![got.value]
        };
        assert_eq!(got_loss.len(), want.len(), "{name}");
        for (g, w) in got_loss.iter().zip(want.data()) {
            if w.is_infinite() {
                assert_eq!(g, w, "{name}: infeasible target");
                continue;
            }
            let err = (g - w).abs() / w.abs().max(1.0);
            assert!(err < tol, "{name}.{prec}: loss {g} vs torch {w}");
            worst_loss = worst_loss.max(err);
        }
        assert!(grad.iter().all(|g| g.is_finite()), "{name}: NaN gradient");
        let key = format!("{name}.{prec}.grad");
        if file.shape(&key).is_none() {
            // Torch's gradient is NaN for an infeasible target without zero_infinity;
            // rnnkit's is zero.
            for (j, l) in got.losses.iter().enumerate() {
                if l.is_infinite() {
                    for t in 0..frames {
                        let row = &grad[(t * b + j) * classes..][..classes];
                        assert!(row.iter().all(|&g| g == T::zero()), "{name}: seq {j}");
                    }
                }
            }
            continue;
        }
        let want_grad = file.get::<f64>(&key, Some(&[frames, b, classes])).unwrap();
        let scale = want_grad
            .data()
            .iter()
            .fold(0.0f64, |m, v| m.max(v.abs()))
            .max(1e-12);
        for (i, (&g, &w)) in grad.iter().zip(want_grad.data()).enumerate() {
            let err = (g.f64() - w).abs() / scale;
            assert!(
                err < tol,
                "{name}.{prec}: grad[{i}] {} vs torch {w}",
                g.f64()
            );
            worst_grad = worst_grad.max(err);
        }
    }
    eprintln!("ctc vs torch, {prec}: worst loss error {worst_loss:.2e}, worst gradient error {worst_grad:.2e} (relative)");
    (worst_loss, worst_grad)
}

#[test]
fn matches_pytorch_in_f64() {
    let (loss, grad) = check::<f64>("f64", 1e-10);
    assert!(loss < 1e-12, "{loss:e} {grad:e}");
}

#[test]
fn matches_pytorch_in_f32() {
    // torch accumulates in f32 where rnnkit works in f64: over 500 frames (the long
    // case) torch's own f32 gradient is 6.6e-4 away from its f64 gradient of the same
    // f32 logits, and so from rnnkit's.
    let (loss, _) = check::<f32>("f32", 1e-3);
    assert!(loss < 2e-6, "{loss:e}");
}

/// Central differences of the mean-reduced loss against the analytic gradient, with
/// repeats, a blank that is not 0 and a padded batch.
#[test]
fn finite_differences_agree_with_the_gradient() {
    let (frames, classes) = (7, 5);
    let input_lengths = [7, 5, 6];
    let targets = [vec![1usize, 1, 2], vec![3], vec![0, 4, 4]];
    let b = input_lengths.len();
    let mut rng = Rng::new(11);
    let mut logits: Vec<f64> = (0..frames * b * classes)
        .map(|_| rng.uniform() * 4.0 - 2.0)
        .collect();
    let opts = CtcOptions {
        blank: 2,
        reduction: Reduction::Mean,
        zero_infinity: false,
    };
    let targets: Vec<Vec<usize>> = targets
        .iter()
        .map(|t| t.iter().map(|&c| if c == 2 { 1 } else { c }).collect())
        .collect();
    let mut grad = vec![0.0; logits.len()];
    ctc_loss(
        &logits,
        classes,
        &input_lengths,
        &targets,
        &opts,
        Some(&mut grad),
    )
    .unwrap();
    let eps = 1e-6;
    let mut worst = 0.0f64;
    for i in 0..logits.len() {
        let x = logits[i];
        logits[i] = x + eps;
        let up = ctc_loss(&logits, classes, &input_lengths, &targets, &opts, None).unwrap();
        logits[i] = x - eps;
        let down = ctc_loss(&logits, classes, &input_lengths, &targets, &opts, None).unwrap();
        logits[i] = x;
        let numeric = (up.value - down.value) / (2.0 * eps);
        worst = worst.max((numeric - grad[i]).abs());
    }
    assert!(worst < 1e-8, "worst difference {worst:e}");
}
