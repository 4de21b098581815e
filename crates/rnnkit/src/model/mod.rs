//! Whole models built from layers.

mod char_lm;

pub use char_lm::{CharLm, CharLmConfig};
