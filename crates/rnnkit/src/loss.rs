//! Softmax cross-entropy, as torch.nn.functional.cross_entropy with mean reduction.

use crate::tensor::{scratch, Real};

/// Mean over rows of `−log softmax(logits_row)[target]` for `logits [n, vocab]`.
/// When `dlogits` is given, writes `∂mean/∂logits = (softmax − onehot) / n` into it.
/// One exponential per logit; sums in f64 so the mean does not depend on n's size.
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    targets: &[usize],
    vocab: usize,
    mut dlogits: Option<&mut [T]>,
) -> f64 {
    let n = targets.len();
    let mut total = 0.0f64;
    let mut tmp = Vec::new();
    let want_grad = dlogits.is_some();
    for (r, &target) in targets.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
        // e^(v − max) ≤ 1, into the gradient's row when there is one.
        let e = match dlogits.as_deref_mut() {
            Some(d) => &mut d[r * vocab..(r + 1) * vocab],
            None => scratch(&mut tmp, vocab),
        };
        e.iter_mut().zip(row).for_each(|(e, &v)| *e = v - max);
        T::exp_inplace(e);
        let sum: f64 = e.iter().map(|v| v.f64()).sum();
        total += max.f64() + sum.ln() - row[target].f64();
        if want_grad {
            let scale = 1.0 / (sum * n as f64);
            e.iter_mut().for_each(|p| *p = T::of(p.f64() * scale));
            e[target] -= T::of(1.0 / n as f64);
        }
    }
    if n == 0 {
        0.0
    } else {
        total / n as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uniform_logits_give_log_vocab_and_gradient_checks() {
        let l = softmax_cross_entropy(&[0.0f64; 8], &[1, 3], 4, None);
        assert!((l - 4f64.ln()).abs() < 1e-12);
        let logits = [0.3f64, -1.2, 2.0, 0.1, 5.0, -3.0];
        let targets = [2, 0];
        let mut d = [0.0; 6];
        softmax_cross_entropy(&logits, &targets, 3, Some(&mut d));
        for i in 0..6 {
            let (mut up, mut down) = (logits, logits);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let num = (softmax_cross_entropy(&up, &targets, 3, None)
                - softmax_cross_entropy(&down, &targets, 3, None))
                / 2e-6;
            assert!((num - d[i]).abs() < 1e-8, "[{i}] {num} vs {}", d[i]);
        }
        // Large logits stay finite.
        assert!(softmax_cross_entropy(&[1e4f32, -1e4, 0.0], &[1], 3, None).is_finite());
    }
}
