//! Text data: reading a corpus, the character vocabulary, and char-rnn-style
//! batching into contiguous streams whose state carries from batch to batch.

use crate::error::{Error, Result};
use std::collections::HashMap;
use std::path::Path;

/// Reads a UTF-8 text file, refusing missing, empty, binary and non-UTF-8 files
/// with a message that says which and where.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    text_from_bytes(bytes, path)
}

/// [`read_text`]'s checks on bytes already in memory; `path` names them in messages.
pub fn text_from_bytes(bytes: Vec<u8>, path: &Path) -> Result<String> {
    let bad = |msg: String| Err(Error::Input(format!("{}: {msg}", path.display())));
    if bytes.is_empty() {
        return bad(
            "the file is empty; give a UTF-8 text file with at least a few thousand characters"
                .into(),
        );
    }
    if let Some(pos) = bytes.iter().position(|&b| b == 0) {
        return bad(format!(
            "looks binary (NUL byte at offset {pos}); give a UTF-8 text file"
        ));
    }
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => bad(format!(
            "not valid UTF-8 (bad byte at offset {}); convert it to UTF-8 first",
            e.utf8_error().valid_up_to()
        )),
    }
}

/// 64-bit FNV-1a of a text: identifies the training data in a checkpoint.
pub fn fingerprint(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The characters a model knows; token id i is character i.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Vocab {
    chars: Vec<char>,
    index: HashMap<char, usize>,
}

impl Vocab {
    /// The distinct characters of `text`, sorted by code point; fails on empty text.
    pub fn from_text(text: &str) -> Result<Self> {
        let chars: Vec<char> = text
            .chars()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        Self::from_chars(chars)
    }

    /// A vocabulary of the given characters in order; fails on duplicates or none.
    pub fn from_chars(chars: Vec<char>) -> Result<Self> {
        if chars.is_empty() {
            return Err(Error::Input("the vocabulary is empty".into()));
        }
        let mut index = HashMap::with_capacity(chars.len());
        for (i, &c) in chars.iter().enumerate() {
            if index.insert(c, i).is_some() {
                return Err(Error::Input(format!(
                    "character {c:?} appears twice in the vocabulary"
                )));
            }
        }
        Ok(Vocab { chars, index })
    }

    /// Number of characters.
    pub fn len(&self) -> usize {
        self.chars.len()
    }

    /// Always false: a vocabulary has at least one character.
    pub fn is_empty(&self) -> bool {
        self.chars.is_empty()
    }

    /// The characters in id order.
    pub fn chars(&self) -> &[char] {
        &self.chars
    }

    /// The id of `c`, if known.
    pub fn id(&self, c: char) -> Option<usize> {
        self.index.get(&c).copied()
    }

    /// The character of id `i` (which must be below [`Vocab::len`]).
    pub fn char(&self, i: usize) -> char {
        self.chars[i]
    }

    /// Token ids of `text`; an unknown character is an error naming it and its position.
    pub fn encode(&self, text: &str) -> Result<Vec<usize>> {
        text.chars()
            .enumerate()
            .map(|(pos, c)| {
                self.id(c).ok_or_else(|| Error::Input(format!("character {c:?} (U+{:04X}) at position {pos} is not in the model's vocabulary", c as u32)))
            })
            .collect()
    }

    /// Token ids of `text` with characters outside the vocabulary handled by `policy`,
    /// and a report of them. A `\r\n` pair is read as `\n` when the vocabulary has no
    /// `\r` (a lone `\r` stays an unknown character). [`UnknownPolicy::Error`] refuses
    /// the text with every unknown character and its count; [`UnknownPolicy::Replace`]
    /// fails at once if its character is not in the vocabulary either.
    pub fn encode_with(
        &self,
        text: &str,
        policy: UnknownPolicy,
    ) -> Result<(Vec<usize>, UnknownReport)> {
        let replacement = match policy {
            UnknownPolicy::Replace(r) => Some(self.id(r).ok_or_else(|| {
                Error::Input(format!(
                    "the replacement {r:?} is not in the model's vocabulary either; choose one of its {} characters",
                    self.len()
                ))
            })?),
            _ => None,
        };
        let fold_crlf = self.id('\r').is_none();
        let mut ids = Vec::with_capacity(text.len());
        // Unknown character → (count, order of first sight).
        let mut unknown: HashMap<char, (usize, usize)> = HashMap::new();
        let mut crlf = 0;
        let mut chars = text.chars().peekable();
        while let Some(c) = chars.next() {
            if c == '\r' && fold_crlf && chars.peek() == Some(&'\n') {
                crlf += 1;
                continue;
            }
            match self.id(c) {
                Some(id) => ids.push(id),
                None => {
                    let seen = unknown.len();
                    unknown.entry(c).or_insert((0, seen)).0 += 1;
                    ids.extend(replacement);
                }
            }
        }
        let mut counts: Vec<(char, usize, usize)> =
            unknown.into_iter().map(|(c, (n, i))| (c, n, i)).collect();
        counts.sort_by_key(|&(_, n, first)| (std::cmp::Reverse(n), first));
        let report = UnknownReport {
            counts: counts.into_iter().map(|(c, n, _)| (c, n)).collect(),
            crlf,
        };
        if policy == UnknownPolicy::Error && report.total() > 0 {
            return Err(Error::Input(format!(
                "{} characters ({} distinct) are not in the model's vocabulary: {report}",
                report.total(),
                report.counts.len()
            )));
        }
        Ok((ids, report))
    }

    /// The checkpoint form: a JSON array of one-character strings.
    pub fn to_json(&self) -> String {
        let strings: Vec<String> = self.chars.iter().map(|c| c.to_string()).collect();
        serde_json::to_string(&strings).expect("strings serialise")
    }

    /// Parses [`Vocab::to_json`]; every entry must be exactly one character.
    pub fn from_json(s: &str) -> Result<Self> {
        let strings: Vec<String> = serde_json::from_str(s)
            .map_err(|e| Error::Input(format!("vocabulary is not a JSON array of strings: {e}")))?;
        let chars = strings
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let mut it = s.chars();
                match (it.next(), it.next()) {
                    (Some(c), None) => Ok(c),
                    _ => Err(Error::Input(format!(
                        "vocabulary entry {i} is {s:?}, not one character"
                    ))),
                }
            })
            .collect::<Result<Vec<char>>>()?;
        Self::from_chars(chars)
    }
}

/// What [`Vocab::encode_with`] does with a character the vocabulary lacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UnknownPolicy {
    /// Refuse the text, naming every unknown character with its count.
    Error,
    /// Leave unknown characters out, as if the text did not have them.
    Skip,
    /// Put this character (which must be in the vocabulary) in their place.
    Replace(char),
}

/// The characters [`Vocab::encode_with`] did not find in the vocabulary.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnknownReport {
    /// Each unknown character and its count, most frequent first (ties: first seen first).
    pub counts: Vec<(char, usize)>,
    /// Number of `\r\n` pairs read as `\n`.
    pub crlf: usize,
}

impl UnknownReport {
    /// Number of unknown characters in all (refused, skipped or replaced).
    pub fn total(&self) -> usize {
        self.counts.iter().map(|&(_, n)| n).sum()
    }
}

impl std::fmt::Display for UnknownReport {
    /// The unknown characters with their counts: `'9' ×12, '#' ×1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (c, n)) in self.counts.iter().enumerate() {
            let sep = if i == 0 { "" } else { ", " };
            write!(f, "{sep}{c:?} ×{n}")?;
        }
        Ok(())
    }
}

/// A token sequence cut into `batch` contiguous streams, read `seq_len` steps at a
/// time: batch k continues every stream where batch k−1 stopped, so a carried
/// hidden state sees an unbroken text (truncated BPTT).
#[derive(Clone, Debug)]
pub struct Streams {
    ids: Vec<usize>,
    batch: usize,
    seq_len: usize,
    stream_len: usize,
}

impl Streams {
    /// Cuts `ids` into streams; `what` names the text in the error if it is too short.
    pub fn new(ids: Vec<usize>, batch: usize, seq_len: usize, what: &str) -> Result<Self> {
        if batch == 0 || seq_len == 0 {
            return Err(Error::Config(
                "batch and sequence length must be at least 1".into(),
            ));
        }
        // Saturating: an impossible request reads as needing more text than there is.
        let need = batch.saturating_mul(seq_len).saturating_add(1);
        if ids.len() < need {
            return Err(Error::Input(format!(
                "the {what} has {} characters but one batch of {batch} × {seq_len} needs at least {need}; give more text or lower --batch / --seq-len",
                ids.len()
            )));
        }
        let stream_len = (ids.len() - 1) / batch;
        Ok(Streams {
            ids,
            batch,
            seq_len,
            stream_len,
        })
    }

    /// Number of batches in one pass over the text.
    pub fn batches(&self) -> usize {
        self.stream_len / self.seq_len
    }

    /// Number of streams (the batch size).
    pub fn batch_size(&self) -> usize {
        self.batch
    }

    /// Steps per batch.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// Number of tokens predicted in one pass.
    pub fn tokens_per_pass(&self) -> usize {
        self.batches() * self.batch * self.seq_len
    }

    /// Batch `k` (< [`Streams::batches`]) as time-major `[T, B]` inputs and next-character targets.
    pub fn batch(&self, k: usize, inputs: &mut Vec<usize>, targets: &mut Vec<usize>) {
        inputs.clear();
        targets.clear();
        for t in 0..self.seq_len {
            for b in 0..self.batch {
                let pos = b * self.stream_len + k * self.seq_len + t;
                inputs.push(self.ids[pos]);
                targets.push(self.ids[pos + 1]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vocab_round_trips_and_names_unknown_characters() {
        let v = Vocab::from_text("hello, wörld").unwrap();
        assert!(Vocab::from_text("").is_err());
        assert_eq!(v.len(), 10);
        let v2 = Vocab::from_json(&v.to_json()).unwrap();
        assert_eq!(v, v2);
        assert_eq!(v.encode("hel").unwrap().len(), 3);
        let e = v.encode("hex").unwrap_err().to_string();
        assert!(e.contains("'x'") && e.contains("position 2"), "{e}");
        assert!(Vocab::from_json(r#"["a","bc"]"#)
            .unwrap_err()
            .to_string()
            .contains("entry 1"));
        assert!(Vocab::from_json(r#"["a","a"]"#)
            .unwrap_err()
            .to_string()
            .contains("twice"));
        assert!(Vocab::from_json("[]").is_err());
        assert!(Vocab::from_json("{").is_err());
    }

    #[test]
    fn encode_with_counts_skips_or_replaces_unknown_characters() {
        let v = Vocab::from_text("ab \n").unwrap();
        let e = v
            .encode_with("a9b#9\r\na", UnknownPolicy::Error)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("3 characters (2 distinct)") && e.ends_with("'9' ×2, '#' ×1"),
            "{e}"
        );
        let (ids, r) = v.encode_with("a9b#9\r\na", UnknownPolicy::Skip).unwrap();
        assert_eq!(ids, v.encode("ab\na").unwrap());
        assert_eq!(
            (r.total(), r.crlf, r.to_string()),
            (3, 1, "'9' ×2, '#' ×1".into())
        );
        let (ids, _) = v.encode_with("a9b\r", UnknownPolicy::Replace(' ')).unwrap();
        assert_eq!(ids, v.encode("a b ").unwrap(), "a lone \\r is unknown");
        let e = v
            .encode_with("a", UnknownPolicy::Replace('z'))
            .unwrap_err()
            .to_string();
        assert!(e.contains("replacement 'z'"), "{e}");
        // A vocabulary with '\r' keeps it.
        let crlf = Vocab::from_text("a\r\n").unwrap();
        let (ids, r) = crlf.encode_with("a\r\n", UnknownPolicy::Error).unwrap();
        assert_eq!((ids.len(), r.crlf), (3, 0));
    }

    #[test]
    fn streams_continue_from_batch_to_batch() {
        let ids: Vec<usize> = (0..23).collect();
        let s = Streams::new(ids, 2, 3, "text").unwrap();
        // stream_len 11: streams start at 0 and 11; 3 batches of 3 steps.
        assert_eq!(s.batches(), 3);
        let (mut i, mut t) = (Vec::new(), Vec::new());
        s.batch(0, &mut i, &mut t);
        assert_eq!(i, [0, 11, 1, 12, 2, 13]);
        assert_eq!(t, [1, 12, 2, 13, 3, 14]);
        s.batch(1, &mut i, &mut t);
        assert_eq!(i, [3, 14, 4, 15, 5, 16]);
        let e = Streams::new((0..6).collect(), 2, 3, "training text")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("training text has 6 characters") && e.contains("at least 7"),
            "{e}"
        );
    }

    #[test]
    fn bad_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("empty"));
        std::fs::write(&p, b"abc\0def").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("binary"));
        std::fs::write(&p, b"abc\xffdef").unwrap();
        assert!(read_text(&p).unwrap_err().to_string().contains("offset 3"));
        assert!(read_text(&dir.path().join("missing")).is_err());
    }
}
