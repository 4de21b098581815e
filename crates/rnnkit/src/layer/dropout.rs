//! Inverted dropout: zero each element with probability p, scale survivors by 1/(1−p).

use crate::rng::Rng;
use crate::tensor::{overwritten, Real};

/// A dropout mask kept from the forward pass for the backward pass.
#[derive(Clone, Debug, Default)]
pub struct Dropout<T> {
    mask: Vec<T>,
}

impl<T: Real> Dropout<T> {
    /// Applies dropout with probability `p` to `x` in place, drawing a fresh mask from `rng`.
    /// With `p == 0` nothing changes and no random number is drawn.
    pub fn forward(&mut self, x: &mut [T], p: f32, rng: &mut Rng) {
        if p <= 0.0 {
            return self.disable();
        }
        let keep = T::of(1.0 / (1.0 - p as f64));
        let mask = overwritten(&mut self.mask, x.len());
        for (m, v) in mask.iter_mut().zip(x.iter_mut()) {
            *m = if rng.uniform() < p as f64 {
                T::zero()
            } else {
                keep
            };
            *v *= *m;
        }
    }

    /// Forgets the mask: the next backward passes gradients through unchanged (inference).
    pub fn disable(&mut self) {
        self.mask.clear();
    }

    /// Multiplies the gradient by the mask of the last forward (a no-op when p was 0).
    pub fn backward(&self, dx: &mut [T]) {
        if self.mask.is_empty() {
            return;
        }
        for (d, &m) in dx.iter_mut().zip(&self.mask) {
            *d *= m;
        }
    }
}
