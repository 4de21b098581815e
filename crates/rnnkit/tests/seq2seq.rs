//! The encoder–decoder: a finite-difference gradient check in f64 of every
//! parameter for every attention kind and cell, the stepped recurrent layer against
//! the whole-sequence one, decoding (greedy = beam 1, beam never worse in
//! log-probability, always stops), and the plain encoder–decoder (no attention)
//! learning to reverse digit strings.

use rnnkit::data::{Split, TokenVocab};
use rnnkit::optim::{Optimizer, OptimizerKind};
use rnnkit::seq2seq::{AttentionKind, DecodeOptions, PairBatch, Seq2seq, Seq2seqConfig};
use rnnkit::{CellKind, Parameters, Recurrent, RecurrentConfig, Rng, Tensor};

fn vocab(n: usize, target: bool) -> TokenVocab {
    let mut t: Vec<String> = if target {
        vec!["</s>".into(), "<s>".into()]
    } else {
        vec![]
    };
    t.extend((0..n).map(|i| format!("t{i}")));
    TokenVocab::new(t).unwrap()
}

fn config(cell: CellKind, attention: AttentionKind, layers: usize, bi: bool) -> Seq2seqConfig {
    Seq2seqConfig {
        cell,
        attention,
        embed: 3,
        hidden_size: 4,
        num_layers: layers,
        bidirectional: bi,
        dropout: 0.0,
        label_smoothing: 0.0,
    }
}

/// A fresh model of `cfg` over 5 source and 5 (+2) target tokens.
fn model<T: rnnkit::Real>(cfg: &Seq2seqConfig, rng: &mut Rng) -> Seq2seq<T> {
    let splits = (Split::Chars, Split::Chars);
    Seq2seq::new(cfg, vocab(5, false), vocab(5, true), splits, rng).unwrap()
}

fn batch() -> PairBatch {
    let pairs: Vec<(Vec<usize>, Vec<usize>)> = vec![
        (vec![0, 3, 2, 4], vec![2, 5, 3]),
        (vec![1, 2], vec![4, 4, 2, 6, 3]),
        (vec![4, 4, 0], vec![6]),
    ];
    let refs: Vec<(&[usize], &[usize])> = pairs
        .iter()
        .map(|(s, t)| (s.as_slice(), t.as_slice()))
        .collect();
    PairBatch::new(&refs).unwrap()
}

fn loss_of(model: &mut Seq2seq<f64>, b: &PairBatch) -> f64 {
    let logits = model.forward(b, None).unwrap();
    model.loss(b, &logits, None).unwrap().mean
}

/// Adds `delta` to element `i` of the `param`-th parameter.
fn bump(model: &mut Seq2seq<f64>, param: usize, i: usize, delta: f64) {
    let mut k = 0;
    model.visit_params_mut(&mut |_, t, _| {
        if k == param {
            t.data_mut()[i] += delta;
        }
        k += 1;
    });
}

#[test]
fn every_parameter_gradient_matches_finite_differences() {
    let cases = [
        (CellKind::Lstm, AttentionKind::General, 2, true),
        (CellKind::Gru, AttentionKind::Dot, 1, false),
        (CellKind::Lstm, AttentionKind::Additive, 1, true),
        (CellKind::RnnTanh, AttentionKind::None, 1, true),
        (CellKind::Gru, AttentionKind::Additive, 2, true),
    ];
    for (cell, attention, layers, bi) in cases {
        let name = format!("{cell} {attention} L{layers} bi={bi}");
        let mut rng = Rng::new(7);
        let cfg = config(cell, attention, layers, bi);
        let mut model = model::<f64>(&cfg, &mut rng);
        let b = batch();
        model.zero_grad();
        let logits = model.forward(&b, None).unwrap();
        let mut d = vec![0.0; logits.len()];
        model.loss(&b, &logits, Some(&mut d)).unwrap();
        model.backward(&b, &d).unwrap();
        let mut analytic: Vec<(String, Vec<f64>)> = Vec::new();
        model.visit_params_mut(&mut |n, _, g| analytic.push((n.to_string(), g.data().to_vec())));
        let eps = 1e-6;
        for (pi, (pname, grad)) in analytic.iter().enumerate() {
            for (i, &a) in grad.iter().enumerate() {
                bump(&mut model, pi, i, eps);
                let up = loss_of(&mut model, &b);
                bump(&mut model, pi, i, -2.0 * eps);
                let down = loss_of(&mut model, &b);
                bump(&mut model, pi, i, eps);
                let num = (up - down) / (2.0 * eps);
                assert!(
                    (a - num).abs() <= 1e-6 * a.abs().max(num.abs()) + 1e-8,
                    "{name}: {pname}[{i}] analytic {a:e} numeric {num:e}"
                );
            }
        }
    }
}

#[test]
fn label_smoothed_training_gradients_match_finite_differences() {
    let mut cfg = config(CellKind::Lstm, AttentionKind::General, 1, true);
    cfg.label_smoothing = 0.1;
    let mut rng = Rng::new(3);
    let mut model = model::<f64>(&cfg, &mut rng);
    let b = batch();
    // Dropout is 0, so a training step's loss is a function of the weights alone.
    let smoothed = |model: &mut Seq2seq<f64>| model.train_step(&b, &mut Rng::new(1)).unwrap().mean;
    model.zero_grad();
    let loss = smoothed(&mut model);
    let logits = model.forward(&b, None).unwrap();
    let plain = model.loss(&b, &logits, None).unwrap().mean;
    assert!(
        loss > plain,
        "smoothing adds the uniform part: {loss} vs {plain}"
    );
    let mut analytic: Vec<Vec<f64>> = Vec::new();
    model.visit_params_mut(&mut |_, _, g| analytic.push(g.data().to_vec()));
    let eps = 1e-6;
    for (pi, grad) in analytic.iter().enumerate() {
        for (i, &a) in grad.iter().enumerate().step_by(7) {
            bump(&mut model, pi, i, eps);
            let up = smoothed(&mut model);
            bump(&mut model, pi, i, -2.0 * eps);
            let down = smoothed(&mut model);
            bump(&mut model, pi, i, eps);
            let num = (up - down) / (2.0 * eps);
            assert!(
                (a - num).abs() <= 1e-6 * a.abs().max(num.abs()) + 1e-8,
                "param {pi}[{i}] analytic {a:e} numeric {num:e}"
            );
        }
    }
    cfg.label_smoothing = 1.0;
    assert!(cfg.validate().is_err());
}

#[test]
fn stepping_a_layer_equals_running_the_whole_sequence() {
    let mut rng = Rng::new(3);
    for cell in [
        CellKind::Lstm,
        CellKind::Gru,
        CellKind::GruResetBefore,
        CellKind::RnnTanh,
    ] {
        let cfg = RecurrentConfig::new(cell, 3, 4).with_layers(2);
        let mut whole: Recurrent<f64> = cfg.init(&mut rng).unwrap();
        let mut stepped = whole.clone();
        let (steps, b) = (5, 2);
        let x = Tensor::from_vec(
            &[steps, b, 3],
            (0..steps * b * 3)
                .map(|_| rng.uniform_in(-1.0, 1.0))
                .collect(),
        )
        .unwrap();
        let dy = Tensor::from_vec(
            &[steps, b, 4],
            (0..steps * b * 4)
                .map(|_| rng.uniform_in(-1.0, 1.0))
                .collect(),
        )
        .unwrap();
        let (y, _) = whole.forward(&x, None, None).unwrap();
        let (dx, _) = whole.backward(&dy, None).unwrap();
        let mut state = rnnkit::RecurrentState::zeros(&cfg, b);
        let mut ys = Vec::new();
        for t in 0..steps {
            let xt = Tensor::from_vec(&[1, b, 3], x.data()[t * b * 3..][..b * 3].to_vec()).unwrap();
            let (yt, s) = stepped.step_train(t, &xt, &state, None).unwrap();
            ys.extend_from_slice(yt.data());
            state = s;
        }
        let mut d_state = rnnkit::RecurrentState::zeros(&cfg, b);
        let mut dxs = vec![0.0; dx.len()];
        for t in (0..steps).rev() {
            let dyt =
                Tensor::from_vec(&[1, b, 4], dy.data()[t * b * 4..][..b * 4].to_vec()).unwrap();
            let (dxt, ds) = stepped.step_backward(t, &dyt, &d_state).unwrap();
            dxs[t * b * 3..][..b * 3].copy_from_slice(dxt.data());
            d_state = ds;
        }
        let close = |a: &[f64], b: &[f64]| a.iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-12);
        assert!(close(y.data(), &ys), "{cell} outputs");
        assert!(close(dx.data(), &dxs), "{cell} input gradients");
        let mut ga = Vec::new();
        whole.visit_params_mut(&mut |_, _, g| ga.extend_from_slice(g.data()));
        let mut gb = Vec::new();
        stepped.visit_params_mut(&mut |_, _, g| gb.extend_from_slice(g.data()));
        assert!(close(&ga, &gb), "{cell} parameter gradients");
        let e = stepped.step_backward(steps + 3, &dy, &d_state).unwrap_err();
        assert!(e.to_string().contains("only 5 steps"), "{e}");

        // The weight gradients of all steps at once, after the stepped backward pass.
        let mut deferred = whole.clone();
        deferred.visit_params_mut(&mut |_, _, g| g.data_mut().fill(0.0));
        let mut state = rnnkit::RecurrentState::zeros(&cfg, b);
        for t in 0..steps {
            let xt = Tensor::from_vec(&[1, b, 3], x.data()[t * b * 3..][..b * 3].to_vec()).unwrap();
            state = deferred.step_train(t, &xt, &state, None).unwrap().1;
        }
        let e = deferred.step_weight_grads(0..steps, None).unwrap_err();
        assert!(e.to_string().contains("step 0 has no backward pass"), "{e}");
        let mut d_state = rnnkit::RecurrentState::zeros(&cfg, b);
        for t in (0..steps).rev() {
            let dyt =
                Tensor::from_vec(&[1, b, 4], dy.data()[t * b * 4..][..b * 4].to_vec()).unwrap();
            let (dxt, ds) = deferred.step_backward_inputs(t, &dyt, &d_state).unwrap();
            assert!(
                close(&dx.data()[t * b * 3..][..b * 3], dxt.data()),
                "{cell} deferred dx"
            );
            d_state = ds;
        }
        let mut gc = Vec::new();
        deferred.visit_params_mut(&mut |_, _, g| gc.extend_from_slice(g.data()));
        assert!(
            gc.iter().all(|&v| v == 0.0),
            "{cell}: no gradient before step_weight_grads"
        );
        deferred.step_weight_grads(0..steps, None).unwrap();
        let mut gc = Vec::new();
        deferred.visit_params_mut(&mut |_, _, g| gc.extend_from_slice(g.data()));
        assert!(close(&ga, &gc), "{cell} deferred parameter gradients");
        // Each step's gradients are added once.
        let e = deferred.step_weight_grads(2..3, None).unwrap_err();
        assert!(e.to_string().contains("step 2 has no backward pass"), "{e}");
        let e = deferred.step_weight_grads(0..steps + 1, None).unwrap_err();
        assert!(e.to_string().contains("only 5 steps"), "{e}");

        // A sequence that ends after 2 steps: its later rows have zero gradients and
        // are skipped, with the same result.
        let mut dy_short = dy.clone();
        for t in 2..steps {
            dy_short.data_mut()[(t * b + 1) * 4..][..4].fill(0.0);
        }
        let mut whole_short = whole.clone();
        whole_short.visit_params_mut(&mut |_, _, g| g.data_mut().fill(0.0));
        whole_short.forward(&x, None, None).unwrap();
        whole_short.backward(&dy_short, None).unwrap();
        let mut ga = Vec::new();
        whole_short.visit_params_mut(&mut |_, _, g| ga.extend_from_slice(g.data()));
        deferred.visit_params_mut(&mut |_, _, g| g.data_mut().fill(0.0));
        let mut d_state = rnnkit::RecurrentState::zeros(&cfg, b);
        for t in (0..steps).rev() {
            let dyt = Tensor::from_vec(&[1, b, 4], dy_short.data()[t * b * 4..][..b * 4].to_vec())
                .unwrap();
            d_state = deferred.step_backward_inputs(t, &dyt, &d_state).unwrap().1;
        }
        let e = deferred
            .step_weight_grads(0..steps, Some(&[steps + 1, 2]))
            .unwrap_err();
        assert!(e.to_string().contains("lengths"), "{e}");
        deferred
            .step_weight_grads(0..steps, Some(&[steps, 2]))
            .unwrap();
        let mut gc = Vec::new();
        deferred.visit_params_mut(&mut |_, _, g| gc.extend_from_slice(g.data()));
        assert!(close(&ga, &gc), "{cell} parameter gradients over real rows");
    }
}

/// Digit strings of 3–8 digits and their reversals.
fn reversal_pairs(n: usize, rng: &mut Rng) -> Vec<(Vec<usize>, Vec<usize>)> {
    (0..n)
        .map(|_| {
            let len = 3 + (rng.uniform() * 6.0) as usize;
            let src: Vec<usize> = (0..len).map(|_| (rng.uniform() * 10.0) as usize).collect();
            // Target ids are the digits shifted past the two specials.
            let tgt = src.iter().rev().map(|d| d + 2).collect();
            (src, tgt)
        })
        .collect()
}

#[test]
fn the_encoder_decoder_learns_to_reverse_digit_strings_and_decodes_consistently() {
    let mut rng = Rng::new(11);
    let digits: Vec<String> = (0..10).map(|d| d.to_string()).collect();
    let mut tgt = vec!["</s>".to_string(), "<s>".to_string()];
    tgt.extend(digits.iter().cloned());
    let cfg = Seq2seqConfig {
        cell: CellKind::Lstm,
        attention: AttentionKind::None,
        embed: 16,
        hidden_size: 128,
        num_layers: 1,
        bidirectional: true,
        dropout: 0.0,
        label_smoothing: 0.0,
    };
    let mut model = Seq2seq::<f32>::new(
        &cfg,
        TokenVocab::new(digits).unwrap(),
        TokenVocab::new(tgt).unwrap(),
        (Split::Chars, Split::Chars),
        &mut rng,
    )
    .unwrap();
    let mut opt = Optimizer::new(OptimizerKind::Adam, 0.0);
    let mut data_rng = Rng::new(5);
    for step in 0..1500 {
        let pairs = reversal_pairs(32, &mut data_rng);
        let refs: Vec<(&[usize], &[usize])> = pairs
            .iter()
            .map(|(s, t)| (s.as_slice(), t.as_slice()))
            .collect();
        let b = PairBatch::new(&refs).unwrap();
        model.zero_grad();
        model.train_step(&b, &mut rng).unwrap();
        // A lower rate at the end settles the last few errors.
        opt.step(&mut model, if step < 1000 { 0.01 } else { 0.002 });
    }
    let test = reversal_pairs(200, &mut Rng::new(99));
    let sources: Vec<Vec<usize>> = test.iter().map(|(s, _)| s.clone()).collect();
    let greedy = model.decode(&sources, &DecodeOptions::default()).unwrap();
    let right = greedy
        .iter()
        .zip(&test)
        .filter(|(d, (_, t))| &d.ids == t)
        .count();
    assert!(right >= 198, "{right} of 200 reversed right");
    assert!(
        greedy.iter().all(|d| d.attention.is_empty()),
        "no attention"
    );
    // Beam 1 is greedy; a wider beam finds an output at least as probable (by raw log p).
    let one = model
        .decode(
            &sources[..20],
            &DecodeOptions {
                beam: 1,
                length_penalty: 0.0,
            },
        )
        .unwrap();
    for (s, g) in sources[..20].iter().zip(&one) {
        let b1 = model.beam(s, 1, 0.0).unwrap();
        assert_eq!(b1.ids, g.ids);
        assert!((b1.log_prob - g.log_prob).abs() < 1e-4);
        let b5 = model.beam(s, 5, 0.0).unwrap();
        assert!(
            b5.log_prob >= g.log_prob - 1e-6,
            "{} < {}",
            b5.log_prob,
            g.log_prob
        );
    }
    let e = model
        .decode(
            &sources[..1],
            &DecodeOptions {
                beam: 0,
                length_penalty: 1.0,
            },
        )
        .unwrap_err();
    assert!(e.to_string().contains("--beam 0"), "{e}");
}

#[test]
fn decoding_an_untrained_model_stops_at_the_length_limit() {
    let mut rng = Rng::new(1);
    let cfg = config(CellKind::Gru, AttentionKind::General, 1, true);
    let mut model = model::<f32>(&cfg, &mut rng);
    // An end token that can never win: decoding must still stop.
    model.out.bias.data_mut()[0] = -1e4;
    let src = vec![vec![1, 2, 3]];
    for beam in [1, 3] {
        let d = model
            .decode(
                &src,
                &DecodeOptions {
                    beam,
                    length_penalty: 1.0,
                },
            )
            .unwrap();
        assert_eq!(
            d[0].ids.len(),
            rnnkit::seq2seq::max_output_len(3),
            "beam {beam}"
        );
        // One row of attention weights over the 3 source tokens per output step.
        assert_eq!(d[0].attention.len(), d[0].ids.len(), "beam {beam}");
        for row in &d[0].attention {
            assert_eq!(row.len(), 3);
            assert!((row.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        }
    }
}
