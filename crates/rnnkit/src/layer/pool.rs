//! Pooling over time: a sequence of outputs `[T, B, W]` becomes one vector `[B, W]` per
//! sequence, over its own valid steps — the head of a sequence classifier.

use crate::error::{Error, Result};
use crate::tensor::{Real, Tensor};
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// How a sequence of outputs becomes one vector.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PoolKind {
    /// The output at the sequence's last valid step (for a bidirectional layer, the
    /// final state of each direction): `out_b = y[len_b − 1, b]`.
    #[default]
    Last,
    /// The mean over the valid steps: `out_b = (1/len_b) Σ_{t<len_b} y[t, b]`.
    Mean,
    /// The elementwise maximum over the valid steps: `out_bw = max_{t<len_b} y[t, b, w]`.
    Max,
}

impl PoolKind {
    /// Every kind, in a fixed order.
    pub const ALL: [PoolKind; 3] = [PoolKind::Last, PoolKind::Mean, PoolKind::Max];

    /// The name used in configurations and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            PoolKind::Last => "last",
            PoolKind::Mean => "mean",
            PoolKind::Max => "max",
        }
    }

    /// Parses [`PoolKind::name`].
    pub fn from_name(s: &str) -> Option<PoolKind> {
        PoolKind::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl std::fmt::Display for PoolKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Pooling with what its backward needs.
#[derive(Clone, Debug, Default)]
pub struct Pool<T = f32> {
    kind: PoolKind,
    /// `(T, B, W)` of the last forward's input.
    dims: (usize, usize, usize),
    /// Valid steps of each sequence `[B]`, from the last forward.
    lengths: Vec<usize>,
    /// `directions` of the last forward: 2 when `Last` took the reverse half at step 0.
    directions: usize,
    /// `Max` only: the step each output element `[B, W]` came from.
    argmax: Vec<usize>,
    /// Per-row accumulators of the forward pass (`Mean`, `Max`), kept between calls.
    sum: Vec<f64>,
    best: Vec<usize>,
    /// The backward needs positions, not values, so no `T` is stored.
    _elem: PhantomData<T>,
}

impl<T: Real> Pool<T> {
    /// A pooling layer of the given kind.
    pub fn new(kind: PoolKind) -> Self {
        Pool {
            kind,
            ..Self::default()
        }
    }

    /// The pooling this layer does.
    pub fn kind(&self) -> PoolKind {
        self.kind
    }

    /// y [T, B, W] time-major → out [B, W] over each sequence's valid steps `lengths[b]` (1..=T).
    /// `directions` = 2 for a bidirectional layer whose W = 2H concatenates [forward, reverse]:
    /// `Last` then takes the forward half at step len−1 and the reverse half at step 0 (the reverse
    /// direction's final state); Mean/Max ignore it. Errors on a zero or too-long length, bad shapes,
    /// W odd with directions 2.
    ///
    /// Steps at or after `lengths[b]` are never read, so padding may hold anything. `Max`
    /// propagates a NaN, as torch.max does; `Mean` sums in f64.
    pub fn forward(
        &mut self,
        y: &[T],
        dims: (usize, usize, usize),
        lengths: &[usize],
        directions: usize,
    ) -> Result<Tensor<T>> {
        let mut out = Tensor::default();
        self.forward_into(y, dims, lengths, directions, &mut out)?;
        Ok(out)
    }

    /// [`Pool::forward`] into `out` (reshaped, its storage reused).
    pub fn forward_into(
        &mut self,
        y: &[T],
        (steps, batch, width): (usize, usize, usize),
        lengths: &[usize],
        directions: usize,
        out: &mut Tensor<T>,
    ) -> Result<()> {
        let n = steps.checked_mul(batch).and_then(|v| v.checked_mul(width));
        if n != Some(y.len()) {
            return Err(Error::Shape(format!(
                "pool: {} values given for [T={steps}, B={batch}, W={width}]",
                y.len()
            )));
        }
        if lengths.len() != batch {
            return Err(Error::Shape(format!(
                "pool: {} lengths given for a batch of {batch}",
                lengths.len()
            )));
        }
        if let Some(b) = lengths.iter().position(|&l| l == 0 || l > steps) {
            return Err(Error::Input(format!(
                "pool: length {} of sequence {b} must be in 1..={steps}",
                lengths[b]
            )));
        }
        match directions {
            1 => {}
            2 if width % 2 == 0 => {}
            2 => {
                return Err(Error::Shape(format!(
                    "pool: width {width} must be even (2H) for 2 directions"
                )))
            }
            _ => {
                return Err(Error::Config(format!(
                    "pool: directions must be 1 or 2, got {directions}"
                )))
            }
        }
        self.dims = (steps, batch, width);
        self.lengths.clear();
        self.lengths.extend_from_slice(lengths);
        self.directions = directions;
        self.argmax.clear();

        let at = |t: usize, b: usize| &y[(t * batch + b) * width..(t * batch + b + 1) * width];
        // Every element is written below.
        out.reshape_overwritten(&[batch, width]);
        let (sum, best) = (&mut self.sum, &mut self.best);
        sum.resize(width, 0.0);
        best.resize(width, 0);
        let rows = out.data_mut().chunks_exact_mut(width.max(1));
        for (b, (o, &len)) in rows.zip(lengths).enumerate() {
            match self.kind {
                PoolKind::Last => {
                    // The reverse direction ends at step 0, so its final state is there.
                    let fwd = width / directions;
                    o[..fwd].copy_from_slice(&at(len - 1, b)[..fwd]);
                    o[fwd..].copy_from_slice(&at(0, b)[fwd..]);
                }
                PoolKind::Mean => {
                    sum.fill(0.0);
                    for t in 0..len {
                        sum.iter_mut()
                            .zip(at(t, b))
                            .for_each(|(s, v)| *s += v.f64());
                    }
                    let inv = 1.0 / len as f64;
                    o.iter_mut()
                        .zip(sum.iter())
                        .for_each(|(o, s)| *o = T::of(s * inv));
                }
                PoolKind::Max => {
                    best.fill(0);
                    o.copy_from_slice(at(0, b));
                    for t in 1..len {
                        for (w, &v) in at(t, b).iter().enumerate() {
                            // Strict `>` keeps the first of equal maxima; a NaN wins once.
                            if v > o[w] || (v.is_nan() && !o[w].is_nan()) {
                                o[w] = v;
                                best[w] = t;
                            }
                        }
                    }
                    self.argmax.extend_from_slice(best);
                }
            }
        }
        Ok(())
    }

    /// dy [T, B, W] (zeros at positions that did not feed the output) from dout [B, W]; max routes to the argmax step (first on ties).
    pub fn backward(&self, dout: &[T]) -> Result<Tensor<T>> {
        let mut dy = Tensor::default();
        self.backward_into(dout, &mut dy)?;
        Ok(dy)
    }

    /// [`Pool::backward`] into `dy` (reshaped, its storage reused).
    pub fn backward_into(&self, dout: &[T], dy: &mut Tensor<T>) -> Result<()> {
        let (steps, batch, width) = self.dims;
        if dout.len() != batch * width {
            return Err(Error::Shape(format!(
                "pool backward: {} gradients given for the [B={batch}, W={width}] output \
                 of the last forward",
                dout.len()
            )));
        }
        dy.reshape_overwritten(&[steps, batch, width]);
        let d = dy.data_mut();
        d.fill(T::zero());
        let at = |t: usize, b: usize| (t * batch + b) * width;
        for (b, &len) in self.lengths.iter().enumerate() {
            let g = &dout[b * width..(b + 1) * width];
            match self.kind {
                PoolKind::Last => {
                    let fwd = width / self.directions;
                    let (last, first) = (at(len - 1, b), at(0, b));
                    d[last..last + fwd].copy_from_slice(&g[..fwd]);
                    d[first + fwd..first + width].copy_from_slice(&g[fwd..]);
                }
                PoolKind::Mean => {
                    let inv = T::of(1.0 / len as f64);
                    for t in 0..len {
                        let row = &mut d[at(t, b)..at(t, b) + width];
                        row.iter_mut().zip(g).for_each(|(d, &g)| *d = g * inv);
                    }
                }
                PoolKind::Max => {
                    let best = &self.argmax[b * width..(b + 1) * width];
                    for (w, (&t, &g)) in best.iter().zip(g).enumerate() {
                        d[at(t, b) + w] = g;
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CellKind, RecurrentConfig, Rng};

    /// `y [T=3, B=2, W=4]` with `y[t, b, w] = 100·t + 10·b + w`; padding (t ≥ len) is NaN.
    fn sample(lengths: [usize; 2]) -> Vec<f64> {
        let mut y = Vec::new();
        for t in 0..3 {
            for (b, &len) in lengths.iter().enumerate() {
                for w in 0..4 {
                    y.push(if t < len {
                        (100 * t + 10 * b + w) as f64
                    } else {
                        f64::NAN
                    });
                }
            }
        }
        y
    }

    #[test]
    fn forward_by_hand_never_reads_padding() {
        let y = sample([3, 2]);
        let run = |kind, directions| {
            Pool::<f64>::new(kind)
                .forward(&y, (3, 2, 4), &[3, 2], directions)
                .unwrap()
                .into_vec()
        };
        assert_eq!(
            run(PoolKind::Last, 1),
            [200., 201., 202., 203., 110., 111., 112., 113.]
        );
        // Reverse half (w = 2, 3) from step 0.
        assert_eq!(
            run(PoolKind::Last, 2),
            [200., 201., 2., 3., 110., 111., 12., 13.]
        );
        assert_eq!(
            run(PoolKind::Mean, 1),
            [100., 101., 102., 103., 60., 61., 62., 63.]
        );
        assert_eq!(run(PoolKind::Mean, 2), run(PoolKind::Mean, 1));
        assert_eq!(run(PoolKind::Max, 1), run(PoolKind::Last, 1));
    }

    #[test]
    fn max_routes_to_the_first_of_equal_maxima_and_propagates_nan() {
        // One sequence, width 2: column 0 ties at steps 0 and 2, column 1 peaks at step 1.
        let y = [3.0f64, 0.0, 1.0, 5.0, 3.0, 4.0];
        let mut pool = Pool::new(PoolKind::Max);
        let out = pool.forward(&y, (3, 1, 2), &[3], 1).unwrap();
        assert_eq!(out.data(), [3.0, 5.0]);
        let dy = pool.backward(&[1.0, 2.0]).unwrap();
        assert_eq!(dy.data(), [1.0, 0.0, 0.0, 2.0, 0.0, 0.0]);
        let out = pool
            .forward(&[1.0f64, f64::NAN, 2.0], (3, 1, 1), &[3], 1)
            .unwrap();
        assert!(out.data()[0].is_nan());
    }

    #[test]
    fn last_of_a_bidirectional_layer_is_its_final_state() {
        // torch users take h_n[-2:] (last layer, both directions) as the sequence
        // summary; Last with 2 directions must give exactly that.
        let mut rng = Rng::new(3);
        let (steps, batch, hidden) = (6, 3, 5);
        let lengths = [6, 2, 4];
        for cell in [CellKind::Lstm, CellKind::Gru, CellKind::RnnTanh] {
            let mut layer = RecurrentConfig::new(cell, 3, hidden)
                .with_layers(2)
                .with_bidirectional(true)
                .init::<f64>(&mut rng)
                .unwrap();
            let x = (0..steps * batch * 3)
                .map(|_| rng.uniform_in(-1.0, 1.0))
                .collect();
            let x = Tensor::from_vec(&[steps, batch, 3], x).unwrap();
            let (y, fin) = layer.forward(&x, Some(&lengths), None).unwrap();
            let out = Pool::new(PoolKind::Last)
                .forward(y.data(), (steps, batch, 2 * hidden), &lengths, 2)
                .unwrap();
            let h = fin.h.data();
            for b in 0..batch {
                for (half, state) in [(0, 2), (1, 3)] {
                    let got = &out.data()[b * 2 * hidden + half * hidden..][..hidden];
                    let want = &h[(state * batch + b) * hidden..][..hidden];
                    assert_eq!(got, want, "{cell} sequence {b} direction {half}");
                }
            }
        }
    }

    #[test]
    fn bad_lengths_shapes_and_directions_are_errors() {
        let y = sample([3, 2]);
        let mut pool = Pool::<f64>::new(PoolKind::Mean);
        let err = |p: &mut Pool<f64>, y: &[f64], dims, lengths: &[usize], dirs| {
            p.forward(y, dims, lengths, dirs).unwrap_err().to_string()
        };
        let e = err(&mut pool, &y, (3, 2, 4), &[3, 0], 1);
        assert!(e.contains("length 0 of sequence 1"), "{e}");
        let e = err(&mut pool, &y, (3, 2, 4), &[4, 2], 1);
        assert!(e.contains("length 4 of sequence 0 must be in 1..=3"), "{e}");
        let e = err(&mut pool, &y, (3, 2, 4), &[3], 1);
        assert!(e.contains("1 lengths given for a batch of 2"), "{e}");
        let e = err(&mut pool, &y[1..], (3, 2, 4), &[3, 2], 1);
        assert!(e.contains("23 values"), "{e}");
        let e = err(&mut pool, &y[..18], (3, 2, 3), &[3, 2], 2);
        assert!(e.contains("width 3 must be even"), "{e}");
        let e = err(&mut pool, &y, (3, 2, 4), &[3, 2], 3);
        assert!(e.contains("directions must be 1 or 2"), "{e}");
        let e = err(&mut pool, &y, (usize::MAX, 2, 4), &[3, 2], 1);
        assert!(e.contains("24 values"), "{e}");
        pool.forward(&y, (3, 2, 4), &[3, 2], 1).unwrap();
        let e = pool.backward(&[0.0; 7]).unwrap_err().to_string();
        assert!(e.contains("7 gradients"), "{e}");
    }

    #[test]
    fn kind_names_round_trip() {
        for kind in PoolKind::ALL {
            assert_eq!(PoolKind::from_name(kind.name()), Some(kind));
            let json = serde_json::to_string(&kind).unwrap();
            assert_eq!(json, format!("\"{kind}\""));
        }
        assert_eq!(PoolKind::from_name("sum"), None);
        assert_eq!(Pool::<f32>::default().kind(), PoolKind::Last);
    }
}
