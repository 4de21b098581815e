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
pub use recurrent::{Kept, Merge, Recurrent, RecurrentConfig, RecurrentState};

use crate::tensor::{Real, Tensor};
use std::cell::RefCell;

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

thread_local! {
    /// Name buffers of [`with_name`], one per nesting level, kept between calls.
    static NAMES: RefCell<Vec<String>> = const { RefCell::new(Vec::new()) };
}

/// Calls `f` with `name` written out in a buffer reused between calls, so that
/// visiting parameters by their prefixed names allocates nothing once warmed up
/// (the optimiser, clipping and zeroing visit every parameter on every step).
pub(crate) fn with_name<R>(name: std::fmt::Arguments<'_>, f: impl FnOnce(&str) -> R) -> R {
    use std::fmt::Write;
    let mut buf = NAMES.with(|n| n.borrow_mut().pop()).unwrap_or_default();
    buf.clear();
    // Writing to a String cannot fail.
    let _ = buf.write_fmt(name);
    let out = f(&buf);
    NAMES.with(|n| n.borrow_mut().push(buf));
    out
}
