//! Decoding the outputs of a CTC-trained network (Graves et al. 2006): per-frame
//! label log-probabilities `[T, C]` (log-softmax rows, one class the blank) to label
//! sequences. Best path takes each frame's argmax; prefix beam search (Graves 2012
//! §7.5, Hannun et al. 2014) sums over alignments and can add a language model.

use crate::error::{Error, Result};
use crate::model::{CharLm, Precision, Stepper};
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::rc::Rc;

/// Best path: argmax label per frame, repeats merged, blanks removed.
///
/// Total on any input: only whole frames of `log_probs` are read (at most `frames`),
/// ties go to the lowest class, and a `blank` outside `0..classes` removes nothing.
pub fn best_path(log_probs: &[f32], frames: usize, classes: usize, blank: usize) -> Vec<usize> {
    let mut labels = Vec::new();
    if classes == 0 {
        return labels;
    }
    let mut prev = None;
    for row in log_probs.chunks_exact(classes).take(frames) {
        let k = row
            .iter()
            .enumerate()
            .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                if v > best.1 {
                    (i, v)
                } else {
                    best
                }
            })
            .0;
        // A blank between two equal labels keeps both: `prev` remembers the blank.
        if k != blank && prev != Some(k) {
            labels.push(k);
        }
        prev = Some(k);
    }
    labels
}

/// A language model over labels for prefix beam search: log p(label | prefix so far).
pub trait LabelScorer {
    /// What the model remembers of a prefix.
    type State: Clone;
    /// The state before any label.
    fn start(&mut self) -> Self::State;
    /// log-probability of `label` after `state`, and the state after it.
    fn score(&mut self, state: &Self::State, label: usize) -> crate::Result<(f32, Self::State)>;
    /// log-probability of the end of the text after `state` (0.0 if the model has no end).
    fn end(&mut self, _state: &Self::State) -> crate::Result<f32> {
        Ok(0.0)
    }
}

/// Settings of [`prefix_beam_search`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BeamOptions {
    /// Prefixes kept after each frame (at least 1).
    pub beam: usize,
    /// α: weight of the language model's log-probabilities.
    pub lm_weight: f32,
    /// β: added to the score per emitted label (offsets the LM's bias to short texts).
    pub insertion_bonus: f32,
    /// Labels whose log-probability in a frame is below this are not tried in that
    /// frame (the blank always is); `None` tries every label.
    pub prune: Option<f32>,
}

impl Default for BeamOptions {
    fn default() -> Self {
        BeamOptions {
            beam: 16,
            lm_weight: 0.0,
            insertion_bonus: 0.0,
            prune: None,
        }
    }
}

impl BeamOptions {
    /// Fails with a message naming the setting if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        if self.beam == 0 {
            return Err(Error::Config("the beam must keep at least 1 prefix".into()));
        }
        if !self.lm_weight.is_finite() {
            return Err(Error::Config(format!(
                "the LM weight must be finite, got {}",
                self.lm_weight
            )));
        }
        if !self.insertion_bonus.is_finite() {
            return Err(Error::Config(format!(
                "the insertion bonus must be finite, got {}",
                self.insertion_bonus
            )));
        }
        if self.prune.is_some_and(f32::is_nan) {
            return Err(Error::Config("the pruning threshold is NaN".into()));
        }
        Ok(())
    }
}

/// One hypothesis: labels and its total score (log P_ctc + α log P_lm + β |labels|).
#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// The labels, blanks removed.
    pub labels: Vec<usize>,
    /// log P_ctc(labels | x) + α (Σ log p_lm(label | prefix) + log p_lm(end)) + β |labels|.
    pub score: f64,
    /// log P_ctc(labels | x): the alignments kept by the search that collapse to `labels`.
    pub ctc_log_prob: f64,
}

/// Checks the shape and the values of a `[frames, classes]` matrix.
fn check_input(log_probs: &[f32], frames: usize, classes: usize, blank: usize) -> Result<()> {
    if classes == 0 {
        return Err(Error::Shape("CTC outputs need at least one class".into()));
    }
    if blank >= classes {
        return Err(Error::Config(format!(
            "the blank is class {blank} but there are only {classes} classes"
        )));
    }
    if frames.checked_mul(classes) != Some(log_probs.len()) {
        return Err(Error::Shape(format!(
            "{} log-probabilities given for {frames} frames × {classes} classes",
            log_probs.len()
        )));
    }
    if let Some(i) = log_probs
        .iter()
        .position(|v| v.is_nan() || *v == f32::INFINITY)
    {
        return Err(Error::Input(format!(
            "log-probability of class {} at frame {} is {}",
            i % classes,
            i / classes,
            log_probs[i]
        )));
    }
    Ok(())
}

/// log(eᵃ + eᵇ) without overflow.
fn log_add(a: f64, b: f64) -> f64 {
    let (hi, lo) = if a >= b { (a, b) } else { (b, a) };
    if lo == f64::NEG_INFINITY {
        hi
    } else {
        hi + (lo - hi).exp().ln_1p()
    }
}

/// FxHash (the Rust compiler's): (prefix, label) keys need no DoS resistance.
#[derive(Default)]
struct FxHasher(u64);

impl Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        bytes.iter().for_each(|&b| self.write_u64(b as u64));
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

/// No parent / no label: the root prefix.
const NONE: usize = usize::MAX;

/// A node of the prefix trie. A prefix is identified by its node, so two
/// alignments that reach the same labels meet in the same node (merged).
struct Prefix<St> {
    parent: usize,
    label: usize,
    /// The LM's state after this prefix; computed once, when the prefix is first
    /// made, and dropped only by [`Trie::collect`] for prefixes far from the beam.
    lm: Option<St>,
    /// α Σ log p_lm + β |labels|: the same for every alignment of the prefix.
    lm_score: f64,
    /// log P(alignments of the frames so far ending in a blank / in a label).
    p_blank: f64,
    p_label: f64,
    /// The same after the frame being read, valid when `stamp` is that frame's.
    next_blank: f64,
    next_label: f64,
    stamp: usize,
}

/// Every prefix the search has made, with the LM state of each cached.
struct Trie<'s, S: LabelScorer> {
    nodes: Vec<Prefix<S::State>>,
    children: HashMap<(usize, usize), usize, BuildHasherDefault<FxHasher>>,
    lm: Option<&'s mut S>,
    alpha: f64,
    beta: f64,
    /// Node count that triggers the next [`Trie::collect`].
    collect_at: usize,
}

impl<S: LabelScorer> Trie<'_, S> {
    /// The node of `parent` + `label`, made (and scored by the LM) the first time.
    fn child(&mut self, parent: usize, label: usize) -> Result<usize> {
        let id = match self.children.get(&(parent, label)) {
            // The LM state is only missing on a prefix the collector thinned out.
            Some(&id) if self.lm.is_none() || self.nodes[id].lm.is_some() => return Ok(id),
            Some(&id) => id,
            None => {
                let id = self.nodes.len();
                self.nodes.push(Prefix {
                    parent,
                    label,
                    lm: None,
                    lm_score: 0.0,
                    p_blank: f64::NEG_INFINITY,
                    p_label: f64::NEG_INFINITY,
                    next_blank: f64::NEG_INFINITY,
                    next_label: f64::NEG_INFINITY,
                    stamp: 0,
                });
                self.children.insert((parent, label), id);
                id
            }
        };
        let mut lm_score = self.nodes[parent].lm_score + self.beta;
        if let Some(lm) = self.lm.as_deref_mut() {
            let state = self.nodes[parent].lm.as_ref().ok_or_else(|| {
                Error::Input("internal: an extended prefix has no LM state".into())
            })?;
            let (logp, next) = lm.score(state, label)?;
            lm_score += self.alpha * logp as f64;
            self.nodes[id].lm = Some(next);
        }
        self.nodes[id].lm_score = lm_score;
        Ok(id)
    }

    /// The labels of prefix `id`, root first.
    fn labels(&self, mut id: usize) -> Vec<usize> {
        let mut labels = Vec::new();
        while self.nodes[id].parent != NONE {
            labels.push(self.nodes[id].label);
            id = self.nodes[id].parent;
        }
        labels.reverse();
        labels
    }

    /// Mark and compact: keeps the beam, the children already made from it (the
    /// cache the next frames read) and their ancestors (for the labels), so memory
    /// follows the beam, not the length of the input. Renumbers `beam`.
    fn collect(&mut self, beam: &mut [usize]) {
        if self.nodes.len() < self.collect_at {
            return;
        }
        const DROP: usize = NONE;
        const ANCESTOR: usize = NONE - 1;
        let mut map = vec![DROP; self.nodes.len()];
        let mut in_beam = vec![false; self.nodes.len()];
        for &id in beam.iter() {
            in_beam[id] = true;
            map[id] = 0;
        }
        for (&(parent, _), &id) in &self.children {
            if in_beam[parent] {
                map[id] = 0;
            }
        }
        // Ancestors only spell labels: their LM state can go (remade if they return).
        for id in 0..self.nodes.len() {
            if map[id] != 0 {
                continue;
            }
            let mut up = self.nodes[id].parent;
            while up != NONE && map[up] == DROP {
                map[up] = ANCESTOR;
                up = self.nodes[up].parent;
            }
        }
        let old = std::mem::take(&mut self.nodes);
        for (id, mut node) in old.into_iter().enumerate() {
            if map[id] == DROP {
                continue;
            }
            if map[id] == ANCESTOR {
                node.lm = None;
            }
            map[id] = self.nodes.len();
            self.nodes.push(node);
        }
        self.children.clear();
        for id in 0..self.nodes.len() {
            let node = &mut self.nodes[id];
            if node.parent != NONE {
                // Parents come before their children, so the parent is renumbered.
                node.parent = map[node.parent];
                self.children.insert((node.parent, node.label), id);
            }
        }
        beam.iter_mut().for_each(|id| *id = map[*id]);
        self.collect_at = self.collect_at.max(2 * self.nodes.len());
    }
}

/// Marks `id` as a candidate of frame `stamp` (resetting its sums the first time).
fn touch<St>(nodes: &mut [Prefix<St>], candidates: &mut Vec<usize>, id: usize, stamp: usize) {
    let node = &mut nodes[id];
    if node.stamp != stamp {
        node.stamp = stamp;
        node.next_blank = f64::NEG_INFINITY;
        node.next_label = f64::NEG_INFINITY;
        candidates.push(id);
    }
}

/// Prefix beam search (Hannun et al. 2014 / Graves), n-best sorted best first.
///
/// Each prefix carries log P of its alignments ending in a blank and ending in a
/// label, in f64; a label equal to the prefix's last extends it only from the blank
/// sum (otherwise it merges into the same prefix). The LM scores a label once, when
/// a prefix is first extended by it: α log p_lm + β. After every frame the `beam`
/// prefixes with the best log P_ctc + α log P_lm + β |labels| are kept; the final
/// scores add α log p_lm(end). Without pruning and with a beam as wide as the number
/// of prefixes, `ctc_log_prob` is the exact log P(labels | x). A frame where every
/// prefix is impossible (−∞) leaves no hypothesis.
pub fn prefix_beam_search<S: LabelScorer>(
    log_probs: &[f32],
    frames: usize,
    classes: usize,
    blank: usize,
    opts: &BeamOptions,
    lm: Option<&mut S>,
) -> Result<Vec<Hypothesis>> {
    search(log_probs, frames, classes, blank, opts, lm, 256)
}

/// [`prefix_beam_search`], collecting the trie from `collect_min` nodes on.
fn search<S: LabelScorer>(
    log_probs: &[f32],
    frames: usize,
    classes: usize,
    blank: usize,
    opts: &BeamOptions,
    lm: Option<&mut S>,
    collect_min: usize,
) -> Result<Vec<Hypothesis>> {
    opts.validate()?;
    check_input(log_probs, frames, classes, blank)?;
    // With α = 0 the LM cannot change a score: skip it (and 0·(−∞) = NaN).
    let mut lm = lm.filter(|_| opts.lm_weight != 0.0);
    let root_lm = lm.as_deref_mut().map(|lm| lm.start());
    let mut trie: Trie<'_, S> = Trie {
        nodes: vec![Prefix {
            parent: NONE,
            label: NONE,
            lm: root_lm,
            lm_score: 0.0,
            p_blank: 0.0,
            p_label: f64::NEG_INFINITY,
            next_blank: f64::NEG_INFINITY,
            next_label: f64::NEG_INFINITY,
            stamp: 0,
        }],
        children: HashMap::default(),
        lm,
        alpha: opts.lm_weight as f64,
        beta: opts.insertion_bonus as f64,
        collect_at: opts
            .beam
            .saturating_mul(classes)
            .saturating_mul(4)
            .max(collect_min),
    };
    let prune = opts.prune.unwrap_or(f32::NEG_INFINITY);
    let mut beam = vec![0usize];
    let mut candidates = Vec::with_capacity(opts.beam.saturating_mul(classes).min(1 << 16));
    for (t, row) in log_probs.chunks_exact(classes).enumerate() {
        let stamp = t + 1;
        candidates.clear();
        for &id in &beam {
            let (p_blank, p_label, last) = {
                let n = &trie.nodes[id];
                (n.p_blank, n.p_label, n.label)
            };
            let p_all = log_add(p_blank, p_label);
            touch(&mut trie.nodes, &mut candidates, id, stamp);
            let node = &mut trie.nodes[id];
            node.next_blank = log_add(node.next_blank, p_all + row[blank] as f64);
            for (c, &y) in row.iter().enumerate() {
                if c == blank || y == f32::NEG_INFINITY || y < prune {
                    continue;
                }
                let y = y as f64;
                let child = trie.child(id, c)?;
                touch(&mut trie.nodes, &mut candidates, child, stamp);
                if c == last {
                    // "a" then "a" with no blank between collapses into "a"; only
                    // alignments ending in a blank can start a second "a".
                    let node = &mut trie.nodes[id];
                    node.next_label = log_add(node.next_label, p_label + y);
                    let ch = &mut trie.nodes[child];
                    ch.next_label = log_add(ch.next_label, p_blank + y);
                } else {
                    let ch = &mut trie.nodes[child];
                    ch.next_label = log_add(ch.next_label, p_all + y);
                }
            }
        }
        let nodes = &trie.nodes;
        let total =
            |id: usize| log_add(nodes[id].next_blank, nodes[id].next_label) + nodes[id].lm_score;
        candidates.retain(|&id| total(id) > f64::NEG_INFINITY);
        if candidates.len() > opts.beam {
            // Ties go to the older prefix, so results do not depend on hashing.
            candidates.select_nth_unstable_by(opts.beam - 1, |&a, &b| {
                total(b).total_cmp(&total(a)).then(a.cmp(&b))
            });
            candidates.truncate(opts.beam);
        }
        for &id in &candidates {
            let node = &mut trie.nodes[id];
            node.p_blank = node.next_blank;
            node.p_label = node.next_label;
        }
        std::mem::swap(&mut beam, &mut candidates);
        trie.collect(&mut beam);
    }
    let mut hyps = Vec::with_capacity(beam.len());
    for &id in &beam {
        let ctc_log_prob = log_add(trie.nodes[id].p_blank, trie.nodes[id].p_label);
        let mut score = ctc_log_prob + trie.nodes[id].lm_score;
        if let (Some(lm), Some(state)) = (trie.lm.as_deref_mut(), trie.nodes[id].lm.as_ref()) {
            score += trie.alpha * lm.end(state)? as f64;
        }
        hyps.push(Hypothesis {
            labels: trie.labels(id),
            score,
            ctc_log_prob,
        });
    }
    hyps.sort_by(|a, b| b.score.total_cmp(&a.score));
    Ok(hyps)
}

/// A `LabelScorer` from an rnnkit character LM: label i ↔ char `labels[i]` (blank has none).
///
/// Runs the model one character at a time on a [`Stepper`]. A state is the
/// model's recurrent state after the prefix and its distribution of the next
/// character, made lazily: scoring a label reads the parent's distribution, and
/// the step that feeds the label runs only when the new prefix is itself extended
/// (most extensions leave the beam at once and never cost a step).
pub struct CharLmScorer<'a> {
    model: &'a CharLm,
    stepper: Stepper,
    /// Label → character id; `None` for labels without a character.
    ids: Vec<Option<usize>>,
    start: Rc<Stepped>,
    end: Option<usize>,
}

/// The LM state of a prefix for [`CharLmScorer`].
#[derive(Clone, Debug)]
pub struct CharLmState(Rc<RefCell<Lazy>>);

/// A prefix's LM state: computed, or its parent's and the character to feed.
#[derive(Debug)]
enum Lazy {
    Pending { parent: Rc<Stepped>, id: usize },
    Ready(Rc<Stepped>),
}

/// The model after a prefix: every layer's `h` and `c`, and log p(next character).
#[derive(Debug)]
struct Stepped {
    h: Vec<Vec<f32>>,
    c: Vec<Vec<f32>>,
    log_probs: Vec<f32>,
}

impl<'a> CharLmScorer<'a> {
    /// Scores the labels of a CTC model whose blank is label 0 and whose label i ≥ 1
    /// is character `labels[i - 1]` (as `task::ctc::CtcModel::labels`), in f32.
    /// See [`CharLmScorer::from_map`] for any other layout.
    pub fn new(model: &'a CharLm, labels: &[char]) -> Result<Self> {
        let map: Vec<Option<char>> = std::iter::once(None)
            .chain(labels.iter().copied().map(Some))
            .collect();
        Self::from_map(model, &map, Precision::F32)
    }

    /// Scores label i as character `labels[i]` of `model` (`None` for the blank), in
    /// the given weight precision; the text starts as [`crate::decode::generate`]'s
    /// with an empty prime (after a newline, or the first character without one).
    /// Fails if a character is not in the model's vocabulary.
    pub fn from_map(
        model: &'a CharLm,
        labels: &[Option<char>],
        precision: Precision,
    ) -> Result<Self> {
        let vocab = model.vocab();
        let ids = labels
            .iter()
            .enumerate()
            .map(|(i, c)| match c {
                None => Ok(None),
                Some(c) => vocab.id(*c).map(Some).ok_or_else(|| {
                    Error::Input(format!(
                        "label {i} is character {c:?} (U+{:04X}), which is not in the language model's vocabulary",
                        *c as u32
                    ))
                }),
            })
            .collect::<Result<Vec<_>>>()?;
        let mut stepper = Stepper::new(model, precision)?;
        let first = vec![vocab.id('\n').unwrap_or(0)];
        let start = Rc::new(step(&mut stepper, None, &first)?);
        Ok(CharLmScorer {
            model,
            stepper,
            ids,
            start,
            end: None,
        })
    }

    /// Reads `prime` before the first label instead (at least one character).
    pub fn with_prime(mut self, prime: &str) -> Result<Self> {
        let ids = self.model.vocab().encode(prime)?;
        if ids.is_empty() {
            return Err(Error::Input(
                "the prime must have a character for the model to read".into(),
            ));
        }
        self.start = Rc::new(step(&mut self.stepper, None, &ids)?);
        Ok(self)
    }

    /// Scores the end of a text as the probability of `end` after it (a newline,
    /// say); without this the model has no end ([`LabelScorer::end`] is 0).
    pub fn with_end(mut self, end: char) -> Result<Self> {
        self.end = Some(self.model.vocab().encode(&end.to_string())?[0]);
        Ok(self)
    }

    /// The computed form of `state`, running its pending step now.
    fn stepped(&mut self, state: &CharLmState) -> Result<Rc<Stepped>> {
        let pending = match &*state.0.borrow() {
            Lazy::Ready(s) => return Ok(s.clone()),
            Lazy::Pending { parent, id } => (parent.clone(), *id),
        };
        let s = Rc::new(step(&mut self.stepper, Some(&pending.0), &[pending.1])?);
        *state.0.borrow_mut() = Lazy::Ready(s.clone());
        Ok(s)
    }
}

/// Feeds `ids` to `stepper` from `from` (the zero state if `None`).
fn step(stepper: &mut Stepper, from: Option<&Stepped>, ids: &[usize]) -> Result<Stepped> {
    match from {
        None => stepper.reset(),
        Some(s) => {
            for l in 0..stepper.layers() {
                stepper.set_state(l, &s.h[l], &s.c[l])?;
            }
        }
    }
    let log_probs = crate::kernel::on_pool(|| -> Result<Vec<f32>> {
        let mut logits: &[f32] = &[];
        for &id in ids {
            logits = stepper.feed(id)?;
        }
        // log-softmax in f64: the decoder sums many of these.
        let max = logits.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) as f64;
        let lse = max
            + logits
                .iter()
                .map(|&v| (v as f64 - max).exp())
                .sum::<f64>()
                .ln();
        Ok(logits.iter().map(|&v| (v as f64 - lse) as f32).collect())
    })?;
    let (h, c) = (0..stepper.layers())
        .map(|l| {
            let (h, c) = stepper.state(l);
            (h.to_vec(), c.to_vec())
        })
        .unzip();
    Ok(Stepped { h, c, log_probs })
}

impl LabelScorer for CharLmScorer<'_> {
    type State = CharLmState;

    fn start(&mut self) -> CharLmState {
        CharLmState(Rc::new(RefCell::new(Lazy::Ready(self.start.clone()))))
    }

    fn score(&mut self, state: &CharLmState, label: usize) -> Result<(f32, CharLmState)> {
        let id = match self.ids.get(label) {
            Some(Some(id)) => *id,
            Some(None) => {
                return Err(Error::Input(format!(
                    "label {label} has no character (the blank?) for the language model"
                )))
            }
            None => {
                return Err(Error::Input(format!(
                    "label {label} is outside the {} labels mapped to characters",
                    self.ids.len()
                )))
            }
        };
        let parent = self.stepped(state)?;
        let logp = parent.log_probs[id];
        let next = Lazy::Pending { parent, id };
        Ok((logp, CharLmState(Rc::new(RefCell::new(next)))))
    }

    fn end(&mut self, state: &CharLmState) -> Result<f32> {
        match self.end {
            None => Ok(0.0),
            Some(id) => Ok(self.stepped(state)?.log_probs[id]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_add_is_exact_at_the_edges() {
        let ninf = f64::NEG_INFINITY;
        assert_eq!(log_add(ninf, ninf), ninf);
        assert_eq!(log_add(ninf, -3.0), -3.0);
        assert_eq!(log_add(-3.0, ninf), -3.0);
        assert!((log_add(0.5f64.ln(), 0.25f64.ln()) - 0.75f64.ln()).abs() < 1e-15);
        assert!((log_add(-1000.0, -1000.0) - (-1000.0 + 2f64.ln())).abs() < 1e-12);
    }

    #[test]
    fn best_path_never_panics_on_odd_shapes() {
        assert!(best_path(&[0.0; 5], 3, 0, 0).is_empty());
        // Only the two whole frames are read.
        assert_eq!(best_path(&[0.0, -1.0, -1.0, 0.0, 0.5], 9, 2, 0), vec![1]);
        assert_eq!(best_path(&[0.0, -1.0, -1.0, 0.0], 2, 2, 7), vec![0, 1]);
    }

    #[test]
    fn collection_keeps_the_results() {
        // A long input with a tiny beam collects the trie many times; the results
        // must be those of a search that never collects.
        let (t, c) = (300, 4);
        let mut rng = crate::Rng::new(3);
        let lp: Vec<f32> = (0..t)
            .flat_map(|_| {
                let raw: Vec<f64> = (0..c).map(|_| rng.normal() * 2.0).collect();
                let lse = raw.iter().map(|v| v.exp()).sum::<f64>().ln();
                raw.into_iter().map(move |v| (v - lse) as f32)
            })
            .collect();
        for alpha in [0.0, 0.7] {
            let opts = BeamOptions {
                beam: 3,
                lm_weight: alpha,
                ..Default::default()
            };
            let collected = search(&lp, t, c, 0, &opts, Some(&mut Bigram), 16).unwrap();
            let kept = search(&lp, t, c, 0, &opts, Some(&mut Bigram), usize::MAX).unwrap();
            assert!(collected[0].labels.len() > 50, "{:?}", collected[0]);
            assert_eq!(collected, kept, "alpha {alpha}");
        }
    }

    /// Prefers the label after the last one (cyclically), to exercise LM states.
    struct Bigram;

    impl LabelScorer for Bigram {
        type State = usize;
        fn start(&mut self) -> usize {
            0
        }
        fn score(&mut self, state: &usize, label: usize) -> Result<(f32, usize)> {
            let p = if label == state % 3 + 1 { 0.8f32 } else { 0.1 };
            Ok((p.ln(), label))
        }
    }
}
