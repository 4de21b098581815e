//! The only code that touches the GEMM crate or SIMD: matrix products and the
//! elementwise work around them. Layers and cells never call `gemm` directly.

mod activation;
mod elementwise;
mod gemv;
mod int8;
mod matmul;
mod packed;

pub use activation::{exp_f32, sigmoid_f32, sigmoid_f32_ref, tanh_f32, tanh_f32_ref};
pub use int8::int8_supported;
pub(crate) use int8::{Int8Rows, Int8Vector};
pub use packed::{bf16_supported, gemm_packed, matmul_packed, packed_supported, PackedB};

pub use elementwise::{add_bias_rows, sigmoid, sum_rows_into};
pub(crate) use gemv::{dot_rows_bf16, few_rows_f32, gemv_f32, to_bf16, FEW_ROWS};
pub use matmul::{
    matmul, matmul_ref, on_pool, precision, serial, with_precision, MatMut, MatRef, Precision,
};
