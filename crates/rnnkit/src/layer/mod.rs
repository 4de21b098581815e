//! Layers built from cells and kernels: the recurrent stack, embeddings, linear maps, dropout,
//! pooling over time.

mod dropout;
mod embedding;
mod linear;
mod pool;
mod recurrent;

pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use pool::{Pool, PoolKind};
pub use recurrent::{Merge, Recurrent, RecurrentConfig, RecurrentState};

use crate::tensor::{Real, Tensor};

/// `f(name, value, gradient)`, called once per parameter.
pub type ParamVisitor<'a, T> = dyn FnMut(&str, &mut Tensor<T>, &mut Tensor<T>) + 'a;

/// Anything with named parameters and gradients: the one visitor that the
/// optimiser, clipping and checkpoints use.
pub trait Parameters<T: Real> {
    /// Calls `f(name, value)` for every parameter, in a fixed order.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<T>));

    /// Calls `f(name, value, gradient)` for every parameter, in the same order.
    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, T>);

    /// Sets every gradient to zero.
    fn zero_grad(&mut self) {
        self.visit_params_mut(&mut |_, _, g| g.fill_zero());
    }
}
