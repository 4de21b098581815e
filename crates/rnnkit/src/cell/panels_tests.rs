//! The bf16 weight gradients that read the `dg` panels a backward pass wrote
//! ([`DgPanels`](crate::kernel::DgPanels)) against the same gradients taken after it
//! by each cell's `weight_grads`, which packs `dgᵀ` itself: the same bits.

use super::{gru, lstm, rnn, CellKind, CellParams, Input, Seq};
use crate::kernel::{on_pool, with_precision, Precision};
use crate::Rng;

/// The parameter gradients of one forward and backward pass of `kind` over random
/// data in bf16 mode, taken by the backward pass or (`deferred`) after it, as bits.
fn grads(kind: CellKind, deferred: bool) -> Vec<u32> {
    let (steps, batch, input, hs) = (6, 8, 24, 40);
    let mut rng = Rng::new(9);
    let mut draw =
        |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-0.5, 0.5) as f32).collect() };
    let mut p = CellParams::<f32>::zeros(kind, input, hs);
    for (_, t) in p.named_mut() {
        let values = draw(t.data().len());
        t.data_mut().copy_from_slice(&values);
    }
    let (x, dy) = (draw(steps * batch * input), draw(steps * batch * hs));
    let seq = Seq {
        steps,
        batch,
        lengths: None,
        reverse: false,
    };
    let (x, mut g) = (Input::Dense(&x), CellParams::zeros(kind, input, hs));
    let (mut h, mut c) = (vec![0.0; batch * hs], vec![0.0; batch * hs]);
    let (mut dh, mut dc) = (vec![0.0; batch * hs], vec![0.0; batch * hs]);
    let (mut y, mut dx) = (
        vec![0.0; steps * batch * hs],
        vec![0.0; steps * batch * input],
    );
    with_precision(Precision::Bf16, || match kind {
        CellKind::Lstm => {
            let mut cache = lstm::LstmCache::default();
            lstm::forward(&p, seq, x, &mut cache, &mut y, &mut h, &mut c);
            let now = (!deferred).then_some(&mut g);
            lstm::backward(&p, now, seq, x, &mut cache, &dy, &mut dh, &mut dc, &mut dx);
            if deferred {
                lstm::weight_grads(&p, &mut g, seq, x, &cache);
            }
        }
        CellKind::Gru => {
            let mut cache = gru::GruCache::default();
            gru::forward(&p, true, seq, x, &mut cache, &mut y, &mut h);
            let now = (!deferred).then_some(&mut g);
            gru::backward(&p, now, true, seq, x, &mut cache, &dy, &mut dh, &mut dx);
            if deferred {
                gru::weight_grads(&p, &mut g, true, seq, x, &cache);
            }
        }
        _ => {
            let (act, mut cache) = (rnn::Activation::Tanh, rnn::RnnCache::default());
            rnn::forward(&p, act, seq, x, &mut cache, &mut y, &mut h);
            let now = (!deferred).then_some(&mut g);
            rnn::backward(&p, now, act, seq, x, &mut cache, &dy, &mut dh, &mut dx);
            if deferred {
                rnn::weight_grads(&p, &mut g, seq, x, &cache);
            }
        }
    });
    g.named()
        .flat_map(|(_, t)| t.data().iter().map(|v| v.to_bits()))
        .collect()
}

/// On two threads (each a block of 4 rows: the panels are written), where the CPU has
/// AVX-512 BF16; elsewhere both take the same path and agree as well.
#[test]
fn weight_grads_from_the_panels_match_the_deferred_ones() {
    for kind in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
        on_pool(|| assert!(grads(kind, false) == grads(kind, true), "{kind:?}"));
    }
}
