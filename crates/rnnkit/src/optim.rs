//! Optimisers (Adam as torch.optim.Adam, SGD with momentum as torch.optim.SGD)
//! and gradient clipping (global norm as torch.nn.utils.clip_grad_norm_, or by value).

use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::tensor::Tensor;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

/// Elements of a gradient's piece in [`sum_of_squares`] (a fixed cut, so the sum is
/// the same on any number of threads).
const PIECE: usize = 1 << 16;

/// Elements per job when a parameter's update is shared between the threads; one
/// of twice this or more is shared (LSTM 1×128's `W_hh`, 64 Ki elements, in 8 jobs).
const UPDATE_CHUNK: usize = 1 << 13;

/// Which update rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OptimizerKind {
    /// Adam with bias correction, β = (0.9, 0.999), ε = 1e-8.
    Adam,
    /// Stochastic gradient descent with (optional) heavy-ball momentum.
    Sgd,
}

/// The optimiser with its per-parameter state, in the parameters' visiting order.
#[derive(Clone, Debug)]
pub struct Optimizer {
    kind: OptimizerKind,
    momentum: f32,
    weight_decay: f32,
    steps: u64,
    /// Adam: first moments; SGD: momentum buffers.
    m: Vec<Vec<f32>>,
    /// Adam: second moments.
    v: Vec<Vec<f32>>,
}

/// Reads a stored tensor by name, checking its shape.
pub type TensorSource<'a> = dyn FnMut(&str, &[usize]) -> Result<Tensor<f32>> + 'a;

const BETA1: f64 = 0.9;
const BETA2: f64 = 0.999;
const EPS: f32 = 1e-8;

impl Optimizer {
    /// A fresh optimiser; `momentum` only matters for SGD.
    pub fn new(kind: OptimizerKind, momentum: f32) -> Self {
        Optimizer {
            kind,
            momentum,
            weight_decay: 0.0,
            steps: 0,
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// Decoupled weight decay (as torch.optim.AdamW, and SGD's `p −= lr·λ·p`): every
    /// update first shrinks each parameter by `lr · weight_decay` of itself.
    pub fn with_weight_decay(mut self, weight_decay: f32) -> Self {
        self.weight_decay = weight_decay;
        self
    }

    /// Number of updates applied so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// Applies one update with learning rate `lr` to every parameter from its gradient.
    pub fn step(&mut self, model: &mut dyn Parameters<f32>, lr: f32) {
        self.steps += 1;
        // The step count may come from a checkpoint: saturate rather than wrap.
        let t = self.steps.min(i32::MAX as u64) as i32;
        let (kind, momentum) = (self.kind, self.momentum);
        let (bc1, bc2) = (1.0 - BETA1.powi(t), 1.0 - BETA2.powi(t));
        let step_size = (lr as f64 / bc1) as f32;
        let bc2_sqrt = bc2.sqrt() as f32;
        let (ms, vs) = (&mut self.m, &mut self.v);
        let shrink = 1.0 - lr * self.weight_decay;
        let mut idx = 0;
        model.visit_params_mut(&mut |_, p, g| {
            if shrink != 1.0 {
                p.data_mut().iter_mut().for_each(|x| *x *= shrink);
            }
            if ms.len() <= idx {
                ms.push(vec![0.0; p.len()]);
                vs.push(if kind == OptimizerKind::Adam {
                    vec![0.0; p.len()]
                } else {
                    Vec::new()
                });
            }
            let (m, v) = (&mut ms[idx], &mut vs[idx]);
            match kind {
                OptimizerKind::Adam => {
                    let (p, g) = (p.data_mut(), g.data());
                    let scalars = AdamStep {
                        step_size,
                        bc2_sqrt,
                    };
                    // Elementwise, so splitting a large parameter between the threads
                    // changes nothing but the time (LSTM 2×512: 3.3 M a step).
                    if !shared(p.len()) {
                        adam(p, g, m, v, scalars);
                    } else {
                        p.par_chunks_mut(UPDATE_CHUNK)
                            .zip(g.par_chunks(UPDATE_CHUNK))
                            .zip(m.par_chunks_mut(UPDATE_CHUNK))
                            .zip(v.par_chunks_mut(UPDATE_CHUNK))
                            .for_each(|(((p, g), m), v)| adam(p, g, m, v, scalars));
                    }
                }
                OptimizerKind::Sgd => {
                    for ((p, &g), b) in p.data_mut().iter_mut().zip(g.data()).zip(m.iter_mut()) {
                        *b = if momentum > 0.0 { momentum * *b + g } else { g };
                        *p -= lr * *b;
                    }
                }
            }
            idx += 1;
        });
    }

    /// The state as named tensors (`{prefix}m.{name}`, `{prefix}v.{name}`) to store in a checkpoint.
    pub fn state_tensors(
        &self,
        model: &dyn Parameters<f32>,
        prefix: &str,
    ) -> Vec<(String, Tensor<f32>)> {
        let mut out = Vec::new();
        let mut idx = 0;
        model.visit_params(&mut |name, p| {
            if let Some(m) = self.m.get(idx) {
                out.push((
                    format!("{prefix}m.{name}"),
                    Tensor::from_vec(p.shape(), m.clone()).expect("sized like p"),
                ));
            }
            if let Some(v) = self.v.get(idx).filter(|v| !v.is_empty()) {
                out.push((
                    format!("{prefix}v.{name}"),
                    Tensor::from_vec(p.shape(), v.clone()).expect("sized like p"),
                ));
            }
            idx += 1;
        });
        out
    }

    /// Restores the state written by [`Optimizer::state_tensors`] after `steps` updates;
    /// `get(name, shape)` reads one stored tensor.
    pub fn restore(
        &mut self,
        model: &dyn Parameters<f32>,
        steps: u64,
        get: &mut TensorSource<'_>,
        prefix: &str,
    ) -> Result<()> {
        self.steps = steps;
        self.m.clear();
        self.v.clear();
        if steps == 0 {
            return Ok(());
        }
        let mut err: Option<Error> = None;
        model.visit_params(&mut |name, p| {
            if err.is_some() {
                return;
            }
            let mut read =
                |k: &str| get(&format!("{prefix}{k}.{name}"), p.shape()).map(Tensor::into_vec);
            match read("m") {
                Ok(m) => self.m.push(m),
                Err(e) => err = Some(e),
            }
            if self.kind == OptimizerKind::Adam {
                match read("v") {
                    Ok(v) => self.v.push(v),
                    Err(e) => err = Some(e),
                }
            } else {
                self.v.push(Vec::new());
            }
        });
        err.map_or(Ok(()), Err)
    }
}

/// Whether an update of `len` elements is shared between the threads.
fn shared(len: usize) -> bool {
    crate::kernel::parallel_from(len, 2 * UPDATE_CHUNK)
}

/// The scalars of one Adam step, the same for every parameter.
#[derive(Clone, Copy)]
struct AdamStep {
    /// `lr / bc1`.
    step_size: f32,
    /// `√bc2`.
    bc2_sqrt: f32,
}

simd_variant! {
    /// torch.optim.Adam's update of `p` and its moments `m`, `v` from `g`:
    /// `p −= lr/bc1 · m / (√v / √bc2 + ε)`.
    fn adam(p: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], s: AdamStep) {
        for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m).zip(v) {
            *m = BETA1 as f32 * *m + (1.0 - BETA1 as f32) * g;
            *v = BETA2 as f32 * *v + (1.0 - BETA2 as f32) * g * g;
            *p -= s.step_size * *m / (v.sqrt() / s.bc2_sqrt + EPS);
        }
    }
}

/// Global L2 norm of all gradients (accumulated in f64).
pub fn grad_norm(model: &mut dyn Parameters<f32>) -> f64 {
    let mut sq = 0.0f64;
    model.visit_params_mut(&mut |_, _, g| sq += sum_of_squares(g.data()));
    sq.sqrt()
}

/// `Σ x²` in f64 over pieces of [`PIECE`] elements, each summed in [`LANES`] lanes
/// (independent chains, so it vectorises), the pieces' sums added in order: the same
/// result on any number of threads.
fn sum_of_squares(x: &[f32]) -> f64 {
    if x.len() < 2 * PIECE {
        return x.chunks(PIECE).map(piece_sum_of_squares).sum();
    }
    // Taken out while the threads work: a job stolen meanwhile may call this too.
    let mut sums = PIECE_SUMS.take();
    sums.clear();
    sums.resize(x.len().div_ceil(PIECE), 0.0);
    sums.par_iter_mut()
        .zip(x.par_chunks(PIECE))
        .for_each(|(s, x)| *s = piece_sum_of_squares(x));
    let total = sums.iter().sum();
    PIECE_SUMS.set(sums);
    total
}

/// Lanes of [`sum_of_squares`]: four AVX-512 vectors of f64, so that four chains of
/// additions overlap.
const LANES: usize = 32;

simd_variant! {
    /// `Σ x²` of one piece of [`sum_of_squares`].
    fn piece_sum_of_squares(x: &[f32]) -> f64 {
        let mut lanes = [0.0f64; LANES];
        let mut chunks = x.chunks_exact(LANES);
        for c in &mut chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l += f64::from(v) * f64::from(v);
            }
        }
        for (l, &v) in lanes.iter_mut().zip(chunks.remainder()) {
            *l += f64::from(v) * f64::from(v);
        }
        lanes.iter().sum::<f64>()
    }
}

thread_local! {
    /// [`sum_of_squares`]' sums of pieces, kept between calls (no allocation a step).
    static PIECE_SUMS: std::cell::Cell<Vec<f64>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Scales all gradients so their global norm is at most `max_norm` (as
/// torch.nn.utils.clip_grad_norm_, coefficient `max_norm / (norm + 1e-6)`);
/// returns the norm before clipping.
pub fn clip_grad_norm(model: &mut dyn Parameters<f32>, max_norm: f64) -> f64 {
    let norm = grad_norm(model);
    let coef = max_norm / (norm + 1e-6);
    if coef < 1.0 {
        let c = coef as f32;
        let scale = |x: &mut [f32]| x.iter_mut().for_each(|x| *x *= c);
        model.visit_params_mut(&mut |_, _, g| match g.data_mut() {
            g if !shared(g.len()) => scale(g),
            g => g.par_chunks_mut(UPDATE_CHUNK).for_each(scale),
        });
    }
    norm
}

/// Clamps every gradient element to `[−limit, limit]`.
pub fn clip_grad_value(model: &mut dyn Parameters<f32>, limit: f32) {
    model.visit_params_mut(&mut |_, _, g| {
        g.data_mut()
            .iter_mut()
            .for_each(|x| *x = x.clamp(-limit, limit))
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::ParamVisitor;

    struct One(Tensor<f32>, Tensor<f32>);
    impl Parameters<f32> for One {
        fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<f32>)) {
            f("w", &self.0)
        }
        fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, f32>) {
            f("w", &mut self.0, &mut self.1)
        }
    }

    #[test]
    fn adam_first_step_moves_by_lr_times_sign() {
        let mut p = One(
            Tensor::from_vec(&[2], vec![1.0, 1.0]).unwrap(),
            Tensor::from_vec(&[2], vec![0.5, -3.0]).unwrap(),
        );
        let mut o = Optimizer::new(OptimizerKind::Adam, 0.0);
        o.step(&mut p, 0.1);
        assert!(
            (p.0.data()[0] - 0.9).abs() < 1e-6 && (p.0.data()[1] - 1.1).abs() < 1e-6,
            "{:?}",
            p.0
        );
    }

    #[test]
    fn a_large_parameter_is_updated_and_clipped_alike_on_any_number_of_threads() {
        // Past 2·UPDATE_CHUNK the Adam update is split between the threads, and past
        // 2·PIECE the sum of squares.
        let n = 3 * PIECE + 17;
        let make = || {
            One(
                Tensor::from_vec(&[n], (0..n).map(|i| (i % 97) as f32 / 50.0).collect()).unwrap(),
                Tensor::from_vec(&[n], (0..n).map(|i| (i % 13) as f32 - 6.0).collect()).unwrap(),
            )
        };
        let run = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut p = make();
            let mut o = Optimizer::new(OptimizerKind::Adam, 0.0);
            let norm = pool.install(|| {
                o.step(&mut p, 0.01);
                o.step(&mut p, 0.01);
                // Split in pieces too; the gradient is then scaled down.
                clip_grad_norm(&mut p, 1.0)
            });
            (norm, p.0.data().to_vec(), p.1.data().to_vec())
        };
        let one = run(1);
        assert_eq!(run(3), one);
        // The vectorised update is the formula, element by element, bit for bit.
        let (mut p, g) = (make().0.data().to_vec(), make().1.data().to_vec());
        let (mut m, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
        for t in 1..=2 {
            let step_size = (f64::from(0.01f32) / (1.0 - BETA1.powi(t))) as f32;
            let bc2_sqrt = (1.0 - BETA2.powi(t)).sqrt() as f32;
            for i in 0..n {
                m[i] = BETA1 as f32 * m[i] + (1.0 - BETA1 as f32) * g[i];
                v[i] = BETA2 as f32 * v[i] + (1.0 - BETA2 as f32) * g[i] * g[i];
                p[i] -= step_size * m[i] / (v[i].sqrt() / bc2_sqrt + EPS);
            }
        }
        assert_eq!(one.1, p);
        assert_ne!(one.1, make().0.data());
        let want = make()
            .1
            .data()
            .iter()
            .map(|&g| g as f64 * g as f64)
            .sum::<f64>();
        assert!((one.0 - want.sqrt()).abs() <= 1e-12 * want.sqrt());
        let scaled = (make().1.data()[0] as f64 / (one.0 + 1e-6)) as f32;
        assert_eq!(one.2[0], scaled);
    }

    #[test]
    fn sgd_momentum_and_clipping() {
        let mut p = One(
            Tensor::from_vec(&[1], vec![0.0]).unwrap(),
            Tensor::from_vec(&[1], vec![1.0]).unwrap(),
        );
        let mut o = Optimizer::new(OptimizerKind::Sgd, 0.9);
        o.step(&mut p, 0.1);
        o.step(&mut p, 0.1);
        assert!((p.0.data()[0] + 0.1 + 0.19).abs() < 1e-6);
        p.1 = Tensor::from_vec(&[1], vec![10.0]).unwrap();
        assert_eq!(clip_grad_norm(&mut p, 5.0), 10.0);
        assert!((p.1.data()[0] - 5.0).abs() < 1e-5);
        clip_grad_value(&mut p, 2.0);
        assert_eq!(p.1.data()[0], 2.0);
    }

    #[test]
    fn weight_decay_shrinks_before_the_update_as_adamw() {
        let mut p = One(
            Tensor::from_vec(&[2], vec![1.0, -2.0]).unwrap(),
            Tensor::from_vec(&[2], vec![0.0, 0.0]).unwrap(),
        );
        let mut o = Optimizer::new(OptimizerKind::Adam, 0.0).with_weight_decay(0.5);
        o.step(&mut p, 0.1);
        // Zero gradient: Adam moves nothing; decay alone scales by 1 − 0.1·0.5.
        assert_eq!(p.0.data(), &[0.95, -1.9]);
    }

    #[test]
    fn state_round_trips() {
        let mut p = One(
            Tensor::from_vec(&[2], vec![1.0, 2.0]).unwrap(),
            Tensor::from_vec(&[2], vec![0.5, -3.0]).unwrap(),
        );
        let mut a = Optimizer::new(OptimizerKind::Adam, 0.0);
        a.step(&mut p, 0.1);
        let saved = a.state_tensors(&p, "opt.");
        let mut b = Optimizer::new(OptimizerKind::Adam, 0.0);
        let mut get =
            |n: &str, _: &[usize]| Ok(saved.iter().find(|(k, _)| k == n).unwrap().1.clone());
        b.restore(&p, 1, &mut get, "opt.").unwrap();
        let mut p2 = One(p.0.clone(), p.1.clone());
        a.step(&mut p, 0.1);
        b.step(&mut p2, 0.1);
        assert_eq!(p.0, p2.0);
    }
}
