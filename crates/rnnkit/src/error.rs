//! The library's one error type.

use std::path::PathBuf;

/// Everything that can go wrong in rnnkit; every message names the thing at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// A checkpoint or tensor file is malformed or does not fit the model.
    #[error("{}: {msg}", path.display())]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong and, where possible, what would be right.
        msg: String,
    },
    /// A configuration value is impossible.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// Tensors passed to a layer do not fit it or each other.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// Training produced a non-finite loss.
    #[error("training diverged: {0}")]
    Diverged(String),
    /// The data given (text, tokens, lengths) cannot be used.
    #[error("invalid input: {0}")]
    Input(String),
}

/// Result with the library's error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
