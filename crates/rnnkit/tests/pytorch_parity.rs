//! The recurrent layer against PyTorch: every cell × 1 and 2 layers × uni- and
//! bidirectional × equal and variable lengths. Fixtures are made by
//! `~/torch/bin/python tools/gen_fixtures.py` (torch.nn.RNN/LSTM/GRU in float64;
//! the Keras-form GRU from its equations) and loaded here through the public
//! state-dict path, `Recurrent::from_state_dict`.

use rnnkit::checkpoint::TensorFile;
use rnnkit::{CellKind, Parameters, Real, Recurrent, RecurrentState, Tensor};
use std::path::PathBuf;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/recurrent")
}

/// Largest |a − b| and largest |b| over two tensors of the same shape.
fn max_err<T: Real>(what: &str, got: &Tensor<T>, want: &Tensor<f64>) -> (f64, f64) {
    assert_eq!(got.shape(), want.shape(), "{what}: shape");
    let mut worst = (0.0f64, 0usize);
    for (i, (&g, &w)) in got.data().iter().zip(want.data()).enumerate() {
        let d = (g.f64() - w).abs();
        assert!(d.is_finite(), "{what}[{i}]: {} vs {w}", g.f64());
        if d > worst.0 {
            worst = (d, i);
        }
    }
    let scale = want.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    (worst.0, scale)
}

struct Tolerance {
    /// Outputs and final states: max |Δ| ≤ abs · max(1, max|ref|).
    abs: f64,
    /// Gradients: max |Δ| ≤ rel · max|ref|.
    rel: f64,
}

/// Runs one fixture in precision `T`; returns the largest output and gradient errors seen.
fn check_fixture<T: Real>(name: &str, tol: &Tolerance) -> (f64, f64) {
    let file =
        TensorFile::open(fixture_dir().join(format!("{name}.safetensors"))).expect("fixture");
    let meta = file.metadata();
    let cell = CellKind::from_name(&meta["cell"]).expect("known cell");
    let mut layer = Recurrent::<T>::from_state_dict(&file, "", cell).expect("state dict loads");
    assert_eq!(layer.config().num_layers.to_string(), meta["num_layers"]);
    assert_eq!(
        layer.config().bidirectional.to_string(),
        meta["bidirectional"]
    );

    let x = file.get::<T>("input", None).unwrap();
    let lengths: Vec<usize> = file
        .get_ints("lengths")
        .unwrap()
        .into_iter()
        .map(|v| v as usize)
        .collect();
    let var = name.ends_with("_var");
    let init = RecurrentState {
        h: file.get::<T>("h0", None).unwrap(),
        c: cell
            .has_cell_state()
            .then(|| file.get::<T>("c0", None).unwrap()),
    };
    let (y, fin) = layer
        .forward(&x, var.then_some(&lengths[..]), Some(&init))
        .unwrap();

    let mut worst_out = 0.0f64;
    let mut check_abs = |what: &str, got: &Tensor<T>, key: &str| {
        let (e, scale) = max_err(what, got, &file.get::<f64>(key, None).unwrap());
        assert!(
            e <= tol.abs * scale.max(1.0),
            "{name} {what}: max |Δ| {e:e} (scale {scale})"
        );
        worst_out = worst_out.max(e / scale.max(1.0));
    };
    check_abs("output", &y, "output");
    check_abs("h_n", &fin.h, "h_n");
    if let Some(c) = &fin.c {
        check_abs("c_n", c, "c_n");
    }

    let d_final = RecurrentState {
        h: file.get::<T>("grad_h_n", None).unwrap(),
        c: cell
            .has_cell_state()
            .then(|| file.get::<T>("grad_c_n", None).unwrap()),
    };
    let (dx, d_init) = layer
        .backward(&file.get::<T>("grad_output", None).unwrap(), Some(&d_final))
        .unwrap();
    let mut worst_grad = 0.0f64;
    let mut check_rel = |what: &str, got: &Tensor<T>, key: &str| {
        let (e, scale) = max_err(what, got, &file.get::<f64>(key, None).unwrap());
        assert!(
            e <= tol.rel * scale,
            "{name} {what}: max |Δ| {e:e} vs max |ref| {scale:e}"
        );
        worst_grad = worst_grad.max(e / scale);
    };
    check_rel("grad_input", &dx, "grad_input");
    check_rel("grad_h0", &d_init.h, "grad_h0");
    if let Some(c) = &d_init.c {
        check_rel("grad_c0", c, "grad_c0");
    }
    let mut names = Vec::new();
    layer.visit_params(&mut |n, _| names.push(n.to_string()));
    for n in &names {
        check_rel(n, layer.grad(n).unwrap(), &format!("grad.{n}"));
    }
    (worst_out, worst_grad)
}

fn all_fixtures() -> Vec<String> {
    let mut v = Vec::new();
    for cell in CellKind::ALL {
        for layers in [1, 2] {
            for dir in ["uni", "bi"] {
                for len in ["eq", "var"] {
                    v.push(format!("{cell}_{layers}l_{dir}_{len}"));
                }
            }
        }
    }
    v
}

#[test]
fn f64_matches_pytorch_to_rounding() {
    let tol = Tolerance {
        abs: 1e-10,
        rel: 1e-10,
    };
    for name in all_fixtures() {
        check_fixture::<f64>(&name, &tol);
    }
}

#[test]
fn f32_matches_pytorch_within_1e5_outputs_1e4_relative_gradients() {
    let tol = Tolerance {
        abs: 1e-5,
        rel: 1e-4,
    };
    let (mut out, mut grad) = (0.0f64, 0.0f64);
    for name in all_fixtures() {
        let (o, g) = check_fixture::<f32>(&name, &tol);
        println!("{name:28} output/state max |Δ| {o:.2e}   gradient max |Δ|/max|ref| {g:.2e}");
        out = out.max(o);
        grad = grad.max(g);
    }
    println!("worst over all fixtures: outputs {out:.2e}, gradients {grad:.2e} (relative)");
}

#[test]
fn every_fixture_is_covered() {
    let mut on_disk: Vec<String> = std::fs::read_dir(fixture_dir())
        .unwrap()
        .map(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".safetensors")
                .to_string()
        })
        .collect();
    on_disk.sort();
    let mut expected = all_fixtures();
    expected.sort();
    assert_eq!(on_disk, expected);
}
