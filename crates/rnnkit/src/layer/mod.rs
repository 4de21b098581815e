//! Layers built from cells and kernels: the recurrent stack, embeddings, linear maps, dropout.

mod dropout;
mod embedding;
mod linear;
mod recurrent;

pub use dropout::Dropout;
pub use embedding::Embedding;
pub use linear::Linear;
pub use recurrent::{Merge, ParamVisitor, Recurrent, RecurrentConfig, RecurrentState};
