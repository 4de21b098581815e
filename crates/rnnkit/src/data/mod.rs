//! Data: text corpora and their character vocabulary, batching, and the readers of
//! each task's file format.

mod text;

pub use text::{fingerprint, read_text, Streams, UnknownPolicy, UnknownReport, Vocab};
