//! The only code that touches the GEMM crate or SIMD: matrix products and the
//! elementwise work around them. Layers and cells never call `gemm` directly.

mod activation;
mod elementwise;
mod gemv;
mod lanes;
mod matmul;
mod packed;
mod panel;
mod team;

/// Whether the AVX-512 kernels run: the CPU has AVX-512F and `RNNKIT_AVX512` is not
/// `0`. Set to `0`, rnnkit's products and loops take the paths of a CPU without
/// AVX-512 (AVX2 and FMA kernels; the training products go to the `gemm` crate, which
/// still picks its kernels by the CPU), for comparisons and for testing those paths
/// on a CPU that has both.
pub fn avx512_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static ENABLED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ENABLED.get_or_init(|| {
            std::arch::is_x86_feature_detected!("avx512f")
                && std::env::var_os("RNNKIT_AVX512").is_none_or(|v| v != "0")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(crate) use activation::{exp as exp_one_f32, sigmoid as sigmoid_one_f32, tanh as tanh_one_f32};
pub use activation::{exp_f32, sigmoid_f32, sigmoid_f32_ref, tanh_f32, tanh_f32_ref};
pub(crate) use packed::amx_dot_chains;
pub use packed::{
    amx_supported, bf16_supported, gemm_packed, matmul_packed, packed_supported, PackedB,
};
pub use panel::{int8_supported, Weights};
pub(crate) use panel::{streams_matter, LstmShare, PanelVector, Panels, Pass, Streams, Sweep};
pub(crate) use team::Team;

pub use elementwise::{add_bias_rows, sigmoid, sum_rows_into};
pub(crate) use elementwise::{copy, fill, largest, parallel, parallel_from, scatter_add_rows};
pub(crate) use gemv::{few_rows_f32, gemv_f32, to_bf16, FEW_ROWS};
pub(crate) use matmul::is_serial;
pub use matmul::{
    matmul, matmul_ref, on_pool, on_pool_polling, precision, serial, with_precision, MatMut,
    MatRef, Precision,
};
pub(crate) use packed::{
    dg_panels_supported, gemm_depth_major_f32, gemm_rows_f32, matmul_dg_panels, DgPanels, DgWriter,
};
