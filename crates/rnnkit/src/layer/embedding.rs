//! Token embedding as torch.nn.Embedding: row `id` of `W [vocab, dim]`.

use crate::error::{Error, Result};
use crate::layer::{ParamVisitor, Parameters};
use crate::rng::Rng;
use crate::tensor::{Real, Tensor};

/// A lookup table with its gradient.
#[derive(Clone, Debug)]
pub struct Embedding<T = f32> {
    /// Table `[vocab, dim]`.
    pub weight: Tensor<T>,
    /// Gradient of `weight`, accumulated by [`Embedding::backward`] (or by a caller
    /// that has it whole, as `CharLm` from `Recurrent::forward_embedded`).
    pub grad_weight: Tensor<T>,
}

impl<T: Real> Embedding<T> {
    /// torch.nn.Embedding's default initialisation: N(0, 1).
    pub fn new(vocab: usize, dim: usize, rng: &mut Rng) -> Self {
        let data = (0..vocab * dim).map(|_| T::of(rng.normal())).collect();
        Self::from_weight(Tensor::from_vec(&[vocab, dim], data).expect("sized")).expect("2-D")
    }

    /// Wraps a given table `[vocab, dim]`.
    pub fn from_weight(weight: Tensor<T>) -> Result<Self> {
        if weight.shape().len() != 2 {
            return Err(Error::Shape(format!(
                "embedding weight must be [vocab, dim], got {:?}",
                weight.shape()
            )));
        }
        Ok(Embedding {
            grad_weight: Tensor::zeros(weight.shape()),
            weight,
        })
    }

    /// Number of rows.
    pub fn vocab(&self) -> usize {
        self.weight.shape()[0]
    }

    /// Width of a row.
    pub fn dim(&self) -> usize {
        self.weight.shape()[1]
    }

    /// `out [n, dim]` = the rows of `ids`; fails on an id outside the table.
    pub fn forward(&self, ids: &[usize], out: &mut [T]) -> Result<()> {
        let d = self.dim();
        for (k, &id) in ids.iter().enumerate() {
            if id >= self.vocab() {
                return Err(Error::Input(format!(
                    "token id {id} at position {k} is outside the vocabulary of {}",
                    self.vocab()
                )));
            }
            out[k * d..(k + 1) * d].copy_from_slice(&self.weight.data()[id * d..(id + 1) * d]);
        }
        Ok(())
    }

    /// Scatter-adds `dout [n, dim]` into the rows of `ids` (ids were checked by forward).
    pub fn backward(&mut self, ids: &[usize], dout: &[T]) {
        let d = self.dim();
        let g = self.grad_weight.data_mut();
        for (k, &id) in ids.iter().enumerate() {
            for (a, &b) in g[id * d..(id + 1) * d]
                .iter_mut()
                .zip(&dout[k * d..(k + 1) * d])
            {
                *a += b;
            }
        }
    }
}

impl<T: Real> Parameters<T> for Embedding<T> {
    /// torch.nn.Embedding's name: `weight`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>)) {
        f("weight", &self.weight);
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>) {
        f("weight", &mut self.weight, &mut self.grad_weight);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_torch_named_and_reach_the_gradient() {
        let mut emb = Embedding::<f32>::new(4, 2, &mut Rng::new(0));
        emb.backward(&[3, 1, 3], &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0]);
        let mut seen = Vec::new();
        emb.visit_params_mut(&mut |n, t, g| {
            seen.push((n.to_string(), t.shape().to_vec(), g.data().to_vec()))
        });
        assert_eq!(
            seen,
            [(
                "weight".into(),
                vec![4, 2],
                vec![0.0, 0.0, 10.0, 20.0, 0.0, 0.0, 101.0, 202.0]
            )]
        );
        emb.zero_grad();
        assert!(emb.grad_weight.data().iter().all(|&g| g == 0.0));
    }
}
