//! Weight averaging (Polyak–Ruppert, as an exponential moving average): a copy of
//! the weights that trails the trained ones, `a ← d_t·a + (1 − d_t)·w` after every
//! step with `d_t = min(d, (1 + t)/(10 + t))` so that early averages do not cling to
//! the initial weights (as tf.train.ExponentialMovingAverage with `num_updates`).
//! Validation, `best` and what the CLI evaluates after training use the average,
//! which is less noisy than the last step's weights; training continues from the
//! trained weights.

use crate::error::Result;
use crate::layer::Parameters;
use crate::optim::TensorSource;
use crate::tensor::Tensor;

/// The averaged weights, in the model's visiting order.
#[derive(Debug)]
pub(super) struct WeightAverage {
    decay: f32,
    tensors: Vec<Tensor<f32>>,
    /// Whether the model holds the average (and `tensors` the trained weights).
    in_model: bool,
}

impl WeightAverage {
    /// Starts the average at the model's current weights.
    pub(super) fn new(model: &dyn Parameters<f32>, decay: f32) -> Self {
        let mut tensors = Vec::new();
        model.visit_params(&mut |_, t| tensors.push(t.clone()));
        WeightAverage {
            decay,
            tensors,
            in_model: false,
        }
    }

    /// Folds the trained weights after step `step` (counted from 1) into the average.
    pub(super) fn update(&mut self, model: &dyn Parameters<f32>, step: u64) {
        debug_assert!(!self.in_model, "the model must hold the trained weights");
        let d = self.decay.min((1 + step) as f32 / (10 + step) as f32);
        let mut idx = 0;
        model.visit_params(&mut |_, w| {
            let a = &mut self.tensors[idx];
            a.data_mut()
                .iter_mut()
                .zip(w.data())
                .for_each(|(a, &w)| *a = d * *a + (1.0 - d) * w);
            idx += 1;
        });
    }

    /// Exchanges the model's weights with the ones kept here (the average in, or back out).
    pub(super) fn swap(&mut self, model: &mut dyn Parameters<f32>) {
        let mut idx = 0;
        model.visit_params_mut(&mut |_, w, _| {
            std::mem::swap(w, &mut self.tensors[idx]);
            idx += 1;
        });
        self.in_model = !self.in_model;
    }

    /// Whether the model holds the average now.
    pub(super) fn in_model(&self) -> bool {
        self.in_model
    }

    /// The weights kept here as named tensors (`{prefix}{name}`) for a checkpoint.
    pub(super) fn state_tensors(
        &self,
        model: &dyn Parameters<f32>,
        prefix: &str,
    ) -> Vec<(String, Tensor<f32>)> {
        let mut out = Vec::new();
        let mut idx = 0;
        model.visit_params(&mut |name, _| {
            out.push((format!("{prefix}{name}"), self.tensors[idx].clone()));
            idx += 1;
        });
        out
    }

    /// Reads the weights kept here from a checkpoint; `in_model` says whether the
    /// checkpoint's model held the average (a `best` checkpoint), in which case the
    /// two are exchanged so that the model holds the trained weights again.
    pub(super) fn restore(
        &mut self,
        model: &mut dyn Parameters<f32>,
        get: &mut TensorSource<'_>,
        prefix: &str,
        in_model: bool,
    ) -> Result<()> {
        let mut tensors = Vec::with_capacity(self.tensors.len());
        let mut err = None;
        model.visit_params(&mut |name, p| {
            if err.is_none() {
                match get(&format!("{prefix}{name}"), p.shape()) {
                    Ok(t) => tensors.push(t),
                    Err(e) => err = Some(e),
                }
            }
        });
        if let Some(e) = err {
            return Err(e);
        }
        self.tensors = tensors;
        self.in_model = in_model;
        if in_model {
            self.swap(model);
        }
        Ok(())
    }
}
