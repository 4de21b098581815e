//! Training in bf16 mode (bfloat16 operands, f32 sums in every matrix product)
//! stays close to f32: the same loss to a fraction of a percent and gradients
//! pointing the same way, for every cell kind.

use rnnkit::cell::CellKind;
use rnnkit::data::Vocab;
use rnnkit::kernel::bf16_supported;
use rnnkit::model::{CharLm, CharLmConfig, Precision};
use rnnkit::{Parameters, Rng};

fn grads(m: &mut CharLm) -> Vec<Vec<f32>> {
    let mut all = Vec::new();
    m.visit_params_mut(&mut |_, _, g| {
        all.push(g.data().to_vec());
        g.data_mut().fill(0.0);
    });
    all
}

#[test]
fn bf16_steps_track_f32_steps() {
    let (steps, batch, vocab) = (12, 8, 20);
    for cell in CellKind::ALL {
        let chars = (0..vocab as u32)
            .map(|i| char::from_u32(0x61 + i).unwrap())
            .collect();
        let cfg = CharLmConfig {
            cell,
            embed_size: 16,
            hidden_size: 40,
            num_layers: 2,
            dropout: 0.0,
        };
        let mut m = CharLm::new(&cfg, Vocab::from_chars(chars).unwrap(), &mut Rng::new(3)).unwrap();
        let mut rng = Rng::new(8);
        let inputs: Vec<usize> = (0..steps * batch).map(|_| rng.below(vocab)).collect();
        let targets: Vec<usize> = (0..steps * batch).map(|_| rng.below(vocab)).collect();
        let run = |m: &mut CharLm, p: Precision| {
            m.set_precision(p);
            let (loss, _) = m
                .train_step(&inputs, &targets, steps, batch, None, &mut Rng::new(0))
                .unwrap();
            (loss, grads(m))
        };
        let (l32, g32) = run(&mut m, Precision::F32);
        let (l16, g16) = run(&mut m, Precision::Bf16);
        assert_eq!(m.precision(), Precision::Bf16);
        if !bf16_supported() {
            // Without AVX-512 BF16 the mode computes in f32.
            assert_eq!(l16, l32, "{cell}");
            continue;
        }
        assert!(
            (l16 - l32).abs() < 2e-3 * l32,
            "{cell}: loss {l16} vs {l32}"
        );
        assert!(l16 != l32, "{cell}: bf16 mode changed nothing");
        for (k, (a, b)) in g16.iter().zip(&g32).enumerate() {
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let cos = dot / (na * nb).max(1e-30);
            assert!(cos > 0.995, "{cell} tensor {k}: cosine {cos}");
        }
    }
}

/// A stepped layer (a decoder's) in bf16 mode: its few-row input products read
/// packed copies of `W_ih` kept between steps, and track f32 as the whole pass does.
#[test]
fn a_stepped_layer_in_bf16_tracks_f32() {
    use rnnkit::kernel::with_precision;
    use rnnkit::{Recurrent, RecurrentConfig, RecurrentState, Tensor};
    let (steps, b, i, h) = (6, 16, 24, 32);
    let mut rng = Rng::new(5);
    let x: Vec<f32> = (0..steps * b * i)
        .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
        .collect();
    let dy: Vec<f32> = (0..steps * b * h)
        .map(|_| rng.uniform_in(-1.0, 1.0) as f32)
        .collect();
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, i, h).with_layers(2);
        let layer: Recurrent<f32> = cfg.init(&mut Rng::new(1)).unwrap();
        let run = |p: Precision| {
            let mut l = layer.clone();
            with_precision(p, || {
                let mut state = RecurrentState::zeros(&cfg, b);
                let mut ys = Vec::new();
                for t in 0..steps {
                    let xt = Tensor::from_vec(&[1, b, i], x[t * b * i..][..b * i].to_vec());
                    let (y, s) = l.step_train(t, &xt.unwrap(), &state, None).unwrap();
                    ys.extend_from_slice(y.data());
                    state = s;
                }
                let mut d_state = RecurrentState::zeros(&cfg, b);
                let mut dxs = Vec::new();
                for t in (0..steps).rev() {
                    let dyt = Tensor::from_vec(&[1, b, h], dy[t * b * h..][..b * h].to_vec());
                    let (dx, ds) = l.step_backward_inputs(t, &dyt.unwrap(), &d_state).unwrap();
                    dxs.extend_from_slice(dx.data());
                    d_state = ds;
                }
                l.step_weight_grads(0..steps, None).unwrap();
                let mut g = Vec::new();
                l.visit_params_mut(&mut |_, _, t| g.extend_from_slice(t.data()));
                [ys, dxs, g]
            })
        };
        let (f32s, bf16s) = (run(Precision::F32), run(Precision::Bf16));
        for (what, (a, b)) in ["outputs", "input gradients", "parameter gradients"]
            .iter()
            .zip(bf16s.iter().zip(&f32s))
        {
            let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
            let na: f64 = a.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let nb: f64 = b.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let cos = dot / (na * nb).max(1e-30);
            assert!(cos > 0.995, "{cell} {what}: cosine {cos}");
            if bf16_supported() {
                assert!(a != b, "{cell} {what}: bf16 mode changed nothing");
            }
        }
    }
}
