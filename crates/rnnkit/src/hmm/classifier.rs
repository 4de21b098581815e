//! Sequence classification by one Gaussian HMM per class: each class's model is
//! trained by Baum–Welch on that class's series alone, and a series goes to the class
//! whose model gives it the highest likelihood (P(class | O) ∝ P(O | λ_class) with
//! equal priors).

use super::{EmSettings, GaussianHmm};
use crate::checkpoint::{self, CheckpointSource, TensorFile};
use crate::data::{Series, TsDataset};
use crate::error::{Error, Result};
use crate::task::classifier::ClassScores;
use crate::tensor::Tensor;
use crate::Rng;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// The `rnnkit.task` of an HMM classifier checkpoint.
pub const TASK: &str = "classify-hmm";
const META_LABELS: &str = "rnnkit.labels";
const META_CONFIG: &str = "rnnkit.config";

/// How the per-class HMMs are built and trained.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HmmClassifierConfig {
    /// Hidden states per class.
    pub states: usize,
    /// Most Baum–Welch iterations per class.
    pub em_iters: usize,
    /// Stop a class's EM when its log-likelihood gains less than this.
    pub tol: f64,
    /// Smallest variance of a standardised feature.
    pub min_var: f64,
    /// Seed of the k-means initialisation.
    pub seed: u64,
}

impl Default for HmmClassifierConfig {
    fn default() -> Self {
        HmmClassifierConfig {
            states: 5,
            em_iters: 100,
            tol: 1e-3,
            min_var: 1e-3,
            seed: 1,
        }
    }
}

/// How one class's model was trained.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassFit {
    /// The class name.
    pub label: String,
    /// Training series of the class.
    pub cases: usize,
    /// EM iterations run.
    pub iterations: usize,
    /// Total log-likelihood of the class's series at the last iteration.
    pub log_likelihood: f64,
}

/// One Gaussian HMM per class over standardised features.
#[derive(Clone, Debug, PartialEq)]
pub struct HmmClassifier {
    /// Class names; index = class id.
    pub labels: Vec<String>,
    /// Per-channel mean of the training data.
    pub mean: Vec<f64>,
    /// Per-channel standard deviation of the training data (positive).
    pub std: Vec<f64>,
    /// One model per class.
    pub models: Vec<GaussianHmm>,
    /// The configuration trained with.
    pub config: HmmClassifierConfig,
}

impl HmmClassifier {
    /// Trains one model per class of `data` on the cases `idx`; `on_class` hears
    /// about each class as it finishes.
    pub fn train(
        data: &TsDataset,
        idx: &[usize],
        config: &HmmClassifierConfig,
        on_class: &mut dyn FnMut(&ClassFit),
    ) -> Result<Self> {
        if config.states == 0 || config.em_iters == 0 {
            return Err(Error::Config(
                "HMM states and EM iterations must be at least 1".into(),
            ));
        }
        if !(config.min_var.is_finite() && config.min_var > 0.0) {
            return Err(Error::Config(format!(
                "the variance floor must be positive, got {}",
                config.min_var
            )));
        }
        let d = data.channels;
        let cases: Vec<&Series> = idx.iter().map(|&i| &data.cases[i]).collect();
        let (mean, std) = standardiser(&cases, d)?;
        let mut me = HmmClassifier {
            labels: data.labels.clone(),
            mean,
            std,
            models: Vec::new(),
            config: config.clone(),
        };
        let mut rng = Rng::new(config.seed);
        let em = EmSettings {
            max_iter: config.em_iters,
            tol: config.tol,
        };
        for (c, label) in data.labels.iter().enumerate() {
            let seqs: Vec<Vec<f64>> = cases
                .iter()
                .filter(|s| s.label == c)
                .map(|s| me.features(s))
                .collect::<Result<_>>()?;
            if seqs.is_empty() {
                return Err(Error::Input(format!(
                    "class {label:?} has no training series; every class needs one"
                )));
            }
            let refs: Vec<&[f64]> = seqs.iter().map(|s| s.as_slice()).collect();
            let states = config.states;
            let mut model = GaussianHmm::init_from_data(&refs, states, d, config.min_var, &mut rng)
                .map_err(|e| Error::Input(format!("class {label:?}: {e}")))?;
            let history = model
                .fit(&refs, &em, config.min_var)
                .map_err(|e| Error::Input(format!("class {label:?}: {e}")))?;
            on_class(&ClassFit {
                label: label.clone(),
                cases: seqs.len(),
                iterations: history.len(),
                log_likelihood: history.last().copied().unwrap_or(f64::NAN),
            });
            me.models.push(model);
        }
        Ok(me)
    }

    /// Channels per step.
    pub fn channels(&self) -> usize {
        self.mean.len()
    }

    /// The standardised `[T, D]` features of `s`, checked (non-empty, finite).
    pub fn features(&self, s: &Series) -> Result<Vec<f64>> {
        let d = self.channels();
        if s.values.len() != s.len * d {
            return Err(Error::Shape(format!(
                "a series of {} steps holds {} values, not {} × {d} channels",
                s.len,
                s.values.len(),
                s.len
            )));
        }
        let x: Vec<f64> = s
            .values
            .iter()
            .enumerate()
            .map(|(i, &v)| (v as f64 - self.mean[i % d]) / self.std[i % d])
            .collect();
        super::gaussian::check_observations(&x, d)?;
        Ok(x)
    }

    /// log P(O | λ_c) for every class c.
    pub fn log_likelihoods(&self, s: &Series) -> Result<Vec<f64>> {
        let x = self.features(s)?;
        self.models.iter().map(|m| m.log_likelihood(&x)).collect()
    }

    /// The class of highest likelihood and P(class | O) under equal priors.
    pub fn predict(&self, s: &Series) -> Result<(usize, Vec<f64>)> {
        let ll = self.log_likelihoods(s)?;
        let z = super::log_sum_exp(&ll);
        let proba: Vec<f64> = if z.is_finite() {
            ll.iter().map(|l| (l - z).exp()).collect()
        } else {
            // Every class gives the series probability 0 (or a density that overflows):
            // no class is preferred.
            vec![1.0 / ll.len() as f64; ll.len()]
        };
        let best = argmax(&ll);
        Ok((best, proba))
    }

    /// Mean cross-entropy of P(class | O) and the scores on labelled `cases`.
    pub fn evaluate(&self, cases: &[&Series]) -> Result<(f64, ClassScores)> {
        let k = self.labels.len();
        let (mut truth, mut pred) = (Vec::new(), Vec::new());
        let mut loss = 0.0;
        for (n, s) in cases.iter().enumerate() {
            let (p, proba) = self
                .predict(s)
                .map_err(|e| Error::Input(format!("case {}: {e}", n + 1)))?;
            if s.label >= k {
                return Err(Error::Input(format!(
                    "case {}: label {} ≥ {k}",
                    n + 1,
                    s.label
                )));
            }
            loss -= proba[s.label].max(f64::MIN_POSITIVE).ln();
            truth.push(s.label);
            pred.push(p);
        }
        Ok((
            loss / cases.len().max(1) as f64,
            ClassScores::new(&truth, &pred, k),
        ))
    }

    /// Writes the checkpoint atomically: `start [C, K]`, `transition [C, K, K]`,
    /// `means`/`vars [C, K, D]`, `norm.mean`/`norm.std [D]` (f64), labels and
    /// configuration in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (c, k, d) = (self.models.len(), self.config.states, self.channels());
        let cat = |f: &dyn Fn(&GaussianHmm) -> &[f64]| -> Vec<f64> {
            self.models
                .iter()
                .flat_map(|m| f(m).iter().copied())
                .collect()
        };
        let tensors = [
            (
                "start",
                Tensor::from_vec(&[c, k], cat(&|m| &m.chain.start))?,
            ),
            (
                "transition",
                Tensor::from_vec(&[c, k, k], cat(&|m| &m.chain.trans))?,
            ),
            ("means", Tensor::from_vec(&[c, k, d], cat(&|m| &m.means))?),
            ("vars", Tensor::from_vec(&[c, k, d], cat(&|m| &m.vars))?),
            ("norm.mean", Tensor::from_vec(&[d], self.mean.clone())?),
            ("norm.std", Tensor::from_vec(&[d], self.std.clone())?),
        ];
        let refs: Vec<(String, &Tensor<f64>)> =
            tensors.iter().map(|(n, t)| (n.to_string(), t)).collect();
        let mut meta = HashMap::new();
        meta.insert(crate::task::META_TASK.to_string(), TASK.to_string());
        meta.insert(
            META_LABELS.to_string(),
            serde_json::to_string(&self.labels).expect("strings"),
        );
        meta.insert(
            META_CONFIG.to_string(),
            serde_json::to_string(&self.config).expect("config"),
        );
        checkpoint::save(path, &refs, &meta)
    }

    /// Reads a checkpoint written by [`HmmClassifier::save`]: every shape is checked
    /// from the header before anything is read, then every probability row and variance.
    pub fn load(source: impl CheckpointSource) -> Result<Self> {
        let file = source.open()?;
        crate::task::expect_task(&file, TASK)?;
        let labels: Vec<String> = crate::task::meta_json(&file, META_LABELS)?;
        let config: HmmClassifierConfig = crate::task::meta_json(&file, META_CONFIG)?;
        let shape = file
            .shape("means")
            .ok_or_else(|| file.error("tensor `means` is missing"))?;
        let [c, k, d] = shape[..] else {
            return Err(file.error(format!(
                "tensor `means` must be [classes, states, channels], got {shape:?}"
            )));
        };
        if c != labels.len() || c < 2 {
            return Err(file.error(format!(
                "tensor `means` holds {c} classes but metadata `{META_LABELS}` names {} (at least 2 needed)",
                labels.len()
            )));
        }
        if k != config.states || k == 0 || d == 0 {
            return Err(file.error(format!(
                "tensor `means` has {k} states and {d} channels; metadata `{META_CONFIG}` says {} states",
                config.states
            )));
        }
        for (name, s) in [
            ("start", vec![c, k]),
            ("transition", vec![c, k, k]),
            ("vars", vec![c, k, d]),
            ("norm.mean", vec![d]),
            ("norm.std", vec![d]),
        ] {
            file.expect_float(name, &s)?;
        }
        let get =
            |name: &str| -> Result<Vec<f64>> { Ok(file.get::<f64>(name, None)?.data().to_vec()) };
        let (start, trans, means, vars) = (
            get("start")?,
            get("transition")?,
            get("means")?,
            get("vars")?,
        );
        let (mean, std) = (get("norm.mean")?, get("norm.std")?);
        if let Some(i) = std.iter().position(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(file.error(format!("`norm.std` entry {i} must be positive")));
        }
        if let Some(i) = mean.iter().position(|s| !s.is_finite()) {
            return Err(file.error(format!("`norm.mean` entry {i} must be finite")));
        }
        let models = (0..c)
            .map(|j| {
                GaussianHmm::new(
                    start[j * k..(j + 1) * k].to_vec(),
                    trans[j * k * k..(j + 1) * k * k].to_vec(),
                    means[j * k * d..(j + 1) * k * d].to_vec(),
                    vars[j * k * d..(j + 1) * k * d].to_vec(),
                )
                .map_err(|e| file.error(format!("class {:?}: {e}", labels[j])))
            })
            .collect::<Result<_>>()?;
        Ok(HmmClassifier {
            labels,
            mean,
            std,
            models,
            config,
        })
    }

    /// Whether `file` is an HMM classifier checkpoint (by its `rnnkit.task`).
    pub fn is_checkpoint(file: &TensorFile) -> bool {
        file.metadata()
            .get(crate::task::META_TASK)
            .map(String::as_str)
            == Some(TASK)
    }
}

/// Per-channel mean and standard deviation over every step of `cases` (a constant
/// channel gets deviation 1).
fn standardiser(cases: &[&Series], d: usize) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut n = 0usize;
    let (mut sum, mut sq) = (vec![0.0; d], vec![0.0; d]);
    for (i, s) in cases.iter().enumerate() {
        if s.len == 0 || s.values.len() != s.len * d {
            return Err(Error::Input(format!(
                "training case {}: {} steps of {d} channels expected, {} values found",
                i + 1,
                s.len,
                s.values.len()
            )));
        }
        for x in s.values.chunks(d) {
            n += 1;
            for c in 0..d {
                let v = x[c] as f64;
                if !v.is_finite() {
                    return Err(Error::Input(format!(
                        "training case {}: channel {c} holds {v}; HMM features must be finite",
                        i + 1
                    )));
                }
                sum[c] += v;
                sq[c] += v * v;
            }
        }
    }
    if n == 0 {
        return Err(Error::Input("no training steps".into()));
    }
    let mean: Vec<f64> = sum.iter().map(|s| s / n as f64).collect();
    let std = (0..d)
        .map(|c| {
            let v = (sq[c] / n as f64 - mean[c] * mean[c]).max(0.0).sqrt();
            if v > 1e-12 {
                v
            } else {
                1.0
            }
        })
        .collect();
    Ok((mean, std))
}

/// Index of the largest value (the first on ties; NaN never wins).
pub(crate) fn argmax(v: &[f64]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] || v[best].is_nan() {
            best = i;
        }
    }
    best
}
