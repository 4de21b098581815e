//! A supervised HMM part-of-speech tagger after TnT (Brants 2000): tag trigrams
//! smoothed by deleted interpolation, P(w | t) by relative frequency for known words,
//! and for unknown words a tag distribution from their last letters (suffixes of
//! rare training words, smoothed by successive abstraction) within one of three word
//! shapes (contains a digit, capitalised, other); decoding is exact Viterbi over tag
//! pairs.

use crate::checkpoint::{self, CheckpointSource, TensorFile};
use crate::data::{Sentence, TagColumn};
use crate::error::{Error, Result};
use crate::task::tagger::TagScores;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::path::Path;

/// The `rnnkit.task` of an HMM tagger checkpoint.
pub const TASK: &str = "tag-hmm";
const META_TAGS: &str = "rnnkit.tags";
const META_WORDS: &str = "rnnkit.words";
const META_SUFFIXES: &str = "rnnkit.suffixes";
const META_COLUMN: &str = "rnnkit.column";
const META_CONFIG: &str = "rnnkit.config";

/// Most tags a tagger takes: its trigram table holds (K + 1)³ probabilities (about
/// 130 MB at this bound), and decoding an unknown word costs (K + 1)³ steps.
pub const MAX_TAGS: usize = 256;

/// How the tagger is estimated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HmmTaggerConfig {
    /// Tag n-gram order of the transitions: 2 (bigram) or 3 (trigram).
    pub order: usize,
    /// Longest suffix (in characters) the unknown-word model reads.
    pub max_suffix: usize,
    /// Words seen at most this often in training teach the unknown-word model.
    pub rare_freq: usize,
    /// Which column holds the tags.
    pub column: TagColumn,
    /// Interpolation weights (unigram, bigram, trigram), from deleted interpolation.
    #[serde(default)]
    pub lambdas: [f64; 3],
    /// The successive-abstraction weight θ of the suffix model.
    #[serde(default)]
    pub theta: f64,
}

impl Default for HmmTaggerConfig {
    fn default() -> Self {
        HmmTaggerConfig {
            order: 3,
            max_suffix: 10,
            rare_freq: 10,
            column: TagColumn::Upos,
            lambdas: [0.0; 3],
            theta: 0.0,
        }
    }
}

/// A trained tagger: smoothed probability tables and the vocabularies that index them.
#[derive(Clone, Debug)]
pub struct HmmTagger {
    /// Tag names; index = tag id. Index K (one past the last) is the sentence boundary.
    pub tags: Vec<String>,
    /// The configuration, with the estimated λ and θ.
    pub config: HmmTaggerConfig,
    /// P(t3 | t1, t2), `[K+1, K+1, K+1]`.
    transition: Vec<f64>,
    /// Training word forms; index = row of `emission`.
    words: Vec<String>,
    word_ids: HashMap<String, usize>,
    /// Lowercased training forms: what counts as a known word in scores.
    known_lower: HashSet<String>,
    /// P(w | t), `[W, K]`.
    emission: Vec<f64>,
    /// Suffix keys (shape letter + lowercased suffix); index = row of `suffix`.
    suffixes: Vec<String>,
    suffix_ids: HashMap<String, usize>,
    /// P(t | shape, suffix), `[S, K]`.
    suffix: Vec<f64>,
    /// P(t), `[K]`.
    tag_prior: Vec<f64>,
}

/// The word-shape letter that prefixes every suffix key.
fn shape(word: &str, first: bool) -> char {
    if word.chars().any(|c| c.is_numeric()) {
        'D'
    } else if word.chars().next().is_some_and(char::is_uppercase) {
        if first {
            'S'
        } else {
            'U'
        }
    } else {
        'l'
    }
}

/// The suffix keys of `word`, shortest (the shape alone) first.
fn suffix_keys(word: &str, first: bool, max: usize) -> Vec<String> {
    let s = shape(word, first);
    let lower: Vec<char> = word.to_lowercase().chars().collect();
    (0..=max.min(lower.len()))
        .map(|n| {
            let mut k = String::with_capacity(1 + 4 * n);
            k.push(s);
            k.extend(&lower[lower.len() - n..]);
            k
        })
        .collect()
}

impl HmmTagger {
    /// Estimates the tagger from `sentences` (counts, deleted interpolation, suffix model).
    pub fn train(sentences: &[Sentence], config: &HmmTaggerConfig) -> Result<Self> {
        if !(2..=3).contains(&config.order) {
            return Err(Error::Config(format!(
                "the HMM tagger's order must be 2 or 3, got {}",
                config.order
            )));
        }
        if sentences.iter().all(|s| s.is_empty()) {
            return Err(Error::Input("no tagged words to train on".into()));
        }
        let col = config.column;
        let mut tags: Vec<String> = sentences
            .iter()
            .flat_map(|s| (0..s.len()).map(move |i| s.tag(i, col).to_string()))
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        tags.sort();
        if tags.len() > MAX_TAGS {
            return Err(Error::Input(format!(
                "the {} column holds {} different tags; the HMM tagger takes at most {MAX_TAGS} (its trigram table grows as their cube)",
                col.name(),
                tags.len()
            )));
        }
        let tag_id: HashMap<&str, usize> = tags
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .collect();
        let k = tags.len();
        let b = k; // the boundary symbol
        let k1 = k + 1;
        let mut uni = vec![0.0; k1];
        let mut bi = vec![0.0; k1 * k1];
        let mut tri = vec![0.0; k1 * k1 * k1];
        let mut word_tag: HashMap<&str, Vec<f64>> = HashMap::new();
        for s in sentences.iter().filter(|s| !s.is_empty()) {
            let seq: Vec<usize> = std::iter::once(b)
                .chain(std::iter::once(b))
                .chain((0..s.len()).map(|i| tag_id[s.tag(i, col)]))
                .chain(std::iter::once(b))
                .collect();
            // Unigrams count every predicted symbol (tags and the end); bigrams and
            // trigrams every (context, next) pair, starting from ⟨B, B⟩.
            for w in seq.windows(3) {
                uni[w[2]] += 1.0;
                bi[w[1] * k1 + w[2]] += 1.0;
                tri[(w[0] * k1 + w[1]) * k1 + w[2]] += 1.0;
            }
            for i in 0..s.len() {
                word_tag.entry(s.form(i)).or_insert_with(|| vec![0.0; k])[tag_id[s.tag(i, col)]] +=
                    1.0;
            }
        }
        // Contexts as sums of what follows them, so that every estimate is a distribution.
        let ctx1: Vec<f64> = (0..k1)
            .map(|a| bi[a * k1..(a + 1) * k1].iter().sum())
            .collect();
        let ctx2: Vec<f64> = (0..k1 * k1)
            .map(|ab| tri[ab * k1..(ab + 1) * k1].iter().sum())
            .collect();
        let n: f64 = uni.iter().sum();
        // Deleted interpolation (Brants 2000, fig. 1): each n-gram votes, with its count,
        // for the order whose estimate without that one occurrence is highest. A bigram
        // model counts the bigrams (once each, at t1 = B) and never votes for trigrams.
        let ratio = |num: f64, den: f64| if den > 0.0 { num / den } else { 0.0 };
        let mut lambdas = [0.0f64; 3];
        for t1 in 0..k1 {
            for t2 in 0..k1 {
                for t3 in 0..k1 {
                    let (f123, f23) = (tri[(t1 * k1 + t2) * k1 + t3], bi[t2 * k1 + t3]);
                    let (votes, trigram) = match config.order {
                        3 => (f123, ratio(f123 - 1.0, ctx2[t1 * k1 + t2] - 1.0)),
                        _ if t1 == b => (f23, f64::NEG_INFINITY),
                        _ => break,
                    };
                    if votes > 0.0 {
                        let c = [
                            ratio(uni[t3] - 1.0, n - 1.0),
                            ratio(f23 - 1.0, ctx1[t2] - 1.0),
                            trigram,
                        ];
                        lambdas[argmax3(&c)] += votes;
                    }
                }
            }
        }
        let total: f64 = lambdas.iter().sum();
        if total > 0.0 {
            lambdas.iter_mut().for_each(|l| *l /= total);
        } else {
            lambdas = [1.0, 0.0, 0.0];
        }
        // P(t3 | t1, t2) = λ1 P̂(t3) + λ2 P̂(t3 | t2) + λ3 P̂(t3 | t1, t2); an unseen
        // context hands its weight to the next lower order.
        let mut transition = vec![0.0; k1 * k1 * k1];
        for t1 in 0..k1 {
            for t2 in 0..k1 {
                let (c2, c1) = (ctx2[t1 * k1 + t2], ctx1[t2]);
                let mut l = lambdas;
                if c2 == 0.0 {
                    l[1] += l[2];
                    l[2] = 0.0;
                }
                if c1 == 0.0 {
                    l[0] += l[1];
                    l[1] = 0.0;
                }
                for t3 in 0..k1 {
                    transition[(t1 * k1 + t2) * k1 + t3] = l[0] * uni[t3] / n
                        + l[1] * ratio(bi[t2 * k1 + t3], c1)
                        + l[2] * ratio(tri[(t1 * k1 + t2) * k1 + t3], c2);
                }
            }
        }
        let tag_count = &uni[..k];
        let tokens: f64 = tag_count.iter().sum();
        let tag_prior: Vec<f64> = tag_count.iter().map(|c| c / tokens).collect();
        // P(w | t) = f(w, t) / f(t).
        let mut words: Vec<String> = word_tag.keys().map(|w| w.to_string()).collect();
        words.sort();
        let mut emission = vec![0.0; words.len() * k];
        for (i, w) in words.iter().enumerate() {
            for (t, c) in word_tag[w.as_str()].iter().enumerate() {
                emission[i * k + t] = c / tag_count[t];
            }
        }
        // The suffix model: f(t, shape+suffix) over tokens of rare words.
        let mut suffix_counts: HashMap<String, Vec<f64>> = HashMap::new();
        for s in sentences {
            for i in 0..s.len() {
                let w = s.form(i);
                if word_tag[w].iter().sum::<f64>() > config.rare_freq as f64 {
                    continue;
                }
                let t = tag_id[s.tag(i, col)];
                for key in suffix_keys(w, i == 0, config.max_suffix) {
                    suffix_counts.entry(key).or_insert_with(|| vec![0.0; k])[t] += 1.0;
                }
            }
        }
        // θ: the standard deviation of the unconditioned tag probabilities (Brants 2000, eq. 8).
        let mean = 1.0 / k as f64;
        let theta = if k > 1 {
            (tag_prior.iter().map(|p| (p - mean).powi(2)).sum::<f64>() / (k - 1) as f64).sqrt()
        } else {
            0.0
        };
        let mut suffixes: Vec<String> = suffix_counts.keys().cloned().collect();
        // Every shape has its root, even one no rare word had.
        for s in ['D', 'S', 'U', 'l'] {
            if !suffix_counts.contains_key(&s.to_string()) {
                suffixes.push(s.to_string());
            }
        }
        // Parents before children: shorter keys first, then by name for a fixed order.
        suffixes.sort_by(|a, b| a.chars().count().cmp(&b.chars().count()).then(a.cmp(b)));
        let suffix_ids: HashMap<String, usize> = suffixes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        // Successive abstraction (eq. 7): P(t | l_{n-i+1..n}) = (P̂(t | l_{n-i+1..n}) + θ
        // P(t | l_{n-i+2..n})) / (1 + θ), from P(t) at the shape root.
        let mut suffix = vec![0.0; suffixes.len() * k];
        for (i, key) in suffixes.iter().enumerate() {
            let parent: Vec<f64> = if key.chars().count() == 1 {
                tag_prior.clone()
            } else {
                let mut p = key.clone();
                // Drop the suffix's first letter (just after the shape letter).
                let first = p.char_indices().nth(1).expect("longer than one char").0;
                let second = p.char_indices().nth(2).map_or(p.len(), |(j, _)| j);
                p.replace_range(first..second, "");
                suffix[suffix_ids[&p] * k..(suffix_ids[&p] + 1) * k].to_vec()
            };
            let counts = suffix_counts.get(key);
            let total: f64 = counts.map_or(0.0, |c| c.iter().sum());
            for t in 0..k {
                let ml = counts.map_or(0.0, |c| ratio(c[t], total));
                let ml = if total > 0.0 { ml } else { parent[t] };
                suffix[i * k + t] = (ml + theta * parent[t]) / (1.0 + theta);
            }
        }
        let config = HmmTaggerConfig {
            lambdas,
            theta,
            ..config.clone()
        };
        Self::assemble(
            tags, config, transition, words, emission, suffixes, suffix, tag_prior,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        tags: Vec<String>,
        config: HmmTaggerConfig,
        transition: Vec<f64>,
        words: Vec<String>,
        emission: Vec<f64>,
        suffixes: Vec<String>,
        suffix: Vec<f64>,
        tag_prior: Vec<f64>,
    ) -> Result<Self> {
        let word_ids = words
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i))
            .collect();
        let known_lower = words.iter().map(|w| w.to_lowercase()).collect();
        let suffix_ids = suffixes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.clone(), i))
            .collect();
        Ok(HmmTagger {
            tags,
            config,
            transition,
            words,
            word_ids,
            known_lower,
            emission,
            suffixes,
            suffix_ids,
            suffix,
            tag_prior,
        })
    }

    /// The tag column this tagger reads and writes.
    pub fn column(&self) -> TagColumn {
        self.config.column
    }

    /// Whether a word counts as unknown in scores: its lowercased form was not in
    /// training (as the recurrent tagger counts it).
    pub fn is_unknown(&self, form: &str) -> bool {
        !self.known_lower.contains(&form.to_lowercase())
    }

    /// Candidate tags of a word and their log P(w | t), up to a constant per position:
    /// the lexicon's tags for a known form (at the sentence start also its lowercase),
    /// else ln P(t | suffix) − ln P(t) (Bayes' rule; P(suffix) is the same for every tag).
    fn candidates(&self, form: &str, first: bool) -> Vec<(usize, f64)> {
        let k = self.tags.len();
        let lower;
        let known = match self.word_ids.get(form) {
            Some(&i) => Some(i),
            None if first => {
                lower = form.to_lowercase();
                self.word_ids.get(&lower).copied()
            }
            None => None,
        };
        if let Some(i) = known {
            let row = &self.emission[i * k..(i + 1) * k];
            let c: Vec<(usize, f64)> = (0..k)
                .filter(|&t| row[t] > 0.0)
                .map(|t| (t, row[t].ln()))
                .collect();
            if !c.is_empty() {
                return c;
            }
        }
        let keys = suffix_keys(form, first, self.config.max_suffix);
        let row = keys
            .iter()
            .rev()
            .find_map(|key| self.suffix_ids.get(key))
            .copied()
            .unwrap_or(0);
        let c: Vec<(usize, f64)> = (0..k)
            .filter(|&t| self.tag_prior[t] > 0.0 && self.suffix[row * k + t] > 0.0)
            .map(|t| (t, self.suffix[row * k + t].ln() - self.tag_prior[t].ln()))
            .collect();
        if c.is_empty() {
            // Tables that give no tag any mass (a hand-made checkpoint): let the
            // transitions decide alone rather than have no path at all.
            return (0..k).map(|t| (t, 0.0)).collect();
        }
        c
    }

    /// The most probable tag sequence of one sentence's word forms (Viterbi over tag
    /// pairs: δ_i(t_{i-1}, t_i) = max_{t_{i-2}} δ_{i-1}(t_{i-2}, t_{i-1}) + ln P(t_i |
    /// t_{i-2}, t_{i-1}) + ln P(w_i | t_i), closed by ln P(end | t_{n-1}, t_n)).
    pub fn tag_words(&self, forms: &[&str]) -> Vec<usize> {
        let n = forms.len();
        if n == 0 {
            return Vec::new();
        }
        let k1 = self.tags.len() + 1;
        let b = k1 - 1;
        let log_t =
            |t1: usize, t2: usize, t3: usize| self.transition[(t1 * k1 + t2) * k1 + t3].ln();
        let cands: Vec<Vec<(usize, f64)>> = forms
            .iter()
            .enumerate()
            .map(|(i, f)| self.candidates(f, i == 0))
            .collect();
        // Position −1 has the single candidate B.
        let boundary = vec![(b, 0.0)];
        let prev_of = |i: usize| if i == 0 { &boundary } else { &cands[i - 1] };
        // delta[i]: [|cands[i-1]|, |cands[i]|]; back[i] the index into cands[i-2].
        let mut delta: Vec<f64> = cands[0].iter().map(|&(c, e)| log_t(b, b, c) + e).collect();
        let mut back: Vec<Vec<usize>> = vec![vec![0; cands[0].len()]];
        for (i, cur) in cands.iter().enumerate().skip(1) {
            let (pp, p) = (prev_of(i - 1), prev_of(i));
            let mut next = vec![f64::NEG_INFINITY; p.len() * cur.len()];
            let mut bp = vec![0; p.len() * cur.len()];
            for (ai, &(a, _)) in p.iter().enumerate() {
                for (ci, &(c, e)) in cur.iter().enumerate() {
                    let (mut best, mut arg) = (f64::NEG_INFINITY, 0);
                    for (zi, &(z, _)) in pp.iter().enumerate() {
                        let v = delta[zi * p.len() + ai] + log_t(z, a, c);
                        if v > best {
                            (best, arg) = (v, zi);
                        }
                    }
                    next[ai * cur.len() + ci] = best + e;
                    bp[ai * cur.len() + ci] = arg;
                }
            }
            delta = next;
            back.push(bp);
        }
        let (p, cur) = (prev_of(n - 1), &cands[n - 1]);
        let (mut best, mut cell) = (f64::NEG_INFINITY, (0, 0));
        for (ai, &(a, _)) in p.iter().enumerate() {
            for (ci, &(c, _)) in cur.iter().enumerate() {
                let v = delta[ai * cur.len() + ci] + log_t(a, c, b);
                if v > best || (best == f64::NEG_INFINITY && (ai, ci) == (0, 0)) {
                    (best, cell) = (v, (ai, ci));
                }
            }
        }
        let mut path = vec![0; n];
        let (mut ai, mut ci) = cell;
        for i in (0..n).rev() {
            path[i] = cands[i][ci].0;
            let zi = back[i][ai * cands[i].len() + ci];
            ci = ai;
            ai = zi;
        }
        path
    }

    /// Tag ids of every word of `sentence`.
    pub fn predict(&self, sentence: &Sentence) -> Vec<usize> {
        let forms: Vec<&str> = (0..sentence.len()).map(|i| sentence.form(i)).collect();
        self.tag_words(&forms)
    }

    /// Accuracy overall and on unknown words (`loss` is NaN: the tagger has none).
    pub fn evaluate(&self, sentences: &[Sentence]) -> TagScores {
        let mut s = TagScores {
            loss: f64::NAN,
            ..Default::default()
        };
        let col = self.config.column;
        for sent in sentences {
            let path = self.predict(sent);
            for (i, &t) in path.iter().enumerate() {
                let right = self.tags[t] == sent.tag(i, col);
                s.tokens += 1;
                s.correct += right as usize;
                if self.is_unknown(sent.form(i)) {
                    s.oov_tokens += 1;
                    s.oov_correct += right as usize;
                }
            }
        }
        s
    }

    /// Writes the checkpoint atomically (f64): `transition [K+1, K+1, K+1]`,
    /// `emission [W, K]`, `suffix [S, K]`, `tag_prior [K]`; tags, words, suffix keys,
    /// column and configuration in the metadata.
    pub fn save(&self, path: &Path) -> Result<()> {
        let (k, k1) = (self.tags.len(), self.tags.len() + 1);
        let tensors = [
            (
                "transition",
                Tensor::from_vec(&[k1, k1, k1], self.transition.clone())?,
            ),
            (
                "emission",
                Tensor::from_vec(&[self.words.len(), k], self.emission.clone())?,
            ),
            (
                "suffix",
                Tensor::from_vec(&[self.suffixes.len(), k], self.suffix.clone())?,
            ),
            ("tag_prior", Tensor::from_vec(&[k], self.tag_prior.clone())?),
        ];
        let refs: Vec<(String, &Tensor<f64>)> =
            tensors.iter().map(|(n, t)| (n.to_string(), t)).collect();
        let json = |v: &[String]| serde_json::to_string(v).expect("strings");
        let meta = HashMap::from([
            (crate::task::META_TASK.to_string(), TASK.to_string()),
            (META_TAGS.to_string(), json(&self.tags)),
            (META_WORDS.to_string(), json(&self.words)),
            (META_SUFFIXES.to_string(), json(&self.suffixes)),
            (
                META_COLUMN.to_string(),
                self.config.column.name().to_string(),
            ),
            (
                META_CONFIG.to_string(),
                serde_json::to_string(&self.config).expect("config"),
            ),
        ]);
        checkpoint::save(path, &refs, &meta)
    }

    /// Reads a checkpoint written by [`HmmTagger::save`]: every shape is checked from
    /// the header before anything is read, then every distribution (transition rows,
    /// emission columns, suffix rows, the tag prior) must sum to 1.
    pub fn load(source: impl CheckpointSource) -> Result<Self> {
        let file = source.open()?;
        crate::task::expect_task(&file, TASK)?;
        let list = |key: &str| -> Result<Vec<String>> { crate::task::meta_json(&file, key) };
        let (tags, words, suffixes) = (list(META_TAGS)?, list(META_WORDS)?, list(META_SUFFIXES)?);
        let mut config: HmmTaggerConfig = crate::task::meta_json(&file, META_CONFIG)?;
        let column = file
            .metadata()
            .get(META_COLUMN)
            .map(String::as_str)
            .unwrap_or("upos");
        config.column = TagColumn::from_name(column).ok_or_else(|| {
            file.error(format!(
                "metadata `{META_COLUMN}` is {column:?}; expected upos or xpos"
            ))
        })?;
        let (k, w, s) = (tags.len(), words.len(), suffixes.len());
        if k == 0 || s == 0 || k > MAX_TAGS {
            return Err(file.error(format!(
                "metadata `{META_TAGS}` names {k} tags and `{META_SUFFIXES}` {s} suffixes; 1 to {MAX_TAGS} tags and at least one suffix are needed"
            )));
        }
        let k1 = k + 1;
        for (name, shape) in [
            ("transition", vec![k1, k1, k1]),
            ("emission", vec![w, k]),
            ("suffix", vec![s, k]),
            ("tag_prior", vec![k]),
        ] {
            file.expect_float(name, &shape)?;
        }
        let get =
            |name: &str| -> Result<Vec<f64>> { Ok(file.get::<f64>(name, None)?.data().to_vec()) };
        let (transition, emission, suffix, tag_prior) = (
            get("transition")?,
            get("emission")?,
            get("suffix")?,
            get("tag_prior")?,
        );
        let bad = |e: Error| {
            file.error(
                e.to_string()
                    .trim_start_matches("invalid input: ")
                    .to_string(),
            )
        };
        super::check_distribution("`tag_prior`", &tag_prior).map_err(bad)?;
        for (i, row) in transition.chunks(k1).enumerate() {
            super::check_distribution(&format!("`transition` row ({}, {})", i / k1, i % k1), row)
                .map_err(bad)?;
        }
        for (i, row) in suffix.chunks(k).enumerate() {
            super::check_distribution(&format!("`suffix` row {i} ({:?})", suffixes[i]), row)
                .map_err(bad)?;
        }
        for t in 0..k {
            // P(w | t) over the known words: every tag was seen with some word.
            let col: Vec<f64> = (0..w).map(|i| emission[i * k + t]).collect();
            super::check_distribution(&format!("`emission` column {t} ({:?})", tags[t]), &col)
                .map_err(bad)?;
        }
        Self::assemble(
            tags, config, transition, words, emission, suffixes, suffix, tag_prior,
        )
    }

    /// Whether `file` is an HMM tagger checkpoint (by its `rnnkit.task`).
    pub fn is_checkpoint(file: &TensorFile) -> bool {
        file.metadata()
            .get(crate::task::META_TASK)
            .map(String::as_str)
            == Some(TASK)
    }
}

/// Index of the largest of three (the first on ties).
fn argmax3(c: &[f64; 3]) -> usize {
    let mut best = 0;
    for i in 1..3 {
        if c[i] > c[best] {
            best = i;
        }
    }
    best
}
