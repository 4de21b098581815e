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
    if cfg.top_k.is_none() && cfg.top_p.is_none() {
        return draw(logits, cfg.temperature, rng).unwrap_or_else(argmax);
    }
    // A cut: (id, unnormalised probability), most likely first.
    let (inv_t, max) = scale_of(logits, cfg.temperature);
    let mut buf = [0f32; DRAW_CHUNK];
    let mut probs: Vec<(usize, f64)> = Vec::with_capacity(logits.len());
    for (k, c) in logits.chunks(DRAW_CHUNK).enumerate() {
        let w = &weights(c, max, inv_t, &mut buf)[..c.len()];
        probs.extend(
            w.iter()
                .enumerate()
                .map(|(i, &w)| (k * DRAW_CHUNK + i, f64::from(w))),
        );
    }
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

/// A draw from `softmax(logits / temperature)` without a cut, in two passes of
/// vectorised `exp` over a buffer on the stack (the sum, then the walk to the drawn
/// token): it runs after every sampled character, where an allocation and a scalar
/// `exp` per logit cost 5–10 % of a small model's character. The sum is kept per
/// block of [`BLOCK`] tokens, and the walk steps over whole blocks before it walks
/// the tokens of the one drawn in: a token at a time, each step waiting on the last,
/// the walk and the sum were half of a 65-token draw. `None` when the weights do not
/// sum to a positive finite number.
fn draw(logits: &[f32], temperature: f32, rng: &mut Rng) -> Option<usize> {
    let (inv_t, max) = scale_of(logits, temperature);
    let mut buf = [0f32; DRAW_CHUNK];
    let mut sums = [0f64; DRAW_CHUNK / BLOCK];
    let mut total = 0f64;
    for c in logits.chunks(DRAW_CHUNK) {
        let w = weights(c, max, inv_t, &mut buf);
        total += block_sums(w, &mut sums).iter().sum::<f64>();
    }
    if !(total > 0.0 && total.is_finite()) {
        return None;
    }
    // A vocabulary of one chunk keeps its weights and sums for the walk (the same
    // values again: recomputing them was a fifth of a small model's draw).
    let whole = logits.len() <= DRAW_CHUNK;
    let mut u = rng.uniform() * total;
    // The first token of the last block that holds one that can be drawn.
    let mut last = None;
    for (k, c) in logits.chunks(DRAW_CHUNK).enumerate() {
        let (w, sums) = if whole {
            let w = &buf[..c.len().next_multiple_of(BLOCK)];
            (w, &sums[..w.len() / BLOCK])
        } else {
            let w = weights(c, max, inv_t, &mut buf);
            (w, block_sums(w, &mut sums))
        };
        for (b, (&s, block)) in sums.iter().zip(w.chunks(BLOCK)).enumerate() {
            // No token of the block can be drawn (the sums are finite: their total is).
            if s <= 0.0 {
                continue;
            }
            let first = k * DRAW_CHUNK + b * BLOCK;
            last = Some(first);
            if u >= s {
                u -= s;
                continue;
            }
            for (i, &w) in block.iter().enumerate() {
                if w > 0.0 {
                    if u < f64::from(w) {
                        return Some(first + i);
                    }
                    u -= f64::from(w);
                }
            }
            // Rounding left `u` past the block's tokens: on to the next block.
        }
    }
    // Rounding left `u` past the end: the last token that can be drawn.
    let first = last?;
    let chunk = &logits[first - first % DRAW_CHUNK..];
    let w = weights(&chunk[..chunk.len().min(DRAW_CHUNK)], max, inv_t, &mut buf);
    let block = &w[first % DRAW_CHUNK..];
    block[..block.len().min(BLOCK)]
        .iter()
        .rposition(|&w| w > 0.0)
        .map(|i| first + i)
}

/// `1 / temperature` and the largest logit, which the weights are taken relative to.
fn scale_of(logits: &[f32], temperature: f32) -> (f32, f32) {
    (1.0 / temperature, largest_logit(logits))
}

simd_variant! {
    /// The largest logit (a NaN never is), 16 lanes wide where the CPU can: by
    /// `f32::max` in SSE, whose NaN rule costs three more instructions a step, it was
    /// a fifth of a 65-token draw.
    fn largest_logit(logits: &[f32]) -> f32 {
        crate::kernel::largest(logits, f32::NEG_INFINITY, |v| v)
    }
}

/// Logits [`draw`] turns into weights at a time.
const DRAW_CHUNK: usize = 256;

/// Tokens whose weights [`draw`] sums together.
const BLOCK: usize = 16;

/// The sum of each [`BLOCK`] of `w` into `sums`, in f64, by halves (so that it
/// vectorises). `w` ends on a whole block (see [`weights`]).
fn block_sums<'a>(w: &[f32], sums: &'a mut [f64; DRAW_CHUNK / BLOCK]) -> &'a [f64] {
    let n = w.len() / BLOCK;
    for (s, block) in sums.iter_mut().zip(w.chunks_exact(BLOCK)) {
        let mut acc = [0f64; BLOCK / 2];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = f64::from(block[i]) + f64::from(block[i + BLOCK / 2]);
        }
        let mut half = BLOCK / 2;
        while half > 1 {
            half /= 2;
            for i in 0..half {
                acc[i] += acc[i + half];
            }
        }
        *s = acc[0];
    }
    &sums[..n]
}

/// `e^{(v − max)·inv_t}` of each logit `v` of `chunk` into `buf` (exactly 0 at −∞),
/// followed by zeros to the end of its last [`BLOCK`]; the weights and the zeros.
fn weights<'a>(chunk: &[f32], max: f32, inv_t: f32, buf: &'a mut [f32; DRAW_CHUNK]) -> &'a [f32] {
    weights_of(chunk, max, inv_t, &mut buf[..chunk.len()]);
    let padded = chunk.len().next_multiple_of(BLOCK);
    buf[chunk.len()..padded].fill(0.0);
    &buf[..padded]
}

simd_variant! {
    /// `w ← e^{(v − max)·inv_t}` for each logit `v` (exactly 0 at −∞), in one pass
    /// 16 lanes wide where the CPU can (three passes, two of them SSE, were a third
    /// of a 65-token draw).
    fn weights_of(chunk: &[f32], max: f32, inv_t: f32, w: &mut [f32]) {
        for (w, &v) in w.iter_mut().zip(chunk) {
            let e = crate::kernel::exp_one_f32((v - max) * inv_t);
            *w = if v == f32::NEG_INFINITY { 0.0 } else { e };
        }
    }
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

    /// Draws without a cut follow `softmax(logits / T)`, over one chunk of the draw's
    /// logits (whose weights the walk reuses) and over more than one, never give a
    /// logit of −∞, and match the draws through the sorted path of the cuts (a top-k
    /// that keeps every token).
    #[test]
    fn draws_follow_the_softmax() {
        let mut logits: Vec<f32> = (0..300).map(|i| -((i % 37) as f32) * 0.3).collect();
        logits[5] = 2.0;
        logits[270] = 2.5;
        logits[7] = f32::NEG_INFINITY;
        let cases: [(&[f32], &[usize]); 2] = [
            (&logits, &[0, 5, 36, 270, 299]),
            (&logits[..65], &[0, 5, 36, 64]),
        ];
        for (logits, ids) in cases {
            for t in [1.0f32, 0.7] {
                let want: Vec<f64> = {
                    let e: Vec<f64> = logits
                        .iter()
                        .map(|&v| (f64::from(v) / f64::from(t)).exp())
                        .collect();
                    let total: f64 = e.iter().sum();
                    e.iter().map(|x| x / total).collect()
                };
                let uncut = SamplingConfig {
                    temperature: t,
                    ..Default::default()
                };
                let every = SamplingConfig {
                    top_k: Some(logits.len()),
                    ..uncut
                };
                for cfg in [uncut, every] {
                    let mut rng = Rng::new(11);
                    let n = 60_000;
                    let mut seen = vec![0usize; logits.len()];
                    for _ in 0..n {
                        seen[sample(logits, &cfg, &mut rng)] += 1;
                    }
                    assert_eq!(seen[7], 0, "−∞ drawn");
                    for &i in ids {
                        let (got, p) = (seen[i] as f64 / n as f64, want[i]);
                        let sd = (p * (1.0 - p) / n as f64).sqrt();
                        assert!(
                            (got - p).abs() < 5.0 * sd + 1e-4,
                            "{} logits, T {t}, id {i}: {got} vs {p}",
                            logits.len()
                        );
                    }
                }
            }
        }
        // All −∞ (or NaN) leaves nothing to draw: the argmax's fallback, token 0.
        let none = [f32::NEG_INFINITY; 4];
        assert_eq!(
            sample(&none, &SamplingConfig::default(), &mut Rng::new(1)),
            0
        );
    }

    /// Blocks of tokens that cannot be drawn (−∞) are stepped over, in one chunk of
    /// the draw's logits and over two, and the tokens left are drawn as the softmax
    /// says, the last one of the vocabulary included.
    #[test]
    fn draws_step_over_blocks_that_cannot_be_drawn() {
        for (vocab, ids) in [(300, [17usize, 18, 250, 299]), (70, [0, 33, 64, 69])] {
            let mut logits = vec![f32::NEG_INFINITY; vocab];
            for (k, &i) in ids.iter().enumerate() {
                logits[i] = k as f32 * 0.5;
            }
            let e: Vec<f64> = (0..4).map(|k| (k as f64 * 0.5).exp()).collect();
            let total: f64 = e.iter().sum();
            let mut rng = Rng::new(5);
            let n = 40_000;
            let mut seen = vec![0usize; vocab];
            for _ in 0..n {
                seen[sample(&logits, &SamplingConfig::default(), &mut rng)] += 1;
            }
            for (k, &i) in ids.iter().enumerate() {
                let (got, p) = (seen[i] as f64 / n as f64, e[k] / total);
                let sd = (p * (1.0 - p) / n as f64).sqrt();
                assert!((got - p).abs() < 5.0 * sd, "{vocab}, id {i}: {got} vs {p}");
            }
            assert_eq!(
                seen.iter().sum::<usize>(),
                ids.iter().map(|&i| seen[i]).sum::<usize>()
            );
        }
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
