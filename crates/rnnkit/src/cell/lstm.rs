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

use super::{
    for_row_blocks, input_grads, linear_weight_grads, project_inputs, recurrent_grads,
    step_product, write_dg_rows, writes_dg_panels, CellParams, Input, Projection, Seq, Shared,
    WeightCopies,
};
use crate::kernel::{DgPanels, MatMut, MatRef};
use crate::tensor::{overwritten, Real, Scratch};

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
    /// `W_hh` in the layouts of the per-step products, kept while the weights do not change.
    weights: WeightCopies<T>,
    /// Pre-activation gradients `[T, B, 4H]` (backward).
    dgates: Vec<T>,
    /// `dgates` as the bf16 weight gradients read them, where the backward pass writes
    /// them (see [`DgPanels`]).
    dg_panels: DgPanels,
}

impl<T> LstmCache<T> {
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

impl<T: Copy> LstmCache<T> {
    /// Appends what [`weight_grads`] reads of `other`'s last backward pass over
    /// `rows` rows of `hs` units, after the rows already gathered here.
    /// Empties what [`Self::append_grad_rows`] appended, keeping the storage.
    pub(crate) fn clear_grad_rows(&mut self) {
        self.dgates.clear();
        self.h_prev.clear();
    }

    pub(crate) fn append_grad_rows(&mut self, other: &Self, rows: usize, hs: usize) {
        self.dgates
            .extend_from_slice(&other.dgates[..rows * 4 * hs]);
        self.h_prev.extend_from_slice(&other.h_prev[..rows * hs]);
    }
}

/// Runs the cell over `x [T, B, I]` from `(h, c)` = `(h0, c0)`. Writes every
/// output to `y [T, B, H]` (zero at padded steps) and leaves the final state in
/// `h`, `c` (each `[B, H]`).
pub fn forward<T: Real>(
    p: &CellParams<T>,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut LstmCache<T>,
    y: &mut [T],
    h: &mut [T],
    c: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g4 = 4 * hs;
    // Written below: every element of these (tanh_c and dgates at padded steps too)
    // but a padded row's gates from ids, which the backward pass skips.
    let gates = overwritten(&mut cache.gates, steps * batch * g4);
    let xp = project_inputs(
        p,
        x,
        steps * batch,
        gates,
        true,
        &mut cache.weights.packed[2],
    );
    let (w_hh, packed) = cache.weights.forward_operand(p, batch, &[0, 4]);
    let gates = Shared::new(gates, batch, g4);
    let h_prev = Shared::new(
        overwritten(&mut cache.h_prev, steps * batch * hs),
        batch,
        hs,
    );
    let c_prev = Shared::new(
        overwritten(&mut cache.c_prev, steps * batch * hs),
        batch,
        hs,
    );
    let tanh_c = Shared::new(
        overwritten(&mut cache.tanh_c, steps * batch * hs),
        batch,
        hs,
    );
    let (y, h, c) = (
        Shared::new(y, batch, hs),
        Shared::new(h, batch, hs),
        Shared::new(c, batch, hs),
    );
    if steps == 0 {
        return;
    }
    for_row_blocks(batch, |rows| {
        let m = rows.len();
        let mut hp = Scratch::<T>::zeroed(m * g4);
        // SAFETY: every block touches only its own batch rows of each buffer.
        let (h, c) = unsafe { (h.rows(0, &rows), c.rows(0, &rows)) };
        // Each step writes its new state straight into the next step's saved
        // `h_{t-1}`, `c_{t-1}`, and the last step into `h`, `c`: the state is not
        // copied at every step (two copies of `[B, H]` a step were 1 % of a bf16
        // training step of LSTM 2×512).
        // SAFETY: as above.
        unsafe {
            h_prev.save_initial(&seq, &rows, h);
            c_prev.save_initial(&seq, &rows, c);
        }
        for s in 0..steps {
            let t = seq.time(s);
            // SAFETY: as above; one slice per buffer and timestep (the next step's
            // saved state is another timestep's).
            let (a, hp_t, cp_t, tc, y) = unsafe {
                (
                    gates.rows(t, &rows),
                    &*h_prev.rows(t, &rows),
                    &*c_prev.rows(t, &rows),
                    tanh_c.rows(t, &rows),
                    y.rows(t, &rows),
                )
            };
            // SAFETY: as above.
            let (h_next, c_next) = unsafe {
                (
                    h_prev.next_state(&seq, s, &rows, h),
                    c_prev.next_state(&seq, s, &rows, c),
                )
            };
            let mt = seq.active(t, &rows);
            step_product(
                MatMut::dense(&mut hp, mt, g4),
                MatRef::dense(hp_t, mt, hs),
                w_hh.blocks(0..4, mt),
                packed.map(|p| &p[0]),
                false,
            );
            for (i, b) in rows.clone().enumerate() {
                let r = i * hs..(i + 1) * hs;
                if !seq.valid(t, b) {
                    // Padded: the state carried unchanged, the output zero.
                    h_next[r.clone()].copy_from_slice(&hp_t[r.clone()]);
                    c_next[r.clone()].copy_from_slice(&cp_t[r.clone()]);
                    y[r.clone()].fill(T::zero());
                    tc[r].fill(T::zero());
                    continue;
                }
                let g = i * g4..(i + 1) * g4;
                step(
                    &mut a[g.clone()],
                    xp.row(t * batch + b),
                    &hp[g],
                    (&cp_t[r.clone()], &mut c_next[r.clone()]),
                    &mut tc[r.clone()],
                    &mut h_next[r.clone()],
                    &mut y[r],
                );
            }
        }
    });
}

simd_variant! {
    /// One sequence, one step (the equations at the top): the input projection
    /// `x` is read (from `a` itself, or with biases, or from another row) and `a`
    /// becomes the activated gates; `c` is `(c_{t-1}, c_t)`, the second written, and
    /// `h` and `y` both become `h_t`. (Also the batch-1 stepper's update
    /// of a share of the units: blocks of `c.len()`.) One pass, 16 lanes wide where the
    /// CPU can: a pass per activation, half of them on SSE, was a tenth of an LSTM
    /// 1×128 training step.
    pub(crate) fn step<T: Real>(
        a: &mut [T],
        x: Projection<'_, T>,
        hp: &[T],
        c: (&[T], &mut [T]),
        tanh_c: &mut [T],
        h: &mut [T],
        y: &mut [T],
    ) {
        let (c_prev, c) = c;
        let hs = c.len();
        let c_prev = &c_prev[..hs];
        // Every slice exactly `hs` long: the loop below then needs no bounds checks.
        let (ai, rest) = a[..4 * hs].split_at_mut(hs);
        let (af, rest) = rest.split_at_mut(hs);
        let (ag, ao) = rest.split_at_mut(hs);
        let (hi, hf, hg, ho) = quarters(hp, hs);
        let (tanh_c, h, y) = (&mut tanh_c[..hs], &mut h[..hs], &mut y[..hs]);
        // One unit from its four input projections; a loop per kind of input, so
        // that each vectorises.
        macro_rules! unit {
            ($j:expr, $xi:expr, $xf:expr, $xg:expr, $xo:expr) => {{
                let j = $j;
                let i = ($xi + hi[j]).sigmoid_one();
                let f = ($xf + hf[j]).sigmoid_one();
                let g = ($xg + hg[j]).tanh_one();
                let o = ($xo + ho[j]).sigmoid_one();
                (ai[j], af[j], ag[j], ao[j]) = (i, f, g, o);
                c[j] = f * c_prev[j] + i * g;
                tanh_c[j] = c[j].tanh_one();
                h[j] = o * tanh_c[j];
                y[j] = h[j];
            }};
        }
        match x {
            Projection::Here => {
                for j in 0..hs {
                    unit!(j, ai[j], af[j], ag[j], ao[j]);
                }
            }
            Projection::Biased(b) => {
                let (bi, bf, bg, bo) = quarters(b, hs);
                for j in 0..hs {
                    unit!(j, ai[j] + bi[j], af[j] + bf[j], ag[j] + bg[j], ao[j] + bo[j]);
                }
            }
            Projection::Row(x) => {
                let (xi, xf, xg, xo) = quarters(x, hs);
                for j in 0..hs {
                    unit!(j, xi[j], xf[j], xg[j], xo[j]);
                }
            }
        }
    }
}

/// The four gates' blocks of `v`, `hs` each.
#[inline(always)]
fn quarters<T>(v: &[T], hs: usize) -> (&[T], &[T], &[T], &[T]) {
    (
        &v[..hs],
        &v[hs..2 * hs],
        &v[2 * hs..3 * hs],
        &v[3 * hs..4 * hs],
    )
}

/// Backpropagates through the sequence of the last [`forward`]. Takes the output
/// gradients `dy [T, B, H]` (ignored at padded steps) and the final-state
/// gradients in `dh`, `dc`; leaves the initial-state gradients in `dh`, `dc`,
/// adds the input gradients to `dx [T, B, I]` and the parameter gradients to `g`
/// (`None`: left to `weight_grads`, whose inputs stay in `cache`).
#[allow(clippy::too_many_arguments)]
pub fn backward<T: Real>(
    p: &CellParams<T>,
    mut g: Option<&mut CellParams<T>>,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut LstmCache<T>,
    dy: &[T],
    dh: &mut [T],
    dc: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g4 = 4 * hs;
    let w_hh = MatRef::dense(p.w_hh.data(), g4, hs);
    let packed = cache.weights.packed[1].prepare(&[w_hh]);
    let (gates, tanh_c, c_prev) = (&cache.gates, &cache.tanh_c, &cache.c_prev);
    let dgates = Shared::new(
        overwritten(&mut cache.dgates, steps * batch * g4),
        batch,
        g4,
    );
    let (dh_all, dc_all) = (Shared::new(dh, batch, hs), Shared::new(dc, batch, hs));
    let panels = (g.is_some() && writes_dg_panels::<T>(&seq))
        .then(|| cache.dg_panels.prepare(steps * batch, g4));
    for_row_blocks(batch, |rows| {
        // SAFETY: every block touches only its own batch rows of each buffer.
        let (dh, dc) = unsafe { (dh_all.rows(0, &rows), dc_all.rows(0, &rows)) };
        for s in (0..steps).rev() {
            let t = seq.time(s);
            // SAFETY: as above.
            let da_t = unsafe { dgates.rows(t, &rows) };
            for (i, b) in rows.clone().enumerate() {
                if !seq.valid(t, b) {
                    // No gate gradient; dh and dc pass through unchanged.
                    da_t[i * g4..][..g4].fill(T::zero());
                    continue;
                }
                let row = t * batch + b;
                let a = &gates[row * g4..][..g4];
                let da = &mut da_t[i * g4..][..g4];
                let (dh, dc) = (&mut dh[i * hs..][..hs], &mut dc[i * hs..][..hs]);
                let (tc, cp, dy) = (
                    &tanh_c[row * hs..][..hs],
                    &c_prev[row * hs..][..hs],
                    &dy[row * hs..][..hs],
                );
                backward_row(a, (tc, cp, dy), dh, dc, da);
            }
            // SAFETY: each block writes its own rows (even ones: `writes_dg_panels`).
            unsafe { write_dg_rows(panels.as_ref(), da_t, t * batch + rows.start) };
            // dh_{t-1} = da_t · W_hh, added onto rows that are zero (valid) or carried (padded).
            let mt = seq.active(t, &rows);
            step_product(
                MatMut::dense(dh, mt, hs),
                MatRef::dense(da_t, mt, g4),
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
        &cache.dgates,
        panels,
        Some(dx),
        Some(&mut cache.weights.packed[3]),
    );
    if let Some(g) = g {
        // b_hh's gradient is b_ih's: the same pre-activation gradients.
        recurrent_grads(
            g,
            &seq,
            &cache.h_prev,
            &cache.dgates,
            panels,
            sum.as_deref(),
        );
    }
}

simd_variant! {
    /// One row's gate gradients `da` from its activated gates `a`, `tanh(c_t)`, `c_{t-1}`
    /// and output gradient `dy` (the equations at the top); `dc` becomes `dc_{t-1}` and
    /// `dh` zero (the product with `W_hh` adds `dh_{t-1}` to it). 16 lanes wide where
    /// the CPU can (2 % off a bf16 training step of LSTM 2×512).
    fn backward_row<T: Real>(
        a: &[T],
        saved: (&[T], &[T], &[T]),
        dh: &mut [T],
        dc: &mut [T],
        da: &mut [T],
    ) {
        let (tc, cp, dy) = saved;
        let hs = dh.len();
        let one = T::one();
        // Every slice exactly `hs` long: the loop below then needs no bounds checks.
        let (i, f, g, o) = (
            &a[..hs],
            &a[hs..2 * hs],
            &a[2 * hs..3 * hs],
            &a[3 * hs..4 * hs],
        );
        let (tc, cp, dy, dc) = (&tc[..hs], &cp[..hs], &dy[..hs], &mut dc[..hs]);
        let (dai, rest) = da[..4 * hs].split_at_mut(hs);
        let (daf, rest) = rest.split_at_mut(hs);
        let (dag, dao) = rest.split_at_mut(hs);
        for j in 0..hs {
            let dh_t = dh[j] + dy[j];
            let dc_t = dc[j] + dh_t * o[j] * (one - tc[j] * tc[j]);
            dai[j] = dc_t * g[j] * i[j] * (one - i[j]);
            daf[j] = dc_t * cp[j] * f[j] * (one - f[j]);
            dag[j] = dc_t * i[j] * (one - g[j] * g[j]);
            dao[j] = dh_t * tc[j] * o[j] * (one - o[j]);
            dc[j] = dc_t * f[j];
            dh[j] = T::zero();
        }
    }
}

/// The parameter gradients of a [`backward`] run without them, from its inputs `x`
/// and the `cache` (or those of several, gathered by [`LstmCache::append_grad_rows`]).
pub(crate) fn weight_grads<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    seq: Seq,
    x: Input<'_, T>,
    cache: &LstmCache<T>,
) {
    linear_weight_grads(p, g, &seq, x, &cache.dgates, &cache.h_prev);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::assert_projections_agree;
    use crate::kernel::{sigmoid_f32, tanh_f32};
    use crate::Rng;

    /// `n` values drawn uniformly from (−4, 4).
    fn draw(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.uniform_in(-4.0, 4.0) as f32).collect()
    }

    /// The bits of `a`, `c`, `tanh c`, `h` and `y` after one step from `a`, `x`, `hp`
    /// and `c0` (`c` starts as NaN: it is written, not read).
    fn step_bits(mut a: Vec<f32>, x: Projection<'_, f32>, hp: &[f32], c0: &[f32]) -> [Vec<u32>; 5] {
        let hs = c0.len();
        let mut c = vec![f32::NAN; hs];
        let (mut tc, mut h, mut y) = (vec![0.0; hs], vec![0.0; hs], vec![0.0; hs]);
        step(&mut a, x, hp, (c0, &mut c), &mut tc, &mut h, &mut y);
        [a, c, tc, h, y].map(|v| v.iter().map(|x| x.to_bits()).collect())
    }

    /// The fused step gives the bits of one pass per activation (the vectorised
    /// slice functions), at a width with a vector tail.
    #[test]
    fn fused_step_matches_the_activations_pass_by_pass() {
        let hs = 37;
        let mut rng = Rng::new(5);
        let (a0, hp, c0) = (
            draw(&mut rng, 4 * hs),
            draw(&mut rng, 4 * hs),
            draw(&mut rng, hs),
        );
        let got = step_bits(a0.clone(), Projection::Here, &hp, &c0);

        let mut gates: Vec<f32> = a0.iter().zip(&hp).map(|(x, u)| x + u).collect();
        sigmoid_f32(&mut gates[..2 * hs]);
        tanh_f32(&mut gates[2 * hs..3 * hs]);
        sigmoid_f32(&mut gates[3 * hs..]);
        let c_want: Vec<f32> = (0..hs)
            .map(|j| gates[hs + j] * c0[j] + gates[j] * gates[2 * hs + j])
            .collect();
        let mut tc_want = c_want.clone();
        tanh_f32(&mut tc_want);
        let h_want: Vec<f32> = (0..hs).map(|j| gates[3 * hs + j] * tc_want[j]).collect();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        let want = [&gates, &c_want, &tc_want, &h_want, &h_want].map(|v| bits(v));
        assert_eq!(got, want);
    }

    /// The step reads its projection where it lies with the bits it has when
    /// finished in place first: a row of products plus the biases, or a table's row.
    #[test]
    fn every_kind_of_projection_gives_the_same_bits() {
        let hs = 21;
        let mut rng = Rng::new(9);
        let [hp, c0] = [4 * hs, hs].map(|n| draw(&mut rng, n));
        assert_projections_agree(4 * hs, &mut rng, |a, x| step_bits(a, x, &hp, &c0));
    }
}
