//! The only code that touches the GEMM crate or SIMD: matrix products and the
//! elementwise work around them. Layers and cells never call `gemm` directly.

mod elementwise;
mod matmul;

pub use elementwise::{add_bias_rows, sigmoid, sum_rows_into};
pub use matmul::{matmul, matmul_ref, MatMut, MatRef};
