//! Layers wide enough that their per-step products run on `W_hh` packed once per
//! weight change (≥ 2^16 elements, ≥ 8 rows per thread): f32 agrees with f64
//! (which goes through the `gemm` crate), forward and backward, for every cell
//! kind, also after the weights change between calls; and so do the input
//! gradients of a pass of many rows, whose product packs `W_ih`.

use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};

fn random(shape: &[usize], rng: &mut Rng) -> Vec<f64> {
    let n: usize = shape.iter().product();
    (0..n).map(|_| rng.uniform_in(-1.0, 1.0)).collect()
}

fn to32(v: &[f64], shape: &[usize]) -> Tensor<f32> {
    Tensor::from_vec(shape, v.iter().map(|&x| x as f32).collect()).unwrap()
}

fn worst(a: &[f32], b: &[f64]) -> f64 {
    let scale = b.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    a.iter()
        .zip(b)
        .map(|(&x, &y)| (x as f64 - y).abs() / scale)
        .fold(0.0, f64::max)
}

#[test]
fn wide_layers_agree_with_f64() {
    for cell in CellKind::ALL {
        // Hidden sizes whose smallest W_hh view reaches 2^20 elements (over the
        // 2^16 from which it is packed), so that a thread's block of rows spans
        // several of the packed kernel's blocks of depth and columns.
        let h = match cell {
            CellKind::Lstm => 512,
            CellKind::Gru => 640,
            _ => 1024,
        };
        agree(cell, h, (3, 16, 8));
    }
}

#[test]
fn input_gradients_of_many_rows_agree_with_f64() {
    // 320 rows of `dg`: `dx = dg·W_ih` packs `W_ih` (a per-step product of as few
    // rows would read it in place).
    for cell in CellKind::ALL {
        agree(cell, 48, (20, 16, 24));
    }
}

/// A layer of `cell` with `h` units on `x [t, b, i]`, in f32 and f64 from the same
/// weights, twice (the weights changed between): outputs, input gradients and
/// `dW_hh` agree.
fn agree(cell: CellKind, h: usize, (t, b, i): (usize, usize, usize)) {
    let cfg = RecurrentConfig::new(cell, i, h);
    let mut l64: Recurrent<f64> = cfg.init(&mut Rng::new(5)).unwrap();
    let mut params = Vec::new();
    l64.visit_params(&mut |_, p| {
        params.push(p.data().iter().map(|&v| v as f32).collect::<Vec<_>>())
    });
    let mut l32: Recurrent<f32> = cfg.init(&mut Rng::new(0)).unwrap();
    let mut k = 0;
    l32.visit_params_mut(&mut |_, p, _| {
        p.data_mut().copy_from_slice(&params[k]);
        k += 1;
    });
    let mut rng = Rng::new(1);
    let (x, dy) = (random(&[t, b, i], &mut rng), random(&[t, b, h], &mut rng));
    let x64 = Tensor::from_vec(&[t, b, i], x.clone()).unwrap();
    let dy64 = Tensor::from_vec(&[t, b, h], dy.clone()).unwrap();
    for round in 0..2 {
        let (y64, _) = l64
            .forward_train(&x64, None, None, &mut Rng::new(0))
            .unwrap();
        let (dx64, _) = l64.backward(&dy64, None).unwrap();
        let (y32, _) = l32
            .forward_train(&to32(&x, &[t, b, i]), None, None, &mut Rng::new(0))
            .unwrap();
        let (dx32, _) = l32.backward(&to32(&dy, &[t, b, h]), None).unwrap();
        assert!(
            worst(y32.data(), y64.data()) < 1e-5,
            "{cell} H{h} round {round}: y"
        );
        assert!(
            worst(dx32.data(), dx64.data()) < 1e-4,
            "{cell} H{h} round {round}: dx"
        );
        let g64 = l64.grad("weight_hh_l0").unwrap().data().to_vec();
        let g32 = l32.grad("weight_hh_l0").unwrap().data().to_vec();
        assert!(worst(&g32, &g64) < 1e-4, "{cell} H{h} round {round}: dW_hh");
        // Change the weights the same way in both; the packed copies must follow.
        l64.visit_params_mut(&mut |_, p, g| {
            p.data_mut().iter_mut().for_each(|v| *v *= 0.9);
            g.data_mut().fill(0.0);
        });
        l32.visit_params_mut(&mut |_, p, g| {
            p.data_mut().iter_mut().for_each(|v| *v *= 0.9);
            g.data_mut().fill(0.0);
        });
    }
}
