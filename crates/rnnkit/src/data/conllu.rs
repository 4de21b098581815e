//! CoNLL-U (<https://universaldependencies.org/format.html>): reading sentences for
//! tagging, writing them back with predicted tags, and plain text as sentences.
//!
//! Every line of a sentence is kept, so a sentence written back differs from the one
//! read only in the tags that were set.

use crate::error::{Error, Result};
use std::path::Path;

/// Largest CoNLL-U file read: the whole text is held in memory while its sentences
/// are built beside it.
const MAX_FILE_BYTES: u64 = 2 << 30;

/// Names of the ten columns, for error messages.
const COLUMNS: [&str; 10] = [
    "ID", "FORM", "LEMMA", "UPOS", "XPOS", "FEATS", "HEAD", "DEPREL", "DEPS", "MISC",
];

/// Which column holds the tags.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TagColumn {
    /// Column 4: universal part-of-speech tags (17 in UD).
    Upos,
    /// Column 5: language-specific part-of-speech tags (Penn Treebank in EWT).
    Xpos,
}

impl TagColumn {
    /// The lower-case name used in flags and metadata: `upos` or `xpos`.
    pub fn name(self) -> &'static str {
        match self {
            TagColumn::Upos => "upos",
            TagColumn::Xpos => "xpos",
        }
    }

    /// The column named `upos` or `xpos` (any case); `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("upos") {
            Some(TagColumn::Upos)
        } else if name.eq_ignore_ascii_case("xpos") {
            Some(TagColumn::Xpos)
        } else {
            None
        }
    }

    /// 0-based index of the column in a token line.
    fn index(self) -> usize {
        match self {
            TagColumn::Upos => 3,
            TagColumn::Xpos => 4,
        }
    }
}

/// One sentence: comment lines, every token line (10 fields, including multiword
/// ranges `3-4` and empty nodes `8.1`), and which of them are syntactic words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sentence {
    /// Comment lines in order, each with its leading `#`.
    pub comments: Vec<String>,
    /// Every token line, split into its ten fields.
    pub rows: Vec<[String; 10]>,
    /// Indices into `rows` of the syntactic words (integer IDs), in order.
    pub words: Vec<usize>,
    /// 1-based line number of the sentence's first line (0 when not from a file).
    pub line: usize,
}

impl Sentence {
    /// Number of syntactic words.
    pub fn len(&self) -> usize {
        self.words.len()
    }

    /// True when the sentence has no words.
    pub fn is_empty(&self) -> bool {
        self.words.is_empty()
    }

    /// FORM of word `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn form(&self, i: usize) -> &str {
        &self.rows[self.words[i]][1]
    }

    /// UPOS or XPOS of word `i`.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn tag(&self, i: usize, col: TagColumn) -> &str {
        &self.rows[self.words[i]][col.index()]
    }

    /// Writes `tag` into the chosen column of word `i`'s row.
    ///
    /// An empty tag is written as `_`, and tabs and line breaks as `_`, so that
    /// [`to_conllu`](Self::to_conllu) always writes a file this module reads back.
    ///
    /// # Panics
    /// If `i >= self.len()`, as slice indexing does.
    pub fn set_tag(&mut self, i: usize, col: TagColumn, tag: &str) {
        let value = if tag.is_empty() {
            "_".to_string()
        } else {
            tag.replace(['\t', '\n', '\r'], "_")
        };
        self.rows[self.words[i]][col.index()] = value;
    }

    /// The sentence as CoNLL-U: comments, rows tab-joined, one blank line after.
    pub fn to_conllu(&self) -> String {
        let mut out = String::new();
        for c in &self.comments {
            out.push_str(c);
            out.push('\n');
        }
        for row in &self.rows {
            out.push_str(&row.join("\t"));
            out.push('\n');
        }
        out.push('\n');
        out
    }
}

/// What a token line's ID says it is.
enum Id {
    /// A syntactic word `n`.
    Word(usize),
    /// A multiword token `a-b`.
    Range(usize, usize),
    /// An empty node `a.b`, placed after word `a`.
    Empty(usize),
}

/// Reads a positive-or-zero decimal of ASCII digits only (no sign, no spaces).
fn number(s: &str) -> Option<usize> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Classifies an ID field; `None` when it is none of the three forms.
fn parse_id(id: &str) -> Option<Id> {
    if let Some((a, b)) = id.split_once('-') {
        Some(Id::Range(number(a)?, number(b)?))
    } else if let Some((a, b)) = id.split_once('.') {
        number(b)?;
        Some(Id::Empty(number(a)?))
    } else {
        Some(Id::Word(number(id)?))
    }
}

/// A sentence being read, with what is needed to check the next token line.
struct Builder {
    sentence: Sentence,
}

impl Builder {
    fn new(line: usize) -> Self {
        Builder {
            sentence: Sentence {
                comments: Vec::new(),
                rows: Vec::new(),
                words: Vec::new(),
                line,
            },
        }
    }

    /// Checks and adds one token line; the error text lacks only the location.
    fn push_row(&mut self, text: &str) -> std::result::Result<(), String> {
        // At most 11 pieces, so a line of many tabs costs no more than one of ten.
        let fields: Vec<&str> = text.splitn(11, '\t').collect();
        if fields.len() != 10 {
            let count = if fields.len() == 11 {
                text.split('\t').count()
            } else {
                fields.len()
            };
            return Err(format!(
                "token line has {count} tab-separated fields; CoNLL-U needs exactly 10 \
                 (ID FORM LEMMA UPOS XPOS FEATS HEAD DEPREL DEPS MISC, `_` for none)"
            ));
        }
        if let Some(k) = fields.iter().position(|f| f.is_empty()) {
            return Err(format!(
                "field {} ({}) is empty; write `_` for a missing value",
                k + 1,
                COLUMNS[k]
            ));
        }
        let next = self.sentence.words.len() + 1;
        match parse_id(fields[0]) {
            Some(Id::Word(n)) if n == next && fields[0] == n.to_string() => {
                self.sentence.words.push(self.sentence.rows.len());
            }
            Some(Id::Word(_)) => {
                return Err(format!(
                    "word ID {} out of order; the next word of this sentence must be {next}",
                    fields[0]
                ))
            }
            Some(Id::Range(a, b)) if a == next && b > a => {}
            Some(Id::Range(..)) => {
                return Err(format!(
                    "multiword token {} must start at the next word ({next}) and end after it",
                    fields[0]
                ))
            }
            Some(Id::Empty(a)) if a == next - 1 => {}
            Some(Id::Empty(_)) => {
                return Err(format!(
                    "empty node {} must follow word {} (written {}.1, {}.2, ...)",
                    fields[0],
                    next - 1,
                    next - 1,
                    next - 1
                ))
            }
            None => {
                return Err(format!(
                    "ID {:?} is not a word number (3), a range (3-4) or an empty node (3.1)",
                    fields[0]
                ))
            }
        }
        let row: [String; 10] = std::array::from_fn(|k| fields[k].to_string());
        self.sentence.rows.push(row);
        Ok(())
    }

    /// The finished sentence, or why it cannot be one.
    fn finish(self) -> std::result::Result<Sentence, String> {
        if self.sentence.words.is_empty() {
            return Err(if self.sentence.rows.is_empty() {
                "comment lines with no token lines after them; \
                 a sentence needs at least one word"
                    .into()
            } else {
                "sentence has no word lines (only multiword ranges or empty nodes)".into()
            });
        }
        Ok(self.sentence)
    }
}

/// Parses CoNLL-U text; `source` names it in errors ("{source}:{line}: what is wrong").
pub fn parse_conllu(text: &str, source: &str) -> Result<Vec<Sentence>> {
    let fail = |line: usize, msg: String| Error::Input(format!("{source}:{line}: {msg}"));
    let mut sentences = Vec::new();
    let mut current: Option<Builder> = None;
    for (k, raw) in text.split('\n').enumerate() {
        let line = k + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            if let Some(b) = current.take() {
                let start = b.sentence.line;
                sentences.push(b.finish().map_err(|m| fail(start, m))?);
            }
            continue;
        }
        let b = current.get_or_insert_with(|| Builder::new(line));
        if raw.starts_with('#') {
            if !b.sentence.rows.is_empty() {
                return Err(fail(
                    line,
                    "comment line after token lines; comments come before a sentence's \
                     first token line (is a blank line missing above it?)"
                        .into(),
                ));
            }
            b.sentence.comments.push(raw.to_string());
        } else {
            b.push_row(raw).map_err(|m| fail(line, m))?;
        }
    }
    // A file not ending in a blank line still ends its last sentence.
    if let Some(b) = current {
        let start = b.sentence.line;
        sentences.push(b.finish().map_err(|m| fail(start, m))?);
    }
    Ok(sentences)
}

/// Reads a CoNLL-U file (refuse > 2 GiB before reading; not UTF-8 → error with line and offset).
pub fn read_conllu(path: &Path) -> Result<Vec<Sentence>> {
    let text = super::read_bounded_utf8(path, MAX_FILE_BYTES, "a CoNLL-U file")?;
    parse_conllu(&text, &path.display().to_string())
}

/// One whitespace-tokenised sentence per non-empty line, as sentences whose other
/// columns are `_` (ID numbered 1..n).
pub fn sentences_from_plain(text: &str) -> Vec<Sentence> {
    text.split('\n')
        .enumerate()
        .filter_map(|(k, line)| {
            let rows: Vec<[String; 10]> = line
                .split_whitespace()
                .enumerate()
                .map(|(i, form)| {
                    std::array::from_fn(|c| match c {
                        0 => (i + 1).to_string(),
                        1 => form.to_string(),
                        _ => "_".to_string(),
                    })
                })
                .collect();
            (!rows.is_empty()).then(|| Sentence {
                comments: Vec::new(),
                words: (0..rows.len()).collect(),
                rows,
                line: k + 1,
            })
        })
        .collect()
}

/// True when the first non-empty, non-comment line has 10 tab-separated fields:
/// tells CoNLL-U from plain text on standard input.
pub fn looks_like_conllu(text: &str) -> bool {
    text.split('\n')
        .map(|l| l.strip_suffix('\r').unwrap_or(l))
        .find(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .is_some_and(|l| l.splitn(11, '\t').count() == 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A well-formed sample: comments, a multiword range, an empty node, two sentences.
    const SAMPLE: &str = "\
# sent_id = s1
# text = I don't know.
1\tI\tI\tPRON\tPRP\tCase=Nom\t3\tnsubj\t3:nsubj\t_
2-3\tdon't\t_\t_\t_\t_\t_\t_\t_\t_
2\tdo\tdo\tAUX\tVBP\t_\t4\taux\t4:aux\t_
3\tn't\tnot\tPART\tRB\t_\t4\tadvmod\t4:advmod\tSpaceAfter=No
4\tknow\tknow\tVERB\tVB\t_\t0\troot\t0:root\t_
4.1\tknow\t_\t_\t_\t_\t_\t_\t4:conj\t_
5\t.\t.\tPUNCT\t.\t_\t4\tpunct\t4:punct\t_

# sent_id = s2
1\tNew York\tNew York\tPROPN\tNNP\t_\t0\troot\t0:root\t_

";

    fn err(text: &str) -> String {
        match parse_conllu(text, "t.conllu") {
            Ok(s) => panic!("expected an error, parsed {} sentences", s.len()),
            Err(e) => e.to_string(),
        }
    }

    fn row(id: &str, form: &str) -> String {
        format!("{id}\t{form}\t_\tX\t_\t_\t_\t_\t_\t_\n")
    }

    #[test]
    fn parses_words_ranges_empty_nodes_and_comments() {
        let s = parse_conllu(SAMPLE, "t").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].comments, ["# sent_id = s1", "# text = I don't know."]);
        assert_eq!(s[0].rows.len(), 7);
        assert_eq!(s[0].words, [0, 2, 3, 4, 6]);
        let forms: Vec<&str> = (0..s[0].len()).map(|i| s[0].form(i)).collect();
        assert_eq!(forms, ["I", "do", "n't", "know", "."]);
        assert_eq!(s[0].tag(1, TagColumn::Upos), "AUX");
        assert_eq!(s[0].tag(1, TagColumn::Xpos), "VBP");
        assert_eq!((s[0].line, s[1].line), (1, 11));
        // UD allows spaces inside FORM; only tabs separate fields.
        assert_eq!(s[1].form(0), "New York");
    }

    #[test]
    fn round_trip_reproduces_the_input() {
        let s = parse_conllu(SAMPLE, "t").unwrap();
        let out: String = s.iter().map(Sentence::to_conllu).collect();
        assert_eq!(out, SAMPLE);
    }

    #[test]
    fn crlf_and_missing_final_blank_line() {
        let text = SAMPLE.trim_end().replace('\n', "\r\n");
        let s = parse_conllu(&text, "t").unwrap();
        assert_eq!(s, parse_conllu(SAMPLE, "t").unwrap());
    }

    #[test]
    fn extra_blank_lines_are_ignored() {
        let text = format!("\n\n{}\n\n\n{}", row("1", "a"), row("1", "b"));
        let s = parse_conllu(&text, "t").unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!((s[0].line, s[1].line), (3, 7));
        assert!(parse_conllu("", "t").unwrap().is_empty());
    }

    #[test]
    fn set_tag_writes_the_chosen_column_of_the_word_row() {
        let mut s = parse_conllu(SAMPLE, "t").unwrap().remove(0);
        s.set_tag(1, TagColumn::Upos, "VERB");
        s.set_tag(2, TagColumn::Xpos, "NEG");
        assert_eq!(s.rows[2][3], "VERB");
        assert_eq!(s.rows[3][4], "NEG");
        // The range row in between is untouched.
        assert_eq!(s.rows[1][3], "_");
        s.set_tag(0, TagColumn::Upos, "");
        s.set_tag(4, TagColumn::Upos, "A\tB");
        assert_eq!(s.tag(0, TagColumn::Upos), "_");
        let back = parse_conllu(&s.to_conllu(), "t").unwrap();
        assert_eq!(back[0], s);
    }

    #[test]
    fn wrong_field_count_names_line_and_count() {
        let text = format!("# c\n{}1\ta\tb\n", row("1", "x"));
        let e = err(&text);
        assert!(
            e.contains("t.conllu:3:") && e.contains("has 3 tab-separated"),
            "{e}"
        );
        let many = format!("1{}\n", "\tx".repeat(14));
        let e = err(&many);
        assert!(
            e.contains("t.conllu:1:") && e.contains("has 15 tab-separated"),
            "{e}"
        );
    }

    #[test]
    fn word_ids_must_run_from_one_in_order() {
        let e = err(&format!("{}{}", row("1", "a"), row("3", "b")));
        assert!(e.contains("t.conllu:2:") && e.contains("must be 2"), "{e}");
        let e = err(&row("0", "a"));
        assert!(e.contains("t.conllu:1:") && e.contains("must be 1"), "{e}");
        let e = err(&format!("{}{}", row("1", "a"), row("02", "b")));
        assert!(e.contains("t.conllu:2:"), "{e}");
        let e = err(&format!("\n{}", row("x", "a")));
        assert!(
            e.contains("t.conllu:2:") && e.contains("is not a word number"),
            "{e}"
        );
        let e = err(&format!("{}{}", row("1", "a"), row("1-2", "b")));
        assert!(
            e.contains("t.conllu:2:") && e.contains("multiword token"),
            "{e}"
        );
        let e = err(&format!("{}{}", row("1", "a"), row("3.1", "b")));
        assert!(e.contains("t.conllu:2:") && e.contains("empty node"), "{e}");
        // A new sentence starts again at 1.
        let ok = format!("{}{}\n{}", row("1", "a"), row("2", "b"), row("1", "c"));
        assert_eq!(parse_conllu(&ok, "t").unwrap().len(), 2);
    }

    #[test]
    fn empty_form_is_an_error() {
        let e = err(&format!("{}2\t\t_\tX\t_\t_\t_\t_\t_\t_\n", row("1", "a")));
        assert!(
            e.contains("t.conllu:2:") && e.contains("(FORM) is empty"),
            "{e}"
        );
    }

    #[test]
    fn comment_after_tokens_is_an_error() {
        let e = err(&format!("{}# late\n", row("1", "a")));
        assert!(
            e.contains("t.conllu:2:") && e.contains("comment line after"),
            "{e}"
        );
    }

    #[test]
    fn sentence_without_words_is_an_error() {
        let e = err(&format!("{}\n# lonely\n\n", row("1", "a")));
        assert!(
            e.contains("t.conllu:3:") && e.contains("no token lines"),
            "{e}"
        );
        let e = err("1-2\tab\t_\t_\t_\t_\t_\t_\t_\t_\n");
        assert!(
            e.contains("t.conllu:1:") && e.contains("no word lines"),
            "{e}"
        );
    }

    #[test]
    fn read_conllu_names_the_file_and_the_bad_byte() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good.conllu");
        std::fs::write(&good, SAMPLE).unwrap();
        assert_eq!(read_conllu(&good).unwrap().len(), 2);

        let bad = dir.path().join("bad.conllu");
        std::fs::write(&bad, b"1\ta\xff\t_\t_\t_\t_\t_\t_\t_\t_\n").unwrap();
        let e = read_conllu(&bad).unwrap_err().to_string();
        assert!(e.contains("bad.conllu") && e.contains("offset 3"), "{e}");

        let rows = dir.path().join("rows.conllu");
        std::fs::write(&rows, format!("{}1\tb\n", row("1", "a"))).unwrap();
        let e = read_conllu(&rows).unwrap_err().to_string();
        assert!(e.contains("rows.conllu:2:"), "{e}");

        let missing = dir.path().join("missing.conllu");
        let e = read_conllu(&missing).unwrap_err().to_string();
        assert!(e.contains("missing.conllu"), "{e}");
    }

    #[test]
    fn plain_text_becomes_one_sentence_per_line() {
        let s = sentences_from_plain("Hello  world .\r\n\n   \nNew\tline\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].len(), 3);
        assert_eq!(s[0].form(2), ".");
        assert_eq!(s[0].line, 1);
        assert_eq!(s[1].line, 4);
        assert_eq!(
            s[1].to_conllu(),
            "1\tNew\t_\t_\t_\t_\t_\t_\t_\t_\n2\tline\t_\t_\t_\t_\t_\t_\t_\t_\n\n"
        );
        // What it writes, the CoNLL-U reader reads back.
        let text: String = s.iter().map(Sentence::to_conllu).collect();
        assert_eq!(parse_conllu(&text, "t").unwrap().len(), 2);
        assert!(sentences_from_plain(" \n\n").is_empty());
    }

    #[test]
    fn detects_conllu_against_plain_text() {
        assert!(looks_like_conllu(SAMPLE));
        assert!(looks_like_conllu(&SAMPLE.replace('\n', "\r\n")));
        assert!(!looks_like_conllu("The cat sat.\nOn the mat.\n"));
        assert!(!looks_like_conllu("# only a comment\n\n"));
        assert!(!looks_like_conllu(""));
        assert!(!looks_like_conllu("a\tb\tc\n"));
        assert!(!looks_like_conllu(&format!("1{}\n", "\tx".repeat(10))));
    }

    #[test]
    fn tag_column_names() {
        for col in [TagColumn::Upos, TagColumn::Xpos] {
            assert_eq!(TagColumn::from_name(col.name()), Some(col));
            let json = serde_json::to_string(&col).unwrap();
            assert_eq!(json, format!("\"{}\"", col.name()));
        }
        assert_eq!(TagColumn::from_name("XPOS"), Some(TagColumn::Xpos));
        assert_eq!(TagColumn::from_name("pos"), None);
    }
}
