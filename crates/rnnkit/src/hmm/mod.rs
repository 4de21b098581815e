//! Hidden Markov models, trained by their own EM (not a trainer task): the Markov
//! chain shared by every emission kind (forward–backward with scaling, Viterbi in log
//! space, the Baum–Welch statistics), categorical ([`discrete`]) and diagonal
//! Gaussian ([`gaussian`]) emissions, a per-class Gaussian-HMM sequence classifier
//! ([`classifier`]) and a TnT-style trigram part-of-speech tagger ([`tagger`]).
//!
//! Notation (Rabiner 1989): `K` states, start probabilities π, transitions
//! `a_ij = P(s_{t+1}=j | s_t=i)` stored row-major `[K, K]`, emission log-densities
//! `log b_j(o_t)` given as a `[T, K]` matrix. All arithmetic is f64.

pub mod classifier;
pub mod discrete;
pub mod gaussian;
pub mod tagger;

use crate::error::{Error, Result};

pub use classifier::{HmmClassifier, HmmClassifierConfig};
pub use discrete::DiscreteHmm;
pub use gaussian::GaussianHmm;
pub use tagger::{HmmTagger, HmmTaggerConfig};

/// How far a stored probability row may sum from 1.
pub const SUM_TOLERANCE: f64 = 1e-5;

/// Checks that `p` is a probability distribution (finite, non-negative, sums to 1);
/// `what` names it in the error.
pub fn check_distribution(what: &str, p: &[f64]) -> Result<()> {
    if let Some(i) = p.iter().position(|v| !(v.is_finite() && *v >= 0.0)) {
        return Err(Error::Input(format!(
            "{what}: entry {i} is {}, not a probability",
            p[i]
        )));
    }
    let sum: f64 = p.iter().sum();
    if (sum - 1.0).abs() > SUM_TOLERANCE {
        return Err(Error::Input(format!(
            "{what}: probabilities sum to {sum}, not 1"
        )));
    }
    Ok(())
}

/// log Σ exp(x), exact for all-−∞ input (−∞).
pub fn log_sum_exp(x: &[f64]) -> f64 {
    let m = x.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + x.iter().map(|v| (v - m).exp()).sum::<f64>().ln()
}

/// The hidden Markov chain: start probabilities and transitions.
#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    /// π, `[K]`.
    pub start: Vec<f64>,
    /// `a_ij`, `[K, K]` row-major (row i: from state i).
    pub trans: Vec<f64>,
}

/// The scaled forward pass: `alpha[t]` sums to 1, `log_scale[t] = log c_t`.
#[derive(Clone, Debug)]
pub struct Forward {
    /// α̂, `[T, K]`.
    pub alpha: Vec<f64>,
    /// log c_t, `[T]`; log P(O) = Σ_t log c_t.
    pub log_scale: Vec<f64>,
}

impl Forward {
    /// log P(O | λ).
    pub fn log_likelihood(&self) -> f64 {
        self.log_scale.iter().sum()
    }
}

/// What one sequence contributes to the Baum–Welch M-step.
#[derive(Clone, Debug)]
pub struct Posteriors {
    /// log P(O | λ).
    pub log_likelihood: f64,
    /// γ_t(i) = P(s_t = i | O), `[T, K]`.
    pub gamma: Vec<f64>,
    /// Σ_t ξ_t(i, j) = Σ_t P(s_t = i, s_{t+1} = j | O), `[K, K]`.
    pub xi_sum: Vec<f64>,
}

/// Expected counts of the chain summed over sequences.
#[derive(Clone, Debug)]
pub struct ChainStats {
    /// Σ γ_1(i).
    pub start: Vec<f64>,
    /// Σ ξ(i, j).
    pub trans: Vec<f64>,
}

impl Chain {
    /// A chain from π `[K]` and A `[K, K]`, each row checked to be a distribution.
    pub fn new(start: Vec<f64>, trans: Vec<f64>) -> Result<Self> {
        let k = start.len();
        if k == 0 {
            return Err(Error::Input("an HMM needs at least one state".into()));
        }
        if trans.len() != k * k {
            return Err(Error::Shape(format!(
                "transitions hold {} values; {k} states need {k}×{k}",
                trans.len()
            )));
        }
        check_distribution("start probabilities", &start)?;
        for (i, row) in trans.chunks(k).enumerate() {
            check_distribution(&format!("transition row {i}"), row)?;
        }
        Ok(Chain { start, trans })
    }

    /// Number of states K.
    pub fn states(&self) -> usize {
        self.start.len()
    }

    /// The scaled forward pass (Rabiner eq. 19–20 with scaling, eq. 91–92):
    /// α̂_1(i) ∝ π_i b_i(o_1), α̂_t(j) ∝ [Σ_i α̂_{t-1}(i) a_ij] b_j(o_t), each row
    /// normalised by c_t. Emissions enter as exp(log b − max_j log b) so that no
    /// density under- or overflows; the max goes back into log c_t. An impossible
    /// sequence gives log c_t = −∞ from that step on.
    pub fn forward(&self, log_b: &[f64]) -> Forward {
        let k = self.states();
        let t_len = log_b.len() / k;
        let mut alpha = vec![0.0; t_len * k];
        let mut log_scale = vec![0.0; t_len];
        let mut b = vec![0.0; k];
        for t in 0..t_len {
            let m = scaled_emissions(&log_b[t * k..(t + 1) * k], &mut b);
            let (prev, cur) = alpha.split_at_mut(t * k);
            let cur = &mut cur[..k];
            if t == 0 {
                for j in 0..k {
                    cur[j] = self.start[j] * b[j];
                }
            } else {
                let prev = &prev[(t - 1) * k..];
                cur.fill(0.0);
                for (i, &p) in prev.iter().enumerate() {
                    if p != 0.0 {
                        for (c, a) in cur.iter_mut().zip(&self.trans[i * k..(i + 1) * k]) {
                            *c += p * a;
                        }
                    }
                }
                for j in 0..k {
                    cur[j] *= b[j];
                }
            }
            let c: f64 = cur.iter().sum();
            if c > 0.0 && c.is_finite() && m.is_finite() {
                cur.iter_mut().for_each(|v| *v /= c);
                log_scale[t] = m + c.ln();
            } else {
                log_scale[t..].fill(f64::NEG_INFINITY);
                return Forward { alpha, log_scale };
            }
        }
        Forward { alpha, log_scale }
    }

    /// The scaled backward pass with the forward scales (Rabiner eq. 24–25, 93–94):
    /// β̂_T(i) = 1, β̂_t(i) = Σ_j a_ij b_j(o_{t+1}) β̂_{t+1}(j) / c_{t+1}. `log_b` and
    /// `fwd` must describe a possible sequence (finite log-likelihood).
    pub fn backward(&self, log_b: &[f64], fwd: &Forward) -> Vec<f64> {
        let k = self.states();
        let t_len = log_b.len() / k;
        let mut beta = vec![0.0; t_len * k];
        if t_len == 0 {
            return beta;
        }
        beta[(t_len - 1) * k..].fill(1.0);
        let mut b = vec![0.0; k];
        for t in (0..t_len - 1).rev() {
            let m = scaled_emissions(&log_b[(t + 1) * k..(t + 2) * k], &mut b);
            // b carries exp(−m); c_{t+1} carries exp(m): divide by c / exp(m).
            let inv = 1.0 / (fwd.log_scale[t + 1] - m).exp();
            let (cur, next) = beta.split_at_mut((t + 1) * k);
            let next = &next[..k];
            for i in 0..k {
                let row = &self.trans[i * k..(i + 1) * k];
                let s: f64 = (0..k).map(|j| row[j] * b[j] * next[j]).sum();
                cur[t * k + i] = s * inv;
            }
        }
        beta
    }

    /// γ and Σ ξ of one sequence (Rabiner eq. 27 and 37): γ_t(i) = α̂_t(i) β̂_t(i),
    /// ξ_t(i,j) = α̂_t(i) a_ij b_j(o_{t+1}) β̂_{t+1}(j) / c_{t+1}. Errors when the
    /// sequence has probability 0 under the model.
    pub fn posteriors(&self, log_b: &[f64]) -> Result<Posteriors> {
        let k = self.states();
        let t_len = log_b.len() / k;
        let fwd = self.forward(log_b);
        let ll = fwd.log_likelihood();
        if !ll.is_finite() {
            return Err(Error::Input(
                "the sequence has probability 0 under the model".into(),
            ));
        }
        let beta = self.backward(log_b, &fwd);
        let mut gamma: Vec<f64> = fwd.alpha.iter().zip(&beta).map(|(a, b)| a * b).collect();
        for row in gamma.chunks_mut(k) {
            let s: f64 = row.iter().sum();
            if s > 0.0 {
                row.iter_mut().for_each(|v| *v /= s);
            }
        }
        let mut xi_sum = vec![0.0; k * k];
        let mut b = vec![0.0; k];
        for t in 0..t_len.saturating_sub(1) {
            let m = scaled_emissions(&log_b[(t + 1) * k..(t + 2) * k], &mut b);
            let inv = 1.0 / (fwd.log_scale[t + 1] - m).exp();
            let next = &beta[(t + 1) * k..(t + 2) * k];
            for i in 0..k {
                let a = fwd.alpha[t * k + i] * inv;
                if a == 0.0 {
                    continue;
                }
                for j in 0..k {
                    xi_sum[i * k + j] += a * self.trans[i * k + j] * b[j] * next[j];
                }
            }
        }
        Ok(Posteriors {
            log_likelihood: ll,
            gamma,
            xi_sum,
        })
    }

    /// The most probable state path and its log-probability (Viterbi, Rabiner eq. 105:
    /// δ_t(j) = max_i [δ_{t-1}(i) + log a_ij] + log b_j(o_t), in log space).
    pub fn viterbi(&self, log_b: &[f64]) -> (Vec<usize>, f64) {
        let k = self.states();
        let t_len = log_b.len() / k;
        if t_len == 0 {
            return (Vec::new(), 0.0);
        }
        let log_a: Vec<f64> = self.trans.iter().map(|a| a.ln()).collect();
        let mut delta: Vec<f64> = (0..k).map(|j| self.start[j].ln() + log_b[j]).collect();
        let mut back = vec![0usize; t_len * k];
        let mut next = vec![0.0; k];
        for t in 1..t_len {
            for j in 0..k {
                let (mut best, mut arg) = (f64::NEG_INFINITY, 0);
                for i in 0..k {
                    let v = delta[i] + log_a[i * k + j];
                    if v > best {
                        (best, arg) = (v, i);
                    }
                }
                next[j] = best + log_b[t * k + j];
                back[t * k + j] = arg;
            }
            std::mem::swap(&mut delta, &mut next);
        }
        let (mut s, mut score) = (0, f64::NEG_INFINITY);
        for (j, &d) in delta.iter().enumerate() {
            if d > score {
                (s, score) = (j, d);
            }
        }
        let mut path = vec![0; t_len];
        for t in (0..t_len).rev() {
            path[t] = s;
            s = back[t * k + s];
        }
        (path, score)
    }

    /// Empty expected counts for this chain.
    pub fn new_stats(&self) -> ChainStats {
        let k = self.states();
        ChainStats {
            start: vec![0.0; k],
            trans: vec![0.0; k * k],
        }
    }

    /// Adds one sequence's γ_1 and Σ ξ to `stats`.
    pub fn accumulate(&self, stats: &mut ChainStats, post: &Posteriors) {
        let k = self.states();
        for (s, g) in stats.start.iter_mut().zip(&post.gamma[..k]) {
            *s += g;
        }
        for (s, x) in stats.trans.iter_mut().zip(&post.xi_sum) {
            *s += x;
        }
    }

    /// The M-step of the chain (Rabiner eq. 40a–b): π_i ∝ Σ γ_1(i), a_ij ∝ Σ ξ(i, j).
    /// A row with no expected count keeps its old values.
    pub fn m_step(&mut self, stats: &ChainStats) {
        let k = self.states();
        normalise_into(&stats.start, &mut self.start);
        for i in 0..k {
            normalise_into(
                &stats.trans[i * k..(i + 1) * k],
                &mut self.trans[i * k..(i + 1) * k],
            );
        }
    }

    /// Draws a state from row `probs` with one uniform number.
    pub(crate) fn draw(probs: &[f64], rng: &mut crate::Rng) -> usize {
        let u = rng.uniform();
        let mut acc = 0.0;
        for (i, p) in probs.iter().enumerate() {
            acc += p;
            if u < acc {
                return i;
            }
        }
        // Rounding left the sum just under u: take the last state with mass.
        probs.iter().rposition(|&p| p > 0.0).unwrap_or(0)
    }

    /// A seeded state path of length `n` (π, then a_ij).
    pub fn sample_states(&self, n: usize, rng: &mut crate::Rng) -> Vec<usize> {
        let k = self.states();
        let mut states = Vec::with_capacity(n);
        for t in 0..n {
            let s = if t == 0 {
                Self::draw(&self.start, rng)
            } else {
                let p = states[t - 1];
                Self::draw(&self.trans[p * k..(p + 1) * k], rng)
            };
            states.push(s);
        }
        states
    }
}

/// Writes exp(log_b − max) into `b`; returns the max (−∞ when every state is impossible).
fn scaled_emissions(log_b: &[f64], b: &mut [f64]) -> f64 {
    let m = log_b.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    for (o, &l) in b.iter_mut().zip(log_b) {
        *o = if m.is_finite() { (l - m).exp() } else { 0.0 };
    }
    m
}

/// `dst = counts / Σ counts`, unless the counts sum to 0 (then `dst` is kept).
pub(crate) fn normalise_into(counts: &[f64], dst: &mut [f64]) {
    let s: f64 = counts.iter().sum();
    if s > 0.0 && s.is_finite() {
        for (d, c) in dst.iter_mut().zip(counts) {
            *d = c / s;
        }
    }
}

/// Checks a sequence before any model reads it: at least one step.
pub(crate) fn check_len(t_len: usize) -> Result<()> {
    if t_len == 0 {
        return Err(Error::Input(
            "a sequence has no steps; an HMM needs at least one observation".into(),
        ));
    }
    Ok(())
}

/// EM settings shared by the models.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmSettings {
    /// Most EM iterations.
    pub max_iter: usize,
    /// Stop when the total log-likelihood gains less than this.
    pub tol: f64,
}

impl Default for EmSettings {
    fn default() -> Self {
        EmSettings {
            max_iter: 100,
            tol: 1e-4,
        }
    }
}
