//! Real-time recurrent learning (Williams and Zipser 1989) for one recurrent layer.
//!
//! RTRL carries the sensitivities `S_t = ∂h_t/∂θ` (and `∂c_t/∂θ` for the LSTM)
//! forward with the state, so the gradient of each step's loss is available at that
//! step and nothing of the past is stored: memory O(H·P) = O(H³) and time O(H·H·P) =
//! O(H⁴) per step, against BPTT's O(T·H) memory and O(H²) time per step. With the
//! parameters frozen, the sum over steps of `dL_t/dh_t · S_t` is BPTT's gradient of
//! `Σ_t L_t`, which the tests check.
//!
//! Sensitivities are rows of length P over the layer's parameters in torch's order and
//! layout: `weight_ih [G·H, I]`, `weight_hh [G·H, H]`, `bias_ih [G·H]`, then
//! `bias_hh [G·H]` where the cell has one.

use crate::cell::{CellKind, CellParams};
use crate::error::{Error, Result};
use crate::layer::{ParamVisitor, Parameters};
use crate::tensor::{Real, Tensor};

/// The most sensitivities held (2^28: 2 GiB in f64, a layer of about 180 LSTM units).
pub const MAX_SENSITIVITIES: usize = 1 << 28;

/// One layer's state and sensitivities, stepped one input at a time (batch 1).
pub struct Rtrl<T: Real> {
    kind: CellKind,
    input: usize,
    hidden: usize,
    params: CellParams<T>,
    grads: CellParams<T>,
    h: Vec<T>,
    c: Vec<T>,
    /// `∂h/∂θ`, `[H, P]`.
    s_h: Vec<T>,
    /// `∂c/∂θ`, `[H, P]` (LSTM only).
    s_c: Vec<T>,
}

fn sigmoid<T: Real>(x: T) -> T {
    T::one() / (T::one() + (-x).exp())
}

impl<T: Real> Rtrl<T> {
    /// Starts from a zero state with a copy of `params` (one direction of one layer).
    pub fn new(kind: CellKind, params: &CellParams<T>) -> Result<Self> {
        let (input, hidden) = (params.input_size(), params.hidden_size());
        let p = Self::count(kind, input, hidden);
        // O(H·P) memory: refuse what cannot be held rather than abort.
        let cells = hidden
            .checked_mul(p)
            .filter(|&n| n <= MAX_SENSITIVITIES)
            .ok_or_else(|| {
                Error::Config(format!(
                    "RTRL with {hidden} units holds {hidden}×{p} sensitivities: too many; use fewer units or BPTT"
                ))
            })?;
        Ok(Rtrl {
            kind,
            input,
            hidden,
            params: params.clone(),
            grads: CellParams::zeros(kind, input, hidden),
            h: vec![T::zero(); hidden],
            c: vec![T::zero(); hidden],
            s_h: vec![T::zero(); cells],
            s_c: vec![T::zero(); if kind == CellKind::Lstm { cells } else { 0 }],
        })
    }

    /// Parameters of a layer of this shape (the length of a gradient).
    pub fn count(kind: CellKind, input: usize, hidden: usize) -> usize {
        let gh = kind.gates() * hidden;
        gh * input + gh * hidden + gh * if kind.has_bias_hh() { 2 } else { 1 }
    }

    /// Parameters of this layer.
    pub fn num_params(&self) -> usize {
        Self::count(self.kind, self.input, self.hidden)
    }

    /// The hidden state after the last step.
    pub fn hidden(&self) -> &[T] {
        &self.h
    }

    /// Zero state and sensitivities (a new sequence).
    pub fn reset(&mut self) {
        for v in [&mut self.h, &mut self.c, &mut self.s_h, &mut self.s_c] {
            v.iter_mut().for_each(|x| *x = T::zero());
        }
    }

    /// Adds `dh · ∂h/∂θ` (the gradient of a loss on the current hidden state) to the
    /// layer's gradients (see [`Rtrl::grad`] and the [`Parameters`] visitor).
    pub fn accumulate(&mut self, dh: &[T]) -> Result<()> {
        if dh.len() != self.hidden {
            return Err(Error::Input(format!(
                "RTRL gradient: dh has {} values for {} units",
                dh.len(),
                self.hidden
            )));
        }
        let p = self.num_params();
        let mut flat = vec![T::zero(); p];
        for (k, &d) in dh.iter().enumerate() {
            let row = &self.s_h[k * p..][..p];
            flat.iter_mut().zip(row).for_each(|(g, &s)| *g += d * s);
        }
        let mut at = 0;
        for (_, g) in self.grads.named_mut() {
            let n = g.len();
            g.data_mut()
                .iter_mut()
                .zip(&flat[at..at + n])
                .for_each(|(a, &b)| *a += b);
            at += n;
        }
        Ok(())
    }

    /// The accumulated gradient of `weight_ih`, `weight_hh`, `bias_ih` or `bias_hh`.
    pub fn grad(&self, name: &str) -> Option<&Tensor<T>> {
        self.grads
            .named()
            .into_iter()
            .find_map(|(n, t)| (n == name).then_some(t))
    }

    /// Bytes of the sensitivities this layer carries (its memory beyond the weights).
    pub fn sensitivity_bytes(&self) -> usize {
        (self.s_h.len() + self.s_c.len()) * std::mem::size_of::<T>()
    }

    /// Sensitivities of the pre-activation rows `rows` of `W x + b (+ W_hh h + b_hh)`:
    /// `[rows.len(), P]`. `rec` (the recurrent input and its sensitivity) adds
    /// `W_hh·rec` and its direct terms; `input` adds the `W_ih x + b_ih` direct terms.
    fn pre_sensitivity(
        &self,
        rows: std::ops::Range<usize>,
        x: Option<&[T]>,
        rec: Option<(&[T], &[T])>,
    ) -> Vec<T> {
        let (p, h, i) = (self.num_params(), self.hidden, self.input);
        let gh = self.kind.gates() * h;
        let (o_hh, o_bih, o_bhh) = (gh * i, gh * (i + h), gh * (i + h + 1));
        let mut out = vec![T::zero(); rows.len() * p];
        for (k, r) in rows.enumerate() {
            let o = &mut out[k * p..][..p];
            if let Some(x) = x {
                o[r * i..][..i].copy_from_slice(x);
                o[o_bih + r] = T::one();
            }
            if let Some((v, s_v)) = rec {
                // W_hh[r, :] · S_v, then the direct term of W_hh[r, :] and b_hh[r].
                for (j, &w) in self.params.w_hh.data()[r * h..][..h].iter().enumerate() {
                    if w != T::zero() {
                        let s = &s_v[j * p..][..p];
                        o.iter_mut().zip(s).for_each(|(a, &b)| *a += w * b);
                    }
                }
                for (j, &vj) in v.iter().enumerate() {
                    o[o_hh + r * h + j] += vj;
                }
                if self.params.b_hh.is_some() {
                    o[o_bhh + r] += T::one();
                }
            }
        }
        out
    }

    /// `W[r, :]·v + b[r]` for the rows of a gate block.
    fn affine(w: &[T], b: Option<&[T]>, v: &[T], r: usize) -> T {
        let n = v.len();
        let dot = w[r * n..][..n]
            .iter()
            .zip(v)
            .fold(T::zero(), |a, (&x, &y)| a + x * y);
        dot + b.map_or(T::zero(), |b| b[r])
    }

    /// One step on input `x [I]`: updates the state and the sensitivities and returns
    /// the new hidden state.
    pub fn step(&mut self, x: &[T]) -> Result<&[T]> {
        if x.len() != self.input {
            return Err(Error::Input(format!(
                "RTRL step: the input has {} values, the layer takes {}",
                x.len(),
                self.input
            )));
        }
        let (h, p) = (self.hidden, self.num_params());
        let (w_ih, w_hh) = (self.params.w_ih.data(), self.params.w_hh.data());
        let (b_ih, b_hh) = (
            self.params.b_ih.data(),
            self.params.b_hh.as_ref().map(|b| b.data()),
        );
        let a = |r: usize, v: &[T]| {
            Self::affine(w_ih, Some(b_ih), x, r) + Self::affine(w_hh, b_hh, v, r)
        };
        let (new_h, new_s) = match self.kind {
            // h_t = φ(W_ih x_t + b_ih + W_hh h_{t-1} + b_hh); S_t = φ'(a) ⊙ (W_hh S_{t-1} + direct).
            CellKind::RnnTanh | CellKind::RnnRelu => {
                let mut s = self.pre_sensitivity(0..h, Some(x), Some((&self.h, &self.s_h)));
                let mut nh = vec![T::zero(); h];
                for k in 0..h {
                    let z = a(k, &self.h);
                    let (y, d) = if self.kind == CellKind::RnnTanh {
                        let y = z.tanh();
                        (y, T::one() - y * y)
                    } else if z > T::zero() {
                        (z, T::one())
                    } else {
                        (T::zero(), T::zero())
                    };
                    nh[k] = y;
                    s[k * p..][..p].iter_mut().for_each(|v| *v *= d);
                }
                (nh, s)
            }
            // i, f, g, o = σ, σ, tanh, σ of W_ih x + b_ih + W_hh h + b_hh;
            // c_t = f c_{t-1} + i g; h_t = o tanh(c_t).
            CellKind::Lstm => {
                let sz = self.pre_sensitivity(0..4 * h, Some(x), Some((&self.h, &self.s_h)));
                let mut nh = vec![T::zero(); h];
                let mut nc = vec![T::zero(); h];
                let mut s_h = vec![T::zero(); h * p];
                let mut s_c = vec![T::zero(); h * p];
                for k in 0..h {
                    let (zi, zf, zg, zo) = (
                        a(k, &self.h),
                        a(h + k, &self.h),
                        a(2 * h + k, &self.h),
                        a(3 * h + k, &self.h),
                    );
                    let (i, f, g, o) = (sigmoid(zi), sigmoid(zf), zg.tanh(), sigmoid(zo));
                    let c = f * self.c[k] + i * g;
                    let tc = c.tanh();
                    nc[k] = c;
                    nh[k] = o * tc;
                    let (di, df, dg, do_) = (
                        i * (T::one() - i),
                        f * (T::one() - f),
                        T::one() - g * g,
                        o * (T::one() - o),
                    );
                    let row = |gate: usize| &sz[(gate * h + k) * p..][..p];
                    let (si, sf, sg, so) = (row(0), row(1), row(2), row(3));
                    let sc_prev = &self.s_c[k * p..][..p];
                    let dtc = o * (T::one() - tc * tc);
                    for q in 0..p {
                        // ∂c = c_{t-1} ∂f + f ∂c_{t-1} + g ∂i + i ∂g; ∂h = tanh(c) ∂o + o tanh'(c) ∂c.
                        let dc = self.c[k] * df * sf[q]
                            + f * sc_prev[q]
                            + g * di * si[q]
                            + i * dg * sg[q];
                        s_c[k * p + q] = dc;
                        s_h[k * p + q] = tc * do_ * so[q] + dtc * dc;
                    }
                }
                self.c = nc;
                self.s_c = s_c;
                (nh, s_h)
            }
            // r, z = σ(W_i x + b_i + W_h h + b_h); n = tanh(W_in x + b_in + r (W_hn h + b_hn));
            // h_t = (1 − z) n + z h_{t-1}.
            CellKind::Gru => {
                let s_rz = self.pre_sensitivity(0..2 * h, Some(x), Some((&self.h, &self.s_h)));
                let s_xn = self.pre_sensitivity(2 * h..3 * h, Some(x), None);
                let s_hn = self.pre_sensitivity(2 * h..3 * h, None, Some((&self.h, &self.s_h)));
                let mut nh = vec![T::zero(); h];
                let mut s = vec![T::zero(); h * p];
                for k in 0..h {
                    let r = sigmoid(a(k, &self.h));
                    let z = sigmoid(a(h + k, &self.h));
                    let xn = Self::affine(w_ih, Some(b_ih), x, 2 * h + k);
                    let hn = Self::affine(w_hh, b_hh, &self.h, 2 * h + k);
                    let n = (xn + r * hn).tanh();
                    nh[k] = (T::one() - z) * n + z * self.h[k];
                    let (dr, dz, dn) = (r * (T::one() - r), z * (T::one() - z), T::one() - n * n);
                    let (sr, sz_) = (&s_rz[k * p..][..p], &s_rz[(h + k) * p..][..p]);
                    let (sx, sh) = (&s_xn[k * p..][..p], &s_hn[k * p..][..p]);
                    let sprev = &self.s_h[k * p..][..p];
                    for q in 0..p {
                        let d_n = dn * (sx[q] + r * sh[q] + hn * dr * sr[q]);
                        s[k * p + q] =
                            (T::one() - z) * d_n + (self.h[k] - n) * dz * sz_[q] + z * sprev[q];
                    }
                }
                (nh, s)
            }
            // As the GRU, with n = tanh(W_in x + b_in + W_hn (r h)) and no b_hh.
            CellKind::GruResetBefore => {
                let s_rz = self.pre_sensitivity(0..2 * h, Some(x), Some((&self.h, &self.s_h)));
                let mut r = vec![T::zero(); h];
                let mut z = vec![T::zero(); h];
                for k in 0..h {
                    r[k] = sigmoid(a(k, &self.h));
                    z[k] = sigmoid(a(h + k, &self.h));
                }
                // v = r ⊙ h and ∂v = r ∂h + h σ'(r) ∂a_r.
                let v: Vec<T> = r.iter().zip(&self.h).map(|(&a, &b)| a * b).collect();
                let mut s_v = vec![T::zero(); h * p];
                for k in 0..h {
                    let dr = r[k] * (T::one() - r[k]);
                    for q in 0..p {
                        s_v[k * p + q] =
                            r[k] * self.s_h[k * p + q] + self.h[k] * dr * s_rz[k * p + q];
                    }
                }
                let s_n = self.pre_sensitivity(2 * h..3 * h, Some(x), Some((&v, &s_v)));
                let mut nh = vec![T::zero(); h];
                let mut s = vec![T::zero(); h * p];
                for k in 0..h {
                    let n = (Self::affine(w_ih, Some(b_ih), x, 2 * h + k)
                        + Self::affine(w_hh, None, &v, 2 * h + k))
                    .tanh();
                    nh[k] = (T::one() - z[k]) * n + z[k] * self.h[k];
                    let (dz, dn) = (z[k] * (T::one() - z[k]), T::one() - n * n);
                    for q in 0..p {
                        s[k * p + q] = (T::one() - z[k]) * dn * s_n[k * p + q]
                            + (self.h[k] - n) * dz * s_rz[(h + k) * p + q]
                            + z[k] * self.s_h[k * p + q];
                    }
                }
                (nh, s)
            }
        };
        self.h = new_h;
        self.s_h = new_s;
        Ok(&self.h)
    }
}

impl<T: Real> Parameters<T> for Rtrl<T> {
    /// Names as a one-layer torch.nn module: `weight_ih_l0`, …, `bias_hh_l0`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        for (name, t) in self.params.named() {
            f(&format!("{name}_l0"), t);
        }
    }

    /// Changed weights keep the sensitivities computed with the old ones: the usual
    /// approximation of online RTRL, exact in the limit of a small learning rate.
    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        for ((name, t), (_, g)) in self.params.named_mut().zip(self.grads.named_mut()) {
            f(&format!("{name}_l0"), t, g);
        }
    }
}
