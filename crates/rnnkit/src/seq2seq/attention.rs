//! Attention of a decoder state `q [H]` over the encoder's outputs `e_s [H]`, masked
//! past each source's end:
//!
//! ```text
//! dot      (Luong et al. 2015)     score_s = q · e_s
//! general  (Luong et al. 2015)     score_s = q · (W_a e_s)
//! additive (Bahdanau et al. 2015)  score_s = v · tanh(W_q q + b_q + W_k e_s)
//! α = softmax_s(score)   (over s < length only)     ctx = Σ_s α_s e_s
//! ```
//!
//! The keys `W_a e_s` / `W_k e_s` do not depend on the decoder, so they are computed
//! once per batch ([`Memory`]) and their gradient is gathered over all decoder steps
//! before one product takes it back to the weights and the encoder ([`Attention::keys_backward`]).
//!
//! Backward, with `dα_s = dctx · e_s` and `dscore_s = α_s (dα_s − Σ_s' α_s' dα_s')`:
//! dot/general `dq = Σ_s dscore_s k_s`, `dk_s = dscore_s q`; additive, with
//! `u_s = tanh(…)`: `du_s = dscore_s v ⊙ (1 − u_s²)`, `dv = Σ_s dscore_s u_s`,
//! `d(W_q q + b_q) = Σ_s du_s`, `dk_s = du_s`.

use crate::error::{Error, Result};
use crate::kernel::{matmul, MatMut, MatRef};
use crate::layer::{Linear, ParamVisitor, Parameters};
use crate::rng::Rng;
use crate::tensor::{Real, Scratch, Tensor};
use serde::{Deserialize, Serialize};

/// How a decoder state scores the source steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AttentionKind {
    /// No attention: the plain encoder–decoder.
    None,
    /// `q · e_s`.
    Dot,
    /// `q · W_a e_s`.
    #[default]
    General,
    /// `v · tanh(W_q q + b_q + W_k e_s)`.
    Additive,
}

impl AttentionKind {
    /// Every kind, in the order of `--attention`'s help.
    pub const ALL: [AttentionKind; 4] = [
        AttentionKind::None,
        AttentionKind::Dot,
        AttentionKind::General,
        AttentionKind::Additive,
    ];

    /// The name in flags and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            AttentionKind::None => "none",
            AttentionKind::Dot => "dot",
            AttentionKind::General => "general",
            AttentionKind::Additive => "additive",
        }
    }

    /// The kind named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }
}

impl std::fmt::Display for AttentionKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The attention's parameters (torch names under `attn.`) and gradients.
#[derive(Clone, Debug)]
pub struct Attention<T: Real = f32> {
    kind: AttentionKind,
    /// `W_a` (general, `attn.weight`) or `W_k` (additive, `attn.key.weight`), `[H, H]`.
    key: Option<(Tensor<T>, Tensor<T>)>,
    /// `W_q`, `b_q` (additive, `attn.query.*`).
    query: Option<Linear<T>>,
    /// `v [1, H]` (additive, `attn.v.weight`).
    v: Option<(Tensor<T>, Tensor<T>)>,
}

/// The encoder's outputs as the attention reads them, for one batch.
#[derive(Clone, Debug, Default)]
pub struct Memory<T> {
    /// Encoder outputs `[S, B, H]` (zero past each end).
    pub enc: Vec<T>,
    /// Keys `[S, B, H]` (general, additive); empty for dot, whose keys are `enc`.
    keys: Vec<T>,
    /// Valid steps of each source.
    pub lengths: Vec<usize>,
    /// `S`.
    pub steps: usize,
    /// `H`.
    pub width: usize,
}

impl<T: Real> Memory<T> {
    /// Sources in the batch.
    pub fn batch(&self) -> usize {
        self.lengths.len()
    }

    /// The attention keys `[S, B, H]` (the encoder outputs themselves for dot).
    pub fn keys(&self) -> &[T] {
        if self.keys.is_empty() {
            &self.enc
        } else {
            &self.keys
        }
    }

    /// The memory of source `b` repeated `k` times (the hypotheses of a beam).
    pub fn repeat(&self, b: usize, k: usize) -> Memory<T> {
        let (bs, h) = (self.batch(), self.width);
        let pick = |m: &[T]| {
            if m.is_empty() {
                return Vec::new();
            }
            let mut out = Vec::with_capacity(self.steps * k * h);
            for s in 0..self.steps {
                let row = &m[(s * bs + b) * h..][..h];
                (0..k).for_each(|_| out.extend_from_slice(row));
            }
            out
        };
        Memory {
            enc: pick(&self.enc),
            keys: pick(&self.keys),
            lengths: vec![self.lengths[b]; k],
            steps: self.steps,
            width: h,
        }
    }
}

/// What one step's forward keeps for its backward.
#[derive(Clone, Debug, Default)]
pub struct StepAttention<T> {
    /// `α [B, S]`.
    pub alpha: Vec<T>,
    /// Additive only: `u [B, S, H]`.
    u: Vec<T>,
    /// Additive only: `W_q q + b_q [B, H]`.
    qp: Vec<T>,
}

impl<T: Real> Attention<T> {
    /// Fresh parameters for width `h` (torch.nn.Linear's initialisation).
    pub fn new(kind: AttentionKind, h: usize, rng: &mut Rng) -> Self {
        let square = |rng: &mut Rng, out: usize| {
            let w = Linear::<T>::new(h, out, rng).weight;
            let g = Tensor::zeros(w.shape());
            (w, g)
        };
        match kind {
            AttentionKind::None | AttentionKind::Dot => Self::empty(kind),
            AttentionKind::General => Attention {
                key: Some(square(rng, h)),
                ..Self::empty(kind)
            },
            AttentionKind::Additive => {
                // torch's order of creation: query, key, v.
                let query = Some(Linear::new(h, h, rng));
                let key = Some(square(rng, h));
                let v = Some(square(rng, 1));
                Attention {
                    kind,
                    key,
                    query,
                    v,
                }
            }
        }
    }

    fn empty(kind: AttentionKind) -> Self {
        Attention {
            kind,
            key: None,
            query: None,
            v: None,
        }
    }

    /// Rebuilds the attention from its tensors, read by `get(name, shape)`.
    pub fn from_tensors(
        kind: AttentionKind,
        h: usize,
        mut get: impl FnMut(&str, &[usize]) -> Result<Tensor<T>>,
    ) -> Result<Self> {
        let mut pair = |name: &str, shape: &[usize]| -> Result<(Tensor<T>, Tensor<T>)> {
            let w = get(name, shape)?;
            let g = Tensor::zeros(w.shape());
            Ok((w, g))
        };
        Ok(match kind {
            AttentionKind::None | AttentionKind::Dot => Self::empty(kind),
            AttentionKind::General => Attention {
                key: Some(pair("attn.weight", &[h, h])?),
                ..Self::empty(kind)
            },
            AttentionKind::Additive => Attention {
                kind,
                key: Some(pair("attn.key.weight", &[h, h])?),
                v: Some(pair("attn.v.weight", &[1, h])?),
                query: Some(Linear::from_params(
                    get("attn.query.weight", &[h, h])?,
                    get("attn.query.bias", &[h])?,
                )?),
            },
        })
    }

    /// The tensors (name, shape) a checkpoint holds for this kind at width `h`.
    pub fn tensor_shapes(kind: AttentionKind, h: usize) -> Vec<(&'static str, Vec<usize>)> {
        match kind {
            AttentionKind::None | AttentionKind::Dot => vec![],
            AttentionKind::General => vec![("attn.weight", vec![h, h])],
            AttentionKind::Additive => vec![
                ("attn.query.weight", vec![h, h]),
                ("attn.query.bias", vec![h]),
                ("attn.key.weight", vec![h, h]),
                ("attn.v.weight", vec![1, h]),
            ],
        }
    }

    /// The key projection `W_a` (general) or `W_k` (additive) `[H, H]`.
    pub fn key_weight(&self) -> Option<&Tensor<T>> {
        self.key.as_ref().map(|(w, _)| w)
    }

    /// The additive query projection `W_q`, `b_q`.
    pub fn query_params(&self) -> Option<(&Tensor<T>, &Tensor<T>)> {
        self.query.as_ref().map(|l| (&l.weight, &l.bias))
    }

    /// The additive scoring vector `v [1, H]`.
    pub fn v_weight(&self) -> Option<&Tensor<T>> {
        self.v.as_ref().map(|(v, _)| v)
    }

    /// The kind.
    pub fn kind(&self) -> AttentionKind {
        self.kind
    }

    /// The memory of encoder outputs `enc [S, B, H]` with each source's `lengths`.
    pub fn memory(&self, enc: Vec<T>, lengths: &[usize], width: usize) -> Result<Memory<T>> {
        let mut mem = Memory::default();
        self.memory_into(&enc, lengths, width, &mut mem)?;
        Ok(mem)
    }

    /// [`Attention::memory`] into `mem`, reusing its storage.
    pub fn memory_into(
        &self,
        enc: &[T],
        lengths: &[usize],
        width: usize,
        mem: &mut Memory<T>,
    ) -> Result<()> {
        let b = lengths.len();
        if width == 0 || b == 0 || !enc.len().is_multiple_of(b * width) {
            return Err(Error::Shape(format!(
                "attention memory of {} values is not [S, {b}, {width}]",
                enc.len()
            )));
        }
        let steps = enc.len() / (b * width);
        mem.keys.clear();
        if let Some((w, _)) = &self.key {
            mem.keys.resize(enc.len(), T::zero());
            matmul(
                MatMut::dense(&mut mem.keys, steps * b, width),
                MatRef::dense(enc, steps * b, width),
                MatRef::dense(w.data(), width, width).t(),
                false,
            );
        }
        mem.enc.clear();
        mem.enc.extend_from_slice(enc);
        mem.lengths.clear();
        mem.lengths.extend_from_slice(lengths);
        mem.steps = steps;
        mem.width = width;
        Ok(())
    }

    /// Attention of `q [B, H]` over `mem`: writes `ctx [B, H]`, keeps `α` (and the
    /// additive intermediates) in `saved`.
    pub fn forward(&self, mem: &Memory<T>, q: &[T], ctx: &mut [T], saved: &mut StepAttention<T>) {
        let (bs, ss, h) = (mem.batch(), mem.steps, mem.width);
        let keys = mem.keys();
        saved.alpha.clear();
        saved.alpha.resize(bs * ss, T::zero());
        if let Some(query) = &self.query {
            saved.qp.resize(bs * h, T::zero());
            query.forward(q, bs, &mut saved.qp);
            saved.u.clear();
            saved.u.resize(bs * ss * h, T::zero());
        }
        for b in 0..bs {
            let len = mem.lengths[b].min(ss);
            let alpha = &mut saved.alpha[b * ss..][..ss];
            let qb = &q[b * h..][..h];
            for s in 0..len {
                let k = &keys[(s * bs + b) * h..][..h];
                alpha[s] = match (&self.v, self.kind) {
                    (Some((v, _)), AttentionKind::Additive) => {
                        let u = &mut saved.u[(b * ss + s) * h..][..h];
                        let qp = &saved.qp[b * h..][..h];
                        for j in 0..h {
                            u[j] = qp[j] + k[j];
                        }
                        T::tanh_inplace(u);
                        dot(v.data(), u)
                    }
                    _ => dot(qb, k),
                };
            }
            softmax_prefix(alpha, len);
            let c = &mut ctx[b * h..][..h];
            c.fill(T::zero());
            for (s, &a) in alpha.iter().enumerate().take(len) {
                let e = &mem.enc[(s * bs + b) * h..][..h];
                c.iter_mut().zip(e).for_each(|(c, &e)| *c += a * e);
            }
        }
    }

    /// Backward of one [`Attention::forward`]: from `dctx [B, H]` writes `dq [B, H]`,
    /// adds to `d_enc [S, B, H]` (through the context) and `d_keys [S, B, H]` (through
    /// the scores; dot adds both to `d_enc`), and adds the query and `v` gradients.
    #[allow(clippy::too_many_arguments)]
    pub fn backward(
        &mut self,
        mem: &Memory<T>,
        q: &[T],
        saved: &StepAttention<T>,
        dctx: &[T],
        dq: &mut [T],
        d_enc: &mut [T],
        d_keys: &mut [T],
    ) {
        let (bs, ss, h) = (mem.batch(), mem.steps, mem.width);
        let keys = mem.keys();
        // In the thread's pool: a decoder's backward pass runs this at every step.
        let mut dscore = Scratch::<T>::zeroed(ss);
        let mut dqp = Scratch::<T>::zeroed(if self.query.is_some() { bs * h } else { 0 });
        dq.fill(T::zero());
        for b in 0..bs {
            let len = mem.lengths[b].min(ss);
            let alpha = &saved.alpha[b * ss..][..ss];
            let dc = &dctx[b * h..][..h];
            for s in 0..len {
                let row = (s * bs + b) * h;
                dscore[s] = dot(dc, &mem.enc[row..][..h]);
                // ctx = Σ α_s e_s
                let de = &mut d_enc[row..][..h];
                de.iter_mut().zip(dc).for_each(|(d, &g)| *d += alpha[s] * g);
            }
            let mean: T = (0..len).fold(T::zero(), |acc, s| acc + alpha[s] * dscore[s]);
            for s in 0..len {
                dscore[s] = alpha[s] * (dscore[s] - mean);
            }
            let qb = &q[b * h..][..h];
            let dqb = &mut dq[b * h..][..h];
            for (s, &ds) in dscore.iter().enumerate().take(len) {
                let row = (s * bs + b) * h;
                match &mut self.v {
                    Some((v, gv)) => {
                        let u = &saved.u[(b * ss + s) * h..][..h];
                        let dqpb = &mut dqp[b * h..][..h];
                        let dk = &mut d_keys[row..][..h];
                        for j in 0..h {
                            gv.data_mut()[j] += ds * u[j];
                            let du = ds * v.data()[j] * (T::one() - u[j] * u[j]);
                            dqpb[j] += du;
                            dk[j] += du;
                        }
                    }
                    None => {
                        let k = &keys[row..][..h];
                        dqb.iter_mut().zip(k).for_each(|(d, &k)| *d += ds * k);
                        let dk = &mut d_keys[row..][..h];
                        dk.iter_mut().zip(qb).for_each(|(d, &q)| *d += ds * q);
                    }
                }
            }
        }
        if let Some(query) = &mut self.query {
            let mut dq_add = Scratch::<T>::zeroed(bs * h);
            query.backward(q, &dqp, bs, Some(&mut dq_add));
            dq.iter_mut().zip(dq_add.iter()).for_each(|(d, &a)| *d += a);
        }
    }

    /// Takes the keys' gradient gathered over all steps back to the key weights and
    /// adds the encoder outputs' share to `d_enc`.
    pub fn keys_backward(&mut self, mem: &Memory<T>, d_keys: &[T], d_enc: &mut [T]) {
        let (rows, h) = (mem.steps * mem.batch(), mem.width);
        match &mut self.key {
            None => d_enc.iter_mut().zip(d_keys).for_each(|(d, &k)| *d += k),
            Some((w, g)) => {
                let dk = MatRef::dense(d_keys, rows, h);
                matmul(
                    MatMut::dense(g.data_mut(), h, h),
                    dk.t(),
                    MatRef::dense(&mem.enc, rows, h),
                    true,
                );
                matmul(
                    MatMut::dense(d_enc, rows, h),
                    dk,
                    MatRef::dense(w.data(), h, h),
                    true,
                );
            }
        }
    }
}

impl<T: Real> Parameters<T> for Attention<T> {
    /// Names as the PyTorch module, under no prefix: `weight` (general); `query.weight`,
    /// `query.bias`, `key.weight`, `v.weight` (additive).
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        match self.kind {
            AttentionKind::General => f("weight", &self.key.as_ref().expect("general").0),
            AttentionKind::Additive => {
                let q = self.query.as_ref().expect("additive");
                f("query.weight", &q.weight);
                f("query.bias", &q.bias);
                f("key.weight", &self.key.as_ref().expect("additive").0);
                f("v.weight", &self.v.as_ref().expect("additive").0);
            }
            _ => {}
        }
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        let kind = self.kind;
        if let (AttentionKind::Additive, Some(q)) = (kind, &mut self.query) {
            f("query.weight", &mut q.weight, &mut q.grad_weight);
            f("query.bias", &mut q.bias, &mut q.grad_bias);
        }
        if let Some((w, g)) = &mut self.key {
            let name = if kind == AttentionKind::General {
                "weight"
            } else {
                "key.weight"
            };
            f(name, w, g);
        }
        if let Some((v, g)) = &mut self.v {
            f("v.weight", v, g);
        }
    }
}

/// `a · b` in eight interleaved partial sums, which the compiler keeps in one vector
/// register (a single running sum would serialise every addition).
fn dot<T: Real>(a: &[T], b: &[T]) -> T {
    let mut acc = [T::zero(); 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .fold(T::zero(), |s, (&x, &y)| s + x * y);
    for (x, y) in ca.zip(cb) {
        for k in 0..8 {
            acc[k] += x[k] * y[k];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}

/// Softmax over `x[..len]` in place; the rest set to zero.
fn softmax_prefix<T: Real>(x: &mut [T], len: usize) {
    let max = x[..len]
        .iter()
        .fold(T::neg_infinity(), |m, &v| if v > m { v } else { m });
    let mut sum = T::zero();
    for v in &mut x[..len] {
        *v = (*v - max).exp();
        sum += *v;
    }
    x[..len].iter_mut().for_each(|v| *v = *v / sum);
    x[len..].fill(T::zero());
}
