//! Elman RNN, exactly as torch.nn.RNN:
//!
//! ```text
//! h_t = act(a_t),   a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   act = tanh or relu
//! ```
//!
//! Backward: `da_t = dh ⊙ act'(a_t)` with `tanh' = 1 − h_t²` and `relu' = [h_t > 0]`;
//! `dh_{t-1} = da_t · W_hh`.

use super::{input_grads, project_inputs, recurrent_grads, CellParams, Seq};
use crate::kernel::{matmul, MatMut, MatRef};
use crate::tensor::{scratch, Real};

/// The nonlinearity of an Elman RNN.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Activation {
    /// Hyperbolic tangent.
    Tanh,
    /// Rectified linear unit.
    Relu,
}

/// What the forward pass saves for the backward pass, reused between calls.
#[derive(Clone, Debug, Default)]
pub struct RnnCache<T> {
    /// `h_t = act(a_t)` for every t `[T, B, H]` (pre-activations until activated).
    h_new: Vec<T>,
    /// `h_{t-1}` for every t `[T, B, H]`.
    h_prev: Vec<T>,
    /// Per-step recurrent product `[B, H]`.
    hp: Vec<T>,
    /// Pre-activation gradients `[T, B, H]` (backward).
    da: Vec<T>,
}

/// Runs the cell over `x [T, B, I]` from `h` = h0; writes every output to
/// `y [T, B, H]` (zero at padded steps) and leaves the final state in `h [B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    p: &CellParams<T>,
    act: Activation,
    seq: Seq,
    x: &[T],
    cache: &mut RnnCache<T>,
    y: &mut [T],
    h: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let h_new = scratch(&mut cache.h_new, steps * batch * hs);
    project_inputs(p, x, steps * batch, h_new, true);
    let h_prev = scratch(&mut cache.h_prev, steps * batch * hs);
    let hp = scratch(&mut cache.hp, batch * hs);
    let w_hh = MatRef::dense(p.w_hh.data(), hs, hs).t();
    for s in 0..steps {
        let t = seq.time(s);
        let at = t * batch * hs;
        h_prev[at..at + batch * hs].copy_from_slice(h);
        matmul(
            MatMut::dense(hp, batch, hs),
            MatRef::dense(h, batch, hs),
            w_hh,
            false,
        );
        for b in 0..batch {
            let row = at + b * hs;
            let y_row = &mut y[row..row + hs];
            if !seq.valid(t, b) {
                y_row.fill(T::zero());
                continue;
            }
            for j in 0..hs {
                let a = h_new[row + j] + hp[b * hs + j];
                let v = match act {
                    Activation::Tanh => a.tanh(),
                    Activation::Relu => a.max(T::zero()),
                };
                h_new[row + j] = v;
                h[b * hs + j] = v;
                y_row[j] = v;
            }
        }
    }
}

/// Backpropagates through the sequence of the last [`forward`]: `dy [T, B, H]`
/// (ignored at padded steps) and the final-state gradient in `dh` in; the
/// initial-state gradient left in `dh`, input gradients added to `dx`,
/// parameter gradients added to `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    act: Activation,
    seq: Seq,
    x: &[T],
    cache: &mut RnnCache<T>,
    dy: &[T],
    dh: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let da = scratch(&mut cache.da, steps * batch * hs);
    let w_hh = MatRef::dense(p.w_hh.data(), hs, hs);
    for s in (0..steps).rev() {
        let t = seq.time(s);
        let at = t * batch * hs;
        for b in 0..batch {
            if !seq.valid(t, b) {
                continue; // dh passes through unchanged
            }
            let row = at + b * hs;
            for j in 0..hs {
                let v = cache.h_new[row + j];
                let d = dh[b * hs + j] + dy[row + j];
                da[row + j] = match act {
                    Activation::Tanh => d * (T::one() - v * v),
                    Activation::Relu if v > T::zero() => d,
                    Activation::Relu => T::zero(),
                };
                dh[b * hs + j] = T::zero();
            }
        }
        matmul(
            MatMut::dense(dh, batch, hs),
            MatRef::dense(&da[at..at + batch * hs], batch, hs),
            w_hh,
            true,
        );
    }
    let rows = steps * batch;
    input_grads(p, g, x, rows, da, dx);
    recurrent_grads(g, &cache.h_prev, rows, da);
}
