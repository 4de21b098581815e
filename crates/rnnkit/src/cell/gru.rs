//! Gated recurrent unit, gate order r, z, n, in two forms.
//!
//! torch.nn.GRU (reset after the recurrent matmul, two biases):
//!
//! ```text
//! r = σ(W_ir x + b_ir + W_hr h + b_hr)        z = σ(W_iz x + b_iz + W_hz h + b_hz)
//! n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn))
//! h' = (1 − z) ⊙ n + z ⊙ h
//! ```
//!
//! Keras `reset_after=False` (reset applied to h before the matmul, one bias `b = b_ih`):
//!
//! ```text
//! r = σ(W_ir x + b_r + W_hr h)   z = σ(W_iz x + b_z + W_hz h)   n = tanh(W_in x + b_n + W_hn (r ⊙ h))
//! ```
//!
//! Backward, with `dh = ∂L/∂h'`:
//!
//! ```text
//! dn = dh ⊙ (1 − z)   da_z = dh ⊙ (h − n) ⊙ z(1−z)   da_n = dn ⊙ (1 − n²)   dh_prev = dh ⊙ z + …
//! reset after:  da_r = da_n ⊙ (W_hn h + b_hn) ⊙ r(1−r);  recurrent side of n gets da_n ⊙ r;
//!               dh_prev += [da_r, da_z, da_n ⊙ r] · W_hh
//! reset before: d(r⊙h) = da_n · W_hn;  da_r = d(r⊙h) ⊙ h ⊙ r(1−r);
//!               dh_prev += d(r⊙h) ⊙ r + [da_r, da_z] · W_h{r,z}
//! ```

use super::{input_grads, project_inputs, recurrent_grads, CellParams, Seq};
use crate::kernel::{matmul, sigmoid, MatMut, MatRef};
use crate::tensor::{scratch, Real};

/// What the forward pass saves for the backward pass, reused between calls.
#[derive(Clone, Debug, Default)]
pub struct GruCache<T> {
    /// Activated gates `[T, B, 3H]`: r, z, n.
    gates: Vec<T>,
    /// `h_{t-1}` for every t `[T, B, H]`.
    h_prev: Vec<T>,
    /// Reset after: `W_hn h_{t-1} + b_hn`; reset before: `r ⊙ h_{t-1}`; `[T, B, H]`.
    aux: Vec<T>,
    /// Per-step recurrent product `[B, 3H]`.
    hp: Vec<T>,
    /// Input-side pre-activation gradients `[T, B, 3H]` (backward).
    dgx: Vec<T>,
    /// Recurrent-side pre-activation gradients `[T, B, 3H]` (backward, reset after only).
    dgh: Vec<T>,
    /// Per-step `d(r ⊙ h)` `[B, H]` (backward, reset before only).
    drh: Vec<T>,
}

/// Runs the cell over `x [T, B, I]` from `h` = h0; writes every output to
/// `y [T, B, H]` (zero at padded steps) and leaves the final state in `h [B, H]`.
/// `reset_after` picks torch's form; otherwise Keras' `reset_after=False`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    p: &CellParams<T>,
    reset_after: bool,
    seq: Seq,
    x: &[T],
    cache: &mut GruCache<T>,
    y: &mut [T],
    h: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g3 = 3 * hs;
    let gates = scratch(&mut cache.gates, steps * batch * g3);
    project_inputs(p, x, steps * batch, gates, false);
    let h_prev = scratch(&mut cache.h_prev, steps * batch * hs);
    let aux = scratch(&mut cache.aux, steps * batch * hs);
    let hp = scratch(&mut cache.hp, batch * g3);
    let w_hh = p.w_hh.data();
    let zero = Vec::new();
    let b_hh = p.b_hh.as_ref().map_or(&zero[..], |b| b.data());
    for s in 0..steps {
        let t = seq.time(s);
        let at = t * batch * hs;
        h_prev[at..at + batch * hs].copy_from_slice(h);
        let h_in = MatRef::dense(&h_prev[at..at + batch * hs], batch, hs);
        if reset_after {
            matmul(
                MatMut::dense(hp, batch, g3),
                h_in,
                MatRef::dense(w_hh, g3, hs).t(),
                false,
            );
        } else {
            // Only r and z see h directly; n sees r ⊙ h, known after this product.
            matmul(
                MatMut::new(hp, batch, 2 * hs, g3),
                h_in,
                MatRef::dense(&w_hh[..2 * hs * hs], 2 * hs, hs).t(),
                false,
            );
            for b in 0..batch {
                if !seq.valid(t, b) {
                    continue;
                }
                let a = &mut gates[(t * batch + b) * g3..][..g3];
                for j in 0..hs {
                    let r = sigmoid(a[j] + hp[b * g3 + j]);
                    a[j] = r;
                    aux[at + b * hs + j] = r * h[b * hs + j];
                }
            }
            matmul(
                MatMut::new(&mut hp[2 * hs..], batch, hs, g3),
                MatRef::dense(&aux[at..at + batch * hs], batch, hs),
                MatRef::dense(&w_hh[2 * hs * hs..], hs, hs).t(),
                false,
            );
        }
        for b in 0..batch {
            let row = at + b * hs;
            let y_row = &mut y[row..row + hs];
            if !seq.valid(t, b) {
                y_row.fill(T::zero());
                continue;
            }
            let a = &mut gates[(t * batch + b) * g3..][..g3];
            let hp_row = &hp[b * g3..][..g3];
            for j in 0..hs {
                let (z, n) = if reset_after {
                    let r = sigmoid(a[j] + hp_row[j] + b_hh[j]);
                    let z = sigmoid(a[hs + j] + hp_row[hs + j] + b_hh[hs + j]);
                    let hn = hp_row[2 * hs + j] + b_hh[2 * hs + j];
                    a[j] = r;
                    aux[row + j] = hn;
                    (z, (a[2 * hs + j] + r * hn).tanh())
                } else {
                    let z = sigmoid(a[hs + j] + hp_row[hs + j]);
                    (z, (a[2 * hs + j] + hp_row[2 * hs + j]).tanh())
                };
                a[hs + j] = z;
                a[2 * hs + j] = n;
                let v = (T::one() - z) * n + z * h[b * hs + j];
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
    reset_after: bool,
    seq: Seq,
    x: &[T],
    cache: &mut GruCache<T>,
    dy: &[T],
    dh: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g3 = 3 * hs;
    let one = T::one();
    let dgx = scratch(&mut cache.dgx, steps * batch * g3);
    let dgh = scratch(
        &mut cache.dgh,
        if reset_after { steps * batch * g3 } else { 0 },
    );
    let drh = scratch(&mut cache.drh, batch * hs);
    let w_hh = p.w_hh.data();
    for s in (0..steps).rev() {
        let t = seq.time(s);
        let at = t * batch * hs;
        for b in 0..batch {
            if !seq.valid(t, b) {
                continue; // dh passes through unchanged
            }
            let row = at + b * hs;
            let a = &cache.gates[(t * batch + b) * g3..][..g3];
            let dg = &mut dgx[(t * batch + b) * g3..][..g3];
            for j in 0..hs {
                let (r, z, n) = (a[j], a[hs + j], a[2 * hs + j]);
                let h_old = cache.h_prev[row + j];
                let d = dh[b * hs + j] + dy[row + j];
                let dan = d * (one - z) * (one - n * n);
                dg[hs + j] = d * (h_old - n) * z * (one - z);
                dg[2 * hs + j] = dan;
                if reset_after {
                    dg[j] = dan * cache.aux[row + j] * r * (one - r);
                    let dgh_row = &mut dgh[(t * batch + b) * g3..][..g3];
                    (dgh_row[j], dgh_row[hs + j], dgh_row[2 * hs + j]) =
                        (dg[j], dg[hs + j], dan * r);
                }
                dh[b * hs + j] = d * z;
            }
        }
        let dg_t = &mut dgx[t * batch * g3..][..batch * g3];
        if reset_after {
            matmul(
                MatMut::dense(dh, batch, hs),
                MatRef::dense(&dgh[t * batch * g3..][..batch * g3], batch, g3),
                MatRef::dense(w_hh, g3, hs),
                true,
            );
            continue;
        }
        // Reset before: route da_n through W_hn to r ⊙ h, then to r and h.
        matmul(
            MatMut::dense(drh, batch, hs),
            MatRef::new(&dg_t[2 * hs..], batch, hs, g3),
            MatRef::dense(&w_hh[2 * hs * hs..], hs, hs),
            false,
        );
        for b in 0..batch {
            if !seq.valid(t, b) {
                continue;
            }
            let row = at + b * hs;
            let dg = &mut dg_t[b * g3..][..g3];
            let a = &cache.gates[(t * batch + b) * g3..][..g3];
            for j in 0..hs {
                let r = a[j];
                let d_rh = drh[b * hs + j];
                dg[j] = d_rh * cache.h_prev[row + j] * r * (one - r);
                dh[b * hs + j] += d_rh * r;
            }
        }
        matmul(
            MatMut::dense(dh, batch, hs),
            MatRef::new(dg_t, batch, 2 * hs, g3),
            MatRef::dense(&w_hh[..2 * hs * hs], 2 * hs, hs),
            true,
        );
    }
    let rows = steps * batch;
    input_grads(p, g, x, rows, dgx, dx);
    if reset_after {
        recurrent_grads(g, &cache.h_prev, rows, dgh);
    } else {
        // W_h{r,z} saw h_{t-1}; W_hn saw r ⊙ h_{t-1}.
        let dw = g.w_hh.data_mut();
        let (dw_rz, dw_n) = dw.split_at_mut(2 * hs * hs);
        matmul(
            MatMut::dense(dw_rz, 2 * hs, hs),
            MatRef::new(dgx, rows, 2 * hs, g3).t(),
            MatRef::dense(&cache.h_prev, rows, hs),
            true,
        );
        matmul(
            MatMut::dense(dw_n, hs, hs),
            MatRef::new(&dgx[2 * hs..], rows, hs, g3).t(),
            MatRef::dense(&cache.aux, rows, hs),
            true,
        );
    }
}
