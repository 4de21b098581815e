//! How far back a gradient reaches: `‖∂L/∂s_{T−k}‖` against `k` for a loss on the
//! last step's output, where `s_t` is the whole recurrent state after step t (every
//! layer's h, and c for the LSTM). Exact: the last k steps are run again from
//! `s_{T−k}`, and backward returns the gradient of that initial state.

use crate::error::{Error, Result};
use crate::layer::{Recurrent, RecurrentState};
use crate::rng::Rng;
use crate::tensor::Tensor;

/// `out[k − 1] = ‖∂L/∂s_{T−k}‖` for k = 1..=T, where `L = dy · y_T` for the output
/// `y_T` of the last step of `x [T, 1, I]` (one sequence, zero initial state).
/// Costs T(T+1)/2 steps forward and as many backward.
pub fn gradient_flow(layer: &mut Recurrent<f64>, x: &Tensor<f64>, dy: &[f64]) -> Result<Vec<f64>> {
    let cfg = layer.config().clone();
    if cfg.bidirectional {
        return Err(Error::Config(
            "gradient flow through time needs a unidirectional layer".into(),
        ));
    }
    let &[steps, 1, input] = x.shape() else {
        return Err(Error::Shape(format!(
            "gradient flow takes one sequence [T, 1, I], got {:?}",
            x.shape()
        )));
    };
    if steps == 0 || dy.len() != cfg.output_size() {
        return Err(Error::Shape(format!(
            "gradient flow needs at least one step and {} output gradients, got {} steps and {}",
            cfg.output_size(),
            steps,
            dy.len()
        )));
    }
    // No dropout is configured, so the generator only marks training mode.
    let mut rng = Rng::new(0);
    // s_0 (zeros), s_1, …, s_{T−1}: the state after each prefix.
    let mut states = vec![RecurrentState::zeros(&cfg, 1)];
    for t in 1..steps {
        let prefix = Tensor::from_vec(&[t, 1, input], x.data()[..t * input].to_vec())?;
        let (_, s) = layer.forward(&prefix, None, None)?;
        states.push(s);
    }
    let mut out = Vec::with_capacity(steps);
    for k in 1..=steps {
        let start = steps - k;
        let tail = Tensor::from_vec(&[k, 1, input], x.data()[start * input..].to_vec())?;
        layer.forward_train(&tail, None, Some(&states[start]), &mut rng)?;
        let mut d_out = Tensor::zeros(&[k, 1, cfg.output_size()]);
        d_out.data_mut()[(k - 1) * dy.len()..].copy_from_slice(dy);
        let (_, d_init) = layer.backward(&d_out, None)?;
        let sq: f64 = d_init.h.data().iter().map(|v| v * v).sum::<f64>()
            + d_init
                .c
                .as_ref()
                .map_or(0.0, |c| c.data().iter().map(|v| v * v).sum());
        out.push(sq.sqrt());
    }
    Ok(out)
}
