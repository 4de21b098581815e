//! Online learning on a character stream, by RTRL or by truncated BPTT.
//!
//! The model is one-hot characters → one recurrent layer → linear → softmax. RTRL
//! updates the weights after every character with that character's exact gradient
//! through all the past (up to the drift of the weights); truncated BPTT with window
//! k updates after every k characters with the summed gradient of the window,
//! carrying the state across windows but not the gradient. Both start from the same
//! weights, read the same stream and use the same plain SGD step per character, so
//! their loss curves, times and memories compare.

use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::layer::{Linear, ParamVisitor, Parameters, RecurrentConfig, RecurrentState};
use crate::loss::softmax_cross_entropy;
use crate::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use crate::rng::Rng;
use crate::rtrl::Rtrl;
use crate::tensor::Tensor;
use std::time::Instant;

/// How the gradient is computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnlineMethod {
    /// Real-time recurrent learning: an update after every character.
    Rtrl,
    /// Truncated BPTT over windows of this many characters: an update after each.
    Tbptt(usize),
}

impl OnlineMethod {
    /// `rtrl` or `tbptt-k`.
    pub fn name(&self) -> String {
        match self {
            OnlineMethod::Rtrl => "rtrl".into(),
            OnlineMethod::Tbptt(k) => format!("tbptt-{k}"),
        }
    }
}

/// The model and the run.
#[derive(Clone, Debug)]
pub struct OnlineConfig {
    /// Recurrent cell.
    pub cell: CellKind,
    /// Hidden units.
    pub hidden: usize,
    /// SGD learning rate per character.
    pub lr: f32,
    /// Global gradient-norm clip per character (an update over k characters is
    /// clipped at k times this; 0: none).
    pub clip: f64,
    /// Characters to learn from.
    pub steps: usize,
    /// Characters per point of the loss curve.
    pub report_every: usize,
    /// Seed of the initial weights.
    pub seed: u64,
}

/// One point of the loss curve.
#[derive(Clone, Copy, Debug)]
pub struct OnlinePoint {
    /// Characters seen.
    pub step: usize,
    /// Seconds of training so far.
    pub seconds: f64,
    /// Mean loss (nats) over the last `report_every` characters, each scored before
    /// the update that learns from it.
    pub loss: f64,
}

/// What a run cost and how it learned.
#[derive(Clone, Debug)]
pub struct OnlineReport {
    /// The method.
    pub method: OnlineMethod,
    /// Parameters of the model (recurrent layer and head).
    pub params: usize,
    /// Seconds of training.
    pub seconds: f64,
    /// Bytes the method holds beyond the weights to compute its gradient: RTRL's
    /// sensitivities, or the activations BPTT keeps for a window.
    pub state_bytes: usize,
    /// The loss curve.
    pub curve: Vec<OnlinePoint>,
}

/// A recurrent part and the head, visited as one model (`rnn.*`, `head.*`).
pub(crate) struct Model<'a, R> {
    pub(crate) rnn: &'a mut R,
    pub(crate) head: &'a mut Linear<f32>,
}

impl<R: Parameters<f32>> Parameters<f32> for Model<'_, R> {
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<f32>)) {
        self.rnn.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t))
        });
        self.head.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("head.{n}"), |n| f(n, t))
        });
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, f32>) {
        self.rnn.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t, g))
        });
        self.head.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("head.{n}"), |n| f(n, t, g))
        });
    }
}

/// Floats BPTT keeps per step of one layer for its backward pass: the gate
/// activations and the hidden state, and the cell state for the LSTM.
pub fn bptt_floats_per_step(cell: CellKind, hidden: usize) -> usize {
    (cell.gates() + 1 + usize::from(cell.has_cell_state())) * hidden
}

/// Trains on `ids` (each < `vocab`; `cfg.steps + 1` of them) by `method`.
pub fn train_online(
    cfg: &OnlineConfig,
    method: OnlineMethod,
    ids: &[usize],
    vocab: usize,
) -> Result<OnlineReport> {
    if cfg.steps == 0 || ids.len() <= cfg.steps {
        return Err(Error::Input(format!(
            "online learning of {} characters needs {} of them, the stream has {}",
            cfg.steps,
            cfg.steps + 1,
            ids.len()
        )));
    }
    if let Some(&bad) = ids.iter().find(|&&i| i >= vocab) {
        return Err(Error::Input(format!(
            "character id {bad} is outside the vocabulary of {vocab}"
        )));
    }
    if cfg.report_every == 0 || matches!(method, OnlineMethod::Tbptt(0)) {
        return Err(Error::Config(
            "the report interval and the truncation must be at least 1".into(),
        ));
    }
    let mut rng = Rng::new(cfg.seed);
    let config = RecurrentConfig::new(cfg.cell, vocab, cfg.hidden);
    config.validate()?;
    let mut rec = config.init::<f32>(&mut rng)?;
    let mut head = Linear::new(cfg.hidden, vocab, &mut rng);
    let mut opt = Optimizer::new(OptimizerKind::Sgd, 0.0);
    let mut curve = Vec::new();
    let mut window_loss = 0.0;
    let start = Instant::now();
    let mut record = |step: usize, loss: f64, curve: &mut Vec<OnlinePoint>| {
        window_loss += loss;
        if step.is_multiple_of(cfg.report_every) || step == cfg.steps {
            let n = (step - 1) % cfg.report_every + 1;
            curve.push(OnlinePoint {
                step,
                seconds: start.elapsed().as_secs_f64(),
                loss: window_loss / n as f64,
            });
            window_loss = 0.0;
        }
    };
    let (params, state_bytes) = match method {
        OnlineMethod::Rtrl => {
            let mut rtrl = Rtrl::new(cfg.cell, &rec.cells()[0])?;
            let mut model = Model {
                rnn: &mut rtrl,
                head: &mut head,
            };
            let params = count(&model);
            let (mut x, mut logits, mut dl, mut dh) = (
                vec![0.0f32; vocab],
                vec![0.0f32; vocab],
                vec![0.0f32; vocab],
                vec![0.0f32; cfg.hidden],
            );
            for t in 0..cfg.steps {
                x.iter_mut().for_each(|v| *v = 0.0);
                x[ids[t]] = 1.0;
                let h = model.rnn.step(&x)?.to_vec();
                model.head.forward(&h, 1, &mut logits);
                let loss = softmax_cross_entropy(&logits, &ids[t + 1..t + 2], vocab, Some(&mut dl));
                model.head.backward(&h, &dl, 1, Some(&mut dh));
                model.rnn.accumulate(&dh)?;
                update(&mut model, &mut opt, cfg, 1);
                record(t + 1, loss, &mut curve);
            }
            (params, model.rnn.sensitivity_bytes())
        }
        OnlineMethod::Tbptt(k) => {
            let mut state: Option<RecurrentState<f32>> = None;
            let mut t = 0;
            while t < cfg.steps {
                let n = k.min(cfg.steps - t);
                let (y, last) = rec.forward_one_hot(
                    &ids[t..t + n],
                    (n, 1),
                    None,
                    state.as_ref(),
                    Some(&mut rng),
                )?;
                let mut logits = vec![0.0f32; n * vocab];
                head.forward(y.data(), n, &mut logits);
                let mut dl = vec![0.0f32; n * vocab];
                let mut losses = Vec::with_capacity(n);
                for s in 0..n {
                    // Each character's loss alone for the curve; the gradient of the sum.
                    losses.push(softmax_cross_entropy(
                        &logits[s * vocab..][..vocab],
                        &ids[t + s + 1..t + s + 2],
                        vocab,
                        Some(&mut dl[s * vocab..][..vocab]),
                    ));
                }
                let mut dy = Tensor::zeros(&[n, 1, cfg.hidden]);
                head.backward(y.data(), &dl, n, Some(dy.data_mut()));
                rec.backward(&dy, None)?;
                let mut model = Model {
                    rnn: &mut rec,
                    head: &mut head,
                };
                update(&mut model, &mut opt, cfg, n);
                for (s, loss) in losses.into_iter().enumerate() {
                    record(t + s + 1, loss, &mut curve);
                }
                state = Some(last);
                t += n;
            }
            let model = Model {
                rnn: &mut rec,
                head: &mut head,
            };
            let bytes = k * bptt_floats_per_step(cfg.cell, cfg.hidden) * 4;
            (count(&model), bytes)
        }
    };
    Ok(OnlineReport {
        method,
        params,
        seconds: start.elapsed().as_secs_f64(),
        state_bytes,
        curve,
    })
}

/// Number of parameters of `model`.
pub(crate) fn count(model: &dyn Parameters<f32>) -> usize {
    let mut n = 0;
    model.visit_params(&mut |_, t| n += t.len());
    n
}

/// Clip, one SGD step, zero the gradients. The gradient sums `chars` characters'
/// gradients, so the clip scales with them: the same bound per character learned.
fn update(model: &mut dyn Parameters<f32>, opt: &mut Optimizer, cfg: &OnlineConfig, chars: usize) {
    if cfg.clip > 0.0 {
        clip_grad_norm(model, cfg.clip * chars as f64);
    }
    opt.step(model, cfg.lr);
    model.zero_grad();
}
