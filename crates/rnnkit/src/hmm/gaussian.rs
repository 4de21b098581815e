//! An HMM with diagonal Gaussian emissions:
//! log b_j(o) = −½ Σ_d [log(2π σ²_jd) + (o_d − μ_jd)² / σ²_jd].

use super::{check_len, Chain, EmSettings};
use crate::error::{Error, Result};
use crate::Rng;

/// A hidden Markov model over `D`-dimensional real observations (hmmlearn's
/// `GaussianHMM` with `covariance_type="diag"`). Observations are `[T, D]` row-major.
#[derive(Clone, Debug, PartialEq)]
pub struct GaussianHmm {
    /// Start and transition probabilities.
    pub chain: Chain,
    /// μ, `[K, D]`.
    pub means: Vec<f64>,
    /// σ², `[K, D]`, all positive.
    pub vars: Vec<f64>,
    dims: usize,
}

impl GaussianHmm {
    /// A model from π `[K]`, A `[K, K]`, means and variances `[K, D]`.
    pub fn new(start: Vec<f64>, trans: Vec<f64>, means: Vec<f64>, vars: Vec<f64>) -> Result<Self> {
        let chain = Chain::new(start, trans)?;
        let k = chain.states();
        if means.is_empty() || !means.len().is_multiple_of(k) || vars.len() != means.len() {
            return Err(Error::Shape(format!(
                "means ({}) and variances ({}) must both hold K×D values for K = {k}",
                means.len(),
                vars.len()
            )));
        }
        if let Some(i) = means.iter().position(|v| !v.is_finite()) {
            return Err(Error::Input(format!("mean {i} is {}", means[i])));
        }
        if let Some(i) = vars.iter().position(|v| !(v.is_finite() && *v > 0.0)) {
            return Err(Error::Input(format!(
                "variance {i} is {}; variances must be positive",
                vars[i]
            )));
        }
        let dims = means.len() / k;
        Ok(GaussianHmm {
            chain,
            means,
            vars,
            dims,
        })
    }

    /// Number of states K.
    pub fn states(&self) -> usize {
        self.chain.states()
    }

    /// Observation width D.
    pub fn dims(&self) -> usize {
        self.dims
    }

    /// Checks `obs` (`[T, D]`, T ≥ 1, all finite) and returns log b_j(o_t), `[T, K]`.
    pub fn log_emissions(&self, obs: &[f64]) -> Result<Vec<f64>> {
        let (k, d) = (self.states(), self.dims);
        check_observations(obs, d)?;
        let ln2pi = (2.0 * std::f64::consts::PI).ln();
        // Per state: −½ Σ_d log(2π σ²_jd), computed once.
        let norm: Vec<f64> = (0..k)
            .map(|j| {
                -0.5 * self.vars[j * d..(j + 1) * d]
                    .iter()
                    .map(|v| ln2pi + v.ln())
                    .sum::<f64>()
            })
            .collect();
        let mut out = Vec::with_capacity(obs.len() / d * k);
        for x in obs.chunks(d) {
            for (j, nj) in norm.iter().enumerate() {
                let (mu, var) = (
                    &self.means[j * d..(j + 1) * d],
                    &self.vars[j * d..(j + 1) * d],
                );
                let q: f64 = (0..d).map(|i| (x[i] - mu[i]).powi(2) / var[i]).sum();
                out.push(nj - 0.5 * q);
            }
        }
        Ok(out)
    }

    /// log P(obs | λ) by the scaled forward pass.
    pub fn log_likelihood(&self, obs: &[f64]) -> Result<f64> {
        Ok(self
            .chain
            .forward(&self.log_emissions(obs)?)
            .log_likelihood())
    }

    /// The Viterbi path and its log-probability (density).
    pub fn viterbi(&self, obs: &[f64]) -> Result<(Vec<usize>, f64)> {
        Ok(self.chain.viterbi(&self.log_emissions(obs)?))
    }

    /// Posterior state probabilities γ `[T, K]` (forward–backward).
    pub fn posteriors(&self, obs: &[f64]) -> Result<Vec<f64>> {
        Ok(self.chain.posteriors(&self.log_emissions(obs)?)?.gamma)
    }

    /// A seeded sample of `n` steps: (observations `[n, D]`, states).
    pub fn sample(&self, n: usize, rng: &mut Rng) -> (Vec<f64>, Vec<usize>) {
        let d = self.dims;
        let states = self.chain.sample_states(n, rng);
        let mut obs = Vec::with_capacity(n * d);
        for &s in &states {
            for i in 0..d {
                obs.push(self.means[s * d + i] + self.vars[s * d + i].sqrt() * rng.normal());
            }
        }
        (obs, states)
    }

    /// A seeded starting point from data, as hmmlearn initialises: means by k-means
    /// (k-means++ seeding, 20 Lloyd rounds) over every frame, each state's variances
    /// the variances of all frames (at least `min_var`), π and A uniform.
    pub fn init_from_data(
        seqs: &[&[f64]],
        states: usize,
        dims: usize,
        min_var: f64,
        rng: &mut Rng,
    ) -> Result<Self> {
        if states == 0 || dims == 0 {
            return Err(Error::Config(
                "a Gaussian HMM needs at least one state and one dimension".into(),
            ));
        }
        for (n, s) in seqs.iter().enumerate() {
            check_observations(s, dims).map_err(|e| Error::Input(format!("sequence {n}: {e}")))?;
        }
        let frames: Vec<&[f64]> = seqs.iter().flat_map(|s| s.chunks(dims)).collect();
        if frames.len() < states {
            return Err(Error::Input(format!(
                "{} frames cannot initialise {states} states",
                frames.len()
            )));
        }
        let dist =
            |a: &[f64], b: &[f64]| -> f64 { a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum() };
        // k-means++: each next centre drawn with probability ∝ squared distance.
        let mut centres: Vec<Vec<f64>> = vec![frames[rng.below(frames.len())].to_vec()];
        let mut d2: Vec<f64> = frames.iter().map(|f| dist(f, &centres[0])).collect();
        while centres.len() < states {
            let total: f64 = d2.iter().sum();
            let pick = if total > 0.0 {
                let u = rng.uniform() * total;
                let mut acc = 0.0;
                d2.iter()
                    .position(|&v| {
                        acc += v;
                        u < acc
                    })
                    .unwrap_or(frames.len() - 1)
            } else {
                rng.below(frames.len())
            };
            centres.push(frames[pick].to_vec());
            for (v, f) in d2.iter_mut().zip(&frames) {
                *v = v.min(dist(f, centres.last().expect("one centre")));
            }
        }
        let mut assign = vec![0usize; frames.len()];
        for _ in 0..20 {
            for (a, f) in assign.iter_mut().zip(&frames) {
                *a = (0..states)
                    .min_by(|&i, &j| dist(f, &centres[i]).total_cmp(&dist(f, &centres[j])))
                    .expect("states > 0");
            }
            let mut sums = vec![vec![0.0; dims]; states];
            let mut counts = vec![0usize; states];
            for (a, f) in assign.iter().zip(&frames) {
                counts[*a] += 1;
                sums[*a].iter_mut().zip(f.iter()).for_each(|(s, x)| *s += x);
            }
            for j in 0..states {
                // An empty cluster keeps its centre.
                if counts[j] > 0 {
                    centres[j] = sums[j].iter().map(|s| s / counts[j] as f64).collect();
                }
            }
        }
        let n = frames.len() as f64;
        let mean: Vec<f64> = (0..dims)
            .map(|i| frames.iter().map(|f| f[i]).sum::<f64>() / n)
            .collect();
        let var: Vec<f64> = (0..dims)
            .map(|i| {
                (frames.iter().map(|f| (f[i] - mean[i]).powi(2)).sum::<f64>() / n)
                    .max(min_var.max(1e-12))
            })
            .collect();
        let k = states;
        GaussianHmm::new(
            vec![1.0 / k as f64; k],
            vec![1.0 / k as f64; k * k],
            centres.concat(),
            var.repeat(k),
        )
    }

    /// One Baum–Welch iteration over `seqs`: E-step with the current parameters, then
    /// the M-step μ_j = Σ_t γ_t(j) o_t / Σ_t γ_t(j), σ²_j = Σ_t γ_t(j) (o_t − μ_j)² /
    /// Σ_t γ_t(j) (Rabiner eq. 53), each variance at least `min_var`. Returns the total
    /// log-likelihood under the parameters before the update.
    pub fn em_step(&mut self, seqs: &[&[f64]], min_var: f64) -> Result<f64> {
        let (k, d) = (self.states(), self.dims);
        let mut chain_stats = self.chain.new_stats();
        let mut post_sum = vec![0.0; k];
        let mut obs_sum = vec![0.0; k * d];
        let mut obs_sq = vec![0.0; k * d];
        let mut total = 0.0;
        for (n, obs) in seqs.iter().enumerate() {
            let post = self
                .log_emissions(obs)
                .and_then(|lb| self.chain.posteriors(&lb))
                .map_err(|e| Error::Input(format!("sequence {n}: {e}")))?;
            total += post.log_likelihood;
            self.chain.accumulate(&mut chain_stats, &post);
            for (x, g) in obs.chunks(d).zip(post.gamma.chunks(k)) {
                for j in 0..k {
                    post_sum[j] += g[j];
                    for i in 0..d {
                        obs_sum[j * d + i] += g[j] * x[i];
                        obs_sq[j * d + i] += g[j] * x[i] * x[i];
                    }
                }
            }
        }
        self.chain.m_step(&chain_stats);
        for j in 0..k {
            // A state no frame visits keeps its emission.
            if post_sum[j] <= 0.0 {
                continue;
            }
            for i in 0..d {
                let mu = obs_sum[j * d + i] / post_sum[j];
                // Σγ(o−μ)² = Σγo² − 2μΣγo + μ²Σγ, as hmmlearn computes it.
                let c = obs_sq[j * d + i] - 2.0 * mu * obs_sum[j * d + i] + mu * mu * post_sum[j];
                self.means[j * d + i] = mu;
                self.vars[j * d + i] = (c / post_sum[j]).max(min_var).max(f64::MIN_POSITIVE);
            }
        }
        Ok(total)
    }

    /// Baum–Welch until the log-likelihood gains less than `em.tol` or `em.max_iter`
    /// iterations; returns the log-likelihood before each update.
    pub fn fit(&mut self, seqs: &[&[f64]], em: &EmSettings, min_var: f64) -> Result<Vec<f64>> {
        if seqs.is_empty() {
            return Err(Error::Input("EM needs at least one sequence".into()));
        }
        let mut history = Vec::new();
        for _ in 0..em.max_iter {
            let ll = self.em_step(seqs, min_var)?;
            let done = history.last().is_some_and(|&prev: &f64| ll - prev < em.tol);
            history.push(ll);
            if done {
                break;
            }
        }
        Ok(history)
    }
}

/// Checks a `[T, D]` observation matrix: T ≥ 1, whole rows, every value finite.
pub(crate) fn check_observations(obs: &[f64], dims: usize) -> Result<()> {
    check_len(obs.len())?;
    if dims == 0 || !obs.len().is_multiple_of(dims) {
        return Err(Error::Shape(format!(
            "{} values are not whole steps of {dims} features",
            obs.len()
        )));
    }
    if let Some(i) = obs.iter().position(|v| !v.is_finite()) {
        return Err(Error::Input(format!(
            "feature {} of step {} is {}; HMM features must be finite",
            i % dims,
            i / dims,
            obs[i]
        )));
    }
    Ok(())
}
