//! Data: text corpora and their character vocabulary, batching, and the readers of
//! each task's file format.

mod conllu;
mod manifest;
mod pairs;
mod text;
mod ts;

pub use conllu::{
    looks_like_conllu, parse_conllu, read_conllu, sentences_from_plain, Sentence, TagColumn,
};
pub use manifest::{parse_manifest, read_manifest, Utterance, MAX_MANIFEST_BYTES};
pub use pairs::{
    parse_cmudict, parse_pairs, part_of, read_cmudict, read_pairs, CmudictStats, Example, Part,
    Split, TokenVocab, END, MAX_TOKENS, SPECIALS, START,
};
pub use text::{
    fingerprint, read_text, text_from_bytes, Streams, UnknownPolicy, UnknownReport, Vocab,
};
pub use ts::{parse_ts, read_ts, Series, TsDataset};

/// A data file as UTF-8 text, reading at most `limit` bytes (the file may grow after
/// the size check; the read stays bounded anyway); `kind` names the format in the
/// error for a file that is too large, and an invalid byte is reported with its line.
pub(crate) fn read_bounded_utf8(
    path: &std::path::Path,
    limit: u64,
    kind: &str,
) -> crate::Result<String> {
    let bytes = read_bounded(path, limit, kind)?;
    String::from_utf8(bytes).map_err(|e| {
        let at = e.utf8_error().valid_up_to();
        let line = 1 + e.as_bytes()[..at].iter().filter(|&&b| b == b'\n').count();
        crate::Error::Input(format!(
            "{}:{line}: not valid UTF-8 (bad byte at offset {at}); save the file as UTF-8 text",
            path.display()
        ))
    })
}

/// A file's bytes, reading at most `limit` of them (the file may grow after the size
/// check; the read stays bounded anyway); `kind` names the format in the error for a
/// file that is too large.
pub(crate) fn read_bounded(
    path: &std::path::Path,
    limit: u64,
    kind: &str,
) -> crate::Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| crate::Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let too_big = |size: u64| {
        crate::Error::Input(format!(
            "{}: {size} bytes is more than the {limit}-byte limit of {kind}; split the file",
            path.display()
        ))
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let size = file.metadata().map_err(io)?.len();
    if size > limit {
        return Err(too_big(size));
    }
    let mut bytes = Vec::with_capacity(size as usize);
    file.take(limit + 1).read_to_end(&mut bytes).map_err(io)?;
    if bytes.len() as u64 > limit {
        return Err(too_big(bytes.len() as u64));
    }
    Ok(bytes)
}
