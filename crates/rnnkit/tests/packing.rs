//! Padding that costs nothing: with the batch in [`rnnkit::cell::packing_order`] the
//! cells multiply only the rows still running, and the weight gradients gather only
//! real steps; the two directions of a layer may run at once. None of it may change
//! what is computed: a permuted batch gives the permuted outputs and the same
//! gradients, and one thread computes what two do.

use crate::common::{assert_close, grads, random};
use rnnkit::cell::packing_order;

use rnnkit::{CellKind, Recurrent, RecurrentConfig, Rng, Tensor};

/// Row `r` of every `[T, B, w]` time step of `x` taken from row `order[r]`.
fn permute(x: &Tensor<f64>, order: &[usize]) -> Tensor<f64> {
    let &[t, b, w] = x.shape() else { panic!() };
    let mut out = Tensor::zeros(&[t, b, w]);
    for s in 0..t {
        for (r, &from) in order.iter().enumerate() {
            out.data_mut()[(s * b + r) * w..][..w]
                .copy_from_slice(&x.data()[(s * b + from) * w..][..w]);
        }
    }
    out
}

/// Outputs, input gradient and parameter gradients of one forward and backward pass.
fn pass(
    layer: &mut Recurrent<f64>,
    x: &Tensor<f64>,
    lengths: &[usize],
    dy: &Tensor<f64>,
) -> (Tensor<f64>, Tensor<f64>, Vec<f64>) {
    let (y, _) = layer.forward(x, Some(lengths), None).unwrap();
    let (dx, _) = layer.backward(dy, None).unwrap();
    (y, dx, grads(layer))
}

#[test]
fn the_packing_order_changes_nothing_but_the_row_order() {
    // Mostly padding: lengths from 1 to 12 in a batch of 9 (the gathered weight
    // gradients and the prefix products both engage).
    let (i, h, t) = (3, 4, 12);
    let lengths = [2, 12, 1, 5, 3, 1, 9, 2, 4];
    let b = lengths.len();
    let order = packing_order(&lengths, 2);
    let mut sorted = order.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (0..b).collect::<Vec<_>>(), "a permutation");
    let packed_lengths: Vec<usize> = order.iter().map(|&k| lengths[k]).collect();
    for cell in CellKind::ALL {
        let cfg = RecurrentConfig::new(cell, i, h)
            .with_layers(2)
            .with_bidirectional(true);
        let mut rng = Rng::new(4);
        let mut layer: Recurrent<f64> = cfg.init(&mut rng).unwrap();
        let x = random(&[t, b, i], &mut rng);
        let dy = random(&[t, b, cfg.output_size()], &mut rng);
        let (y, dx, g) = pass(&mut layer, &x, &lengths, &dy);
        let (py, pdx, pg) = pass(
            &mut layer,
            &permute(&x, &order),
            &packed_lengths,
            &permute(&dy, &order),
        );
        let name = cell.name();
        assert_close(
            &format!("{name} outputs"),
            py.data(),
            permute(&y, &order).data(),
            1e-12,
        );
        assert_close(
            &format!("{name} dx"),
            pdx.data(),
            permute(&dx, &order).data(),
            1e-12,
        );
        // Sums over the batch in another order: equal up to rounding.
        for (k, (a, e)) in pg.iter().zip(&g).enumerate() {
            assert!(
                (a - e).abs() <= 1e-10 * (1.0 + e.abs()),
                "{name} grad[{k}]: {a} vs {e}"
            );
        }
    }
}

#[test]
fn one_thread_computes_what_two_do() {
    let (i, h, t) = (3, 5, 7);
    let lengths = [7, 3, 1, 6, 7, 2];
    let b = lengths.len();
    let pool = |n| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .unwrap()
    };
    for cell in CellKind::ALL {
        for bidirectional in [false, true] {
            let cfg = RecurrentConfig::new(cell, i, h)
                .with_layers(2)
                .with_bidirectional(bidirectional);
            let mut rng = Rng::new(11);
            let layer: Recurrent<f64> = cfg.init(&mut rng).unwrap();
            let x = random(&[t, b, i], &mut rng);
            let dy = random(&[t, b, cfg.output_size()], &mut rng);
            let run = |threads| {
                let mut l = layer.clone();
                pool(threads).install(|| pass(&mut l, &x, &lengths, &dy))
            };
            let ((y1, dx1, g1), (y2, dx2, g2)) = (run(1), run(2));
            let name = format!("{} bidirectional={bidirectional}", cell.name());
            assert_close(&format!("{name} outputs"), y2.data(), y1.data(), 1e-12);
            assert_close(&format!("{name} dx"), dx2.data(), dx1.data(), 1e-12);
            assert_close(&format!("{name} grads"), &g2, &g1, 1e-12);
        }
    }
}

#[test]
fn buffers_left_by_an_earlier_batch_change_nothing() {
    // The cells reuse their buffers between passes without zeroing those they
    // overwrite: a padded batch after a full one must give what it gives alone.
    let (i, h, t) = (3, 4, 6);
    let lengths = [6, 2, 4, 1];
    let b = lengths.len();
    for cell in CellKind::ALL {
        for bidirectional in [false, true] {
            let cfg = RecurrentConfig::new(cell, i, h)
                .with_layers(2)
                .with_bidirectional(bidirectional);
            let mut rng = Rng::new(21);
            let mut fresh: Recurrent<f64> = cfg.init(&mut rng).unwrap();
            let mut used = fresh.clone();
            let x = random(&[t, b, i], &mut rng);
            let dy = random(&[t, b, cfg.output_size()], &mut rng);
            let mut big = random(&[t, b, i], &mut rng);
            big.data_mut().iter_mut().for_each(|v| *v *= 5.0);
            let full = pass(
                &mut used,
                &big,
                &lengths.map(|_| t),
                &random(&[t, b, cfg.output_size()], &mut rng),
            );
            assert!(full.0.data().iter().all(|v| v.is_finite()));
            let (y1, dx1, g1) = pass(&mut used, &x, &lengths, &dy);
            let (y2, dx2, g2) = pass(&mut fresh, &x, &lengths, &dy);
            let name = format!("{} bidirectional={bidirectional}", cell.name());
            assert_eq!(y1.data(), y2.data(), "{name} outputs");
            assert_eq!(dx1.data(), dx2.data(), "{name} dx");
            assert_eq!(g1, g2, "{name} grads");
        }
    }
}
