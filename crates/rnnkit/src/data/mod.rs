//! Data: text corpora and their character vocabulary, batching, and the readers of
//! each task's file format.

mod text;
mod ts;

pub use text::{fingerprint, read_text, Streams, Vocab};
pub use ts::{parse_ts, read_ts, Series, TsDataset};
