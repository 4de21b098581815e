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

use super::{
    for_row_blocks, input_grads, project_inputs, real_rows, recurrent_grads, step_product,
    weight_grad, write_dg_rows, writes_dg_panels, CellParams, Input, Projection, Seq, Shared,
    WeightCopies,
};
use crate::kernel::{DgPanels, MatMut, MatRef};
use crate::tensor::{overwritten, scratch, Real, Scratch};

/// What the forward pass saves for the backward pass, reused between calls.
#[derive(Clone, Debug, Default)]
pub struct GruCache<T> {
    /// Activated gates `[T, B, 3H]`: r, z, n.
    gates: Vec<T>,
    /// `h_{t-1}` for every t `[T, B, H]`.
    h_prev: Vec<T>,
    /// Reset after: `W_hn h_{t-1} + b_hn`; reset before: `r ⊙ h_{t-1}`; `[T, B, H]`.
    aux: Vec<T>,
    /// `W_hh` in the layouts of the per-step products, kept while the weights do not change.
    weights: WeightCopies<T>,
    /// Input-side pre-activation gradients `[T, B, 3H]` (backward).
    dgx: Vec<T>,
    /// Recurrent-side pre-activation gradients `[T, B, 3H]` (backward, reset after only).
    dgh: Vec<T>,
    /// `dgx` and `dgh` as the bf16 weight gradients read them, where the backward pass
    /// writes them (reset after; see [`DgPanels`]).
    dg_panels: [DgPanels; 2],
}

impl<T> GruCache<T> {
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

impl<T: Copy> GruCache<T> {
    /// Appends what [`weight_grads`] reads of `other`'s last backward pass over
    /// `rows` rows of `hs` units, after the rows already gathered here.
    /// Empties what [`Self::append_grad_rows`] appended, keeping the storage.
    pub(crate) fn clear_grad_rows(&mut self) {
        self.dgx.clear();
        self.h_prev.clear();
        self.dgh.clear();
        self.aux.clear();
    }

    pub(crate) fn append_grad_rows(&mut self, other: &Self, rows: usize, hs: usize) {
        self.dgx.extend_from_slice(&other.dgx[..rows * 3 * hs]);
        self.h_prev.extend_from_slice(&other.h_prev[..rows * hs]);
        // Reset after reads dgh; reset before reads r ⊙ h_{t-1} from aux.
        match other.dgh.is_empty() {
            false => self.dgh.extend_from_slice(&other.dgh[..rows * 3 * hs]),
            true => self.aux.extend_from_slice(&other.aux[..rows * hs]),
        }
    }
}

/// Runs the cell over `x [T, B, I]` from `h` = h0; writes every output to
/// `y [T, B, H]` (zero at padded steps) and leaves the final state in `h [B, H]`.
/// `reset_after` picks torch's form; otherwise Keras' `reset_after=False`.
#[allow(clippy::too_many_arguments)]
pub fn forward<T: Real>(
    p: &CellParams<T>,
    reset_after: bool,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut GruCache<T>,
    y: &mut [T],
    h: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g3 = 3 * hs;
    // Written below: gates by the input product or by the steps (a padded row's
    // from ids keeps what it held: the backward pass skips it), h_prev row by row.
    let gates = overwritten(&mut cache.gates, steps * batch * g3);
    let xp = project_inputs(
        p,
        x,
        steps * batch,
        gates,
        false,
        &mut cache.weights.packed[2],
    );
    // Torch's form multiplies by all three blocks at once; Keras' by r, z then n.
    let cuts: &[_] = if reset_after { &[0, 3] } else { &[0, 2, 3] };
    let (w_hh, packed) = cache.weights.forward_operand(p, batch, cuts);
    let slot = |k: usize| packed.map(|p| &p[k]);
    let no_bias = Vec::new();
    let b_hh = p.b_hh.as_ref().map_or(&no_bias[..], |b| b.data());
    let gates = Shared::new(gates, batch, g3);
    let h_prev = Shared::new(
        overwritten(&mut cache.h_prev, steps * batch * hs),
        batch,
        hs,
    );
    let aux = Shared::new(scratch(&mut cache.aux, steps * batch * hs), batch, hs);
    let (y, h) = (Shared::new(y, batch, hs), Shared::new(h, batch, hs));
    if steps == 0 {
        return;
    }
    for_row_blocks(batch, |rows| {
        let m = rows.len();
        let mut hp = Scratch::<T>::zeroed(m * g3);
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
            let (a, hp_t, aux, y) = unsafe {
                (
                    gates.rows(t, &rows),
                    &*h_prev.rows(t, &rows),
                    aux.rows(t, &rows),
                    y.rows(t, &rows),
                )
            };
            // SAFETY: as above.
            let h_next = unsafe { h_prev.next_state(&seq, s, &rows, h) };
            let mt = seq.active(t, &rows);
            if reset_after {
                step_product(
                    MatMut::dense(&mut hp, mt, g3),
                    MatRef::dense(hp_t, mt, hs),
                    w_hh.blocks(0..3, mt),
                    slot(0),
                    false,
                );
            } else {
                // Only r and z see h directly; n sees r ⊙ h, known after this product.
                step_product(
                    MatMut::new(&mut hp, mt, 2 * hs, g3),
                    MatRef::dense(hp_t, mt, hs),
                    w_hh.blocks(0..2, mt),
                    slot(0),
                    false,
                );
                xp.fill(t * batch + rows.start, a);
                for (i, b) in rows.clone().enumerate() {
                    if seq.valid(t, b) {
                        let r = &mut a[i * g3..][..hs];
                        r.iter_mut()
                            .zip(&hp[i * g3..][..hs])
                            .for_each(|(v, &u)| *v += u);
                        T::sigmoid_inplace(r);
                        for j in 0..hs {
                            aux[i * hs + j] = r[j] * hp_t[i * hs + j];
                        }
                    }
                }
                step_product(
                    MatMut::new(&mut hp[2 * hs..], mt, hs, g3),
                    MatRef::dense(aux, mt, hs),
                    w_hh.blocks(2..3, mt),
                    slot(1),
                    false,
                );
            }
            for (i, b) in rows.clone().enumerate() {
                let r = i * hs..(i + 1) * hs;
                if !seq.valid(t, b) {
                    // Padded: the state carried unchanged, the output zero.
                    h_next[r.clone()].copy_from_slice(&hp_t[r.clone()]);
                    y[r].fill(T::zero());
                    continue;
                }
                let (a, hp) = (&mut a[i * g3..][..g3], &hp[i * g3..][..g3]);
                let h = (&hp_t[r.clone()], &mut h_next[r.clone()]);
                let y = &mut y[r.clone()];
                if reset_after {
                    let x = xp.row(t * batch + b);
                    step_after(a, x, hp, b_hh, &mut aux[r], h, y);
                } else {
                    step_before(a, hp, h, y);
                }
            }
        }
    });
}

simd_variant! {
    /// One row's step after the products in torch's form (the equations at the top):
    /// the input projections `x` are read (from `a` itself, or with biases, or from
    /// another row) and `a` becomes the activated gates, `hn` receives `W_hn h + b_hn`,
    /// `h` is `(h, h')`, the second written and copied to `y`. One pass, 16 lanes wide
    /// where the CPU can.
    fn step_after<T: Real>(
        a: &mut [T],
        x: Projection<'_, T>,
        hp: &[T],
        b_hh: &[T],
        hn: &mut [T],
        h: (&[T], &mut [T]),
        y: &mut [T],
    ) {
        let (h_prev, h) = h;
        let hs = h.len();
        // Every slice exactly `hs` long: the loops below then need no bounds checks.
        let h_prev = &h_prev[..hs];
        let (ar, rest) = a[..3 * hs].split_at_mut(hs);
        let (az, an) = rest.split_at_mut(hs);
        let (pr, pz, pn) = thirds(hp, hs);
        let (br, bz, bn) = thirds(b_hh, hs);
        let (hn, y) = (&mut hn[..hs], &mut y[..hs]);
        // One unit from its three input projections; a loop per kind of input, so
        // that each vectorises.
        macro_rules! unit {
            ($j:expr, $xr:expr, $xz:expr, $xn:expr) => {{
                let j = $j;
                let r = ($xr + (pr[j] + br[j])).sigmoid_one();
                let z = ($xz + (pz[j] + bz[j])).sigmoid_one();
                hn[j] = pn[j] + bn[j];
                let n = ($xn + r * hn[j]).tanh_one();
                (ar[j], az[j], an[j]) = (r, z, n);
                h[j] = (T::one() - z) * n + z * h_prev[j];
                y[j] = h[j];
            }};
        }
        match x {
            Projection::Here => {
                for j in 0..hs {
                    unit!(j, ar[j], az[j], an[j]);
                }
            }
            Projection::Biased(b) => {
                let (cr, cz, cn) = thirds(b, hs);
                for j in 0..hs {
                    unit!(j, ar[j] + cr[j], az[j] + cz[j], an[j] + cn[j]);
                }
            }
            Projection::Row(x) => {
                let (xr, xz, xn) = thirds(x, hs);
                for j in 0..hs {
                    unit!(j, xr[j], xz[j], xn[j]);
                }
            }
        }
    }
}

simd_variant! {
    /// [`step_after`] in Keras' form: r is activated already, `a` holds the finished
    /// input projections, and `hp`'s n block holds `W_hn (r ⊙ h)`.
    fn step_before<T: Real>(a: &mut [T], hp: &[T], h: (&[T], &mut [T]), y: &mut [T]) {
        let (h_prev, h) = h;
        let hs = h.len();
        let h_prev = &h_prev[..hs];
        let (az, an) = a[hs..3 * hs].split_at_mut(hs);
        let (pz, pn) = (&hp[hs..2 * hs], &hp[2 * hs..3 * hs]);
        let y = &mut y[..hs];
        for j in 0..hs {
            let z = (az[j] + pz[j]).sigmoid_one();
            let n = (an[j] + pn[j]).tanh_one();
            (az[j], an[j]) = (z, n);
            h[j] = (T::one() - z) * n + z * h_prev[j];
            y[j] = h[j];
        }
    }
}

/// The three gates' blocks of `v`, `hs` each.
#[inline(always)]
fn thirds<T>(v: &[T], hs: usize) -> (&[T], &[T], &[T]) {
    (&v[..hs], &v[hs..2 * hs], &v[2 * hs..3 * hs])
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
    reset_after: bool,
    seq: Seq,
    x: Input<'_, T>,
    cache: &mut GruCache<T>,
    dy: &[T],
    dh: &mut [T],
    dx: &mut [T],
) {
    let (steps, batch, hs) = (seq.steps, seq.batch, p.hidden_size());
    let g3 = 3 * hs;
    let one = T::one();
    let w_hh = p.w_hh.data();
    let all = [MatRef::dense(w_hh, g3, hs)];
    let split = [
        MatRef::dense(&w_hh[2 * hs * hs..], hs, hs),
        MatRef::dense(&w_hh[..2 * hs * hs], 2 * hs, hs),
    ];
    let views: &[_] = if reset_after { &all } else { &split };
    let packed = cache.weights.packed[1].prepare(views);
    let bslot = |k: usize| packed.map(|p| &p[k]);
    let (gates, h_prev, aux) = (&cache.gates, &cache.h_prev, &cache.aux);
    let dgx_all = Shared::new(scratch(&mut cache.dgx, steps * batch * g3), batch, g3);
    let dgh_all = Shared::new(
        scratch(
            &mut cache.dgh,
            if reset_after { steps * batch * g3 } else { 0 },
        ),
        batch,
        g3,
    );
    let dh_all = Shared::new(dh, batch, hs);
    let [px, ph] = &mut cache.dg_panels;
    let panels = (reset_after && g.is_some() && writes_dg_panels::<T>(&seq))
        .then(|| [px, ph].map(|p| p.prepare(steps * batch, g3)));
    for_row_blocks(batch, |rows| {
        let m = rows.len();
        let mut drh = Scratch::<T>::zeroed(if reset_after { 0 } else { m * hs });
        // SAFETY: every block touches only its own batch rows of each buffer.
        let dh = unsafe { dh_all.rows(0, &rows) };
        for s in (0..steps).rev() {
            let t = seq.time(s);
            // SAFETY: as above.
            let dgx = unsafe { dgx_all.rows(t, &rows) };
            let dgh: &mut [T] = if reset_after {
                unsafe { dgh_all.rows(t, &rows) }
            } else {
                &mut []
            };
            let mt = seq.active(t, &rows);
            for (i, b) in rows.clone().enumerate() {
                if !seq.valid(t, b) {
                    continue; // dh passes through unchanged
                }
                let row = t * batch + b;
                let saved = (
                    &dy[row * hs..][..hs],
                    &h_prev[row * hs..][..hs],
                    &aux[row * hs..][..hs],
                );
                let dgh: &mut [T] = if reset_after {
                    &mut dgh[i * g3..][..g3]
                } else {
                    &mut []
                };
                backward_row(
                    &gates[row * g3..][..g3],
                    saved,
                    &mut dh[i * hs..][..hs],
                    &mut dgx[i * g3..][..g3],
                    dgh,
                );
            }
            if let Some([px, ph]) = &panels {
                let first = t * batch + rows.start;
                // SAFETY: each block writes its own rows (even ones: `writes_dg_panels`).
                unsafe {
                    write_dg_rows(Some(px), dgx, first);
                    write_dg_rows(Some(ph), dgh, first);
                }
            }
            if reset_after {
                step_product(
                    MatMut::dense(dh, mt, hs),
                    MatRef::dense(dgh, mt, g3),
                    MatRef::dense(w_hh, g3, hs),
                    bslot(0),
                    true,
                );
                continue;
            }
            // Reset before: route da_n through W_hn to r ⊙ h, then to r and h.
            step_product(
                MatMut::dense(&mut drh, mt, hs),
                MatRef::new(&dgx[2 * hs..], mt, hs, g3),
                MatRef::dense(&w_hh[2 * hs * hs..], hs, hs),
                bslot(0),
                false,
            );
            for (i, b) in rows.clone().enumerate() {
                if !seq.valid(t, b) {
                    continue;
                }
                let row = t * batch + b;
                let dg = &mut dgx[i * g3..][..g3];
                for j in 0..hs {
                    let r = gates[row * g3 + j];
                    let d_rh = drh[i * hs + j];
                    dg[j] = d_rh * h_prev[row * hs + j] * r * (one - r);
                    dh[i * hs + j] += d_rh * r;
                }
            }
            step_product(
                MatMut::dense(dh, mt, hs),
                MatRef::new(dgx, mt, 2 * hs, g3),
                MatRef::dense(&w_hh[..2 * hs * hs], 2 * hs, hs),
                bslot(1),
                true,
            );
        }
    });
    let written = panels.is_some();
    let [px, ph] = &cache.dg_panels;
    input_grads(
        p,
        g.as_deref_mut(),
        x,
        &seq,
        &cache.dgx,
        written.then_some(px),
        Some(dx),
        Some(&mut cache.weights.packed[3]),
    );
    if let Some(g) = g {
        hidden_weight_grads(g, reset_after, seq, cache, written.then_some(ph));
    }
}

simd_variant! {
    /// One row's gate gradients `dg` from its activated gates `a`, output gradient `dy`,
    /// `h_{t-1}` and (reset after) `W_hn h_{t-1} + b_hn` (the equations at the top); `dh`
    /// becomes its part of `dh_{t-1}` that does not pass through `W_hh`. Reset after
    /// (`dgh` not empty): `dgh` gets the gradients of the recurrent pre-activations.
    /// Reset before: `dg`'s r block is left to the caller, which needs `W_hn` first.
    /// 16 lanes wide where the CPU can.
    fn backward_row<T: Real>(
        a: &[T],
        saved: (&[T], &[T], &[T]),
        dh: &mut [T],
        dg: &mut [T],
        dgh: &mut [T],
    ) {
        let (dy, hp, hn) = saved;
        let hs = dh.len();
        let one = T::one();
        // Every slice exactly `hs` long: the loops below then need no bounds checks.
        let (r, z, n) = (&a[..hs], &a[hs..2 * hs], &a[2 * hs..3 * hs]);
        let (dy, hp) = (&dy[..hs], &hp[..hs]);
        let (dgr, rest) = dg[..3 * hs].split_at_mut(hs);
        let (dgz, dgn) = rest.split_at_mut(hs);
        if dgh.is_empty() {
            for j in 0..hs {
                let d = dh[j] + dy[j];
                dgn[j] = d * (one - z[j]) * (one - n[j] * n[j]);
                dgz[j] = d * (hp[j] - n[j]) * z[j] * (one - z[j]);
                dh[j] = d * z[j];
            }
            return;
        }
        let hn = &hn[..hs];
        let (dhr, rest) = dgh[..3 * hs].split_at_mut(hs);
        let (dhz, dhn) = rest.split_at_mut(hs);
        for j in 0..hs {
            let d = dh[j] + dy[j];
            let dan = d * (one - z[j]) * (one - n[j] * n[j]);
            dgn[j] = dan;
            dgz[j] = d * (hp[j] - n[j]) * z[j] * (one - z[j]);
            dgr[j] = dan * hn[j] * r[j] * (one - r[j]);
            (dhr[j], dhz[j], dhn[j]) = (dgr[j], dgz[j], dan * r[j]);
            dh[j] = d * z[j];
        }
    }
}

/// The parameter gradients of a [`backward`] run without them, from its inputs `x`
/// and the `cache` (or those of several, gathered by [`GruCache::append_grad_rows`]).
pub(crate) fn weight_grads<T: Real>(
    p: &CellParams<T>,
    g: &mut CellParams<T>,
    reset_after: bool,
    seq: Seq,
    x: Input<'_, T>,
    cache: &GruCache<T>,
) {
    input_grads(p, Some(&mut *g), x, &seq, &cache.dgx, None, None, None);
    hidden_weight_grads(g, reset_after, seq, cache, None);
}

/// `dW_hh` and `db_hh` of the hidden side (from `dgh`'s `panels` where the backward
/// pass wrote them).
fn hidden_weight_grads<T: Real>(
    g: &mut CellParams<T>,
    reset_after: bool,
    seq: Seq,
    cache: &GruCache<T>,
    panels: Option<&DgPanels>,
) {
    let (rows, hs) = (seq.steps * seq.batch, g.hidden_size());
    let g3 = 3 * hs;
    if reset_after {
        recurrent_grads(g, &seq, &cache.h_prev, &cache.dgh, panels, None);
    } else {
        // W_h{r,z} saw h_{t-1}; W_hn saw r ⊙ h_{t-1}.
        let (dw_rz, dw_n) = g.w_hh.data_mut().split_at_mut(2 * hs * hs);
        let real = real_rows(&seq);
        weight_grad(
            MatMut::dense(dw_rz, 2 * hs, hs),
            MatRef::new(&cache.dgx, rows, 2 * hs, g3),
            MatRef::dense(&cache.h_prev, rows, hs),
            real,
            None,
        );
        weight_grad(
            MatMut::dense(dw_n, hs, hs),
            MatRef::new(&cache.dgx[2 * hs..], rows, hs, g3),
            MatRef::dense(&cache.aux, rows, hs),
            real,
            None,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cell::assert_projections_agree;
    use crate::Rng;

    /// Torch's form of the step reads its projections where they lie with the bits
    /// they have when finished in place first (a row of products plus the biases, or
    /// a table's row), and reads `h` from the saved state, at a width with a vector
    /// tail.
    #[test]
    fn every_kind_of_projection_gives_the_same_bits() {
        let hs = 21;
        let mut rng = Rng::new(6);
        let mut draw =
            |n: usize| -> Vec<f32> { (0..n).map(|_| rng.uniform_in(-3.0, 3.0) as f32).collect() };
        let [hp, b_hh] = [(); 2].map(|_| draw(3 * hs));
        let h0 = draw(hs);
        let want = assert_projections_agree(3 * hs, &mut rng, |mut a, p| {
            let [mut hn, mut h, mut y] = [(); 3].map(|_| vec![f32::NAN; hs]);
            step_after(&mut a, p, &hp, &b_hh, &mut hn, (&h0, &mut h), &mut y);
            [a, hn, h, y].map(|v| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>())
        });
        assert!(want[2].iter().all(|&b| !f32::from_bits(b).is_nan()));
    }
}
