//! Choosing the next token from logits: temperature, top-k and nucleus (top-p)
//! sampling, greedy when the temperature is 0; and text generation from a prime.

pub mod ctc;

use crate::error::{Error, Result};
use crate::model::{CharLm, Stepper, Weights};
use crate::rng::Rng;

/// How the next character is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SamplingConfig {
    /// Softmax temperature; 0 means greedy argmax.
    pub temperature: f32,
    /// Keep only the k most likely tokens (`None`: all).
    pub top_k: Option<usize>,
    /// Keep the smallest set of most likely tokens whose probability reaches p, in (0, 1].
    pub top_p: Option<f32>,
    /// How the model's weights are held while generating.
    pub weights: Weights,
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            weights: Weights::F32,
        }
    }
}

impl SamplingConfig {
    /// Fails with a message naming the setting if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(Error::Config(format!(
                "temperature must be a finite number ≥ 0, got {}",
                self.temperature
            )));
        }
        if self.top_k == Some(0) {
            return Err(Error::Config("top-k must be at least 1".into()));
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(Error::Config(format!("top-p must be in (0, 1], got {p}")));
            }
        }
        Ok(())
    }
}

/// Draws a token id from `logits` (one per vocabulary entry).
pub fn sample(logits: &[f32], cfg: &SamplingConfig, rng: &mut Rng) -> usize {
    let argmax = || {
        logits
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0
    };
    if cfg.temperature == 0.0 {
        return argmax();
    }
    let inv_t = 1.0 / cfg.temperature as f64;
    let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
    // (id, unnormalised probability), most likely first when a cut is asked for.
    let mut probs: Vec<(usize, f64)> = logits
        .iter()
        .enumerate()
        .map(|(i, &v)| (i, ((v as f64 - max) * inv_t).exp()))
        .collect();
    if cfg.top_k.is_some() || cfg.top_p.is_some() {
        probs.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = cfg.top_k {
            probs.truncate(k.max(1));
        }
        if let Some(p) = cfg.top_p {
            let total: f64 = probs.iter().map(|x| x.1).sum();
            let mut acc = 0.0;
            let keep = probs.iter().position(|x| {
                acc += x.1;
                acc >= p as f64 * total
            });
            probs.truncate(keep.map_or(probs.len(), |i| i + 1));
        }
    }
    let total: f64 = probs.iter().map(|x| x.1).sum();
    if !(total > 0.0 && total.is_finite()) {
        return argmax();
    }
    let mut u = rng.uniform() * total;
    for &(i, p) in &probs {
        if u < p {
            return i;
        }
        u -= p;
    }
    probs.last().map_or(0, |x| x.0)
}

/// Feeds `prime` through the model, then generates `length` characters, passing
/// each to `emit` as soon as it is drawn. An empty prime starts from a newline
/// (or the first vocabulary character), which is not emitted.
pub fn generate(
    model: &CharLm,
    prime: &str,
    length: usize,
    cfg: &SamplingConfig,
    rng: &mut Rng,
    emit: &mut (dyn FnMut(char) -> Result<()> + Send),
) -> Result<()> {
    cfg.validate()?;
    let ids = if prime.is_empty() {
        vec![model.vocab().id('\n').unwrap_or(0)]
    } else {
        model.vocab().encode(prime)?
    };
    let mut stepper = Stepper::new(model, cfg.weights)?;
    let vocab = model.vocab();
    crate::kernel::on_pool(|| {
        let (&last, prime) = ids.split_last().expect("at least one id");
        for &id in prime {
            stepper.feed(id)?;
        }
        let mut next = last;
        for _ in 0..length {
            next = sample(stepper.feed(next)?, cfg, rng);
            emit(vocab.char(next))?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_top_k_and_top_p() {
        let logits = [0.0, 3.0, 1.0, 2.9];
        let mut rng = Rng::new(0);
        let greedy = SamplingConfig {
            temperature: 0.0,
            ..Default::default()
        };
        assert_eq!(sample(&logits, &greedy, &mut rng), 1);
        let top1 = SamplingConfig {
            top_k: Some(1),
            ..Default::default()
        };
        assert!((0..50).all(|_| sample(&logits, &top1, &mut rng) == 1));
        let top2 = SamplingConfig {
            top_k: Some(2),
            ..Default::default()
        };
        assert!((0..200).all(|_| matches!(sample(&logits, &top2, &mut rng), 1 | 3)));
        let nucleus = SamplingConfig {
            top_p: Some(0.5),
            ..Default::default()
        };
        assert!((0..200).all(|_| matches!(sample(&logits, &nucleus, &mut rng), 1 | 3)));
        let all = SamplingConfig::default();
        let mut seen = [0; 4];
        for _ in 0..2000 {
            seen[sample(&logits, &all, &mut rng)] += 1;
        }
        assert!(seen.iter().all(|&c| c > 0), "{seen:?}");
    }

    #[test]
    fn impossible_settings_are_refused() {
        for bad in [
            SamplingConfig {
                temperature: -0.1,
                ..Default::default()
            },
            SamplingConfig {
                temperature: f32::NAN,
                ..Default::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..Default::default()
            },
            SamplingConfig {
                top_p: Some(1.5),
                ..Default::default()
            },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
