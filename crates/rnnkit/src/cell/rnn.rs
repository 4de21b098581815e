//! Elman RNN, exactly as torch.nn.RNN:
//!
//! ```text
//! h_t = act(a_t),   a_t = W_ih x_t + b_ih + W_hh h_{t-1} + b_hh,   act = tanh or relu
//! ```
//!
//! Backward: `da_t = dh ⊙ act'(a_t)` with `tanh' = 1 − h_t²` and `relu' = [h_t > 0]`;
//! `dh_{t-1} = da_t · W_hh`.

use super::{
    for_row_blocks, input_grads, linear_weight_grads, project_inputs, recurrent_grads,
    step_product, write_dg_rows, writes_dg_panels, CellParams, Input, Projection, Seq, Shared,
    WeightCopies,
};
use crate::kernel::{DgPanels, MatMut, MatRef};
use crate::tensor::{overwritten, scratch, Real, Scratch};

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
    /// `W_hh` in the layouts of the per-step products, kept while the weights do not change.
    weights: WeightCopies<T>,
    /// Pre-activation gradients `[T, B, H]` (backward).
    da: Vec<T>,
    /// `da` as the bf16 weight gradients read them, where the backward pass writes
    /// them (see [`DgPanels`]).
    dg_panels: DgPanels,
}

impl<T> RnnCache<T> {
    /// Must be called when the cell's parameters change: a cache belongs to one
    /// set of parameters and keeps a transposed copy of `W_hh` between calls.
    pub fn weights_changed(&mut self) {
        self.weights.invalidate();
    }

    /// The kept copies of `W_hh` (shared between the steps of a stepped sequence).
    pub(crate) fn weights_mut(&mut self) -> &mut WeightCopies<T> {
        &mut self.weights
    }
}

impl<T: Copy> RnnCache<T> {
    /// Appends what [`weight_grads`] reads of `other`'s last backward pass over
    /// `rows` rows of `hs` units, after the rows already gathered here.
    /// Empties what [`Self::append_grad_rows`] appended, keeping the storage.
    pub(crate) fn clear_grad_rows(&mut self) {
        self.da.clear();
        self.h_prev.clear();
    }

    pub(crate) fn append_grad_rows(&mut self, other: &Self, rows: usize, hs: usize) {
        self.da.extend_from_slice(&other.da[..rows * hs]);
        self.h_prev.extend_from_slice(&other.h_prev[..rows * hs]);
    }
}

/// Runs the cell over `x [T, B, I]` from `h` = h0; writes every output to
/// `y [T, B, H]` (zero at padded steps) and leaves the final state in `h [B, H]`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    p: &CellParams<T>,
    act: Activation,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut RnnCache<T>,
    y: &mut [T],
    h: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    // Written below: h_new by the input product or by the steps (a padded row's
    // from ids keeps what it held: the backward pass skips it), h_prev row by row.
    let h_new = overwritten(&mut cache.h_new, steps * batch * hs);
    let xp = project_inputs(
        p,
        x,
        steps * batch,
        h_new,
        true,
        &mut cache.weights.packed[2],
    );
    let (w_hh, packed) = cache.weights.forward_operand(p, batch, &[0, 1]);
    let h_new = Shared::new(h_new, batch, hs);
    let h_prev = Shared::new(
        overwritten(&mut cache.h_prev, steps * batch * hs),
        batch,
        hs,
    );
    let (y, h) = (Shared::new(y, batch, hs), Shared::new(h, batch, hs));
    if steps == 0 {
        return;
    }
    for_row_blocks(batch, |rows| {
        let m = rows.len();
        let mut hp = Scratch::<T>::zeroed(m * hs);
        // SAFETY: every block touches only its own batch rows of each buffer.
        let h = unsafe { h.rows(0, &rows) };
        // Each step writes its new state straight into the next step's saved
        // `h_{t-1}` (the last into `h`), as the LSTM's does.
        // SAFETY: as above.
        unsafe { h_prev.save_initial(&seq, &rows, h) };
        for s in 0..steps {
            let t = seq.time(s);
            // SAFETY: as above; one slice per buffer and timestep (the next step's
            // saved state is another timestep's).
            let (a, hp_t, y) = unsafe {
                (
                    h_new.rows(t, &rows),
                    &*h_prev.rows(t, &rows),
                    y.rows(t, &rows),
                )
            };
            // SAFETY: as above.
            let h_next = unsafe { h_prev.next_state(&seq, s, &rows, h) };
            let mt = seq.active(t, &rows);
            step_product(
                MatMut::dense(&mut hp, mt, hs),
                MatRef::dense(hp_t, mt, hs),
                w_hh.blocks(0..1, mt),
                packed.map(|p| &p[0]),
                false,
            );
            for (i, b) in rows.clone().enumerate() {
                let r = i * hs..(i + 1) * hs;
                if !seq.valid(t, b) {
                    // Padded: the state carried unchanged, the output zero.
                    h_next[r.clone()].copy_from_slice(&hp_t[r.clone()]);
                    y[r].fill(T::zero());
                    continue;
                }
                step(
                    act,
                    &mut a[r.clone()],
                    xp.row(t * batch + b),
                    &hp[r.clone()],
                    &mut h_next[r.clone()],
                    &mut y[r],
                );
            }
        }
    });
}

simd_variant! {
    /// One row's step after the product (the equation at the top): the input
    /// projection `x` is read (from `a` itself, or with biases, or from another row)
    /// and `a` becomes `h_t`, copied to `h` and `y`. One pass, 16 lanes wide where the
    /// CPU can. (Also the batch-1 stepper's update of a share of the units.)
    pub(crate) fn step<T: Real>(
        act: Activation,
        a: &mut [T],
        x: Projection<'_, T>,
        hp: &[T],
        h: &mut [T],
        y: &mut [T],
    ) {
        let hs = a.len();
        let (hp, h, y) = (&hp[..hs], &mut h[..hs], &mut y[..hs]);
        // One unit from its input projection; a loop per kind of input, so that
        // each vectorises.
        macro_rules! unit {
            ($j:expr, $x:expr) => {{
                let j = $j;
                let v = $x + hp[j];
                let v = match act {
                    Activation::Tanh => v.tanh_one(),
                    Activation::Relu => v.max(T::zero()),
                };
                (a[j], h[j], y[j]) = (v, v, v);
            }};
        }
        match x {
            Projection::Here => {
                for j in 0..hs {
                    unit!(j, a[j]);
                }
            }
            Projection::Biased(b) => {
                let b = &b[..hs];
                for j in 0..hs {
                    unit!(j, a[j] + b[j]);
                }
            }
            Projection::Row(x) => {
                for (j, &x) in x[..hs].iter().enumerate() {
                    unit!(j, x);
                }
            }
        }
    }
}

simd_variant! {
    /// One row's pre-activation gradients `da` from its outputs `h_t` and their
    /// gradient `dy` (tanh: `(dh + dy)(1 − h_t²)`; ReLU: `dh + dy` where `h_t > 0`);
    /// `dh` becomes zero (the product with `W_hh` adds `dh_{t-1}` to it). 16 lanes
    /// wide where the CPU can.
    fn backward_row<T: Real>(act: Activation, out: (&[T], &[T]), dh: &mut [T], da: &mut [T]) {
        let (h, dy) = out;
        let n = dh.len();
        // Every slice exactly `n` long, the activation chosen outside the loop: the
        // loops then need no bounds checks or branches.
        let (h, dy, da) = (&h[..n], &dy[..n], &mut da[..n]);
        match act {
            Activation::Tanh => {
                for j in 0..n {
                    da[j] = (dh[j] + dy[j]) * (T::one() - h[j] * h[j]);
                }
            }
            Activation::Relu => {
                for j in 0..n {
                    let d = dh[j] + dy[j];
                    da[j] = if h[j] > T::zero() { d } else { T::zero() };
                }
            }
        }
        dh.fill(T::zero());
    }
}

/// Backpropagates through the sequence of the last [`forward`]: `dy [T, B, H]`
/// (ignored at padded steps) and the final-state gradient in `dh` in; the
/// initial-state gradient left in `dh`, input gradients added to `dx`,
/// parameter gradients added to `g` (`None`: left to `weight_grads`, whose inputs
/// stay in `cache`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    p: &CellParams<T>,
    mut g: Option<&mut CellParams<T>>,
    act: Activation,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut RnnCache<T>,
    dy: &[T],
    dh: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let w_hh = MatRef::dense(p.w_hh.data(), hs, hs);
    let packed = cache.weights.packed[1].prepare(&[w_hh]);
    let h_new = &cache.h_new;
    let da_all = Shared::new(scratch(&mut cache.da, steps * batch * hs), batch, hs);
    let dh_all = Shared::new(dh, batch, hs);
    let panels = (g.is_some() && writes_dg_panels::<T>(&seq))
        .then(|| cache.dg_panels.prepare(steps * batch, hs));
    for_row_blocks(batch, |rows| {
        // SAFETY: every block touches only its own batch rows of each buffer.
        let dh = unsafe { dh_all.rows(0, &rows) };
        for s in (0..steps).rev() {
            let t = seq.time(s);
            // SAFETY: as above.
            let da = unsafe { da_all.rows(t, &rows) };
            for (i, b) in rows.clone().enumerate() {
                if !seq.valid(t, b) {
                    continue; // dh passes through unchanged
                }
                let (row, r) = ((t * batch + b) * hs, i * hs..(i + 1) * hs);
                let out = (&h_new[row..][..hs], &dy[row..][..hs]);
                backward_row(act, out, &mut dh[r.clone()], &mut da[r]);
            }
            // SAFETY: each block writes its own rows (even ones: `writes_dg_panels`).
            unsafe { write_dg_rows(panels.as_ref(), da, t * batch + rows.start) };
            let mt = seq.active(t, &rows);
            step_product(
                MatMut::dense(dh, mt, hs),
                MatRef::dense(da, mt, hs),
                w_hh,
                packed.map(|p| &p[0]),
                true,
            );
        }
    });
    let panels = panels.is_some().then_some(&cache.dg_panels);
    let sum = input_grads(
        p,
        g.as_deref_mut(),
        x,
        &seq,
        &cache.da,
        panels,
        Some(dx),
        Some(&mut cache.weights.packed[3]),
    );
    if let Some(g) = g {
        // b_hh's gradient is b_ih's: the same pre-activation gradients.
        recurrent_grads(g, &seq, &cache.h_prev, &cache.da, panels, sum.as_deref());
    }
}

/// The parameter gradients of a [`backward`] run without them, from its inputs `x`
/// and the `cache` (or those of several, gathered by [`RnnCache::append_grad_rows`]).
pub(crate) fn weight_grads<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    seq: Seq,
    x: Input<'_, T>,
    cache: &RnnCache<T>,
) {
    linear_weight_grads(p, g, &seq, x, &cache.da, &cache.h_prev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::assert_projections_agree;
    use crate::Rng;

    /// The step reads its projection where it lies with the bits it has when
    /// finished in place first (a row of products plus the biases, or a table's
    /// row), with either activation, at a width with a vector tail.
    #[test]
    fn every_kind_of_projection_gives_the_same_bits() {
        let hs = 21;
        let mut rng = Rng::new(4);
        let hp: Vec<f32> = (0..hs).map(|_| rng.uniform_in(-3.0, 3.0) as f32).collect();
        for act in [Activation::Tanh, Activation::Relu] {
            let want = assert_projections_agree(hs, &mut rng, |mut a, p| {
                let (mut h, mut y) = (vec![f32::NAN; hs], vec![f32::NAN; hs]);
                step(act, &mut a, p, &hp, &mut h, &mut y);
                [a, h, y].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
            });
            assert!(want[0].iter().all(|&b| !f32::from_bits(b).is_nan()));
        }
    }
}
