//! Whole models built from layers.

mod char_lm;
mod stepper;

pub use crate::kernel::Precision;
pub use char_lm::{CharLm, CharLmConfig};
pub use stepper::Stepper;
