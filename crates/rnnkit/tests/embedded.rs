//! `Recurrent::forward_embedded` (inputs as ids into an embedding table) computes the
//! same function and gradients as the dense forward pass on the looked-up rows, whose
//! gradients the finite-difference checks prove; the table's gradient is the
//! row-wise sum of the input gradients.

use crate::common::{assert_close, grads, random};

use rnnkit::{CellKind, Merge, Recurrent, RecurrentConfig, Rng, Tensor};

#[test]
fn embedded_inputs_match_dense_inputs() {
    let (v, e, h, t, b) = (7, 5, 6, 4, 3);
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, e, h)
            .with_layers(2)
            .with_bidirectional(true)
            .with_merge(Merge::Concat);
        let mut rng = Rng::new(9);
        let mut layer: Recurrent<f64> = cfg.init(&mut rng).unwrap();
        let table = random(&[v, e], &mut rng);
        let ids: Vec<usize> = (0..t * b).map(|_| rng.below(v)).collect();
        let mut x = Tensor::zeros(&[t, b, e]);
        for (row, &id) in x.data_mut().chunks_exact_mut(e).zip(&ids) {
            row.copy_from_slice(&table.data()[id * e..][..e]);
        }
        let dy = random(&[t, b, cfg.output_size()], &mut rng);

        // Variable lengths, one sequence cut to a single step.
        let lengths = [t, 1, t - 1];
        let (y_dense, fin_dense) = layer.forward(&x, Some(&lengths), None).unwrap();
        let (dx, _) = layer.backward(&dy, None).unwrap();
        let g_dense = grads(&mut layer);
        let (y_emb, fin_emb) = layer
            .forward_embedded(&table, &ids, (t, b), Some(&lengths), None, None)
            .unwrap();
        let (d_table, _) = layer.backward(&dy, None).unwrap();
        let g_emb = grads(&mut layer);

        assert_close(&format!("{cell} y"), y_emb.data(), y_dense.data(), 1e-10);
        assert_close(
            &format!("{cell} h_n"),
            fin_emb.h.data(),
            fin_dense.h.data(),
            1e-10,
        );
        assert_close(&format!("{cell} grads"), &g_emb, &g_dense, 1e-10);
        assert_eq!(d_table.shape(), &[v, e]);
        let mut want = vec![0.0; v * e];
        for (row, &id) in dx.data().chunks_exact(e).zip(&ids) {
            for (w, &d) in want[id * e..][..e].iter_mut().zip(row) {
                *w += d;
            }
        }
        assert_close(&format!("{cell} d_table"), d_table.data(), &want, 1e-10);
    }
}

#[test]
fn bad_embedded_inputs_are_errors() {
    let cfg = RecurrentConfig::new(CellKind::Lstm, 4, 3);
    let mut layer: Recurrent<f32> = cfg.init(&mut Rng::new(1)).unwrap();
    let table = Tensor::zeros(&[5, 4]);
    let err = |r: rnnkit::Result<_>| r.map(|_: (Tensor<f32>, _)| ()).unwrap_err().to_string();
    let e = err(layer.forward_embedded(&Tensor::zeros(&[5, 3]), &[0, 1], (2, 1), None, None, None));
    assert!(e.contains("[V, 4]"), "{e}");
    let e = err(layer.forward_embedded(&table, &[0, 1, 2], (2, 1), None, None, None));
    assert!(e.contains("3 ids given for 2 steps"), "{e}");
    let e = err(layer.forward_embedded(&table, &[0, 5], (2, 1), None, None, None));
    assert!(e.contains("id 5 at position 1"), "{e}");
}

/// One-hot ids (`--embed 0`) compute the dense pass on one-hot vectors, without a
/// product with zeros, and give the same parameter gradients.
#[test]
fn one_hot_inputs_match_dense_one_hot_vectors() {
    let (v, h, t, b) = (6, 5, 4, 3);
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, v, h)
            .with_layers(2)
            .with_bidirectional(true);
        let mut rng = Rng::new(4);
        let mut layer: Recurrent<f64> = cfg.init(&mut rng).unwrap();
        let ids: Vec<usize> = (0..t * b).map(|_| rng.below(v)).collect();
        let mut x = Tensor::zeros(&[t, b, v]);
        for (row, &id) in x.data_mut().chunks_exact_mut(v).zip(&ids) {
            row[id] = 1.0;
        }
        let dy = random(&[t, b, cfg.output_size()], &mut rng);
        let lengths = [t, 2, 1];
        let (y_dense, _) = layer.forward(&x, Some(&lengths), None).unwrap();
        layer.backward(&dy, None).unwrap();
        let g_dense = grads(&mut layer);
        let (y_hot, _) = layer
            .forward_one_hot(&ids, (t, b), Some(&lengths), None, None)
            .unwrap();
        let (dx, _) = layer.backward(&dy, None).unwrap();
        let g_hot = grads(&mut layer);
        assert_close(&format!("{cell} y"), y_hot.data(), y_dense.data(), 1e-10);
        assert_close(&format!("{cell} grads"), &g_hot, &g_dense, 1e-10);
        assert_eq!(dx.shape(), &[0, v]);
    }
    let mut layer: Recurrent<f32> = RecurrentConfig::new(CellKind::Gru, 4, 3)
        .init(&mut Rng::new(1))
        .unwrap();
    let e = layer
        .forward_one_hot(&[0, 4], (2, 1), None, None, None)
        .unwrap_err()
        .to_string();
    assert!(e.contains("id 4 at position 1"), "{e}");
}
