//! rnnkit: recurrent neural networks (vanilla RNN, LSTM, GRU) trained by
//! backpropagation through time on the CPU, numerically equal to PyTorch.
//!
//! Layering, top to bottom: [`layer`] (recurrent stacks, embeddings, linear maps),
//! [`cell`] (one recurrence per file, forward and backward), [`kernel`] (GEMM and
//! elementwise work), [`tensor`] (owned buffers). [`checkpoint`] reads and writes
//! safetensors files under torch's parameter names.

/// `fn $name(args) { body }` (or `fn $name<T: Real>(args) { body }`) whose body runs
/// compiled for AVX-512F, or else AVX2 and FMA, where the CPU has them: the build
/// targets baseline x86-64, whose loops are 4 lanes wide, and the body, inlined
/// (`#[inline(always)]`) into a function with the features, runs 16 or 8 wide, its
/// `mul_add`s single instructions. The results are the same, element by element.
/// Arguments are plain names (a tuple is taken apart in the body).
macro_rules! simd_variant {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$t:ident: Real>)? ($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$meta])*
        $vis fn $name $(<$t: Real>)? ($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body $(<$t: Real>)? ($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                fn avx512 $(<$t: Real>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                fn avx2 $(<$t: Real>)? ($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                if crate::kernel::avx512_enabled() {
                    // SAFETY: the CPU has the feature the function was compiled for.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                {
                    // SAFETY: as above.
                    return unsafe { avx2($($arg),*) };
                }
            }
            body($($arg),*)
        }
    };
}

pub mod audio;
pub mod bench;
pub mod cell;
pub mod checkpoint;
pub mod data;
pub mod decode;
pub mod error;
pub mod export;
pub mod gradflow;
pub mod hmm;
pub mod inspect;
pub mod kernel;
pub mod layer;
pub mod limits;
pub mod loss;
pub mod memory;
pub mod model;
pub mod online;
pub mod optim;
pub mod rng;
pub mod rtrl;
pub mod seq2seq;
pub mod task;
pub mod tensor;
pub mod train;
pub mod truncation;

pub use cell::CellKind;
pub use error::{Error, Result};
pub use layer::{Merge, Parameters, Pool, PoolKind, Recurrent, RecurrentConfig, RecurrentState};
pub use rng::Rng;
pub use tensor::{Real, Tensor};

/// The README's Rust examples, compiled and run as doctests.
#[doc = include_str!("../../../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;
