//! Long short-term memory, exactly as torch.nn.LSTM (gate order i, f, g, o):
//!
//! ```text
//! [a_i a_f a_g a_o] = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh
//! i = σ(a_i)   f = σ(a_f)   g = tanh(a_g)   o = σ(a_o)
//! c_t = f ⊙ c_{t-1} + i ⊙ g
//! h_t = o ⊙ tanh(c_t)
//! ```
//!
//! Backward, with `dh = ∂L/∂h_t` (from the output and from step t+1) and `dc = ∂L/∂c_t`:
//!
//! ```text
//! dc  += dh ⊙ o ⊙ (1 − tanh²c_t)        da_o = dh ⊙ tanh(c_t) ⊙ o(1−o)
//! da_i = dc ⊙ g ⊙ i(1−i)                da_f = dc ⊙ c_{t-1} ⊙ f(1−f)
//! da_g = dc ⊙ i ⊙ (1−g²)                dc_{t-1} = dc ⊙ f
//! dh_{t-1} = da · W_hh
//! ```

use super::{input_grads, project_inputs, recurrent_grads, CellParams, Seq};
use crate::kernel::{matmul, sigmoid, MatMut, MatRef};
use crate::tensor::{scratch, Real};

/// What the forward pass saves for the backward pass, reused between calls.
#[derive(Clone, Debug, Default)]
pub struct LstmCache<T> {
    /// Activated gates `[T, B, 4H]`: i, f, g, o.
    gates: Vec<T>,
    /// `h_{t-1}` for every t `[T, B, H]`.
    h_prev: Vec<T>,
    /// `c_{t-1}` for every t `[T, B, H]`.
    c_prev: Vec<T>,
    /// `tanh(c_t)` `[T, B, H]`.
    tanh_c: Vec<T>,
    /// Per-step recurrent product `h_{t-1}·W_hhᵀ` `[B, 4H]`.
    hp: Vec<T>,
    /// Pre-activation gradients `[T, B, 4H]` (backward).
    dgates: Vec<T>,
}

/// Runs the cell over `x [T, B, I]` from `(h, c)` = `(h0, c0)`. Writes every
/// output to `y [T, B, H]` (zero at padded steps) and leaves the final state in
/// `h`, `c` (each `[B, H]`).
pub fn forward<T: Real>(
    p: &CellParams<T>,
    seq: Seq,
    x: &[T],
    cache: &mut LstmCache<T>,
    y: &mut [T],
    h: &mut [T],
    c: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g4 = 4 * hs;
    let gates = scratch(&mut cache.gates, steps * batch * g4);
    project_inputs(p, x, steps * batch, gates, true);
    let h_prev = scratch(&mut cache.h_prev, steps * batch * hs);
    let c_prev = scratch(&mut cache.c_prev, steps * batch * hs);
    let tanh_c = scratch(&mut cache.tanh_c, steps * batch * hs);
    let hp = scratch(&mut cache.hp, batch * g4);
    let w_hh = MatRef::dense(p.w_hh.data(), g4, hs).t();
    for s in 0..steps {
        let t = seq.time(s);
        let at = t * batch * hs;
        h_prev[at..at + batch * hs].copy_from_slice(h);
        c_prev[at..at + batch * hs].copy_from_slice(c);
        matmul(
            MatMut::dense(hp, batch, g4),
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
            let a = &mut gates[(t * batch + b) * g4..][..g4];
            let hp_row = &hp[b * g4..][..g4];
            let (h_row, c_row) = (&mut h[b * hs..][..hs], &mut c[b * hs..][..hs]);
            for j in 0..hs {
                let i = sigmoid(a[j] + hp_row[j]);
                let f = sigmoid(a[hs + j] + hp_row[hs + j]);
                let g = (a[2 * hs + j] + hp_row[2 * hs + j]).tanh();
                let o = sigmoid(a[3 * hs + j] + hp_row[3 * hs + j]);
                (a[j], a[hs + j], a[2 * hs + j], a[3 * hs + j]) = (i, f, g, o);
                let c_new = f * c_row[j] + i * g;
                let tc = c_new.tanh();
                c_row[j] = c_new;
                tanh_c[row + j] = tc;
                h_row[j] = o * tc;
                y_row[j] = o * tc;
            }
        }
    }
}

/// Backpropagates through the sequence of the last [`forward`]. Takes the output
/// gradients `dy [T, B, H]` (ignored at padded steps) and the final-state
/// gradients in `dh`, `dc`; leaves the initial-state gradients in `dh`, `dc`,
/// adds the input gradients to `dx [T, B, I]` and the parameter gradients to `g`.
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    seq: Seq,
    x: &[T],
    cache: &mut LstmCache<T>,
    dy: &[T],
    dh: &mut [T],
    dc: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g4 = 4 * hs;
    let one = T::one();
    let dgates = scratch(&mut cache.dgates, steps * batch * g4);
    let w_hh = MatRef::dense(p.w_hh.data(), g4, hs);
    for s in (0..steps).rev() {
        let t = seq.time(s);
        let at = t * batch * hs;
        for b in 0..batch {
            if !seq.valid(t, b) {
                continue; // no gate gradient; dh and dc pass through unchanged
            }
            let row = at + b * hs;
            let a = &cache.gates[(t * batch + b) * g4..][..g4];
            let da = &mut dgates[(t * batch + b) * g4..][..g4];
            let (dh_row, dc_row) = (&mut dh[b * hs..][..hs], &mut dc[b * hs..][..hs]);
            for j in 0..hs {
                let (i, f, gg, o) = (a[j], a[hs + j], a[2 * hs + j], a[3 * hs + j]);
                let tc = cache.tanh_c[row + j];
                let dh_t = dh_row[j] + dy[row + j];
                let dc_t = dc_row[j] + dh_t * o * (one - tc * tc);
                da[j] = dc_t * gg * i * (one - i);
                da[hs + j] = dc_t * cache.c_prev[row + j] * f * (one - f);
                da[2 * hs + j] = dc_t * i * (one - gg * gg);
                da[3 * hs + j] = dh_t * tc * o * (one - o);
                dc_row[j] = dc_t * f;
                dh_row[j] = T::zero(); // replaced by da · W_hh below
            }
        }
        // dh_{t-1} = da_t · W_hh, added onto rows that are zero (valid) or carried (padded).
        matmul(
            MatMut::dense(dh, batch, hs),
            MatRef::dense(&dgates[t * batch * g4..][..batch * g4], batch, g4),
            w_hh,
            true,
        );
    }
    let rows = steps * batch;
    input_grads(p, g, x, rows, dgates, dx);
    recurrent_grads(g, &cache.h_prev, rows, dgates);
}
