//! Export to ONNX: every rnnkit model kind as standard ONNX operators (`LSTM`, `GRU`,
//! `RNN` per recurrent layer, `Gather`, `MatMul`, … around them), with dynamic batch
//! and time dimensions, initial and final states as graph inputs and outputs where a
//! runtime steps the model, and the vocabularies and labels in the metadata.
//!
//! Every graph takes batch-major inputs (`[batch, time, …]`) and gives batch-major
//! outputs; lengths are `int64 [batch]`.

mod graph;
mod models;
pub mod proto;
mod recurrent;

pub use graph::{Dim, Elem};
pub use models::{char_lm, classifier, ctc, seq2seq, tagger};

use crate::error::{Error, Result};
use prost::Message;

/// The operator set written unless another is asked for.
pub const DEFAULT_OPSET: i64 = 17;
/// The operator sets the exporter can write: from 13 (`Squeeze`/`Unsqueeze` take
/// their axes as an input) to 21.
pub const OPSETS: std::ops::RangeInclusive<i64> = 13..=21;

/// How to write a graph.
#[derive(Clone, Debug)]
pub struct Options {
    /// ONNX operator set version, in [`OPSETS`].
    pub opset: i64,
    /// Where the model came from (a checkpoint path), for the graph's description.
    pub source: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            opset: DEFAULT_OPSET,
            source: String::new(),
        }
    }
}

impl Options {
    fn check(&self) -> Result<()> {
        if !OPSETS.contains(&self.opset) {
            return Err(Error::Config(format!(
                "opset {} is not one the exporter writes: use {} to {}",
                self.opset,
                OPSETS.start(),
                OPSETS.end()
            )));
        }
        Ok(())
    }
}

/// One exported graph.
#[derive(Clone, Debug)]
pub struct Exported {
    /// What the graph is (`model`, `encoder`, `decoder`).
    pub role: &'static str,
    /// The ONNX model.
    pub model: proto::ModelProto,
}

/// Protobuf messages, and so ONNX files without external data, end at 2 GiB.
pub const MAX_ONNX_BYTES: usize = i32::MAX as usize;

impl Exported {
    /// The model as ONNX protobuf bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.model.encode_to_vec()
    }

    /// The bytes, or an error when the model is past what one ONNX file holds.
    pub fn checked_bytes(&self) -> Result<Vec<u8>> {
        let n = self.model.encoded_len();
        if n > MAX_ONNX_BYTES {
            return Err(Error::Config(format!(
                "the {} graph would take {:.2} GiB, past the 2 GiB a protobuf (and so an ONNX file without external data) can hold",
                self.role,
                n as f64 / (1u64 << 30) as f64
            )));
        }
        Ok(self.to_bytes())
    }
}
