//! Connectionist temporal classification (Graves et al., 2006), as
//! `torch.nn.functional.ctc_loss` applied to `log_softmax(logits)`, with the
//! log-softmax fused into the gradient.
//!
//! For one sequence with frames `t < T`, label sequence `l` of length `L` and the
//! blank-extended sequence `l'` (`blank, l_1, blank, …, l_L, blank`, `S = 2L + 1`),
//! the forward variables in log space are
//!
//! `α_0(0) = y_0(blank)`, `α_0(1) = y_0(l'_1)`,
//! `α_t(s) = y_t(l'_s) · (α_{t−1}(s) + α_{t−1}(s−1) + [l'_s ≠ blank ∧ l'_s ≠ l'_{s−2}] α_{t−1}(s−2))`,
//!
//! and the loss is `−ln p(l|x) = −ln(α_{T−1}(S−1) + α_{T−1}(S−2))`. The backward
//! variables `β_t(s)` (paths from `s` at `t` to the end, *excluding* `t`'s emission)
//! give the occupation `γ_t(k) = Σ_{s: l'_s = k} α_t(s) β_t(s) / p(l|x)`, and with
//! `y = softmax(u)` the gradient is `∂(−ln p)/∂u_t(k) = y_t(k) − γ_t(k)`.

use crate::error::{Error, Result};
use crate::tensor::Real;
use rayon::prelude::*;

/// How per-sequence CTC losses become one number, as torch's `reduction`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Reduction {
    /// No reduction: the value is the sum and the gradient is that of the sum.
    None,
    /// The sum over the batch.
    Sum,
    /// Each loss divided by its target length (at least 1), then the batch mean.
    #[default]
    Mean,
}

/// Options of [`ctc_loss`], as torch's `ctc_loss` arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CtcOptions {
    /// Index of the blank class.
    pub blank: usize,
    /// How the batch's losses are combined.
    pub reduction: Reduction,
    /// Infeasible targets (infinite loss) count as 0.
    pub zero_infinity: bool,
}

impl Default for CtcOptions {
    fn default() -> Self {
        CtcOptions {
            blank: 0,
            reduction: Reduction::Mean,
            zero_infinity: false,
        }
    }
}

/// The per-sequence losses and their reduction.
#[derive(Clone, Debug, PartialEq)]
pub struct CtcLoss {
    /// `−ln p(l_b|x_b)` of every sequence (+∞ when infeasible, 0 then with `zero_infinity`).
    pub losses: Vec<f64>,
    /// The reduced loss (the sum for [`Reduction::None`]).
    pub value: f64,
}

/// CTC loss of `logits [T, B, classes]` (time-major, raw scores: the log-softmax is
/// taken here) for sequences of `input_lengths[b]` frames and label sequences
/// `targets[b]`; writes the gradient of [`CtcLoss::value`] with respect to the logits
/// into `dlogits` (zero past each sequence's end and for infeasible targets, where
/// torch would give NaN without `zero_infinity`). Works in f64 whatever `T` is.
///
/// Errors (never panics; `dlogits` untouched) on wrong buffer sizes, a blank outside
/// the classes, an input length above `T`, and a target label that is the blank or not
/// a class (naming the sequence and the position).
pub fn ctc_loss<T: Real, L: AsRef<[usize]> + Sync>(
    logits: &[T],
    classes: usize,
    input_lengths: &[usize],
    targets: &[L],
    opts: &CtcOptions,
    dlogits: Option<&mut [T]>,
) -> Result<CtcLoss> {
    let mut work = CtcWork::default();
    let value = ctc_loss_with(
        logits,
        classes,
        input_lengths,
        targets,
        opts,
        dlogits,
        &mut work,
    )?;
    Ok(CtcLoss {
        losses: work.losses,
        value,
    })
}

/// The buffers of [`ctc_loss_with`] (the lattices of every sequence), kept between
/// calls: a training loop that keeps them allocates nothing once they have grown.
#[derive(Clone, Debug, Default)]
pub struct CtcWork {
    sequences: Vec<Lattice>,
    losses: Vec<f64>,
}

impl CtcWork {
    /// The per-sequence losses of the last call, as [`CtcLoss::losses`].
    pub fn losses(&self) -> &[f64] {
        &self.losses
    }
}

/// One sequence's log-probabilities, forward and backward variables and gradient.
#[derive(Clone, Debug, Default)]
struct Lattice {
    lp: Vec<f64>,
    alpha: Vec<f64>,
    beta: Vec<f64>,
    grad: Vec<f64>,
    occ: Vec<f64>,
    loss: f64,
    /// Whether `grad` holds this sequence's gradient.
    has_grad: bool,
}

/// [`ctc_loss`] into the buffers of `work`; returns [`CtcLoss::value`] (the
/// per-sequence losses are [`CtcWork::losses`]).
#[allow(clippy::too_many_arguments)]
pub fn ctc_loss_with<T: Real, L: AsRef<[usize]> + Sync>(
    logits: &[T],
    classes: usize,
    input_lengths: &[usize],
    targets: &[L],
    opts: &CtcOptions,
    dlogits: Option<&mut [T]>,
    work: &mut CtcWork,
) -> Result<f64> {
    let b = input_lengths.len();
    check(logits, classes, input_lengths, targets, opts)?;
    if let Some(d) = dlogits.as_deref() {
        if d.len() != logits.len() {
            return Err(Error::Shape(format!(
                "ctc: gradient buffer has {} elements for {} logits",
                d.len(),
                logits.len()
            )));
        }
    }
    let want_grad = dlogits.is_some();
    work.sequences.resize_with(b, Lattice::default);
    work.sequences
        .par_iter_mut()
        .enumerate()
        .for_each(|(j, lat)| {
            log_softmax_of(logits, j, b, classes, input_lengths[j], &mut lat.lp);
            sequence(lat, classes, targets[j].as_ref(), opts.blank, want_grad);
        });
    let losses = &mut work.losses;
    losses.clear();
    losses.extend(work.sequences.iter().map(|l| l.loss));
    if opts.zero_infinity {
        losses
            .iter_mut()
            .filter(|l| l.is_infinite())
            .for_each(|l| *l = 0.0);
    }
    // d value / d loss_b.
    let scale = |j: usize| match opts.reduction {
        Reduction::None | Reduction::Sum => 1.0,
        Reduction::Mean => 1.0 / (b as f64 * targets[j].as_ref().len().max(1) as f64),
    };
    let value = match opts.reduction {
        Reduction::None | Reduction::Sum => losses.iter().sum(),
        Reduction::Mean if b == 0 => 0.0,
        Reduction::Mean => (0..b).map(|j| losses[j] * scale(j) * b as f64).sum::<f64>() / b as f64,
    };
    if let Some(d) = dlogits {
        d.fill(T::zero());
        for (j, lat) in work.sequences.iter().enumerate() {
            if !lat.has_grad {
                continue;
            }
            let s = scale(j);
            for (t, row) in lat.grad.chunks_exact(classes).enumerate() {
                let out = &mut d[(t * b + j) * classes..][..classes];
                out.iter_mut()
                    .zip(row)
                    .for_each(|(o, &v)| *o = T::of(v * s));
            }
        }
    }
    Ok(value)
}

/// Checks every size and label.
fn check<T: Real, L: AsRef<[usize]>>(
    logits: &[T],
    classes: usize,
    input_lengths: &[usize],
    targets: &[L],
    opts: &CtcOptions,
) -> Result<()> {
    let b = input_lengths.len();
    if opts.blank >= classes {
        return Err(Error::Input(format!(
            "ctc: the blank index {} is not a class (there are {classes})",
            opts.blank
        )));
    }
    if targets.len() != b {
        return Err(Error::Shape(format!(
            "ctc: {} target sequences for {b} input lengths",
            targets.len()
        )));
    }
    let row = b * classes;
    if row == 0 || !logits.len().is_multiple_of(row) {
        if logits.is_empty() && b == 0 {
            return Ok(());
        }
        return Err(Error::Shape(format!(
            "ctc: {} logits are not [T, {b}, {classes}]",
            logits.len()
        )));
    }
    let frames = logits.len() / row;
    if let Some(j) = input_lengths.iter().position(|&n| n > frames) {
        return Err(Error::Shape(format!(
            "ctc: input length {} of sequence {j} exceeds the {frames} frames given",
            input_lengths[j]
        )));
    }
    for (j, l) in targets.iter().enumerate() {
        if let Some(i) = l
            .as_ref()
            .iter()
            .position(|&c| c >= classes || c == opts.blank)
        {
            let c = l.as_ref()[i];
            return Err(Error::Input(format!(
                "ctc: label {c} at position {i} of target {j} is {}",
                if c == opts.blank {
                    "the blank, which cannot be a target".to_string()
                } else {
                    format!("not a class (there are {classes})")
                }
            )));
        }
    }
    Ok(())
}

/// `log_softmax` of sequence `j`'s first `n` frames, `[n, classes]` in f64, into `out`.
fn log_softmax_of<T: Real>(
    logits: &[T],
    j: usize,
    b: usize,
    classes: usize,
    n: usize,
    out: &mut Vec<f64>,
) {
    out.clear();
    out.resize(n * classes, 0.0);
    for (t, o) in out.chunks_exact_mut(classes).enumerate() {
        let row = &logits[(t * b + j) * classes..][..classes];
        let log_z = super::log_sum_exp(row);
        o.iter_mut()
            .zip(row)
            .for_each(|(o, v)| *o = v.f64() - log_z);
    }
}

/// `ln(e^a + e^b)` without overflow; `−∞` is the identity.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a > b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// Loss of one sequence from its log-probabilities `lat.lp [T, classes]`, and when
/// asked the gradient of that loss with respect to the logits, `[T, classes]` (none
/// when the target is infeasible), into `lat`.
fn sequence(lat: &mut Lattice, classes: usize, label: &[usize], blank: usize, want_grad: bool) {
    let (loss, has_grad) = lattice(lat, classes, label, blank, want_grad);
    lat.loss = loss;
    lat.has_grad = has_grad;
}

/// [`sequence`]'s loss and whether it wrote a gradient.
fn lattice(
    lat: &mut Lattice,
    classes: usize,
    label: &[usize],
    blank: usize,
    want_grad: bool,
) -> (f64, bool) {
    let Lattice {
        lp,
        alpha,
        beta,
        grad,
        occ,
        ..
    } = lat;
    let frames = lp.len() / classes;
    let s_len = 2 * label.len() + 1;
    let ext = |s: usize| {
        if s.is_multiple_of(2) {
            blank
        } else {
            label[s / 2]
        }
    };
    // Whether s may be entered from s − 2 (skipping the blank between two labels).
    let skip = |s: usize| s >= 2 && s % 2 == 1 && ext(s) != ext(s - 2);
    if frames == 0 {
        // No frames: only the empty label sequence has a path (the empty one).
        let loss = if label.is_empty() { 0.0 } else { f64::INFINITY };
        grad.clear();
        return (loss, want_grad && loss.is_finite());
    }
    let ninf = f64::NEG_INFINITY;
    let reset = |v: &mut Vec<f64>, n: usize, x: f64| {
        v.clear();
        v.resize(n, x);
    };
    reset(alpha, frames * s_len, ninf);
    alpha[0] = lp[blank];
    if s_len > 1 {
        alpha[1] = lp[ext(1)];
    }
    for t in 1..frames {
        let (prev, cur) = alpha.split_at_mut(t * s_len);
        let prev = &prev[(t - 1) * s_len..];
        let y = &lp[t * classes..][..classes];
        // Only states from which the end is still reachable and that are reachable
        // from the start matter; the rest stay −∞ by the recursion itself.
        for s in 0..s_len {
            let mut a = prev[s];
            if s >= 1 {
                a = log_add(a, prev[s - 1]);
            }
            if skip(s) {
                a = log_add(a, prev[s - 2]);
            }
            cur[s] = if a == ninf { ninf } else { a + y[ext(s)] };
        }
    }
    let last = &alpha[(frames - 1) * s_len..];
    let log_p = if s_len > 1 {
        log_add(last[s_len - 1], last[s_len - 2])
    } else {
        last[0]
    };
    if log_p == ninf {
        return (f64::INFINITY, false);
    }
    if !want_grad {
        return (-log_p, false);
    }
    // β_t(s) excludes frame t's emission: β_{T−1}(s) = 1 at the two final states.
    reset(beta, frames * s_len, ninf);
    beta[(frames - 1) * s_len + s_len - 1] = 0.0;
    if s_len > 1 {
        beta[(frames - 1) * s_len + s_len - 2] = 0.0;
    }
    for t in (0..frames - 1).rev() {
        let (cur, next) = beta.split_at_mut((t + 1) * s_len);
        let cur = &mut cur[t * s_len..];
        let next = &next[..s_len];
        let y = &lp[(t + 1) * classes..][..classes];
        for s in 0..s_len {
            let mut v = next[s] + y[ext(s)];
            if s + 1 < s_len {
                v = log_add(v, next[s + 1] + y[ext(s + 1)]);
            }
            if s + 2 < s_len && skip(s + 2) {
                v = log_add(v, next[s + 2] + y[ext(s + 2)]);
            }
            cur[s] = v;
        }
    }
    reset(grad, frames * classes, 0.0);
    reset(occ, classes, ninf);
    for t in 0..frames {
        occ.fill(ninf);
        for s in 0..s_len {
            let k = ext(s);
            occ[k] = log_add(occ[k], alpha[t * s_len + s] + beta[t * s_len + s]);
        }
        let y = &lp[t * classes..][..classes];
        for ((g, &l), &o) in grad[t * classes..][..classes].iter_mut().zip(y).zip(&*occ) {
            *g = l.exp() - (o - log_p).exp();
        }
    }
    (-log_p, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published reference values of warp-ctc and TensorFlow's CTC tests (3.34211,
    /// 5.42262): two sequences of 5 frames over 6 classes, blank = 5, given as
    /// probabilities whose logarithms are the logits here.
    #[test]
    fn published_golden_values() {
        let probs: [[[f64; 6]; 5]; 2] = [
            [
                [
                    0.633766, 0.221185, 0.0917319, 0.0129757, 0.0142857, 0.0260553,
                ],
                [
                    0.111121, 0.588392, 0.278779, 0.0055756, 0.00569609, 0.010436,
                ],
                [
                    0.0357786, 0.633813, 0.321418, 0.00249248, 0.00272882, 0.0037688,
                ],
                [
                    0.0663296, 0.643849, 0.280111, 0.00283995, 0.0035545, 0.00331533,
                ],
                [
                    0.458235, 0.396634, 0.123377, 0.00648837, 0.00903441, 0.00623107,
                ],
            ],
            [
                [0.30176, 0.28562, 0.0831517, 0.0862751, 0.0816851, 0.161508],
                [0.24082, 0.397533, 0.0557226, 0.0546814, 0.0557528, 0.19549],
                [0.230246, 0.450868, 0.0389607, 0.038309, 0.0391602, 0.202456],
                [
                    0.280884, 0.429522, 0.0326593, 0.0339046, 0.0326856, 0.190345,
                ],
                [
                    0.423286, 0.315517, 0.0338439, 0.0393744, 0.0339315, 0.154046,
                ],
            ],
        ];
        // Time-major [5, 2, 6].
        let mut logits = Vec::new();
        for t in 0..5 {
            for seq in &probs {
                logits.extend(seq[t].iter().map(|p| p.ln()));
            }
        }
        let targets: [&[usize]; 2] = [&[0, 1, 2, 1, 0], &[0, 1, 1, 0]];
        let opts = CtcOptions {
            blank: 5,
            reduction: Reduction::None,
            zero_infinity: false,
        };
        let got = ctc_loss(&logits, 6, &[5, 5], &targets, &opts, None).unwrap();
        assert!((got.losses[0] - 3.34211).abs() < 1e-5, "{:?}", got.losses);
        assert!((got.losses[1] - 5.42262).abs() < 1e-5, "{:?}", got.losses);
    }

    #[test]
    fn errors_name_the_problem() {
        let x = vec![0.0f32; 2 * 3];
        let o = CtcOptions::default();
        let e = ctc_loss(&x, 3, &[2], &[[0usize]], &o, None).unwrap_err();
        assert!(e.to_string().contains("blank"), "{e}");
        let e = ctc_loss(&x, 3, &[2], &[[3usize]], &o, None).unwrap_err();
        assert!(e.to_string().contains("not a class"), "{e}");
        let e = ctc_loss(&x, 3, &[3], &[[1usize]], &o, None).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        let e = ctc_loss(&x, 4, &[1], &[[1usize]], &o, None).unwrap_err();
        assert!(e.to_string().contains("[T, 1, 4]"), "{e}");
        let blank = CtcOptions { blank: 3, ..o };
        assert!(ctc_loss(&x, 3, &[2], &[[1usize]], &blank, None).is_err());
    }
}
