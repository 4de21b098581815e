//! Decoding an encoder–decoder: greedy (many sources at once) and beam search (the
//! hypotheses of one source as one batch), both stopping at the end token or at a
//! maximum length relative to the source, so decoding always ends.

use super::{PairBatch, Seq2seq};
use crate::data::{END, START};
use crate::error::{Error, Result};
use crate::layer::RecurrentState;
use crate::tensor::{Real, Tensor};

/// How to decode.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DecodeOptions {
    /// Hypotheses kept per step; 1 is greedy.
    pub beam: usize,
    /// α of the length normalisation `log p / len^α` that ranks finished hypotheses
    /// (len counts the end token; 0 ranks by raw log-probability).
    pub length_penalty: f64,
}

impl Default for DecodeOptions {
    fn default() -> Self {
        DecodeOptions {
            beam: 1,
            length_penalty: 1.0,
        }
    }
}

/// Most output tokens for a source of `len` tokens (the end token not counted).
pub fn max_output_len(len: usize) -> usize {
    2 * len + 10
}

/// One decoded output.
#[derive(Clone, Debug, PartialEq)]
pub struct Decoded {
    /// Target ids, the end token left out.
    pub ids: Vec<usize>,
    /// Log-probability of the output (with its end token, when it has one).
    pub log_prob: f64,
    /// Attention weights over the source of every output step (the end token's
    /// included), `[steps][source length]`; empty without attention.
    pub attention: Vec<Vec<f64>>,
}

/// A partial output of the beam.
#[derive(Clone, Debug)]
struct Hyp {
    ids: Vec<usize>,
    log_prob: f64,
    attention: Vec<Vec<f64>>,
}

/// `log softmax` of one row of logits.
fn log_softmax<T: Real>(row: &[T]) -> Vec<f64> {
    let lse = crate::loss::log_sum_exp(row);
    row.iter().map(|v| v.f64() - lse).collect()
}

/// The rows `rows` of a `[L, B, H]` state, in that order.
fn gather_state<T: Real>(s: &RecurrentState<T>, rows: &[usize]) -> RecurrentState<T> {
    let pick = |t: &Tensor<T>| {
        let (l, b, h) = (t.shape()[0], t.shape()[1], t.shape()[2]);
        let mut out = Vec::with_capacity(l * rows.len() * h);
        for layer in 0..l {
            for &r in rows {
                out.extend_from_slice(&t.data()[(layer * b + r) * h..][..h]);
            }
        }
        Tensor::from_vec(&[l, rows.len(), h], out).expect("sized")
    };
    RecurrentState {
        h: pick(&s.h),
        c: s.c.as_ref().map(pick),
    }
}

impl<T: Real> Seq2seq<T> {
    /// Decodes every source (ids, at least one each) with `opts`.
    pub fn decode(&mut self, sources: &[Vec<usize>], opts: &DecodeOptions) -> Result<Vec<Decoded>> {
        if opts.beam == 0 {
            return Err(Error::Input(
                "--beam 0: the beam must keep at least 1 hypothesis".into(),
            ));
        }
        if !(opts.length_penalty.is_finite() && opts.length_penalty >= 0.0) {
            return Err(Error::Input(format!(
                "--length-penalty {}: must be a finite number ≥ 0",
                opts.length_penalty
            )));
        }
        if opts.beam == 1 {
            return self.greedy(sources);
        }
        sources
            .iter()
            .map(|s| self.beam(s, opts.beam, opts.length_penalty))
            .collect()
    }

    /// Greedy decoding of many sources, in batches of similar lengths.
    pub fn greedy(&mut self, sources: &[Vec<usize>]) -> Result<Vec<Decoded>> {
        const CHUNK: usize = 128;
        let mut order: Vec<usize> = (0..sources.len()).collect();
        order.sort_by_key(|&i| sources[i].len());
        let mut out = vec![None; sources.len()];
        for chunk in order.chunks(CHUNK) {
            let srcs: Vec<&[usize]> = chunk.iter().map(|&i| sources[i].as_slice()).collect();
            for (&i, d) in chunk.iter().zip(self.greedy_batch(&srcs)?) {
                out[i] = Some(d);
            }
        }
        Ok(out.into_iter().map(|d| d.expect("decoded")).collect())
    }

    fn greedy_batch(&mut self, sources: &[&[usize]]) -> Result<Vec<Decoded>> {
        let pairs: Vec<(&[usize], &[usize])> = sources.iter().map(|s| (*s, &[][..])).collect();
        let batch = PairBatch::new(&pairs)?;
        let (b, h, s_max) = (batch.size(), self.config.hidden_size, batch.src_steps());
        let (mem, mut state) = self.encode(&batch.src, &batch.src_len, None)?;
        let mut ids = vec![START; b];
        let mut feed = vec![T::zero(); b * h];
        let mut done = vec![false; b];
        let mut out: Vec<Decoded> = (0..b)
            .map(|_| Decoded {
                ids: Vec::new(),
                log_prob: 0.0,
                attention: Vec::new(),
            })
            .collect();
        let limit = |j: usize| max_output_len(batch.src_len[j]);
        let steps = (0..b).map(limit).max().unwrap_or(0) + 1;
        let v = self.target_vocab.len();
        for _ in 0..steps {
            let (o, s, alpha) = self.step(&ids, &feed, &state, &mem)?;
            let logits = self.logits(&o);
            for j in 0..b {
                if done[j] {
                    continue;
                }
                let lp = log_softmax(&logits[j * v..][..v]);
                let best = crate::loss::argmax_rows(&logits[j * v..][..v], v)[0];
                let d = &mut out[j];
                d.log_prob += lp[best];
                if !alpha.is_empty() {
                    let row = &alpha[j * s_max..][..batch.src_len[j]];
                    d.attention.push(row.iter().map(|a| a.f64()).collect());
                }
                if best == END {
                    done[j] = true;
                } else {
                    d.ids.push(best);
                    done[j] = d.ids.len() >= limit(j);
                }
                ids[j] = best;
            }
            if done.iter().all(|&d| d) {
                break;
            }
            feed = o;
            state = s;
        }
        Ok(out)
    }

    /// Beam search for one source: keeps the `k` most probable partial outputs; each
    /// step the `k` best continuations of all of them are taken, those ending in the
    /// end token are finished. Stops when `k` are finished, none is left, or at the
    /// maximum length (unfinished ones then count as they are); returns the finished
    /// output with the best `log p / len^α`.
    pub fn beam(&mut self, source: &[usize], k: usize, alpha: f64) -> Result<Decoded> {
        let batch = PairBatch::new(&[(source, &[][..])])?;
        let (mem1, mut state) = self.encode(&batch.src, &batch.src_len, None)?;
        let (h, v, len) = (
            self.config.hidden_size,
            self.target_vocab.len(),
            source.len(),
        );
        let limit = max_output_len(len);
        let score = |hyp: &Hyp, with_end: bool| {
            let n = hyp.ids.len() + usize::from(with_end);
            hyp.log_prob / (n.max(1) as f64).powf(alpha)
        };
        let mut live = vec![Hyp {
            ids: Vec::new(),
            log_prob: 0.0,
            attention: Vec::new(),
        }];
        let mut feed = vec![T::zero(); h];
        let mut finished: Vec<(f64, Hyp)> = Vec::new();
        let mut mem = mem1.repeat(0, 1);
        for _ in 0..=limit {
            if mem.batch() != live.len() {
                mem = mem1.repeat(0, live.len());
            }
            let last: Vec<usize> = live
                .iter()
                .map(|hyp| hyp.ids.last().copied().unwrap_or(START))
                .collect();
            let (o, s, att) = self.step(&last, &feed, &state, &mem)?;
            let logits = self.logits(&o);
            // The k best continuations of each hypothesis hold the k best overall.
            let mut cands: Vec<(f64, usize, usize)> = Vec::new();
            for (i, hyp) in live.iter().enumerate() {
                let lp = log_softmax(&logits[i * v..][..v]);
                let mut idx: Vec<usize> = (0..v).collect();
                let take = k.min(v);
                idx.select_nth_unstable_by(take - 1, |&a, &b| lp[b].total_cmp(&lp[a]));
                for &tok in &idx[..take] {
                    cands.push((hyp.log_prob + lp[tok], i, tok));
                }
            }
            cands.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
            let mut next = Vec::new();
            let mut parents = Vec::new();
            for &(lp, i, tok) in cands.iter().take(k) {
                let mut hyp = live[i].clone();
                hyp.log_prob = lp;
                if !att.is_empty() {
                    let row = &att[i * len..][..len];
                    hyp.attention.push(row.iter().map(|a| a.f64()).collect());
                }
                if tok == END {
                    finished.push((score(&hyp, true), hyp));
                } else {
                    hyp.ids.push(tok);
                    next.push(hyp);
                    parents.push(i);
                }
            }
            if finished.len() >= k || next.is_empty() {
                live = next;
                break;
            }
            if next[0].ids.len() >= limit {
                live = next;
                break;
            }
            feed = parents
                .iter()
                .flat_map(|&p| o[p * h..][..h].iter().copied())
                .collect();
            state = gather_state(&s, &parents);
            live = next;
        }
        if finished.is_empty() {
            finished.extend(live.into_iter().map(|hyp| (score(&hyp, false), hyp)));
        }
        let (_, best) = finished
            .into_iter()
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .expect("at least one hypothesis");
        Ok(Decoded {
            ids: best.ids,
            log_prob: best.log_prob,
            attention: best.attention,
        })
    }
}
