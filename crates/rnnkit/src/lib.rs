//! rnnkit: recurrent neural networks (vanilla RNN, LSTM, GRU) trained by
//! backpropagation through time on the CPU, numerically equal to PyTorch.
//!
//! Layering, top to bottom: [`layer`] (recurrent stacks, embeddings, linear maps),
//! [`cell`] (one recurrence per file, forward and backward), [`kernel`] (GEMM and
//! elementwise work), [`tensor`] (owned buffers). [`checkpoint`] reads and writes
//! safetensors files under torch's parameter names.

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
