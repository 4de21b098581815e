//! Data: text corpora and their character vocabulary, batching, and the readers of
//! each task's file format.

mod conllu;
mod pairs;
mod text;
mod ts;

pub use conllu::{
    looks_like_conllu, parse_conllu, read_conllu, sentences_from_plain, Sentence, TagColumn,
};
pub use pairs::{
    parse_cmudict, parse_pairs, part_of, read_cmudict, read_pairs, CmudictStats, Example, Part,
    Split, TokenVocab, END, MAX_TOKENS, SPECIALS, START,
};
pub use text::{
    fingerprint, read_text, text_from_bytes, Streams, UnknownPolicy, UnknownReport, Vocab,
};
pub use ts::{parse_ts, read_ts, Series, TsDataset};
