//! Softmax cross-entropy, as torch.nn.functional.cross_entropy with mean reduction:
//! the char LM's plain form ([`softmax_cross_entropy`]) and the masked, class-weighted
//! form with an ignore index ([`cross_entropy`]); row-wise softmax and argmax beside them;
//! the mean squared error of a regression ([`mse`]); connectionist temporal
//! classification ([`ctc_loss`]) in its own file.

mod ctc;
pub use ctc::{ctc_loss, ctc_loss_with, CtcLoss, CtcOptions, CtcWork, Reduction};

use crate::error::{Error, Result};
use crate::tensor::{scratch, Real};

/// Most blocks of rows [`softmax_cross_entropy`] sums separately (their totals sit
/// on the stack).
const CE_BLOCKS: usize = 64;
/// Fewest rows per block.
const CE_BLOCK_MIN: usize = 64;

/// Mean over rows of `−log softmax(logits_row)[target]` for `logits [n, vocab]`.
/// When `dlogits` is given, writes `∂mean/∂logits = (softmax − onehot) / n` into it.
/// One exponential per logit; sums in f64 so the mean does not depend on n's size.
/// With a gradient, blocks of rows run on the threads (on one thread this was a
/// serial twentieth of the small char LM's step); each block is summed alone and
/// the blocks in order, so the mean is the same on any number of threads.
pub fn softmax_cross_entropy<T: Real>(
    logits: &[T],
    targets: &[usize],
    vocab: usize,
    dlogits: Option<&mut [T]>,
) -> f64 {
    let n = targets.len();
    if n == 0 {
        return 0.0;
    }
    let per = n.div_ceil(CE_BLOCKS).max(CE_BLOCK_MIN);
    let blocks = n.div_ceil(per);
    let mut totals = [0.0f64; CE_BLOCKS];
    let totals = &mut totals[..blocks];
    let logits = &logits[..n * vocab];
    match dlogits {
        Some(d) => {
            let d = &mut d[..n * vocab];
            // A gradient's exponentials go straight into its rows: no buffer.
            let run = |b: usize, total: &mut f64, d: &mut [T]| {
                let rows = b * per..((b + 1) * per).min(n);
                let logits = &logits[rows.start * vocab..rows.end * vocab];
                let (targets, tmp) = (&targets[rows], &mut Vec::new());
                *total = block_cross_entropy(logits, targets, vocab, n, Some(d), tmp);
            };
            if crate::kernel::parallel(n * vocab) {
                use rayon::prelude::*;
                totals
                    .par_iter_mut()
                    .zip(d.par_chunks_mut(per * vocab))
                    .enumerate()
                    .for_each(|(b, (total, d))| run(b, total, d));
            } else {
                totals
                    .iter_mut()
                    .zip(d.chunks_mut(per * vocab))
                    .enumerate()
                    .for_each(|(b, (total, d))| run(b, total, d));
            }
        }
        None => {
            let mut tmp = Vec::new();
            for ((total, targets), logits) in totals
                .iter_mut()
                .zip(targets.chunks(per))
                .zip(logits.chunks(per * vocab))
            {
                *total = block_cross_entropy(logits, targets, vocab, n, None, &mut tmp);
            }
        }
    }
    totals.iter().sum::<f64>() / n as f64
}

/// Σ over one block's rows of `−log softmax(row)[target]`; with `d` (the block's
/// rows of the gradient) also writes `(softmax − onehot) / n` there, else the
/// exponentials go to `tmp`.
fn block_cross_entropy<T: Real>(
    logits: &[T],
    targets: &[usize],
    vocab: usize,
    n: usize,
    mut d: Option<&mut [T]>,
    tmp: &mut Vec<T>,
) -> f64 {
    let want_grad = d.is_some();
    let mut total = 0.0f64;
    for (r, &target) in targets.iter().enumerate() {
        let row = &logits[r * vocab..(r + 1) * vocab];
        // e^(v − max) ≤ 1, into the gradient's row when there is one.
        let e = match d.as_deref_mut() {
            Some(d) => &mut d[r * vocab..(r + 1) * vocab],
            None => scratch(tmp, vocab),
        };
        let (max, sum) = shifted_exp(row, e);
        total += max.f64() + sum.ln() - row[target].f64();
        if want_grad {
            let scale = 1.0 / (sum * n as f64);
            e.iter_mut().for_each(|p| *p = T::of(p.f64() * scale));
            e[target] -= T::of(1.0 / n as f64);
        }
    }
    total
}

/// Writes `e = exp(row − max(row))` and returns `(max, Σ e)`, the sum in f64.
/// Subtracting the max keeps every exponential ≤ 1, so no logit overflows.
fn shifted_exp<T: Real>(row: &[T], e: &mut [T]) -> (T, f64) {
    let max = row.iter().fold(T::neg_infinity(), |m, &v| m.max(v));
    e.iter_mut().zip(row).for_each(|(e, &v)| *e = v - max);
    T::exp_inplace(e);
    (max, e.iter().map(|v| v.f64()).sum())
}

/// Options of [`cross_entropy`], as torch.nn.functional.cross_entropy's.
#[derive(Clone, Debug, Default)]
pub struct CrossEntropy<'a, T> {
    /// Rows whose target equals this are not counted (torch's `ignore_index`).
    pub ignore_index: Option<usize>,
    /// Weight `w[c]` of each class `[classes]`, non-negative (torch's `weight`).
    pub class_weights: Option<&'a [T]>,
    /// ε in [0, 1]: the target distribution is `(1 − ε)·one-hot + ε/C` uniform over
    /// the C classes (torch's `label_smoothing`).
    pub label_smoothing: f64,
}

/// The weighted mean loss and its denominator (Σ weights of the counted rows; 0 when none counted).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LossValue {
    /// `Σ_r w_r·nll_r / Σ_r w_r` over the counted rows r.
    pub mean: f64,
    /// `Σ_r w_r` over the counted rows: what a caller adds up to combine batch means.
    pub weight: f64,
}

/// torch's `cross_entropy(logits, targets, weight, ignore_index, reduction="mean")` over
/// `logits [n, classes]`, counting only rows where `mask` (if given) is true and
/// target != ignore_index; writes ∂mean/∂logits into `dlogits` (zero rows for uncounted rows).
///
/// With `nll_r = max_r + log Σ_c exp(x_rc − max_r) − x_r,target` and `w_r` the target's
/// class weight (1 without weights), `mean = Σ_r w_r·nll_r / W` with `W = Σ_r w_r`, and
/// `∂mean/∂x_rc = (w_r / W)·(softmax(x_r)_c − [c = target_r])`. With label smoothing
/// ε, as torch: `mean = [(1 − ε)·Σ_r w_r·nll_r + ε/C·Σ_r Σ_c w_c·(−log p_rc)] / W`.
///
/// Rows where `mask` is false are not read at all (neither logits nor target), as if
/// absent: padding may hold anything there. When no row is counted, or the counted rows
/// weigh 0, the mean and the gradient are 0 where torch gives NaN (0/0): an empty batch
/// (all padding) then contributes nothing instead of poisoning a running sum, and
/// [`LossValue::weight`] = 0 tells the caller so.
///
/// Errors (never panics) on a target ≥ classes that is not the ignore index (naming the
/// row and the value), on wrong slice lengths, on negative/non-finite weights; `dlogits`
/// is untouched then.
pub fn cross_entropy<T: Real>(
    logits: &[T],
    classes: usize,
    targets: &[usize],
    mask: Option<&[bool]>,
    opts: &CrossEntropy<'_, T>,
    mut dlogits: Option<&mut [T]>,
) -> Result<LossValue> {
    let n = targets.len();
    if n.checked_mul(classes) != Some(logits.len()) {
        return Err(Error::Shape(format!(
            "cross-entropy: {} logits given for {n} targets × {classes} classes",
            logits.len()
        )));
    }
    if let Some(m) = mask {
        if m.len() != n {
            return Err(Error::Shape(format!(
                "cross-entropy: mask has {} entries for {n} targets",
                m.len()
            )));
        }
    }
    if let Some(d) = dlogits.as_deref() {
        if d.len() != logits.len() {
            return Err(Error::Shape(format!(
                "cross-entropy: gradient buffer has {} elements for {} logits",
                d.len(),
                logits.len()
            )));
        }
    }
    if let Some(w) = opts.class_weights {
        if w.len() != classes {
            return Err(Error::Shape(format!(
                "cross-entropy: {} class weights given for {classes} classes",
                w.len()
            )));
        }
        if let Some(c) = w.iter().position(|v| !(v.f64() >= 0.0 && v.is_finite())) {
            return Err(Error::Input(format!(
                "cross-entropy: weight {:?} of class {c} must be finite and non-negative",
                w[c]
            )));
        }
    }
    // Every counted target is checked before anything is written, so an error leaves
    // `dlogits` as it was.
    let counted = |r: usize| mask.is_none_or(|m| m[r]) && opts.ignore_index != Some(targets[r]);
    if let Some(r) = (0..n).find(|&r| counted(r) && targets[r] >= classes) {
        return Err(Error::Input(format!(
            "cross-entropy: target {} of row {r} is not a class (there are {classes}){}",
            targets[r],
            match opts.ignore_index {
                Some(i) => format!(" nor the ignore index {i}"),
                None => String::new(),
            }
        )));
    }
    let eps = opts.label_smoothing;
    if !(0.0..=1.0).contains(&eps) {
        return Err(Error::Input(format!(
            "cross-entropy: label smoothing must be in [0, 1], got {eps}"
        )));
    }
    let weight_of = |r: usize| opts.class_weights.map_or(1.0, |w| w[targets[r]].f64());
    // Σ_c w_c, the weight of the uniform part of a smoothed target.
    let all_weights: f64 = opts
        .class_weights
        .map_or(classes as f64, |w| w.iter().map(|v| v.f64()).sum());
    let mut smooth = 0.0f64;
    let total_weight: f64 = (0..n).filter(|&r| counted(r)).map(weight_of).sum();

    let mut total = 0.0f64;
    let mut tmp = Vec::new();
    let want_grad = dlogits.is_some();
    for r in 0..n {
        let row = &logits[r * classes..(r + 1) * classes];
        let d_row = dlogits
            .as_deref_mut()
            .map(|d| &mut d[r * classes..(r + 1) * classes]);
        if !counted(r) || total_weight == 0.0 {
            if let Some(d) = d_row {
                d.fill(T::zero());
            }
            continue;
        }
        let target = targets[r];
        let w = weight_of(r);
        let e = match d_row {
            Some(d) => d,
            None => scratch(&mut tmp, classes),
        };
        let (max, sum) = shifted_exp(row, e);
        let log_sum = max.f64() + sum.ln();
        total += w * (log_sum - row[target].f64());
        if eps > 0.0 {
            // −Σ_c w_c log p_c = Σ_c w_c · log Σexp − Σ_c w_c x_c
            let wx: f64 = match opts.class_weights {
                Some(cw) => row.iter().zip(cw).map(|(x, w)| x.f64() * w.f64()).sum(),
                None => row.iter().map(|x| x.f64()).sum(),
            };
            smooth += all_weights * log_sum - wx;
        }
        if want_grad && eps == 0.0 {
            let scale = w / total_weight;
            let p_scale = scale / sum;
            e.iter_mut().for_each(|p| *p = T::of(p.f64() * p_scale));
            e[target] -= T::of(scale);
        } else if want_grad {
            // ∂/∂x_c = [(1 − ε)·w_y·(p_c − [c = y]) + ε/C·(p_c·Σw − w_c)] / W
            let a = (1.0 - eps) * w / total_weight;
            let b = eps / classes as f64 / total_weight;
            let p_scale = (a + b * all_weights) / sum;
            e.iter_mut().for_each(|p| *p = T::of(p.f64() * p_scale));
            e[target] -= T::of(a);
            match opts.class_weights {
                Some(cw) => e
                    .iter_mut()
                    .zip(cw)
                    .for_each(|(d, w)| *d -= T::of(b * w.f64())),
                None => e.iter_mut().for_each(|d| *d -= T::of(b)),
            }
        }
    }
    let mean = match (total_weight == 0.0, eps == 0.0) {
        (true, _) => 0.0,
        (false, true) => total / total_weight,
        (false, false) => ((1.0 - eps) * total + eps / classes as f64 * smooth) / total_weight,
    };
    Ok(LossValue {
        mean,
        weight: total_weight,
    })
}

/// Index of the largest logit of each row of `logits [n, classes]` (first on ties).
/// A NaN counts as the largest, as in torch.argmax; `classes` = 0 gives no rows.
pub fn argmax_rows<T: Real>(logits: &[T], classes: usize) -> Vec<usize> {
    if classes == 0 {
        return Vec::new();
    }
    logits
        .chunks_exact(classes)
        .map(|row| {
            // Strict `>` keeps the first of equal maxima; a NaN beats any number
            // so that a diverged row shows up instead of hiding behind a valid class.
            (1..classes).fold(0, |best, c| {
                let beats = row[c] > row[best] || (row[c].is_nan() && !row[best].is_nan());
                if beats {
                    c
                } else {
                    best
                }
            })
        })
        .collect()
}

/// Row-wise softmax probabilities of `logits [n, classes]`, in place:
/// `p_c = exp(x_c − max) / Σ_k exp(x_k − max)`.
pub fn softmax_rows<T: Real>(logits: &mut [T], classes: usize) {
    if classes == 0 {
        return;
    }
    let mut e = vec![T::zero(); classes];
    for row in logits.chunks_exact_mut(classes) {
        let (_, sum) = shifted_exp(row, &mut e);
        let inv = 1.0 / sum;
        row.iter_mut()
            .zip(&e)
            .for_each(|(p, &v)| *p = T::of(v.f64() * inv));
    }
}

/// `ln Σ_c exp(x_c)` of one row, in f64, the largest subtracted first so that nothing
/// overflows: the normaliser of a log-softmax.
pub fn log_sum_exp<T: Real>(row: &[T]) -> f64 {
    let max = row.iter().fold(f64::NEG_INFINITY, |m, v| m.max(v.f64()));
    let sum: f64 = row.iter().map(|v| (v.f64() - max).exp()).sum();
    max + sum.ln()
}

/// Row-wise `log_softmax` of `logits [n, classes]`, in place: `x_c − ln Σ_k exp(x_k)`.
pub fn log_softmax_rows<T: Real>(logits: &mut [T], classes: usize) {
    if classes == 0 {
        return;
    }
    for row in logits.chunks_exact_mut(classes) {
        let lse = log_sum_exp(row);
        row.iter_mut().for_each(|v| *v = T::of(v.f64() - lse));
    }
}

/// torch's `mse_loss(pred, target, reduction="mean")`: `Σ (p − t)² / n` over the `n`
/// values, in f64; writes `∂mean/∂pred = 2(p − t)/n` into `dpred` when given. Errors on
/// slices of different lengths and on a non-finite target.
pub fn mse<T: Real>(pred: &[T], target: &[T], dpred: Option<&mut [T]>) -> Result<f64> {
    let n = pred.len();
    if target.len() != n || dpred.as_deref().is_some_and(|d| d.len() != n) {
        return Err(Error::Shape(format!(
            "mse: {n} predictions, {} targets and a gradient buffer of {}",
            target.len(),
            dpred.as_deref().map_or(n, <[T]>::len)
        )));
    }
    if let Some(i) = target.iter().position(|t| !t.is_finite()) {
        return Err(Error::Input(format!(
            "mse: target {i} is {:?}, not a finite number",
            target[i]
        )));
    }
    if n == 0 {
        return Ok(0.0);
    }
    let sum: f64 = pred
        .iter()
        .zip(target)
        .map(|(p, t)| (p.f64() - t.f64()).powi(2))
        .sum();
    if let Some(d) = dpred {
        for ((d, p), t) in d.iter_mut().zip(pred).zip(target) {
            *d = T::of(2.0 * (p.f64() - t.f64()) / n as f64);
        }
    }
    Ok(sum / n as f64)
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

    #[test]
    fn split_cross_entropy_matches_one_thread_and_the_plain_sum() {
        // Enough logits to be shared between threads (2^16), rows not a multiple
        // of a block.
        let (n, vocab) = (1103, 65);
        let logits: Vec<f32> = (0..n * vocab)
            .map(|i| ((i * 7919) % 1013) as f32 / 97.0 - 5.0)
            .collect();
        let targets: Vec<usize> = (0..n).map(|r| (r * 31) % vocab).collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(3)
            .build()
            .unwrap();
        let mut split = vec![0.0f32; n * vocab];
        let loss =
            pool.install(|| softmax_cross_entropy(&logits, &targets, vocab, Some(&mut split)));
        let mut one = vec![0.0f32; n * vocab];
        let loss_one = crate::kernel::serial(|| {
            softmax_cross_entropy(&logits, &targets, vocab, Some(&mut one))
        });
        assert_eq!(loss.to_bits(), loss_one.to_bits());
        assert_eq!(split, one);
        // Without a gradient, the same blocks give the same mean.
        let plain = softmax_cross_entropy(&logits, &targets, vocab, None);
        assert_eq!(plain.to_bits(), loss.to_bits());
        // And the mean is the plain per-row sum in f64, to rounding.
        let want = (0..n)
            .map(|r| {
                let row = &logits[r * vocab..(r + 1) * vocab];
                let max = row.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
                let sum: f64 = row.iter().map(|&v| (v as f64 - max).exp()).sum();
                max + sum.ln() - row[targets[r]] as f64
            })
            .sum::<f64>()
            / n as f64;
        assert!((loss - want).abs() < 1e-5 * want.abs(), "{loss} vs {want}");
        // Each row of the gradient sums to zero: softmax minus the one-hot, over n.
        for row in split.chunks_exact(vocab) {
            assert!(row.iter().map(|&v| v as f64).sum::<f64>().abs() < 1e-7);
        }
    }

    /// Logits of 6 rows × 4 classes, some saturated (|x| ≈ 10).
    const LOGITS: [f64; 24] = [
        0.3, -1.2, 2.0, 0.1, //
        5.0, -3.0, 0.7, 0.0, //
        -0.4, 0.9, 10.0, -10.0, //
        1.5, 1.5, -2.0, 0.25, //
        -7.0, 3.0, 0.5, -0.5, //
        0.0, 0.2, -0.1, 0.4,
    ];

    /// `cross_entropy` of [`LOGITS`] and its gradient, the gradient first checked
    /// against central differences of the loss.
    fn gradient_checked(
        targets: &[usize],
        mask: &[bool],
        opts: &CrossEntropy<'_, f64>,
    ) -> (LossValue, [f64; 24]) {
        let loss = |x: &[f64]| {
            cross_entropy(x, 4, targets, Some(mask), opts, None)
                .unwrap()
                .mean
        };
        let mut d = [f64::NAN; 24];
        let v = cross_entropy(&LOGITS, 4, targets, Some(mask), opts, Some(&mut d)).unwrap();
        for i in 0..24 {
            let (mut up, mut down) = (LOGITS, LOGITS);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let num = (loss(&up) - loss(&down)) / 2e-6;
            assert!(
                (num - d[i]).abs() < 1e-8,
                "dlogits[{i}]: analytic {} vs numeric {num}",
                d[i]
            );
        }
        (v, d)
    }

    #[test]
    fn without_options_equals_the_plain_form() {
        let targets = [2, 0, 3, 1, 1, 0];
        let (mut d1, mut d2) = ([0.0; 24], [0.0; 24]);
        let plain = softmax_cross_entropy(&LOGITS, &targets, 4, Some(&mut d1));
        let opts = CrossEntropy::default();
        let v = cross_entropy(&LOGITS, 4, &targets, None, &opts, Some(&mut d2)).unwrap();
        assert_eq!(v.weight, 6.0);
        assert!((v.mean - plain).abs() < 1e-14, "{} vs {plain}", v.mean);
        for i in 0..24 {
            assert!(
                (d1[i] - d2[i]).abs() < 1e-15,
                "[{i}] {} vs {}",
                d1[i],
                d2[i]
            );
        }
    }

    #[test]
    fn masked_ignored_weighted_gradient_checks() {
        // Row 1 is masked (its target 9 is not even a class), row 3's target is the
        // ignore index, the others count with their class's weight.
        let targets = [2, 9, 3, 0, 1, 0];
        let mask = [true, false, true, true, true, true];
        let weights = [0.5, 2.0, 1.0, 3.0];
        let opts = CrossEntropy {
            ignore_index: Some(0),
            class_weights: Some(&weights),
            label_smoothing: 0.0,
        };
        let (v, d) = gradient_checked(&targets, &mask, &opts);
        // Rows 0, 2, 4 count (rows 3 and 5 have the ignored target 0).
        assert_eq!(v.weight, 1.0 + 3.0 + 2.0);
        let nll = |r: usize| {
            let row = &LOGITS[r * 4..r * 4 + 4];
            row.iter().map(|x| x.exp()).sum::<f64>().ln() - row[targets[r]]
        };
        let want = (1.0 * nll(0) + 3.0 * nll(2) + 2.0 * nll(4)) / 6.0;
        assert!((v.mean - want).abs() < 1e-12, "{} vs {want}", v.mean);
        for r in [1, 3, 5] {
            assert_eq!(&d[r * 4..r * 4 + 4], &[0.0; 4], "uncounted row {r}");
        }
    }

    #[test]
    fn no_counted_rows_give_zero_loss_and_gradient() {
        let targets = [2, 1, 1, 1, 0, 0];
        let all_off = [false; 6];
        let weights = [1.0, 0.0, 1.0, 1.0];
        let cases: [(Option<&[bool]>, CrossEntropy<'_, f64>); 3] = [
            (Some(&all_off), CrossEntropy::default()),
            (
                Some(&[true, false, false, false, false, false]),
                CrossEntropy {
                    ignore_index: Some(2),
                    class_weights: None,
                    label_smoothing: 0.0,
                },
            ),
            // Counted rows 1..=3 all have class 1, of weight 0.
            (
                Some(&[false, true, true, true, false, false]),
                CrossEntropy {
                    ignore_index: None,
                    class_weights: Some(&weights),
                    label_smoothing: 0.0,
                },
            ),
        ];
        for (k, (mask, opts)) in cases.iter().enumerate() {
            let mut d = [f64::NAN; 24];
            let v = cross_entropy(&LOGITS, 4, &targets, *mask, opts, Some(&mut d)).unwrap();
            assert_eq!(
                v,
                LossValue {
                    mean: 0.0,
                    weight: 0.0
                },
                "case {k}"
            );
            assert_eq!(d, [0.0; 24], "case {k}");
        }
        let none = cross_entropy::<f32>(&[], 3, &[], None, &CrossEntropy::default(), None);
        assert_eq!(
            none.unwrap(),
            LossValue {
                mean: 0.0,
                weight: 0.0
            }
        );
    }

    #[test]
    fn bad_targets_are_errors_naming_row_and_value() {
        let mut d = [7.0f64; 24];
        let targets = [2, 0, 4, 1, 1, 0];
        let opts = CrossEntropy::default();
        let e = cross_entropy(&LOGITS, 4, &targets, None, &opts, Some(&mut d)).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("target 4 of row 2"), "{msg}");
        assert_eq!(d, [7.0; 24], "an error leaves the gradient untouched");
        // The same target as ignore index, or on a masked row, is fine.
        let ignore = CrossEntropy {
            ignore_index: Some(4),
            class_weights: None,
            label_smoothing: 0.0,
        };
        assert!(cross_entropy(&LOGITS, 4, &targets, None, &ignore, None).is_ok());
        let mask = [true, true, false, true, true, true];
        assert!(cross_entropy(&LOGITS, 4, &targets, Some(&mask), &opts, None).is_ok());
        // usize::MAX is not a class either, and an ignore index ≠ it does not help.
        let e = cross_entropy(
            &LOGITS,
            4,
            &[0, 0, 0, usize::MAX, 0, 0],
            None,
            &ignore,
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("target {} of row 3", usize::MAX)),
            "{e}"
        );
        assert!(e.contains("ignore index 4"), "{e}");
    }

    #[test]
    fn bad_lengths_and_weights_are_errors() {
        let t = [0usize; 6];
        let none = CrossEntropy::<f64>::default();
        let ce = |x: &[f64], t: &[usize], m: Option<&[bool]>, o: &CrossEntropy<'_, f64>| {
            cross_entropy(x, 4, t, m, o, None).map_err(|e| e.to_string())
        };
        assert!(ce(&LOGITS[..23], &t, None, &none)
            .unwrap_err()
            .contains("23 logits"));
        assert!(ce(&LOGITS, &t[..5], None, &none).is_err());
        assert!(ce(&LOGITS, &t, Some(&[true; 5]), &none)
            .unwrap_err()
            .contains("mask"));
        let mut short = [0.0; 20];
        let e = cross_entropy(&LOGITS, 4, &t, None, &none, Some(&mut short)).unwrap_err();
        assert!(e.to_string().contains("gradient buffer"), "{e}");
        for (w, what) in [
            (&[1.0, 1.0, 1.0][..], "3 class weights"),
            (&[1.0, -0.5, 1.0, 1.0], "class 1"),
            (&[1.0, 1.0, f64::NAN, 1.0], "class 2"),
            (&[1.0, 1.0, 1.0, f64::INFINITY], "class 3"),
        ] {
            let o = CrossEntropy {
                ignore_index: None,
                class_weights: Some(w),
                label_smoothing: 0.0,
            };
            let e = ce(&LOGITS, &t, None, &o).unwrap_err();
            assert!(e.contains(what), "{what}: {e}");
        }
        // classes = 0 with rows: every counted target is out of range.
        assert!(cross_entropy::<f64>(&[], 0, &[0], None, &none, None).is_err());
    }

    #[test]
    fn argmax_takes_the_first_maximum_and_softmax_sums_to_one() {
        assert_eq!(argmax_rows(&LOGITS, 4), [2, 0, 2, 0, 1, 3]);
        assert_eq!(argmax_rows(&[1.0f32, f32::NAN, 2.0], 3), [1]);
        assert_eq!(argmax_rows::<f32>(&[1.0, 2.0], 0), Vec::<usize>::new());
        let mut p = LOGITS;
        softmax_rows(&mut p, 4);
        for (r, row) in p.chunks(4).enumerate() {
            let sum: f64 = row.iter().sum();
            assert!((sum - 1.0).abs() < 1e-15, "row {r} sums to {sum}");
            let x = &LOGITS[r * 4..r * 4 + 4];
            let z: f64 = x.iter().map(|v| v.exp()).sum();
            for c in 0..4 {
                assert!((row[c] - x[c].exp() / z).abs() < 1e-15, "p[{r}][{c}]");
            }
        }
        let mut big = [1e4f32, -1e4, 0.0, 1e4];
        softmax_rows(&mut big, 4);
        // The f32 exponential stops at e^−87.3 ≈ 1e−38 rather than 0.
        let want = [0.5, 0.0, 0.0, 0.5];
        for c in 0..4 {
            assert!((big[c] - want[c]).abs() < 1e-30, "{big:?}");
        }
    }

    #[test]
    fn mse_is_torchs_mean_and_its_gradient_checks() {
        let (pred, target) = ([0.5f64, -1.0, 2.0], [1.0f64, 1.0, 2.0]);
        let mut d = [0.0; 3];
        let v = mse(&pred, &target, Some(&mut d)).unwrap();
        assert!((v - (0.25 + 4.0) / 3.0).abs() < 1e-15);
        for i in 0..3 {
            let (mut up, mut down) = (pred, pred);
            up[i] += 1e-6;
            down[i] -= 1e-6;
            let num =
                (mse(&up, &target, None).unwrap() - mse(&down, &target, None).unwrap()) / 2e-6;
            assert!((num - d[i]).abs() < 1e-8, "[{i}] {num} vs {}", d[i]);
        }
        assert_eq!(mse::<f32>(&[], &[], None).unwrap(), 0.0);
        assert!(mse(&[1.0f32], &[1.0, 2.0], None).is_err());
        let err = mse(&[1.0f32], &[f32::NAN], None).unwrap_err().to_string();
        assert!(err.contains("target 0"), "{err}");
    }

    #[test]
    fn label_smoothing_mixes_in_a_uniform_target_as_torch_defines_it() {
        let targets = [2, 0, 1, 3, 0, 2];
        let mask = [true, true, false, true, true, true];
        let weights = [1.0, 0.5, 3.0, 2.0];
        for cw in [None, Some(&weights[..])] {
            let opts = CrossEntropy {
                ignore_index: Some(3),
                class_weights: cw,
                label_smoothing: 0.1,
            };
            let (v, d) = gradient_checked(&targets, &mask, &opts);
            // Counted: rows 0, 1, 4, 5 (row 2 masked, row 3's target is ignored).
            let w = |c: usize| cw.map_or(1.0, |w| w[c]);
            let log_p = |r: usize, c: usize| {
                let row = &LOGITS[r * 4..r * 4 + 4];
                row[c] - row.iter().map(|x| x.exp()).sum::<f64>().ln()
            };
            let rows = [0, 1, 4, 5];
            let total: f64 = rows.iter().map(|&r| w(targets[r])).sum();
            let want = rows
                .iter()
                .map(|&r| {
                    let uniform: f64 = (0..4).map(|c| -w(c) * log_p(r, c)).sum();
                    0.9 * -w(targets[r]) * log_p(r, targets[r]) + 0.1 / 4.0 * uniform
                })
                .sum::<f64>()
                / total;
            assert!((v.mean - want).abs() < 1e-12, "{} vs {want}", v.mean);
            assert_eq!(v.weight, total);
            assert_eq!(&d[8..16], &[0.0; 8], "uncounted rows 2 and 3");
        }
        let bad = CrossEntropy {
            label_smoothing: 1.5,
            ..CrossEntropy::<f64>::default()
        };
        let e = cross_entropy(&LOGITS, 4, &targets, None, &bad, None).unwrap_err();
        assert!(e.to_string().contains("label smoothing"), "{e}");
    }
}
