//! Fully connected layer as torch.nn.Linear: `y = x Wᵀ + b`, `W [out, in]`.

use crate::error::Result;
use crate::kernel::{add_bias_rows, matmul, sum_rows_into, MatMut, MatRef};
use crate::layer::{ParamVisitor, Parameters};
use crate::rng::Rng;
use crate::tensor::{Real, Tensor};

/// A linear map with its parameter gradients.
#[derive(Clone, Debug)]
pub struct Linear<T = f32> {
    /// Weight `[out, in]`.
    pub weight: Tensor<T>,
    /// Bias `[out]`.
    pub bias: Tensor<T>,
    /// Gradient of `weight`, accumulated by [`Linear::backward`].
    pub grad_weight: Tensor<T>,
    /// Gradient of `bias`.
    pub grad_bias: Tensor<T>,
}

impl<T: Real> Linear<T> {
    /// torch.nn.Linear's default initialisation: weight and bias U(−1/√in, 1/√in).
    pub fn new(in_features: usize, out_features: usize, rng: &mut Rng) -> Self {
        let k = 1.0 / (in_features.max(1) as f64).sqrt();
        let mut draw = |n: usize| {
            (0..n)
                .map(|_| T::of(rng.uniform_in(-k, k)))
                .collect::<Vec<T>>()
        };
        let weight = Tensor::from_vec(
            &[out_features, in_features],
            draw(out_features * in_features),
        )
        .expect("sized");
        let bias = Tensor::from_vec(&[out_features], draw(out_features)).expect("sized");
        Self::from_params(weight, bias).expect("consistent shapes")
    }

    /// Wraps given parameters, checking that their shapes fit together.
    pub fn from_params(weight: Tensor<T>, bias: Tensor<T>) -> Result<Self> {
        let out = weight.shape().first().copied().unwrap_or(0);
        if weight.shape().len() != 2 {
            return Err(crate::Error::Shape(format!(
                "linear weight must be [out, in], got {:?}",
                weight.shape()
            )));
        }
        bias.expect_shape("linear bias", &[out])?;
        Ok(Linear {
            grad_weight: Tensor::zeros(weight.shape()),
            grad_bias: Tensor::zeros(bias.shape()),
            weight,
            bias,
        })
    }

    /// Input width.
    pub fn in_features(&self) -> usize {
        self.weight.shape()[1]
    }

    /// Output width.
    pub fn out_features(&self) -> usize {
        self.weight.shape()[0]
    }

    /// `y [rows, out] = x [rows, in] · Wᵀ + b`.
    pub fn forward(&self, x: &[T], rows: usize, y: &mut [T]) {
        let (o, i) = (self.out_features(), self.in_features());
        matmul(
            MatMut::dense(y, rows, o),
            MatRef::dense(x, rows, i),
            MatRef::dense(self.weight.data(), o, i).t(),
            false,
        );
        add_bias_rows(&mut y[..rows * o], self.bias.data());
    }

    /// Accumulates `dW += dyᵀ x`, `db += Σ dy`, and, when given, writes `dx = dy W`.
    pub fn backward(&mut self, x: &[T], dy: &[T], rows: usize, dx: Option<&mut [T]>) {
        self.backward_params(x, dy, rows);
        if let Some(dx) = dx {
            self.backward_input(dy, rows, dx);
        }
    }

    /// Accumulates `dW += dyᵀ x` and `db += Σ dy` only (the rows of many calls can
    /// be gathered into one product).
    pub fn backward_params(&mut self, x: &[T], dy: &[T], rows: usize) {
        let (o, i) = (self.out_features(), self.in_features());
        matmul(
            MatMut::dense(self.grad_weight.data_mut(), o, i),
            MatRef::dense(dy, rows, o).t(),
            MatRef::dense(x, rows, i),
            true,
        );
        sum_rows_into(self.grad_bias.data_mut(), &dy[..rows * o]);
    }

    /// Writes `dx = dy W` only.
    pub fn backward_input(&self, dy: &[T], rows: usize, dx: &mut [T]) {
        let (o, i) = (self.out_features(), self.in_features());
        matmul(
            MatMut::dense(dx, rows, i),
            MatRef::dense(dy, rows, o),
            MatRef::dense(self.weight.data(), o, i),
            false,
        );
    }
}

impl<T: Real> Parameters<T> for Linear<T> {
    /// torch.nn.Linear's names: `weight`, `bias`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        f("weight", &self.weight);
        f("bias", &self.bias);
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        f("weight", &mut self.weight, &mut self.grad_weight);
        f("bias", &mut self.bias, &mut self.grad_bias);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_torch_named_and_reach_the_gradients() {
        let mut lin = Linear::<f32>::new(3, 2, &mut Rng::new(0));
        let mut names = Vec::new();
        lin.visit_params(&mut |n, t| names.push((n.to_string(), t.shape().to_vec())));
        assert_eq!(
            names,
            [("weight".into(), vec![2, 3]), ("bias".into(), vec![2])]
        );
        lin.backward(&[1.0, 2.0, 3.0], &[1.0, -1.0], 1, None);
        assert_eq!(lin.grad_bias.data(), &[1.0, -1.0]);
        let mut grads = Vec::new();
        lin.visit_params_mut(&mut |n, _, g| grads.push((n.to_string(), g.data().to_vec())));
        assert_eq!(
            grads[0].1,
            [1.0, 2.0, 3.0, -1.0, -2.0, -3.0],
            "weight gradient"
        );
        assert_eq!(grads[1].1, [1.0, -1.0], "bias gradient");
        lin.zero_grad();
        assert!(lin
            .grad_weight
            .data()
            .iter()
            .chain(lin.grad_bias.data())
            .all(|&g| g == 0.0));
    }
}
