//! Training throughput of the tagger ([`Tagger`]) on random sentences of random
//! words: encode a batch (lowercased word ids, word dropout, character ids of the
//! batch's distinct words), forward with dropout, cross-entropy over the words,
//! backward, global-norm clip 5, Adam — one `rnnkit tag train` step.

use super::{time_task_steps, TaskReport, TASK_WARMUP_STEPS};
use crate::data::Sentence;
use crate::error::{Error, Result};
use crate::model::Precision;
use crate::rng::Rng;
use crate::task::tagger::{Tagger, TaggerConfig, MAX_WORD_CHARS};
use std::collections::HashSet;

/// First code point of the alphabet: CJK ideographs, which have no case, so that
/// lowercasing keeps every word distinct.
pub const ALPHABET_START: u32 = 0x4E00;

/// What to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct TagBenchConfig {
    /// The model, dropouts included.
    pub model: TaggerConfig,
    /// Distinct tags K.
    pub tags: usize,
    /// Distinct words of the lexicon.
    pub word_vocab: usize,
    /// Characters of the alphabet the words are spelled with.
    pub char_vocab: usize,
    /// Fewest and most words of a sentence.
    pub words_per_sentence: (usize, usize),
    /// Fewest and most characters of a word.
    pub chars_per_word: (usize, usize),
    /// Sentences per batch.
    pub batch: usize,
    /// Timed training steps, each on its own batch (after [`TASK_WARMUP_STEPS`]).
    pub steps: usize,
    /// Seed of the data ([`sentences`]); the model and dropout use `seed + 1`.
    pub seed: u64,
    /// Arithmetic of the matrix products.
    pub precision: Precision,
}

impl TagBenchConfig {
    fn validate(&self) -> Result<()> {
        let c = self;
        if c.tags < 2 || c.char_vocab == 0 || c.batch == 0 || c.steps == 0 {
            return Err(Error::Config(
                "tags ≥ 2, char-vocab ≥ 1, batch ≥ 1 and steps ≥ 1 are needed".into(),
            ));
        }
        if c.word_vocab < c.tags {
            return Err(Error::Config(format!(
                "--word-vocab ({}) must be at least --tags ({}): every tag needs a word",
                c.word_vocab, c.tags
            )));
        }
        for (flag, (lo, hi)) in [
            ("--words-per-sentence", c.words_per_sentence),
            ("--chars-per-word", c.chars_per_word),
        ] {
            if lo == 0 || lo > hi {
                return Err(Error::Config(format!(
                    "{flag} must be MIN-MAX with 1 ≤ MIN ≤ MAX, got {lo}-{hi}"
                )));
            }
        }
        let (lo, hi) = c.chars_per_word;
        let spellings: f64 = (lo..=hi.min(lo + 64))
            .map(|l| (c.char_vocab as f64).powi(l as i32))
            .sum();
        if spellings < 2.0 * c.word_vocab as f64 {
            return Err(Error::Config(format!(
                "{} characters spell only {spellings} words of {lo}-{hi} characters; \
                 --word-vocab {} needs at least twice as many (raise --char-vocab or --chars-per-word)",
                c.char_vocab, c.word_vocab
            )));
        }
        let m = &c.model;
        let (g, h, hc) = (
            m.cell.gates() as f64,
            m.hidden_size as f64,
            m.char_hidden as f64,
        );
        let words = ((TASK_WARMUP_STEPS + c.steps) * c.batch * c.words_per_sentence.1) as f64;
        // A stored word: ten short strings; a lexicon word: its spelling, its row,
        // the word embedding's value, gradient and Adam moments.
        let data = 400.0 * words
            + c.word_vocab as f64 * (3.0 * 4.0 * hi as f64 + 16.0 * m.word_embed as f64);
        let step_words = (c.batch * c.words_per_sentence.1) as f64;
        let char_steps = step_words * hi.min(MAX_WORD_CHARS) as f64;
        let in0 = (m.word_embed + 2 * m.char_hidden) as f64;
        let activations = 4.0
            * (step_words * (m.num_layers as f64 * 2.0 * (2.0 * g * h + 6.0 * h) + 3.0 * in0)
                + char_steps * 2.0 * (2.0 * g * hc + 6.0 * hc + m.char_embed as f64));
        crate::train::check_memory(
            (data + activations) as u64,
            "--word-vocab, --hidden, --char-hidden, --batch, --words-per-sentence, --chars-per-word or --steps",
        )
    }
}

/// The lexicon of [`sentences`], drawn from `rng`.
fn lexicon(cfg: &TagBenchConfig, rng: &mut Rng) -> Vec<String> {
    let (lo, hi) = cfg.chars_per_word;
    let mut seen = HashSet::with_capacity(cfg.word_vocab);
    let mut words = Vec::with_capacity(cfg.word_vocab);
    while words.len() < cfg.word_vocab {
        let len = lo + rng.below(hi - lo + 1);
        let word: String = (0..len)
            .map(|_| {
                char::from_u32(ALPHABET_START + rng.below(cfg.char_vocab) as u32)
                    .expect("valid code point")
            })
            .collect();
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

/// One sentence of `words` with their `tags` in the model's column.
fn sentence(words: &[&str], tags: &[&str], model: &TaggerConfig) -> Sentence {
    let mut s = Sentence {
        comments: Vec::new(),
        rows: words
            .iter()
            .enumerate()
            .map(|(i, w)| {
                std::array::from_fn(|c| match c {
                    0 => (i + 1).to_string(),
                    1 => w.to_string(),
                    _ => "_".to_string(),
                })
            })
            .collect(),
        words: (0..words.len()).collect(),
        line: 0,
    };
    for (i, t) in tags.iter().enumerate() {
        s.set_tag(i, model.column, t);
    }
    s
}

/// Tag names `T0`, `T1`, ….
fn tag_names(cfg: &TagBenchConfig) -> Vec<String> {
    (0..cfg.tags).map(|k| format!("T{k}")).collect()
}

/// The benchmark's data from `Rng::new(seed)`: first the lexicon of `word_vocab`
/// distinct words, each its length `lo + below(hi − lo + 1)` (`chars_per_word`) then
/// that many characters `ALPHABET_START + below(char_vocab)`, a word drawn twice
/// being drawn again; then `(TASK_WARMUP_STEPS + steps) · batch` sentences, batch
/// after batch, each its word count `lo + below(hi − lo + 1)` (`words_per_sentence`)
/// then, word by word, the word `below(word_vocab)` of the lexicon and its tag
/// `below(tags)`. `bench/pytorch_ref.py` draws the same.
pub fn sentences(cfg: &TagBenchConfig) -> (Vec<String>, Vec<Sentence>) {
    let mut rng = Rng::new(cfg.seed);
    let lex = lexicon(cfg, &mut rng);
    let names = tag_names(cfg);
    let (lo, hi) = cfg.words_per_sentence;
    let n = (TASK_WARMUP_STEPS + cfg.steps) * cfg.batch;
    let sents = (0..n)
        .map(|_| {
            let len = lo + rng.below(hi - lo + 1);
            let (mut words, mut tags) = (Vec::with_capacity(len), Vec::with_capacity(len));
            for _ in 0..len {
                words.push(lex[rng.below(cfg.word_vocab)].as_str());
                tags.push(names[rng.below(cfg.tags)].as_str());
            }
            sentence(&words, &tags, &cfg.model)
        })
        .collect();
    (lex, sents)
}

/// Counted FLOPs of one training step on a batch of `words` words whose distinct
/// spellings have `chars` characters in all (each clipped to [`MAX_WORD_CHARS`], as
/// the model reads them):
///
/// `3 · (words · (Σ_l 2·2·(in_l + H)·G·H + 2·2H·K) + chars · 2·2·(Ec + Hc)·G·Hc)`,
/// with `in_0 = Ew + 2·Hc`, `in_l = 2H` for `l > 0` and G gates (4 LSTM, 3 GRU, 1
/// RNN): the multiply-adds ×2 of the bidirectional sentence layers and the head per
/// word and of the bidirectional character layer per character, ×3 for forward and
/// backward (≈ 2× forward). Embedding lookups, padding, dropout, clipping and Adam
/// are not counted.
pub fn flops(cfg: &TagBenchConfig, words: usize, chars: usize) -> f64 {
    let m = &cfg.model;
    let (g, h) = (m.cell.gates() as f64, m.hidden_size as f64);
    let (ec, hc) = (m.char_embed as f64, m.char_hidden as f64);
    let per_word: f64 = (0..m.num_layers)
        .map(|l| {
            let input = if l == 0 {
                (m.word_embed + 2 * m.char_hidden) as f64
            } else {
                2.0 * h
            };
            2.0 * 2.0 * (input + h) * g * h
        })
        .sum::<f64>()
        + 2.0 * 2.0 * h * cfg.tags as f64;
    let per_char = if m.char_hidden > 0 {
        2.0 * 2.0 * (ec + hc) * g * hc
    } else {
        0.0
    };
    3.0 * (words as f64 * per_word + chars as f64 * per_char)
}

/// Words and counted characters (of the distinct spellings) of a batch.
fn batch_work(batch: &[Sentence]) -> (usize, usize) {
    let mut distinct = HashSet::new();
    let mut words = 0;
    for s in batch {
        for i in 0..s.len() {
            words += 1;
            distinct.insert(s.form(i));
        }
    }
    let chars = distinct
        .iter()
        .map(|f| f.chars().count().min(MAX_WORD_CHARS))
        .sum();
    (words, chars)
}

/// Runs the measurement: [`TASK_WARMUP_STEPS`] untimed steps, then `steps` timed
/// ones, each on its own batch of [`sentences`]; tokens are words.
pub fn run(cfg: &TagBenchConfig) -> Result<TaskReport> {
    cfg.validate()?;
    let (lex, sents) = sentences(cfg);
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut model = {
        // Every word of the lexicon with every tag, so the lists are the whole lexicon.
        let names = tag_names(cfg);
        let tags: Vec<&str> = (0..lex.len())
            .map(|i| names[i % cfg.tags].as_str())
            .collect();
        let words: Vec<&str> = lex.iter().map(String::as_str).collect();
        let known: Vec<Sentence> = words
            .chunks(100)
            .zip(tags.chunks(100))
            .map(|(w, t)| sentence(w, t, &cfg.model))
            .collect();
        Tagger::new(&cfg.model, &known, &mut rng)?
    };
    let batches: Vec<&[Sentence]> = sents.chunks(cfg.batch).collect();
    let work: Vec<(usize, f64)> = batches
        .iter()
        .map(|b| {
            let (words, chars) = batch_work(b);
            (words, flops(cfg, words, chars))
        })
        .collect();
    time_task_steps("tag", &mut model, &work, cfg.precision, |m, i| {
        let batch: Vec<&Sentence> = batches[i].iter().collect();
        Ok(m.train_step(&batch, &mut rng)?.0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::TagColumn;
    use crate::CellKind;

    fn config() -> TagBenchConfig {
        TagBenchConfig {
            model: TaggerConfig {
                cell: CellKind::Lstm,
                word_embed: 6,
                char_embed: 4,
                char_hidden: 5,
                hidden_size: 7,
                num_layers: 2,
                dropout: 0.25,
                word_dropout: 0.1,
                min_freq: 1,
                column: TagColumn::Upos,
            },
            tags: 3,
            word_vocab: 40,
            char_vocab: 6,
            words_per_sentence: (2, 5),
            chars_per_word: (1, 30),
            batch: 4,
            steps: 2,
            seed: 3,
            precision: Precision::F32,
        }
    }

    #[test]
    fn sentences_are_seeded_and_within_the_asked_sizes() {
        let cfg = config();
        let (lex, sents) = sentences(&cfg);
        assert_eq!(lex.len(), 40);
        assert_eq!(
            lex.iter().collect::<HashSet<_>>().len(),
            40,
            "distinct words"
        );
        assert!(lex.iter().all(|w| (1..=30).contains(&w.chars().count())));
        assert_eq!(sents.len(), (TASK_WARMUP_STEPS + 2) * 4);
        assert_eq!(
            (lex.clone(), sents.clone()),
            sentences(&cfg),
            "same seed, same data"
        );
        for (i, s) in sents.iter().enumerate() {
            assert!(
                (2..=5).contains(&s.len()),
                "sentence {i} has {} words",
                s.len()
            );
            for w in 0..s.len() {
                assert!(lex.iter().any(|l| l == s.form(w)), "sentence {i} word {w}");
                assert!(
                    s.tag(w, TagColumn::Upos).starts_with('T'),
                    "sentence {i} word {w}"
                );
            }
        }
    }

    #[test]
    fn flops_count_the_sentence_and_character_networks_and_the_head() {
        // Sentence layer 0: 2·2·(6 + 10 + 7)·4·7 = 2576, layer 1: 2·2·(14 + 7)·4·7 = 2352,
        // head 2·2·7·3 = 84 per word; characters: 2·2·(4 + 5)·4·5 = 720 each.
        let f = flops(&config(), 10, 20);
        assert_eq!(f, 3.0 * (10.0 * (2576.0 + 2352.0 + 84.0) + 20.0 * 720.0));
        let words_only = TaggerConfig {
            char_hidden: 0,
            ..config().model
        };
        let cfg = TagBenchConfig {
            model: words_only,
            ..config()
        };
        assert_eq!(flops(&cfg, 1, 99), flops(&cfg, 1, 0));
    }

    #[test]
    fn long_words_count_the_characters_the_model_reads() {
        let (_, sents) = sentences(&config());
        let (words, chars) = batch_work(&sents[..4]);
        assert_eq!(words, sents[..4].iter().map(Sentence::len).sum::<usize>());
        let distinct: HashSet<&str> = sents[..4]
            .iter()
            .flat_map(|s| (0..s.len()).map(move |i| s.form(i)))
            .collect();
        let expect: usize = distinct
            .iter()
            .map(|w| w.chars().count().min(MAX_WORD_CHARS))
            .sum();
        assert_eq!(chars, expect);
    }

    #[test]
    fn a_short_run_reports_positive_figures() {
        let r = run(&config()).unwrap();
        assert_eq!(r.task, "tag");
        assert!(r.train_tokens_per_sec > 0.0 && r.train_gflops > 0.0 && r.step_seconds > 0.0);
        assert!(
            (2.0 * 4.0..=5.0 * 4.0).contains(&r.tokens_per_step),
            "{r:?}"
        );
    }

    #[test]
    fn a_lexicon_the_alphabet_cannot_spell_is_refused() {
        let cfg = TagBenchConfig {
            chars_per_word: (2, 2),
            ..config()
        };
        let e = run(&cfg).unwrap_err().to_string();
        assert!(e.contains("--word-vocab"), "{e}");
    }
}
