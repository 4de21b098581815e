//! An HMM with categorical emissions: `b_j(k) = P(o_t = k | s_t = j)`, `[K, M]`.

use super::{check_distribution, check_len, Chain, EmSettings, Posteriors};
use crate::error::{Error, Result};
use crate::Rng;

/// A hidden Markov model over the symbols `0..M` (hmmlearn's `CategoricalHMM`).
#[derive(Clone, Debug, PartialEq)]
pub struct DiscreteHmm {
    /// Start and transition probabilities.
    pub chain: Chain,
    /// Emission probabilities `[K, M]`, each row a distribution over the symbols.
    pub emit: Vec<f64>,
    symbols: usize,
}

impl DiscreteHmm {
    /// A model from π `[K]`, A `[K, K]` and B `[K, M]`; every row must be a distribution.
    pub fn new(start: Vec<f64>, trans: Vec<f64>, emit: Vec<f64>) -> Result<Self> {
        let chain = Chain::new(start, trans)?;
        let k = chain.states();
        if emit.is_empty() || !emit.len().is_multiple_of(k) {
            return Err(Error::Shape(format!(
                "emission probabilities hold {} values, not a positive multiple of {k} states",
                emit.len()
            )));
        }
        let symbols = emit.len() / k;
        for (i, row) in emit.chunks(symbols).enumerate() {
            check_distribution(&format!("emission row {i}"), row)?;
        }
        Ok(DiscreteHmm {
            chain,
            emit,
            symbols,
        })
    }

    /// Number of states K.
    pub fn states(&self) -> usize {
        self.chain.states()
    }

    /// Alphabet size M.
    pub fn symbols(&self) -> usize {
        self.symbols
    }

    /// Checks `obs` (non-empty, every symbol in the alphabet) and returns log b_j(o_t), `[T, K]`.
    pub fn log_emissions(&self, obs: &[usize]) -> Result<Vec<f64>> {
        check_len(obs.len())?;
        let (k, m) = (self.states(), self.symbols);
        let mut out = Vec::with_capacity(obs.len() * k);
        for (t, &o) in obs.iter().enumerate() {
            if o >= m {
                return Err(Error::Input(format!(
                    "symbol {o} at position {t} is outside the alphabet of {m} symbols (0..={})",
                    m - 1
                )));
            }
            out.extend((0..k).map(|j| self.emit[j * m + o].ln()));
        }
        Ok(out)
    }

    /// log P(obs | λ) by the scaled forward pass.
    pub fn log_likelihood(&self, obs: &[usize]) -> Result<f64> {
        Ok(self
            .chain
            .forward(&self.log_emissions(obs)?)
            .log_likelihood())
    }

    /// The Viterbi path and its log-probability.
    pub fn viterbi(&self, obs: &[usize]) -> Result<(Vec<usize>, f64)> {
        Ok(self.chain.viterbi(&self.log_emissions(obs)?))
    }

    /// Posterior state probabilities γ `[T, K]` (forward–backward).
    pub fn posteriors(&self, obs: &[usize]) -> Result<Vec<f64>> {
        Ok(self.chain.posteriors(&self.log_emissions(obs)?)?.gamma)
    }

    /// A seeded sample of `n` steps: (observations, states).
    pub fn sample(&self, n: usize, rng: &mut Rng) -> (Vec<usize>, Vec<usize>) {
        let m = self.symbols;
        let states = self.chain.sample_states(n, rng);
        let obs = states
            .iter()
            .map(|&s| Chain::draw(&self.emit[s * m..(s + 1) * m], rng))
            .collect();
        (obs, states)
    }

    /// One Baum–Welch iteration over `seqs`: E-step with the current parameters, then
    /// the M-step (Rabiner eq. 40a–c: b_j(k) ∝ Σ_{t: o_t = k} γ_t(j)). Returns the total
    /// log-likelihood under the parameters before the update.
    pub fn em_step(&mut self, seqs: &[&[usize]]) -> Result<f64> {
        let (k, m) = (self.states(), self.symbols);
        let mut chain_stats = self.chain.new_stats();
        let mut emit_stats = vec![0.0; k * m];
        let mut total = 0.0;
        for (n, obs) in seqs.iter().enumerate() {
            let post: Posteriors = self
                .log_emissions(obs)
                .and_then(|lb| self.chain.posteriors(&lb))
                .map_err(|e| Error::Input(format!("sequence {n}: {e}")))?;
            total += post.log_likelihood;
            self.chain.accumulate(&mut chain_stats, &post);
            for (t, &o) in obs.iter().enumerate() {
                for j in 0..k {
                    emit_stats[j * m + o] += post.gamma[t * k + j];
                }
            }
        }
        self.chain.m_step(&chain_stats);
        for j in 0..k {
            super::normalise_into(
                &emit_stats[j * m..(j + 1) * m],
                &mut self.emit[j * m..(j + 1) * m],
            );
        }
        Ok(total)
    }

    /// Baum–Welch until the log-likelihood gains less than `em.tol` or `em.max_iter`
    /// iterations; returns the log-likelihood before each update (never decreasing).
    pub fn fit(&mut self, seqs: &[&[usize]], em: &EmSettings) -> Result<Vec<f64>> {
        if seqs.is_empty() {
            return Err(Error::Input("EM needs at least one sequence".into()));
        }
        let mut history = Vec::new();
        for _ in 0..em.max_iter {
            let ll = self.em_step(seqs)?;
            let done = history.last().is_some_and(|&prev: &f64| ll - prev < em.tol);
            history.push(ll);
            if done {
                break;
            }
        }
        Ok(history)
    }

    /// Supervised maximum-likelihood estimate from labelled sequences (observations,
    /// states), with additive smoothing `alpha` on every count (π, A and B).
    pub fn estimate(
        seqs: &[(&[usize], &[usize])],
        states: usize,
        symbols: usize,
        alpha: f64,
    ) -> Result<Self> {
        if states == 0 || symbols == 0 {
            return Err(Error::Config(
                "an HMM needs at least one state and one symbol".into(),
            ));
        }
        if !(alpha.is_finite() && alpha >= 0.0) {
            return Err(Error::Config(format!(
                "smoothing must be finite and non-negative, got {alpha}"
            )));
        }
        let (k, m) = (states, symbols);
        let mut start = vec![alpha; k];
        let mut trans = vec![alpha; k * k];
        let mut emit = vec![alpha; k * m];
        for (n, (obs, st)) in seqs.iter().enumerate() {
            check_len(obs.len()).map_err(|e| Error::Input(format!("sequence {n}: {e}")))?;
            if obs.len() != st.len() {
                return Err(Error::Input(format!(
                    "sequence {n}: {} observations but {} states",
                    obs.len(),
                    st.len()
                )));
            }
            for (t, (&o, &s)) in obs.iter().zip(st.iter()).enumerate() {
                if o >= m || s >= k {
                    return Err(Error::Input(format!(
                        "sequence {n}, position {t}: symbol {o} / state {s} outside 0..{m} / 0..{k}"
                    )));
                }
                emit[s * m + o] += 1.0;
                if t == 0 {
                    start[s] += 1.0;
                } else {
                    trans[st[t - 1] * k + s] += 1.0;
                }
            }
        }
        let norm = |v: &mut [f64]| {
            let s: f64 = v.iter().sum();
            // A row never seen (and no smoothing) becomes uniform.
            let n = v.len() as f64;
            v.iter_mut()
                .for_each(|x| *x = if s > 0.0 { *x / s } else { 1.0 / n });
        };
        norm(&mut start);
        trans.chunks_mut(k).for_each(norm);
        emit.chunks_mut(m).for_each(norm);
        DiscreteHmm::new(start, trans, emit)
    }
}
