//! Sequence tagging (many-to-many): one label per word. Each word is represented by
//! its embedding (lowercased form; unknown words and word dropout map to `<unk>`)
//! concatenated with a character BiLSTM's final states over its characters (forward
//! direction's last step, reverse direction's first); a BiLSTM reads the sentence and
//! a linear layer scores the tags of every word (Plank et al. 2016). Stored as the
//! PyTorch module `tools/task_modules.py::Tagger`.

use super::{
    bucketed_batches, meta_json, padding_fraction, BatchLoss, EpochOrder, Metrics, Selection, Task,
};
use crate::checkpoint::{self, TensorFile};
use crate::data::{Sentence, TagColumn};
use crate::error::{Error, Result};
use crate::layer::{
    Dropout, Embedding, Kept, Linear, ParamVisitor, Parameters, Recurrent, RecurrentConfig,
    RecurrentState,
};
use crate::loss::{argmax_rows, cross_entropy, CrossEntropy};
use crate::rng::Rng;
use crate::tensor::{overwritten, Tensor};
use crate::train::{Change, GradientSink, Setting, Settings, Shard};
use crate::CellKind;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// Metadata keys of the word list, character list and tag list (JSON arrays, index = id).
pub const META_WORDS: &str = "rnnkit.words";
/// See [`META_WORDS`].
pub const META_CHARS: &str = "rnnkit.chars";
/// See [`META_WORDS`].
pub const META_TAGS: &str = "rnnkit.tags";
/// Metadata key of the CoNLL-U column the tags come from.
pub const META_COLUMN: &str = "rnnkit.column";

/// The unknown word and character (id 0 of both lists).
pub const UNK: &str = "<unk>";
/// Characters of a word the character model reads: the first and last half of this.
pub const MAX_WORD_CHARS: usize = 24;

/// Sizes and regularisation of a [`Tagger`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaggerConfig {
    /// The recurrence of both the word-level and the character-level networks.
    pub cell: CellKind,
    /// Word embedding width.
    pub word_embed: usize,
    /// Character embedding width.
    pub char_embed: usize,
    /// Hidden width per direction of the character network (0: no character features).
    pub char_hidden: usize,
    /// Hidden width per direction of the sentence network.
    pub hidden_size: usize,
    /// Stacked sentence layers.
    pub num_layers: usize,
    /// Dropout on the sentence network's input and output, in training.
    pub dropout: f32,
    /// Word dropout α: in training a known word seen f times is replaced by `<unk>`
    /// with probability α / (α + f), so rare words teach the model to rely on their
    /// characters (Kiperwasser and Goldberg 2016).
    pub word_dropout: f32,
    /// Words seen fewer times than this in training are unknown.
    pub min_freq: usize,
    /// The CoNLL-U column tagged.
    pub column: TagColumn,
}

impl Settings for TaggerConfig {
    fn settings(&self) -> Vec<Setting> {
        use Change::*;
        vec![
            Setting::new("--cell", self.cell, Fixed),
            Setting::new("--word-embed", self.word_embed, Fixed),
            Setting::new("--char-embed", self.char_embed, Fixed),
            Setting::new("--char-hidden", self.char_hidden, Fixed),
            Setting::new("--hidden", self.hidden_size, Fixed),
            Setting::new("--layers", self.num_layers, Fixed),
            Setting::new("--dropout", self.dropout, Alters),
            Setting::new("--word-dropout", self.word_dropout, Alters),
            Setting::new("--min-freq", self.min_freq, Fixed),
            Setting::new("--column", self.column.name(), Fixed),
        ]
    }
}

/// A list of strings with its index.
#[derive(Clone, Debug, PartialEq)]
pub struct Index {
    items: Vec<String>,
    ids: HashMap<String, usize>,
}

impl Index {
    /// Indexes `items` (which must be distinct).
    pub fn new(items: Vec<String>) -> Result<Self> {
        let mut ids = HashMap::with_capacity(items.len());
        for (i, s) in items.iter().enumerate() {
            if ids.insert(s.clone(), i).is_some() {
                return Err(Error::Input(format!("{s:?} appears twice in a list")));
            }
        }
        Ok(Index { items, ids })
    }

    /// The id of `s`.
    pub fn id(&self, s: &str) -> Option<usize> {
        self.ids.get(s).copied()
    }

    /// The items in id order.
    pub fn items(&self) -> &[String] {
        &self.items
    }

    /// Number of items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// The model with its gradients and its word, character and tag lists.
#[derive(Clone, Debug)]
pub struct Tagger {
    /// `word_embed.weight [Vw, Ew]`.
    pub word_embed: Embedding<f32>,
    /// `char_embed.weight [Vc, Ec]`.
    pub char_embed: Embedding<f32>,
    /// `char_rnn.*`: one bidirectional layer over a word's characters (absent with char_hidden 0).
    pub char_rnn: Option<Recurrent<f32>>,
    /// `rnn.*`: the sentence network, bidirectional.
    pub rnn: Recurrent<f32>,
    /// `head.weight [K, 2H]`, `head.bias [K]`.
    pub head: Linear<f32>,
    /// Words (lowercased), id 0 = `<unk>`.
    pub words: Index,
    /// Characters, id 0 = `<unk>`.
    pub chars: Index,
    /// Tags.
    pub tags: Index,
    /// The column tagged.
    pub column: TagColumn,
    config: TaggerConfig,
    /// Training frequency of every word id (for word dropout; empty: none).
    word_freq: Vec<usize>,
    drop_in: Dropout<f32>,
    drop_out: Dropout<f32>,
    /// The buffers of the last training step, reused by the next.
    work: Option<Work>,
}

/// One batch of sentences as the model reads it, with the buffers that build it
/// (kept between steps, so that encoding a batch allocates nothing).
#[derive(Clone, Debug, Default)]
struct Encoded {
    steps: usize,
    lengths: Vec<usize>,
    /// Word id per `[T, B]` position (0 at padding).
    word_ids: Vec<usize>,
    /// Unique-word index per `[T, B]` position.
    unique_of: Vec<usize>,
    /// Character ids `[Lc, U]` of the unique words, with their lengths.
    char_ids: Vec<usize>,
    char_steps: usize,
    char_lengths: Vec<usize>,
    /// Every word as (sentence, position), sorted by form, then by place.
    by_form: Vec<(usize, usize)>,
    /// Each unique form's first word and where its words start in `by_form`, in the
    /// order the forms first occur.
    firsts: Vec<((usize, usize), usize)>,
    /// The unique forms' character ids, one run each (`spans`), and their lengths.
    ids: Vec<usize>,
    spans: Vec<Range<usize>>,
    unique_lengths: Vec<usize>,
    /// The character network's row order and its scratch, and each form's row.
    order: Vec<usize>,
    order_scratch: Vec<usize>,
    row_of: Vec<usize>,
    /// A form lowercased.
    lower: String,
}

/// The activations of a forward pass over a batch.
#[derive(Clone, Debug, Default)]
struct Pass {
    /// The character network (its final states are the words' representations).
    chars: Kept<f32>,
    /// The sentence network's input `[T, B, Ew + 2·Hc]`, and the network.
    x: Tensor<f32>,
    words: Kept<f32>,
    /// Tag scores `[T·B, K]`.
    logits: Vec<f32>,
}

/// The buffers of a training step.
#[derive(Clone, Debug, Default)]
struct Work {
    enc: Encoded,
    targets: Vec<usize>,
    mask: Vec<bool>,
    pass: Pass,
    dlogits: Vec<f32>,
    /// The gradient of the sentence network's output.
    dy: Tensor<f32>,
    /// The gradients of the character network's final states and outputs.
    d_char: RecurrentState<f32>,
    dy_chars: Tensor<f32>,
}

impl Tagger {
    /// A fresh model whose lists come from `train` (tags of `column`).
    pub fn new(config: &TaggerConfig, train: &[Sentence], rng: &mut Rng) -> Result<Self> {
        let mut freq: HashMap<String, usize> = HashMap::new();
        let mut chars = std::collections::BTreeSet::new();
        let mut tags = std::collections::BTreeSet::new();
        for s in train {
            for i in 0..s.len() {
                *freq.entry(s.form(i).to_lowercase()).or_default() += 1;
                chars.extend(s.form(i).chars());
                tags.insert(s.tag(i, config.column).to_string());
            }
        }
        if tags.len() < 2 {
            return Err(Error::Input(format!(
                "the training data has {} distinct {} tags; a tagger needs at least 2",
                tags.len(),
                config.column.name()
            )));
        }
        let mut words: Vec<String> = freq
            .into_iter()
            .filter(|(_, n)| *n >= config.min_freq.max(1))
            .map(|(w, _)| w)
            .collect();
        words.sort();
        words.insert(0, UNK.into());
        let mut char_list = vec![UNK.to_string()];
        char_list.extend(chars.into_iter().map(String::from));
        let (words, chars, tags) = (
            Index::new(words)?,
            Index::new(char_list)?,
            Index::new(tags.into_iter().collect())?,
        );
        Self::init(config, words, chars, tags, rng)
    }

    fn init(
        config: &TaggerConfig,
        words: Index,
        chars: Index,
        tags: Index,
        rng: &mut Rng,
    ) -> Result<Self> {
        if config.word_embed == 0 || config.hidden_size == 0 || config.num_layers == 0 {
            return Err(Error::Config(
                "--word-embed, --hidden and --layers must be at least 1".into(),
            ));
        }
        check_dropouts(config.dropout, config.word_dropout)?;
        let word_embed = Embedding::new(words.len(), config.word_embed, rng);
        let char_embed = Embedding::new(chars.len(), config.char_embed.max(1), rng);
        let char_rnn = (config.char_hidden > 0)
            .then(|| {
                RecurrentConfig::new(config.cell, config.char_embed.max(1), config.char_hidden)
                    .with_bidirectional(true)
                    .init(rng)
            })
            .transpose()?;
        let rnn = RecurrentConfig::new(
            config.cell,
            config.word_embed + 2 * config.char_hidden,
            config.hidden_size,
        )
        .with_layers(config.num_layers)
        .with_bidirectional(true)
        .with_dropout(config.dropout)
        .init(rng)?;
        let head = Linear::new(2 * config.hidden_size, tags.len(), rng);
        Ok(Tagger {
            word_embed,
            char_embed,
            char_rnn,
            rnn,
            head,
            words,
            chars,
            tags,
            column: config.column,
            config: config.clone(),
            word_freq: Vec::new(),
            drop_in: Dropout::default(),
            drop_out: Dropout::default(),
            work: None,
        })
    }

    /// The configuration (dropouts as set for training).
    pub fn config(&self) -> &TaggerConfig {
        &self.config
    }

    /// Sets the dropouts used in training.
    pub fn set_dropout(&mut self, dropout: f32, word_dropout: f32) -> Result<()> {
        check_dropouts(dropout, word_dropout)?;
        let cfg = self.rnn.config().clone().with_dropout(dropout);
        self.rnn = Recurrent::from_params(cfg, self.rnn.cells().to_vec())?;
        self.config.dropout = dropout;
        self.config.word_dropout = word_dropout;
        Ok(())
    }

    /// Counts how often each known word occurs in `sentences` (for word dropout).
    pub fn count_words(&mut self, sentences: &[Sentence]) {
        let mut freq = vec![0; self.words.len()];
        for s in sentences {
            for i in 0..s.len() {
                if let Some(id) = self.words.id(&s.form(i).to_lowercase()) {
                    freq[id] += 1;
                }
            }
        }
        self.word_freq = freq;
    }

    /// Whether a word is outside the vocabulary (scored as unseen).
    pub fn is_unknown(&self, form: &str) -> bool {
        self.words.id(&form.to_lowercase()).is_none()
    }

    /// The word id of a form: its lowercase form's index, 0 (`<unk>`) if unknown.
    pub fn word_id(&self, form: &str) -> usize {
        self.word_id_with(form, &mut String::new())
    }

    /// [`Tagger::word_id`], lowercasing into `buf` (reused: no allocation per word).
    fn word_id_with(&self, form: &str, buf: &mut String) -> usize {
        if form.contains('Σ') {
            // Only the capital sigma lowercases by its context (final ς); std knows how.
            return self.words.id(&form.to_lowercase()).unwrap_or(0);
        }
        buf.clear();
        buf.extend(form.chars().flat_map(char::to_lowercase));
        self.words.id(buf).unwrap_or(0)
    }

    /// The character ids the character network reads for a form (0 for unknown
    /// characters); a word over [`MAX_WORD_CHARS`] keeps its first and last halves.
    pub fn char_ids(&self, form: &str) -> Vec<usize> {
        let mut ids = Vec::new();
        self.push_char_ids(form, &mut ids);
        ids
    }

    /// Appends [`Tagger::char_ids`] of `form` to `out`.
    fn push_char_ids(&self, form: &str, out: &mut Vec<usize>) {
        let start = out.len();
        out.extend(
            form.chars()
                .map(|c| self.chars.id(c.encode_utf8(&mut [0; 4])).unwrap_or(0)),
        );
        let len = out.len() - start;
        if len > MAX_WORD_CHARS {
            let h = MAX_WORD_CHARS / 2;
            out.drain(start + h..start + len - h);
        }
    }

    /// Encodes `sentences` into `e` (its buffers reused), dropping known words to
    /// `<unk>` with `word_drop`.
    fn encode(&self, sentences: &[&Sentence], mut word_drop: Option<&mut Rng>, e: &mut Encoded) {
        let b = sentences.len();
        let steps = sentences.iter().map(|s| s.len()).max().unwrap_or(0);
        e.steps = steps;
        e.lengths.clear();
        e.lengths.extend(sentences.iter().map(|s| s.len()));
        let reset = |v: &mut Vec<usize>, n: usize| {
            v.clear();
            v.resize(n, 0);
        };
        reset(&mut e.word_ids, steps * b);
        reset(&mut e.unique_of, steps * b);
        e.by_form.clear();
        for (j, s) in sentences.iter().enumerate() {
            for t in 0..s.len() {
                let mut id = self.word_id_with(s.form(t), &mut e.lower);
                if let (Some(rng), Some(&f)) = (word_drop.as_deref_mut(), self.word_freq.get(id)) {
                    let a = self.config.word_dropout as f64;
                    if id != 0 && a > 0.0 && rng.uniform() < a / (a + f as f64) {
                        id = 0;
                    }
                }
                e.word_ids[t * b + j] = id;
                e.by_form.push((j, t));
            }
        }
        // The unique forms, numbered in the order they first occur: grouped by a
        // sort (a map of forms would allocate for every step's new words).
        let form = |&(j, t): &(usize, usize)| sentences[j].form(t);
        e.by_form
            .sort_unstable_by(|x, y| form(x).cmp(form(y)).then(x.cmp(y)));
        e.firsts.clear();
        for (i, w) in e.by_form.iter().enumerate() {
            if i == 0 || form(w) != form(&e.by_form[i - 1]) {
                e.firsts.push((*w, i));
            }
        }
        e.firsts.sort_unstable();
        // Characters: the first and last halves of long words, where affixes live;
        // form k's ids are ids[spans[k]], all in one buffer.
        e.ids.clear();
        e.spans.clear();
        for (u, &(first, start)) in e.firsts.iter().enumerate() {
            let f = form(&first);
            for &(j, t) in e.by_form[start..].iter().take_while(|w| form(w) == f) {
                e.unique_of[t * b + j] = u;
            }
            let at = e.ids.len();
            self.push_char_ids(f, &mut e.ids);
            e.spans.push(at..e.ids.len());
        }
        e.unique_lengths.clear();
        e.unique_lengths.extend(e.spans.iter().map(|r| r.len()));
        // The character network reads the words in packing order (row r: word order[r]).
        crate::cell::packing_order_into(&e.unique_lengths, 2, &mut e.order, &mut e.order_scratch);
        reset(&mut e.row_of, e.order.len());
        e.order
            .iter()
            .enumerate()
            .for_each(|(r, &k)| e.row_of[k] = r);
        let real = e.lengths.iter().map(|&len| 0..len);
        for (j, len) in real.enumerate() {
            for t in len {
                let u = &mut e.unique_of[t * b + j];
                *u = e.row_of[*u];
            }
        }
        e.char_steps = e.unique_lengths.iter().copied().max().unwrap_or(0).max(1);
        let u = e.spans.len();
        reset(&mut e.char_ids, e.char_steps * u);
        for (r, &k) in e.order.iter().enumerate() {
            for (t, &id) in e.ids[e.spans[k].clone()].iter().enumerate() {
                e.char_ids[t * u + r] = id;
            }
        }
        e.char_lengths.clear();
        let lengths = e.order.iter().map(|&k| e.unique_lengths[k].max(1));
        e.char_lengths.extend(lengths);
    }

    /// Forward over a batch into `p`: the logits `[T·B, K]` (time-major) and what
    /// backward needs.
    fn forward(&mut self, e: &Encoded, mut rng: Option<&mut Rng>, p: &mut Pass) -> Result<()> {
        let b = e.lengths.len();
        let (ew, hc) = (self.config.word_embed, self.config.char_hidden);
        let width = ew + 2 * hc;
        let u = e.char_lengths.len();
        if let Some(crnn) = &mut self.char_rnn {
            crnn.forward_embedded_into(
                &self.char_embed.weight,
                &e.char_ids,
                (e.char_steps, u),
                Some(&e.char_lengths),
                None,
                rng.as_deref_mut(),
                p.chars.forward(),
            )?;
        }
        // The words' representations: the final states [2, U, Hc] (none when Hc = 0).
        let char_repr = match self.char_rnn {
            Some(_) => p.chars.fin.h.data(),
            None => &[],
        };
        p.x.reshape_overwritten(&[e.steps, b, width]);
        let x = p.x.data_mut();
        x.fill(0.0);
        for t in 0..e.steps {
            for j in 0..b {
                if t >= e.lengths[j] {
                    continue;
                }
                let at = t * b + j;
                let row = &mut x[at * width..][..width];
                let id = e.word_ids[at];
                row[..ew].copy_from_slice(&self.word_embed.weight.data()[id * ew..][..ew]);
                let k = e.unique_of[at];
                for d in 0..2 {
                    row[ew + d * hc..][..hc].copy_from_slice(&char_repr[(d * u + k) * hc..][..hc]);
                }
            }
        }
        let drop = self.config.dropout;
        let lengths = Some(&e.lengths[..]);
        match rng {
            Some(r) => {
                self.drop_in.forward(p.x.data_mut(), drop, r);
                let into = p.words.forward();
                self.rnn.forward_into(&p.x, lengths, None, Some(r), into)?;
                self.drop_out.forward(p.words.y.data_mut(), drop, r);
            }
            None => self
                .rnn
                .forward_into(&p.x, lengths, None, None, p.words.forward())?,
        }
        let n = e.steps * b;
        let logits = overwritten(&mut p.logits, n * self.tags.len());
        self.head.forward(p.words.y.data(), n, logits);
        Ok(())
    }

    /// The tag id of every word `[T·B]` into `targets` (0 at padding) and which
    /// positions are words into `mask`.
    fn targets(
        &self,
        sentences: &[&Sentence],
        e: &Encoded,
        (targets, mask): (&mut Vec<usize>, &mut Vec<bool>),
    ) -> Result<()> {
        let b = sentences.len();
        targets.clear();
        targets.resize(e.steps * b, 0);
        mask.clear();
        mask.resize(e.steps * b, false);
        for (j, s) in sentences.iter().enumerate() {
            for t in 0..s.len() {
                let tag = s.tag(t, self.column);
                targets[t * b + j] = self.tags.id(tag).ok_or_else(|| {
                    Error::Input(format!(
                        "sentence at line {}: tag {tag:?} of word {} is not one the model knows ({} tags: {})",
                        s.line,
                        t + 1,
                        self.tags.len(),
                        self.tags.items().join(" ")
                    ))
                })?;
                mask[t * b + j] = true;
            }
        }
        Ok(())
    }

    /// Forward with dropout, mean cross-entropy over every word, backward: adds the
    /// gradients to every parameter. Returns the loss and the number of words.
    pub fn train_step(&mut self, sentences: &[&Sentence], rng: &mut Rng) -> Result<(f64, usize)> {
        self.train_step_with(sentences, rng, &mut |_| {})
    }

    /// [`Tagger::train_step`], handing each group of finished gradients to `ready`
    /// as the backward pass goes (the head's, then each word-level recurrent layer's;
    /// the embeddings and the character layer are summed after the backward pass).
    pub fn train_step_with(
        &mut self,
        sentences: &[&Sentence],
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<(f64, usize)> {
        let mut work = self.work.take().unwrap_or_default();
        let result = self.step(sentences, rng, ready, &mut work);
        self.work = Some(work);
        result
    }

    /// [`Tagger::train_step_with`] in the buffers `w`.
    fn step(
        &mut self,
        sentences: &[&Sentence],
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
        w: &mut Work,
    ) -> Result<(f64, usize)> {
        let Work {
            enc: e,
            targets,
            mask,
            pass,
            dlogits,
            dy,
            d_char,
            dy_chars,
        } = w;
        self.encode(sentences, Some(rng), e);
        self.targets(sentences, e, (targets, mask))?;
        self.forward(e, Some(rng), pass)?;
        let k = self.tags.len();
        let dlogits = overwritten(dlogits, pass.logits.len());
        let loss = cross_entropy(
            &pass.logits,
            k,
            targets,
            Some(mask),
            &CrossEntropy::default(),
            Some(dlogits),
        )?;
        let b = e.lengths.len();
        let n = e.steps * b;
        let y = &pass.words.y;
        // Every element of dy is written by the head's backward pass.
        dy.reshape_overwritten(y.shape());
        self.head
            .backward(y.data(), dlogits, n, Some(dy.data_mut()));
        ready(&[&self.head.grad_weight, &self.head.grad_bias]);
        self.drop_out.backward(dy.data_mut());
        self.rnn
            .backward_into(dy, None, ready, pass.words.backward())?;
        let dx = &mut pass.words.dx;
        self.drop_in.backward(dx.data_mut());
        let (ew, hc) = (self.config.word_embed, self.config.char_hidden);
        let width = ew + 2 * hc;
        let u = e.char_lengths.len();
        let gw = self.word_embed.grad_weight.data_mut();
        let crnn = self.char_rnn.as_mut();
        if let Some(crnn) = &crnn {
            d_char.zero(crnn.config(), u);
        }
        let d_repr = match crnn {
            Some(_) => d_char.h.data_mut(),
            None => &mut [],
        };
        for t in 0..e.steps {
            for j in 0..b {
                if t >= e.lengths[j] {
                    continue;
                }
                let at = t * b + j;
                let row = &dx.data()[at * width..][..width];
                let id = e.word_ids[at];
                gw[id * ew..][..ew]
                    .iter_mut()
                    .zip(&row[..ew])
                    .for_each(|(g, &d)| *g += d);
                let k = e.unique_of[at];
                for d in 0..2 {
                    d_repr[(d * u + k) * hc..][..hc]
                        .iter_mut()
                        .zip(&row[ew + d * hc..][..hc])
                        .for_each(|(g, &v)| *g += v);
                }
            }
        }
        if let Some(crnn) = &mut self.char_rnn {
            // Only the final states feed the sentence network.
            dy_chars.reshape_overwritten(&[e.char_steps, u, 2 * hc]);
            dy_chars.data_mut().fill(0.0);
            let into = pass.chars.backward();
            crnn.backward_into(dy_chars, Some(d_char), &mut |_| {}, into)?;
            self.char_embed
                .grad_weight
                .data_mut()
                .iter_mut()
                .zip(pass.chars.dx.data())
                .for_each(|(g, &d)| *g += d);
        }
        Ok((loss.mean, mask.iter().filter(|&&m| m).count()))
    }

    /// The encoded batch and an inference-mode forward pass over it.
    fn infer(&mut self, sentences: &[&Sentence]) -> Result<(Encoded, Pass)> {
        let (mut e, mut p) = (Encoded::default(), Pass::default());
        self.encode(sentences, None, &mut e);
        self.forward(&e, None, &mut p)?;
        Ok((e, p))
    }

    /// Tag scores `[T, B, K]` (time-major, T the longest sentence; rows past a
    /// sentence's end are padding and hold `head.bias`) in inference mode.
    pub fn logits(&mut self, sentences: &[&Sentence]) -> Result<Tensor<f32>> {
        let (e, p) = self.infer(sentences)?;
        Tensor::from_vec(&[e.steps, sentences.len(), self.tags.len()], p.logits)
    }

    /// The predicted tag id of every word of every sentence.
    pub fn predict(&mut self, sentences: &[&Sentence]) -> Result<Vec<Vec<usize>>> {
        let (_, p) = self.infer(sentences)?;
        let ids = argmax_rows(&p.logits, self.tags.len());
        let b = sentences.len();
        Ok(sentences
            .iter()
            .enumerate()
            .map(|(j, s)| (0..s.len()).map(|t| ids[t * b + j]).collect())
            .collect())
    }

    /// Loss, accuracy and unknown-word accuracy on `sentences`, in batches of `batch`.
    pub fn evaluate(&mut self, sentences: &[&Sentence], batch: usize) -> Result<TagScores> {
        let mut s = TagScores::default();
        let mut loss_sum = 0.0;
        let mut chunk_order: Vec<usize> = (0..sentences.len()).collect();
        chunk_order.sort_by_key(|&i| sentences[i].len());
        for chunk in chunk_order.chunks(batch.max(1)) {
            let sents: Vec<&Sentence> = chunk.iter().map(|&i| sentences[i]).collect();
            let (e, p) = self.infer(&sents)?;
            let (mut targets, mut mask) = (Vec::new(), Vec::new());
            self.targets(&sents, &e, (&mut targets, &mut mask))?;
            let logits = p.logits;
            let l = cross_entropy(
                &logits,
                self.tags.len(),
                &targets,
                Some(&mask),
                &CrossEntropy::default(),
                None,
            )?;
            loss_sum += l.mean * l.weight;
            let pred = argmax_rows(&logits, self.tags.len());
            let b = sents.len();
            for (j, sent) in sents.iter().enumerate() {
                for t in 0..sent.len() {
                    let right = pred[t * b + j] == targets[t * b + j];
                    s.tokens += 1;
                    s.correct += right as usize;
                    if self.is_unknown(sent.form(t)) {
                        s.oov_tokens += 1;
                        s.oov_correct += right as usize;
                    }
                }
            }
        }
        s.loss = loss_sum / s.tokens.max(1) as f64;
        Ok(s)
    }

    /// Writes the model as the PyTorch `Tagger` state dict plus `extra` tensors and
    /// `metadata`, atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut meta = metadata;
        let json = |v: &[String]| serde_json::to_string(v).expect("strings");
        meta.insert(super::META_TASK.into(), "tag".into());
        meta.insert(
            crate::model::META_CELL.into(),
            self.config.cell.name().into(),
        );
        meta.insert(META_WORDS.into(), json(self.words.items()));
        meta.insert(META_CHARS.into(), json(self.chars.items()));
        meta.insert(META_TAGS.into(), json(self.tags.items()));
        meta.insert(META_COLUMN.into(), self.column.name().into());
        meta.insert(
            "rnnkit.config".into(),
            serde_json::to_string(&self.config).expect("config"),
        );
        let named = checkpoint::named_params(self, "");
        checkpoint::save_named(path, &named, extra, &meta)
    }

    /// Reads a checkpoint written by [`Tagger::save`], checking every shape; returns the
    /// open file for any training state.
    pub fn load(source: impl checkpoint::CheckpointSource) -> Result<(Tagger, TensorFile)> {
        use crate::limits::{MAX_LAYERS, MAX_WIDTH};
        let file = source.open()?;
        super::expect_task(&file, "tag")?;
        let config: TaggerConfig = meta_json(&file, "rnnkit.config")?;
        let list = |key: &str| -> Result<Index> {
            Index::new(meta_json::<Vec<String>>(&file, key)?)
                .map_err(|e| file.error(format!("metadata `{key}`: {e}")))
        };
        let (words, chars, tags) = (list(META_WORDS)?, list(META_CHARS)?, list(META_TAGS)?);
        if tags.len() < 2 || words.is_empty() || chars.is_empty() {
            return Err(file.error(
                "the word, character and tag lists must not be empty (and at least 2 tags)",
            ));
        }
        // The sizes come from the metadata: bound them as the flags are bounded, then
        // check every tensor they imply against the header before `init` allocates.
        let c = &config;
        let widths = [c.word_embed, c.char_embed, c.char_hidden, c.hidden_size];
        if widths.iter().any(|&w| w > MAX_WIDTH) || c.num_layers > MAX_LAYERS {
            return Err(file.error(format!(
                "metadata `rnnkit.config`: widths must be at most {MAX_WIDTH} and layers at most {MAX_LAYERS}"
            )));
        }
        let char_embed = c.char_embed.max(1);
        let mut params = (words.len() * c.word_embed) as u64;
        file.expect_float("word_embed.weight", &[words.len(), c.word_embed])?;
        if c.char_hidden > 0 {
            file.expect_float("char_embed.weight", &[chars.len(), char_embed])?;
            let char_rnn =
                RecurrentConfig::new(c.cell, char_embed, c.char_hidden).with_bidirectional(true);
            params += checkpoint::check_recurrent(&file, "char_rnn.", &char_rnn)?;
        }
        // Without the character network the table is not stored but still built.
        params += (chars.len() * char_embed) as u64;
        let rnn = RecurrentConfig::new(c.cell, c.word_embed + 2 * c.char_hidden, c.hidden_size)
            .with_layers(c.num_layers)
            .with_bidirectional(true);
        params += checkpoint::check_recurrent(&file, "rnn.", &rnn)?;
        file.expect_float("head.weight", &[tags.len(), 2 * c.hidden_size])?;
        file.expect_float("head.bias", &[tags.len()])?;
        params += (tags.len() * (2 * c.hidden_size + 1)) as u64;
        checkpoint::check_model_memory(&file, params)?;
        let mut model = Tagger::init(&config, words, chars, tags, &mut Rng::new(0))
            .map_err(|e| file.error(format!("metadata `rnnkit.config`: {e}")))?;
        checkpoint::load_params(&mut model, &file, "")?;
        Ok((model, file))
    }
}

fn check_dropouts(dropout: f32, word_dropout: f32) -> Result<()> {
    if !(0.0..1.0).contains(&dropout) {
        return Err(Error::Config(format!(
            "--dropout must be in [0, 1), got {dropout}"
        )));
    }
    if !(0.0..=1e6).contains(&word_dropout) {
        return Err(Error::Config(format!(
            "--word-dropout must be in [0, 1e6], got {word_dropout}"
        )));
    }
    Ok(())
}

impl Parameters<f32> for Tagger {
    /// Names as the PyTorch module: `word_embed.weight`, `char_embed.weight`, `char_rnn.*`, `rnn.*`, `head.*`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<f32>)) {
        f("word_embed.weight", &self.word_embed.weight);
        if let Some(c) = &self.char_rnn {
            f("char_embed.weight", &self.char_embed.weight);
            c.visit_params(&mut |n, t| {
                crate::layer::with_name(format_args!("char_rnn.{n}"), |n| f(n, t))
            });
        }
        self.rnn.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t))
        });
        f("head.weight", &self.head.weight);
        f("head.bias", &self.head.bias);
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, f32>) {
        f(
            "word_embed.weight",
            &mut self.word_embed.weight,
            &mut self.word_embed.grad_weight,
        );
        if let Some(c) = &mut self.char_rnn {
            f(
                "char_embed.weight",
                &mut self.char_embed.weight,
                &mut self.char_embed.grad_weight,
            );
            c.visit_params_mut(&mut |n, t, g| {
                crate::layer::with_name(format_args!("char_rnn.{n}"), |n| f(n, t, g))
            });
        }
        self.rnn.visit_params_mut(&mut |n, t, g| {
            crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t, g))
        });
        f(
            "head.weight",
            &mut self.head.weight,
            &mut self.head.grad_weight,
        );
        f("head.bias", &mut self.head.bias, &mut self.head.grad_bias);
    }
}

/// Token accuracy overall and on unknown words.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct TagScores {
    /// Words scored.
    pub tokens: usize,
    /// Words tagged right.
    pub correct: usize,
    /// Words outside the vocabulary.
    pub oov_tokens: usize,
    /// Of those, tagged right.
    pub oov_correct: usize,
    /// Mean cross-entropy per word.
    pub loss: f64,
}

impl TagScores {
    /// Fraction of words tagged right.
    pub fn accuracy(&self) -> f64 {
        self.correct as f64 / self.tokens.max(1) as f64
    }

    /// Fraction of unknown words tagged right.
    pub fn oov_accuracy(&self) -> f64 {
        self.oov_correct as f64 / self.oov_tokens.max(1) as f64
    }
}

/// A [`Tagger`] with its training and development sentences.
pub struct TagTask {
    /// The model.
    pub model: Tagger,
    train: Vec<Sentence>,
    dev: Vec<Sentence>,
    batch: usize,
    seed: u64,
    order: EpochOrder,
    shard: Shard,
    /// Storage for a step's sentences (see [`super::recycled`]).
    sentences: Vec<&'static Sentence>,
}

impl TagTask {
    /// Forward and backward on this process's sentences of batch `k`.
    fn step(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        let train = &self.train;
        let lengths = || train.iter().map(Sentence::len).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        let (batch, own) = super::share(self.shard, batch);
        let mut sents = super::recycled(std::mem::take(&mut self.sentences));
        sents.extend(batch.iter().map(|&i| &train[i]));
        let step = self.model.train_step_with(&sents, rng, ready);
        self.sentences = super::recycled(sents);
        let (loss, tokens) = step?;
        Ok(BatchLoss {
            loss,
            tokens: if own { tokens } else { 0 },
        })
    }

    /// Trains `model` on `train`, validating on `dev`.
    pub fn new(
        model: Tagger,
        train: Vec<Sentence>,
        dev: Vec<Sentence>,
        batch: usize,
        seed: u64,
    ) -> Result<Self> {
        if train.is_empty() {
            return Err(Error::Input("no training sentences".into()));
        }
        let mut model = model;
        model.count_words(&train);
        Ok(TagTask {
            model,
            train,
            dev,
            batch,
            seed,
            order: EpochOrder::default(),
            shard: Shard::WHOLE,
            sentences: Vec::new(),
        })
    }

    fn lengths(&self) -> Vec<usize> {
        self.train.iter().map(Sentence::len).collect()
    }
}

super::params_of_model!(TagTask);

impl Task for TagTask {
    type Config = TaggerConfig;

    fn kind(&self) -> &'static str {
        "tag"
    }

    fn selection(&self) -> Selection {
        Selection::MaxScore("accuracy")
    }

    fn describe(&self) -> String {
        let lengths = self.lengths();
        let words: usize = lengths.iter().sum();
        format!(
            "training on {} sentences ({words} words), validating on {}, {} words known, {} characters, {} tags, padding {:.1} %",
            self.train.len(),
            self.dev.len(),
            self.model.words.len(),
            self.model.chars.len(),
            self.model.tags.len(),
            100.0 * padding_fraction(&lengths, &bucketed_batches(&lengths, self.batch, self.seed, 0))
        )
    }

    fn batches_per_epoch(&self) -> usize {
        self.train.len().div_ceil(self.batch.max(1))
    }

    fn train_batch(
        &mut self,
        epoch: u64,
        k: usize,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<BatchLoss> {
        self.step(epoch, k, rng, ready)
    }

    fn set_shard(&mut self, shard: Shard) -> Result<()> {
        self.shard = shard;
        Ok(())
    }

    fn shard_weight(&mut self, epoch: u64, k: usize) -> f64 {
        let train = &self.train;
        let lengths = || train.iter().map(Sentence::len).collect();
        let batch = self.order.batch(epoch, k, lengths, self.batch, self.seed);
        // The loss is the mean over every word.
        super::share_weight(self.shard, batch, |i| train[i].len())
    }

    fn validate(&mut self) -> Result<Option<Metrics>> {
        if self.dev.is_empty() {
            return Ok(None);
        }
        let dev: Vec<&Sentence> = self.dev.iter().collect();
        let s = self.model.evaluate(&dev, 64)?;
        Ok(Some(Metrics {
            loss: s.loss,
            scores: [
                ("accuracy".to_string(), s.accuracy()),
                ("oov_accuracy".to_string(), s.oov_accuracy()),
            ]
            .into(),
        }))
    }

    fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        self.model.save(path, extra, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::sentences_from_plain;

    #[test]
    fn word_ids_lowercase_as_std_does_and_long_words_keep_their_ends() {
        let mut sentences =
            sentences_from_plain("the σοφος ǆemal i̇stanbul antidisestablishmentarianism\nthe cat");
        for s in &mut sentences {
            for i in 0..s.len() {
                s.set_tag(i, TagColumn::Upos, if i == 0 { "DET" } else { "NOUN" });
            }
        }
        let config = TaggerConfig {
            cell: CellKind::Lstm,
            word_embed: 4,
            char_embed: 4,
            char_hidden: 4,
            hidden_size: 4,
            num_layers: 1,
            dropout: 0.0,
            word_dropout: 0.0,
            min_freq: 1,
            column: TagColumn::Upos,
        };
        let tagger = Tagger::new(&config, &sentences, &mut Rng::new(1)).unwrap();
        for form in ["The", "THE", "ΣΟΦΟΣ", "ǅemal", "İstanbul", "Cat", "dog"] {
            let want = tagger.words.id(&form.to_lowercase()).unwrap_or(0);
            assert_eq!(tagger.word_id(form), want, "{form}");
        }
        assert_ne!(tagger.word_id("ΣΟΦΟΣ"), 0, "final sigma");
        assert_ne!(tagger.word_id("İstanbul"), 0, "dotted capital I");
        let long = "antidisestablishmentarianism";
        let all: Vec<usize> = long
            .chars()
            .map(|c| tagger.chars.id(c.encode_utf8(&mut [0; 4])).unwrap())
            .collect();
        let h = MAX_WORD_CHARS / 2;
        let clipped = tagger.char_ids(long);
        assert_eq!(clipped, [&all[..h], &all[all.len() - h..]].concat());
    }
}
