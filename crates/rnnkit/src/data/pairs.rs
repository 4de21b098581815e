//! Pairs of token sequences for transduction (`source<TAB>target` per line), their
//! vocabularies, and the CMU Pronouncing Dictionary read as word → phoneme pairs.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;

/// Largest pairs file read (they are a few MB; this bounds memory on a wrong file).
const MAX_FILE_BYTES: u64 = 1 << 30;
/// Most tokens on one side of a pair.
pub const MAX_TOKENS: usize = 500;

/// How one side of a line becomes tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    /// Every character is a token.
    #[default]
    Chars,
    /// Tokens are separated by spaces.
    Space,
}

impl Split {
    /// The name in flags and checkpoints.
    pub fn name(self) -> &'static str {
        match self {
            Split::Chars => "chars",
            Split::Space => "space",
        }
    }

    /// The split named `s`.
    pub fn from_name(s: &str) -> Option<Self> {
        [Split::Chars, Split::Space]
            .into_iter()
            .find(|k| k.name() == s)
    }

    /// The tokens of `text`.
    pub fn tokens(self, text: &str) -> Vec<String> {
        match self {
            Split::Chars => text.chars().map(String::from).collect(),
            Split::Space => text
                .split(' ')
                .filter(|t| !t.is_empty())
                .map(String::from)
                .collect(),
        }
    }

    /// `tokens` written back as one line.
    pub fn join(self, tokens: &[String]) -> String {
        tokens.join(match self {
            Split::Chars => "",
            Split::Space => " ",
        })
    }
}

/// One source with every reference output given for it (a word with all its pronunciations).
#[derive(Clone, Debug, PartialEq)]
pub struct Example {
    /// Source tokens.
    pub source: Vec<String>,
    /// Reference outputs, at least one.
    pub targets: Vec<Vec<String>>,
    /// 1-based line of each reference (0 when not from a file).
    pub lines: Vec<usize>,
}

/// Parses `source<TAB>target` lines; pairs with the same source become one
/// [`Example`] with several references (in file order). `what` names the text in errors.
pub fn parse_pairs(text: &str, what: &str, split: (Split, Split)) -> Result<Vec<Example>> {
    let mut examples: Vec<Example> = Vec::new();
    let mut by_source: HashMap<Vec<String>, usize> = HashMap::new();
    let fail = |line: usize, msg: String| Error::Input(format!("{what}:{line}: {msg}"));
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        if raw.trim().is_empty() {
            return Err(fail(
                line,
                "empty line; every line must be `source<TAB>target`".into(),
            ));
        }
        let Some((src, tgt)) = raw.split_once('\t') else {
            return Err(fail(
                line,
                "no tab; every line must be `source<TAB>target`".into(),
            ));
        };
        if tgt.contains('\t') {
            return Err(fail(
                line,
                "more than one tab; every line must be `source<TAB>target`".into(),
            ));
        }
        let (source, target) = (split.0.tokens(src), split.1.tokens(tgt));
        for (side, toks) in [("source", &source), ("target", &target)] {
            if toks.is_empty() {
                return Err(fail(line, format!("the {side} is empty")));
            }
            if toks.len() > MAX_TOKENS {
                return Err(fail(
                    line,
                    format!(
                        "the {side} has {} tokens, more than the limit of {MAX_TOKENS}",
                        toks.len()
                    ),
                ));
            }
        }
        match by_source.get(&source) {
            Some(&k) => {
                examples[k].targets.push(target);
                examples[k].lines.push(line);
            }
            None => {
                by_source.insert(source.clone(), examples.len());
                examples.push(Example {
                    source,
                    targets: vec![target],
                    lines: vec![line],
                });
            }
        }
    }
    if examples.is_empty() {
        return Err(Error::Input(format!(
            "{what}: no pairs; give one `source<TAB>target` per line"
        )));
    }
    Ok(examples)
}

/// Reads a pairs file (see [`parse_pairs`]); refuses files over 1 GiB and non-UTF-8 text.
pub fn read_pairs(path: &Path, split: (Split, Split)) -> Result<Vec<Example>> {
    let text = super::read_bounded_utf8(path, MAX_FILE_BYTES, "a pairs file")?;
    parse_pairs(&text, &path.display().to_string(), split)
}

/// Token ↔ id of one side. The target side starts with the end `</s>` (id 0) and the
/// start `<s>` (id 1).
#[derive(Clone, Debug, PartialEq)]
pub struct TokenVocab {
    /// Tokens by id.
    pub tokens: Vec<String>,
    index: HashMap<String, usize>,
}

/// Target id of the end token.
pub const END: usize = 0;
/// Target id of the start token.
pub const START: usize = 1;
/// Names of the two target specials.
pub const SPECIALS: [&str; 2] = ["</s>", "<s>"];

impl TokenVocab {
    /// The vocabulary of exactly `tokens` (ids in that order); duplicates are an error.
    pub fn new(tokens: Vec<String>) -> Result<Self> {
        let mut index = HashMap::new();
        for (i, t) in tokens.iter().enumerate() {
            if index.insert(t.clone(), i).is_some() {
                return Err(Error::Input(format!(
                    "token {t:?} appears twice in the vocabulary"
                )));
            }
        }
        Ok(TokenVocab { tokens, index })
    }

    /// Sources: every token of `examples`' sources, sorted.
    pub fn of_sources(examples: &[Example]) -> Self {
        let set: BTreeSet<&String> = examples.iter().flat_map(|e| &e.source).collect();
        Self::new(set.into_iter().cloned().collect()).expect("distinct")
    }

    /// Targets: the specials, then every token of `examples`' references, sorted.
    pub fn of_targets(examples: &[Example]) -> Self {
        let set: BTreeSet<&String> = examples
            .iter()
            .flat_map(|e| e.targets.iter().flatten())
            .filter(|t| !SPECIALS.contains(&t.as_str()))
            .collect();
        let tokens = SPECIALS
            .iter()
            .map(|s| s.to_string())
            .chain(set.into_iter().cloned())
            .collect();
        Self::new(tokens).expect("distinct")
    }

    /// Number of ids.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// The id of `token`.
    pub fn id(&self, token: &str) -> Option<usize> {
        self.index.get(token).copied()
    }

    /// The ids of `tokens`; an unknown token is an error naming it (`what` says where).
    pub fn encode(&self, tokens: &[String], what: &str) -> Result<Vec<usize>> {
        tokens
            .iter()
            .map(|t| {
                self.id(t).ok_or_else(|| {
                    Error::Input(format!(
                        "{what}: {t:?} is not in the model's vocabulary ({} tokens); the model cannot read it",
                        self.len()
                    ))
                })
            })
            .collect()
    }

    /// Every id mapped to the first id whose token reads the same once ASCII digits
    /// are removed (`AH0`, `AH1`, `AH2` → the id of `AH0`): for scoring ARPAbet
    /// phonemes without their stress.
    pub fn digitless_classes(&self) -> Vec<usize> {
        let mut first: HashMap<String, usize> = HashMap::new();
        self.tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let bare: String = t.chars().filter(|c| !c.is_ascii_digit()).collect();
                *first.entry(bare).or_insert(i)
            })
            .collect()
    }

    /// The tokens of `ids`.
    pub fn decode(&self, ids: &[usize]) -> Vec<String> {
        ids.iter()
            .map(|&i| self.tokens.get(i).cloned().unwrap_or_default())
            .collect()
    }
}

/// Which part of a deterministic split an item falls in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Part {
    /// About 90 %.
    Train,
    /// About 5 %.
    Dev,
    /// About 5 %.
    Test,
}

/// The part of `key` by its 64-bit FNV-1a hash: `h mod 100` < 90 train, < 95 dev, else test.
pub fn part_of(key: &str) -> Part {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in key.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    match h % 100 {
        0..=89 => Part::Train,
        90..=94 => Part::Dev,
        _ => Part::Test,
    }
}

/// What [`parse_cmudict`] kept and dropped.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CmudictStats {
    /// Entries (lines) read.
    pub entries: usize,
    /// Dropped: the entry has a `#` comment.
    pub commented: usize,
    /// Dropped: the word has a character other than `a`–`z` and `'`.
    pub non_letter: usize,
}

/// The CMU Pronouncing Dictionary (`word PH1 PH2 …` per line, alternatives as
/// `word(2)`) as examples: the word's letters → its phonemes with stress digits,
/// every pronunciation of a word a reference of one example. Rule: entries with a
/// `#` comment, and words with any character other than `a`–`z` and the apostrophe,
/// are dropped. Examples come in the dictionary's order, keyed by word in `part`.
pub fn parse_cmudict(text: &str, what: &str) -> Result<(Vec<(Part, Example)>, CmudictStats)> {
    let mut stats = CmudictStats::default();
    let mut words: BTreeMap<String, usize> = BTreeMap::new();
    let mut out: Vec<(Part, Example)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        stats.entries += 1;
        if line.contains('#') {
            stats.commented += 1;
            continue;
        }
        let mut fields = line.split_whitespace();
        let head = fields.next().unwrap_or_default();
        let word = match head.find('(') {
            Some(k) if head.ends_with(')') => &head[..k],
            _ => head,
        };
        let phones: Vec<String> = fields.map(String::from).collect();
        if phones.is_empty() {
            return Err(Error::Input(format!(
                "{what}:{}: {word:?} has no phonemes",
                i + 1
            )));
        }
        if word.is_empty() || !word.bytes().all(|b| b.is_ascii_lowercase() || b == b'\'') {
            stats.non_letter += 1;
            continue;
        }
        match words.get(word) {
            Some(&k) => {
                let ex = &mut out[k].1;
                if !ex.targets.contains(&phones) {
                    ex.targets.push(phones);
                    ex.lines.push(i + 1);
                }
            }
            None => {
                words.insert(word.to_string(), out.len());
                out.push((
                    part_of(word),
                    Example {
                        source: Split::Chars.tokens(word),
                        targets: vec![phones],
                        lines: vec![i + 1],
                    },
                ));
            }
        }
    }
    Ok((out, stats))
}

/// Reads the CMU Pronouncing Dictionary file at `path` (see [`parse_cmudict`]).
pub fn read_cmudict(path: &Path) -> Result<(Vec<(Part, Example)>, CmudictStats)> {
    let text = super::read_bounded_utf8(path, MAX_FILE_BYTES, "a dictionary file")?;
    parse_cmudict(&text, &path.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_group_references_and_bad_lines_name_their_line() {
        let ex = parse_pairs("ab\tx y\nc\tz\nab\tx\n", "t", (Split::Chars, Split::Space)).unwrap();
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].targets, vec![vec!["x", "y"], vec!["x"]]);
        assert_eq!(
            (ex[0].lines.clone(), ex[1].lines.clone()),
            (vec![1, 3], vec![2])
        );
        for (text, msg) in [
            ("a\tb\n\nc\td\n", "t:2: empty line"),
            ("a b\n", "t:1: no tab"),
            ("a\tb\tc\n", "t:1: more than one tab"),
            ("\tb\n", "t:1: the source is empty"),
            ("a\t \n", "t:1: the target is empty"),
            ("", "t: no pairs"),
        ] {
            let e = parse_pairs(text, "t", (Split::Chars, Split::Space))
                .unwrap_err()
                .to_string();
            assert!(e.contains(msg), "{e}");
        }
        let long = format!("{}\tx\n", "a".repeat(MAX_TOKENS + 1));
        let e = parse_pairs(&long, "t", (Split::Chars, Split::Chars)).unwrap_err();
        assert!(e.to_string().contains("more than the limit"), "{e}");
    }

    #[test]
    fn vocabularies_put_the_specials_first_and_name_unknown_tokens() {
        let ex = parse_pairs("ba\tB A\nab\tA B C\n", "t", (Split::Chars, Split::Space)).unwrap();
        let s = TokenVocab::of_sources(&ex);
        assert_eq!(s.tokens, vec!["a", "b"]);
        let t = TokenVocab::of_targets(&ex);
        assert_eq!(t.tokens, vec!["</s>", "<s>", "A", "B", "C"]);
        assert_eq!(t.id("</s>"), Some(END));
        assert_eq!(t.id("<s>"), Some(START));
        let e = s.encode(&Split::Chars.tokens("abz"), "line 3").unwrap_err();
        assert!(e.to_string().contains("line 3: \"z\""), "{e}");
    }

    #[test]
    fn cmudict_keeps_letter_words_merges_alternatives_and_splits_by_word() {
        let text =
            "a AH0\na(2) EY1\naalborg AO1 L B AO0 R G # place, danish\na.d. EY2 D IY1\nab AE1 B\n";
        let (ex, stats) = parse_cmudict(text, "d").unwrap();
        assert_eq!(stats.entries, 5);
        assert_eq!((stats.commented, stats.non_letter), (1, 1));
        assert_eq!(ex.len(), 2);
        assert_eq!(ex[0].1.targets, vec![vec!["AH0"], vec!["EY1"]]);
        assert_eq!(ex[0].0, part_of("a"));
        // The split is fixed by the word and close to 90/5/5.
        let parts: Vec<Part> = (0..20000).map(|i| part_of(&format!("w{i}"))).collect();
        let share = |p| parts.iter().filter(|&&q| q == p).count() as f64 / 20000.0;
        assert!((share(Part::Train) - 0.9).abs() < 0.01);
        assert!((share(Part::Test) - 0.05).abs() < 0.01);
    }
}
