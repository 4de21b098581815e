//! Whole models built from layers.

mod char_lm;
pub mod keras;
mod stepper;

pub use crate::kernel::Precision;
pub use char_lm::{CharLm, CharLmConfig, META_CELL, META_VOCAB};
pub use stepper::{Stepper, Weights};
