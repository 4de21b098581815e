//! The graph of every model kind.

use super::graph::{Dim, Elem, Graph};
use super::proto::data_type;
use super::recurrent::{self, Initial, Stack};
use super::{Exported, Options};
use crate::cell::CellKind;
use crate::error::Result;
use crate::layer::{PoolKind, Recurrent};
use crate::model::CharLm;
use crate::seq2seq::{AttentionKind, Seq2seq};
use crate::task::classifier::Classifier;
use crate::task::ctc::CtcModel;
use crate::task::tagger::Tagger;
use Dim::{Dynamic, Fixed};

const BATCH: Dim = Dynamic("batch");
const TIME: Dim = Dynamic("time");

fn describe(what: &str, o: &Options) -> String {
    if o.source.is_empty() {
        format!("rnnkit {what}")
    } else {
        format!("rnnkit {what}, exported from {}", o.source)
    }
}

fn meta(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect()
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("plain data serialises")
}

/// The final states of every layer as one `[L·D, B, H]` value.
fn all_layers(g: &mut Graph, states: &[String]) -> String {
    if states.len() == 1 {
        states[0].clone()
    } else {
        let refs: Vec<&str> = states.iter().map(String::as_str).collect();
        g.concat(&refs, 0)
    }
}

/// The stack's final hidden (and, for LSTM, cell) states of every layer as the graph
/// outputs `names`, each `[L·D, B, H]`, described as `{whose}hidden state {when}`.
fn output_states(g: &mut Graph, s: &Stack, names: [&str; 2], dims: &[Dim], whose_when: [&str; 2]) {
    let [whose, when] = whose_when;
    let h = all_layers(g, &s.h);
    g.output(
        &h,
        names[0],
        Elem::F32,
        dims,
        &format!("{whose}hidden state {when}"),
    );
    if !s.c.is_empty() {
        let c = all_layers(g, &s.c);
        g.output(
            &c,
            names[1],
            Elem::F32,
            dims,
            &format!("{whose}cell state {when}"),
        );
    }
}

/// Ids `[B, T]` → their rows of `table` (named `name`), time-major `[T, B, E]`.
fn embed_time_major(g: &mut Graph, ids: &str, name: &str, table: &crate::Tensor<f32>) -> String {
    let ids = g.transpose(ids, &[1, 0]);
    let table = g.tensor(name, table.shape(), table.data());
    g.gather(&table, &ids)
}

/// Lengths `int64 [B]` as ONNX's `sequence_lens` (`int32`).
fn sequence_lens(g: &mut Graph, lengths: &str) -> String {
    g.cast(lengths, data_type::INT32)
}

/// The character language model: `tokens [batch, time]` and the initial states in,
/// `logits [batch, time, V]` and the final states out, so a runtime can step it.
pub fn char_lm(m: &CharLm, o: &Options) -> Result<Exported> {
    o.check()?;
    let cfg = m.rnn.config();
    let (v, hs, ld) = (
        m.vocab().len(),
        cfg.hidden_size,
        cfg.num_layers * cfg.directions(),
    );
    let lstm = cfg.cell == CellKind::Lstm;
    let mut g = Graph::new("rnnkit_char_lm", o.opset);
    let tokens = g.input(
        "tokens",
        Elem::I64,
        &[BATCH, TIME],
        "character ids (metadata rnnkit.vocab)",
    );
    let state_dims = [Fixed(ld), BATCH, Fixed(hs)];
    let h0 = g.input(
        "h0",
        Elem::F32,
        &state_dims,
        "hidden state of every layer before the first character (zeros to start)",
    );
    let c0 = lstm.then(|| {
        g.input(
            "c0",
            Elem::F32,
            &state_dims,
            "cell state of every layer (zeros to start)",
        )
    });
    let x = match &m.embed {
        Some(e) => embed_time_major(&mut g, &tokens, "embed.weight", &e.weight),
        None => {
            let ids = g.transpose(&tokens, &[1, 0]);
            // One-hot inputs: rows of the identity, so W_ih is used as torch holds it.
            let mut eye = vec![0f32; v * v];
            (0..v).for_each(|i| eye[i * v + i] = 1.0);
            let table = g.tensor("one_hot", &[v, v], &eye);
            g.gather(&table, &ids)
        }
    };
    let s = stack_with_state(&mut g, &m.rnn, "rnn", &x, None, &h0, c0.as_deref());
    let logits = g.linear(&s.y, "head", &m.head.weight, Some(&m.head.bias));
    let logits = g.transpose(&logits, &[1, 0, 2]);
    g.output(
        &logits,
        "logits",
        Elem::F32,
        &[BATCH, TIME, Fixed(v)],
        "scores of the next character after each input",
    );
    output_states(
        &mut g,
        &s,
        ["hn", "cn"],
        &state_dims,
        ["", "after the last character"],
    );
    let metadata = meta(&[
        ("rnnkit.task", "char_lm".into()),
        (crate::model::META_CELL, cfg.cell.name().into()),
        (crate::model::META_VOCAB, m.vocab().to_json()),
    ]);
    Ok(Exported {
        role: "model",
        model: g.model(&describe("character language model", o), &metadata),
    })
}

/// A stack whose layer `l` starts from rows `l·D..(l+1)·D` of `h0 [L·D, B, H]` (and `c0`).
fn stack_with_state(
    g: &mut Graph,
    rnn: &Recurrent<f32>,
    prefix: &str,
    x: &str,
    lengths: Option<&str>,
    h0: &str,
    c0: Option<&str>,
) -> Stack {
    let cfg = rnn.config();
    let d = cfg.directions() as i64;
    let rows = |g: &mut Graph, s: &str| -> Vec<String> {
        (0..cfg.num_layers as i64)
            .map(|l| {
                if cfg.num_layers == 1 {
                    s.to_string()
                } else {
                    g.slice(s, 0, l * d, (l + 1) * d)
                }
            })
            .collect()
    };
    let h = rows(g, h0);
    let c = c0.map(|c0| rows(g, c0)).unwrap_or_default();
    recurrent::stack(g, rnn, prefix, x, lengths, Some(Initial { h: &h, c: &c }))
}

/// The sequence classifier: `features [batch, time, C]` and `lengths [batch]` in,
/// `logits [batch, K]` out; standardisation, pooling and head included.
pub fn classifier(m: &Classifier, o: &Options) -> Result<Exported> {
    o.check()?;
    let cfg = m.rnn.config();
    let (c, k) = (cfg.input_size, m.labels.len());
    let mut g = Graph::new("rnnkit_classifier", o.opset);
    let x = g.input(
        "features",
        Elem::F32,
        &[BATCH, TIME, Fixed(c)],
        "raw input channels, zeros or anything past each length",
    );
    let lengths = g.input(
        "lengths",
        Elem::I64,
        &[BATCH],
        "valid steps of each sequence, 1..=time",
    );
    g.set_scope("norm");
    let mean = g.tensor("norm.mean", &[c], m.norm.mean.data());
    let std = g.tensor("norm.std", &[c], m.norm.std.data());
    let centred = g.op("Sub", &[&x, &mean], &[]);
    let z = g.op("Div", &[&centred, &std], &[]);
    let z = g.transpose(&z, &[1, 0, 2]);
    g.set_scope("");
    let lens = sequence_lens(&mut g, &lengths);
    let s = recurrent::stack(&mut g, &m.rnn, "rnn", &z, Some(&lens), None);
    g.set_scope("pool");
    let pooled = match m.pool_kind() {
        PoolKind::Last => {
            let last = s.h.last().expect("at least one layer");
            recurrent::directions_side_by_side(&mut g, last)
        }
        PoolKind::Mean => {
            let steps = g.dim(&s.y, 0);
            let mask = g.step_mask(&steps, &lengths);
            let masked = g.op("Mul", &[&s.y, &mask], &[]);
            let sum = g.reduce("ReduceSum", &masked, &[0], false);
            let n = g.cast(&lengths, data_type::FLOAT);
            let n = g.unsqueeze(&n, &[1]);
            g.op("Div", &[&sum, &n], &[])
        }
        PoolKind::Max => {
            let steps = g.dim(&s.y, 0);
            let mask = g.step_mask(&steps, &lengths);
            let valid = g.cast(&mask, data_type::BOOL);
            let floor = g.float_scalar(f32::NEG_INFINITY);
            let kept = g.op("Where", &[&valid, &s.y, &floor], &[]);
            g.reduce("ReduceMax", &kept, &[0], false)
        }
    };
    g.set_scope("");
    let logits = g.linear(&pooled, "head", &m.head.weight, Some(&m.head.bias));
    g.output(
        &logits,
        "logits",
        Elem::F32,
        &[BATCH, Fixed(k)],
        "class scores (metadata rnnkit.labels)",
    );
    let metadata = meta(&[
        ("rnnkit.task", "classify".into()),
        (crate::model::META_CELL, cfg.cell.name().into()),
        (crate::task::classifier::META_LABELS, json(&m.labels)),
        (
            crate::task::classifier::META_POOL,
            m.pool_kind().name().into(),
        ),
    ]);
    Ok(Exported {
        role: "model",
        model: g.model(&describe("sequence classifier", o), &metadata),
    })
}

/// The tagger: word ids `[batch, time]`, the characters of each word
/// `[batch, time, chars]` with their counts `[batch, time]`, and sentence lengths
/// `[batch]` in; `logits [batch, time, K]` out. Ids as [`Tagger::word_id`] and
/// [`Tagger::char_ids`] give them.
pub fn tagger(m: &Tagger, o: &Options) -> Result<Exported> {
    o.check()?;
    let cfg = m.config();
    let k = m.tags.len();
    let mut g = Graph::new("rnnkit_tagger", o.opset);
    let words = g.input(
        "words",
        Elem::I64,
        &[BATCH, TIME],
        "word ids (metadata rnnkit.words; 0 = unknown)",
    );
    let chars = g.input(
        "chars",
        Elem::I64,
        &[BATCH, TIME, Dynamic("chars")],
        "character ids of each word (metadata rnnkit.chars), padded with 0",
    );
    let char_lengths = g.input(
        "char_lengths",
        Elem::I64,
        &[BATCH, TIME],
        "characters in each word",
    );
    let lengths = g.input(
        "lengths",
        Elem::I64,
        &[BATCH],
        "words in each sentence, 1..=time",
    );
    let wemb = embed_time_major(&mut g, &words, "word_embed.weight", &m.word_embed.weight);
    let x = match &m.char_rnn {
        Some(crnn) => {
            g.set_scope("char_rnn");
            // Every word (t, b) is one sequence of characters, at row t·B + b.
            let cols = g.transpose(&chars, &[2, 1, 0]);
            let cols = g.reshape(&cols, &[0, -1]);
            let ctable = g.tensor(
                "char_embed.weight",
                m.char_embed.weight.shape(),
                m.char_embed.weight.data(),
            );
            let cemb = g.gather(&ctable, &cols);
            let counts = g.transpose(&char_lengths, &[1, 0]);
            let counts = g.reshape(&counts, &[-1]);
            // Padding words have no characters; the recurrence reads one there, unused.
            let one = g.int_scalar(1);
            let counts = g.op("Max", &[&counts, &one], &[]);
            let counts = sequence_lens(&mut g, &counts);
            let s = recurrent::stack(&mut g, crnn, "char_rnn", &cemb, Some(&counts), None);
            g.set_scope("char_rnn");
            let repr = recurrent::directions_side_by_side(&mut g, &s.h[0]);
            let t = g.dim(&words, 1);
            let b = g.dim(&words, 0);
            let rest = g.ints(&[-1]);
            let shape = g.concat(&[&t, &b, &rest], 0);
            let repr = g.op("Reshape", &[&repr, &shape], &[]);
            g.set_scope("");
            g.concat(&[&wemb, &repr], 2)
        }
        None => wemb,
    };
    let lens = sequence_lens(&mut g, &lengths);
    let s = recurrent::stack(&mut g, &m.rnn, "rnn", &x, Some(&lens), None);
    let logits = g.linear(&s.y, "head", &m.head.weight, Some(&m.head.bias));
    let logits = g.transpose(&logits, &[1, 0, 2]);
    g.output(
        &logits,
        "logits",
        Elem::F32,
        &[BATCH, TIME, Fixed(k)],
        "tag scores of every word (metadata rnnkit.tags); rows past a sentence's end are padding",
    );
    let metadata = meta(&[
        ("rnnkit.task", "tag".into()),
        (crate::model::META_CELL, cfg.cell.name().into()),
        (crate::task::tagger::META_WORDS, json(&m.words.items())),
        (crate::task::tagger::META_CHARS, json(&m.chars.items())),
        (crate::task::tagger::META_TAGS, json(&m.tags.items())),
        ("rnnkit.word_ids", "lowercased form → rnnkit.words index, 0 if absent".into()),
        ("rnnkit.char_ids", format!("each character → rnnkit.chars index, 0 if absent; words over {} characters keep their first and last {}", crate::task::tagger::MAX_WORD_CHARS, crate::task::tagger::MAX_WORD_CHARS / 2)),
    ]);
    Ok(Exported {
        role: "model",
        model: g.model(&describe("tagger", o), &metadata),
    })
}

/// The CTC acoustic model: log-mel `features [batch, frames, bands]` (as rnnkit
/// computes them) and `lengths [batch]` in frames; `log_probs [batch, steps, L+1]`
/// (blank = 0) and `out_lengths [batch]` out.
pub fn ctc(m: &CtcModel, o: &Options) -> Result<Exported> {
    o.check()?;
    let cfg = m.rnn.config();
    let (bands, stack, k) = (m.bands(), m.config().stack, m.classes());
    let mut g = Graph::new("rnnkit_ctc", o.opset);
    let x = g.input(
        "features",
        Elem::F32,
        &[BATCH, Dynamic("frames"), Fixed(bands)],
        "log-mel frames",
    );
    let lengths = g.input(
        "lengths",
        Elem::I64,
        &[BATCH],
        "valid frames of each utterance",
    );
    g.set_scope("stack");
    // Frames past each end are zeroed, as rnnkit fills a partial last group.
    let xt = g.transpose(&x, &[1, 0, 2]);
    let frames = g.dim(&xt, 0);
    let mask = g.step_mask(&frames, &lengths);
    let xt = g.op("Mul", &[&xt, &mask], &[]);
    let xb = g.transpose(&xt, &[1, 0, 2]);
    // Pad the frames to a multiple of the stack, then group them.
    let s = g.ints(&[stack as i64]);
    let rem = g.op("Mod", &[&frames, &s], &[]);
    let short = g.op("Sub", &[&s, &rem], &[]);
    let pad = g.op("Mod", &[&short, &s], &[]);
    let zeros = g.ints(&[0, 0, 0, 0]);
    let zero = g.ints(&[0]);
    let pads = g.concat(&[&zeros, &pad, &zero], 0);
    let padded = g.op("Pad", &[&xb, &pads], &[]);
    let grouped = g.reshape(&padded, &[0, -1, (stack * bands) as i64]);
    let grouped = g.transpose(&grouped, &[1, 0, 2]);
    let up = g.int_scalar(stack as i64 - 1);
    let steps = g.op("Add", &[&lengths, &up], &[]);
    let sk = g.int_scalar(stack as i64);
    let out_lengths = g.op("Div", &[&steps, &sk], &[]);
    g.set_scope("");
    let lens = sequence_lens(&mut g, &out_lengths);
    let st = recurrent::stack(&mut g, &m.rnn, "rnn", &grouped, Some(&lens), None);
    let logits = g.linear(&st.y, "head", &m.head.weight, Some(&m.head.bias));
    let lp = g.op(
        "LogSoftmax",
        &[&logits],
        &[super::graph::Attr::Int("axis", 2)],
    );
    let lp = g.transpose(&lp, &[1, 0, 2]);
    g.output(
        &lp,
        "log_probs",
        Elem::F32,
        &[BATCH, Dynamic("steps"), Fixed(k)],
        "log-probabilities of blank (0) and each label (metadata rnnkit.labels) per stacked step",
    );
    g.output(
        &out_lengths,
        "out_lengths",
        Elem::I64,
        &[BATCH],
        "valid steps of each output: ceil(lengths / stack)",
    );
    let labels: Vec<String> = m.labels.iter().map(|c| c.to_string()).collect();
    let metadata = meta(&[
        ("rnnkit.task", "ctc".into()),
        (crate::model::META_CELL, cfg.cell.name().into()),
        (crate::task::ctc::META_LABELS, json(&labels)),
        (crate::task::ctc::META_STACK, stack.to_string()),
        ("rnnkit.features", format!("{bands} log-mel bands, 25 ms Hann windows every 10 ms at 16 kHz, each band normalised over the utterance (rnnkit::audio)")),
    ]);
    Ok(Exported {
        role: "model",
        model: g.model(&describe("CTC acoustic model", o), &metadata),
    })
}

/// The encoder–decoder as two graphs: the encoder (`source [batch, time]`, `lengths`
/// → `memory`, `keys` and the decoder's first state) and one decoder step (previous
/// token, fed-back output, state, memory → logits, new output and state, attention).
pub fn seq2seq(m: &Seq2seq<f32>, o: &Options) -> Result<[Exported; 2]> {
    o.check()?;
    let cfg = m.config();
    let (h, layers) = (cfg.hidden_size, cfg.num_layers);
    let lstm = cfg.cell == CellKind::Lstm;
    let attention = cfg.attention;
    let state_dims = [Fixed(layers), BATCH, Fixed(h)];
    let mem_dims = [BATCH, Dynamic("source_time"), Fixed(h)];
    let metadata = meta(&[
        ("rnnkit.task", "seq2seq".into()),
        (crate::model::META_CELL, cfg.cell.name().into()),
        (crate::seq2seq::META_ATTENTION, attention.name().into()),
        (
            crate::seq2seq::META_SOURCE_VOCAB,
            json(&m.source_vocab.tokens),
        ),
        (
            crate::seq2seq::META_TARGET_VOCAB,
            json(&m.target_vocab.tokens),
        ),
        (
            "rnnkit.decoding",
            "start with token 1 (<s>), a zero feed and the encoder's state; stop at token 0 (</s>)"
                .into(),
        ),
    ]);

    // Encoder.
    let mut g = Graph::new("rnnkit_seq2seq_encoder", o.opset);
    let src = g.input(
        "source",
        Elem::I64,
        &[BATCH, Dynamic("source_time")],
        "source token ids (metadata rnnkit.source_vocab)",
    );
    let lengths = g.input(
        "lengths",
        Elem::I64,
        &[BATCH],
        "tokens in each source, 1..=source_time",
    );
    let x = embed_time_major(&mut g, &src, "src_embed.weight", &m.src_embed.weight);
    let lens = sequence_lens(&mut g, &lengths);
    let s = recurrent::stack(&mut g, &m.encoder, "encoder", &x, Some(&lens), None);
    g.set_scope("bridge");
    // The decoder starts from each encoder layer's final state, directions side by side.
    let bridge = |g: &mut Graph, states: &[String]| -> String {
        let per_layer: Vec<String> = states
            .iter()
            .map(|st| {
                let flat = recurrent::directions_side_by_side(g, st);
                g.unsqueeze(&flat, &[0])
            })
            .collect();
        all_layers(g, &per_layer)
    };
    let h0 = bridge(&mut g, &s.h);
    let c0 = lstm.then(|| bridge(&mut g, &s.c));
    let memory = g.transpose(&s.y, &[1, 0, 2]);
    g.set_scope("attn");
    let keys = match attention {
        AttentionKind::General | AttentionKind::Additive => {
            let w = m
                .attention
                .key_weight()
                .expect("general and additive attention have keys");
            Some(g.linear(&memory, "attn.key", w, None))
        }
        AttentionKind::Dot | AttentionKind::None => None,
    };
    g.set_scope("");
    g.output(&memory, "memory", Elem::F32, &mem_dims, "encoder outputs");
    if let Some(k) = &keys {
        g.output(
            k,
            "keys",
            Elem::F32,
            &mem_dims,
            "attention keys of the encoder outputs",
        );
    }
    g.output(
        &h0,
        "h0",
        Elem::F32,
        &state_dims,
        "the decoder's first hidden state",
    );
    if let Some(c0) = &c0 {
        g.output(
            c0,
            "c0",
            Elem::F32,
            &state_dims,
            "the decoder's first cell state",
        );
    }
    let encoder = Exported {
        role: "encoder",
        model: g.model(&describe("encoder–decoder: encoder", o), &metadata),
    };

    // One decoder step.
    let mut g = Graph::new("rnnkit_seq2seq_decoder", o.opset);
    let token = g.input(
        "token",
        Elem::I64,
        &[BATCH],
        "the previous target token (1 = <s> at the start)",
    );
    let attend = attention != AttentionKind::None;
    let feed = attend.then(|| {
        g.input(
            "feed",
            Elem::F32,
            &[BATCH, Fixed(h)],
            "the previous step's output (zeros at the start)",
        )
    });
    let h_in = g.input("h", Elem::F32, &state_dims, "decoder hidden state");
    let c_in = lstm.then(|| g.input("c", Elem::F32, &state_dims, "decoder cell state"));
    let mem = attend.then(|| g.input("memory", Elem::F32, &mem_dims, "the encoder's memory"));
    let keys_in = keys
        .as_ref()
        .map(|_| g.input("keys", Elem::F32, &mem_dims, "the encoder's keys"));
    let lens = attend.then(|| g.input("lengths", Elem::I64, &[BATCH], "tokens in each source"));
    let table = g.tensor(
        "tgt_embed.weight",
        m.tgt_embed.weight.shape(),
        m.tgt_embed.weight.data(),
    );
    let e = g.gather(&table, &token);
    let input = match &feed {
        Some(f) => g.concat(&[&e, f], 1),
        None => e,
    };
    let x = g.unsqueeze(&input, &[0]);
    let s = stack_with_state(
        &mut g,
        &m.decoder,
        "decoder",
        &x,
        None,
        &h_in,
        c_in.as_deref(),
    );
    let q = g.squeeze(&s.y, &[0]);
    let (out_in, alpha) = match (&mem, &lens) {
        (Some(mem), Some(lens)) => {
            g.set_scope("attn");
            let keys = keys_in.as_deref().unwrap_or(mem);
            let scores = match attention {
                AttentionKind::Additive => {
                    let (wq, bq) = m
                        .attention
                        .query_params()
                        .expect("additive attention has a query");
                    let qp = g.linear(&q, "attn.query", wq, Some(bq));
                    let qp = g.unsqueeze(&qp, &[1]);
                    let u = g.op("Add", &[keys, &qp], &[]);
                    let u = g.op("Tanh", &[&u], &[]);
                    let v = m.attention.v_weight().expect("additive attention has v");
                    let vt = g.tensor("attn.v.weight", &[h, 1], v.data());
                    let sc = g.op("MatMul", &[&u, &vt], &[]);
                    g.squeeze(&sc, &[2])
                }
                _ => {
                    let qc = g.unsqueeze(&q, &[2]);
                    let sc = g.op("MatMul", &[keys, &qc], &[]);
                    g.squeeze(&sc, &[2])
                }
            };
            let steps = g.dim(mem, 1);
            let mask = g.step_mask(&steps, lens);
            let mask = g.squeeze(&mask, &[2]);
            let valid = g.cast(&mask, data_type::BOOL);
            let valid = g.transpose(&valid, &[1, 0]);
            let floor = g.float_scalar(f32::NEG_INFINITY);
            let scores = g.op("Where", &[&valid, &scores, &floor], &[]);
            let alpha = g.op("Softmax", &[&scores], &[super::graph::Attr::Int("axis", 1)]);
            let a3 = g.unsqueeze(&alpha, &[1]);
            let ctx = g.op("MatMul", &[&a3, mem], &[]);
            let ctx = g.squeeze(&ctx, &[1]);
            let cat = g.concat(&[&ctx, &q], 1);
            let combine = m.combine.as_ref().expect("attention has combine");
            let o = g.linear(&cat, "combine", &combine.weight, Some(&combine.bias));
            let o = g.op("Tanh", &[&o], &[]);
            g.set_scope("");
            (o, Some(alpha))
        }
        _ => (q, None),
    };
    let logits = g.linear(&out_in, "out", &m.out.weight, Some(&m.out.bias));
    let vt = m.target_vocab.len();
    g.output(
        &logits,
        "logits",
        Elem::F32,
        &[BATCH, Fixed(vt)],
        "scores of the next target token (metadata rnnkit.target_vocab)",
    );
    if attend {
        g.output(
            &out_in,
            "feed_out",
            Elem::F32,
            &[BATCH, Fixed(h)],
            "this step's output: the next step's feed",
        );
    }
    output_states(
        &mut g,
        &s,
        ["h_out", "c_out"],
        &state_dims,
        ["decoder ", "after this step"],
    );
    if let Some(a) = alpha {
        g.output(
            &a,
            "attention",
            Elem::F32,
            &[BATCH, Dynamic("source_time")],
            "attention weights over the source",
        );
    }
    let decoder = Exported {
        role: "decoder",
        model: g.model(&describe("encoder–decoder: one decoder step", o), &metadata),
    };
    Ok([encoder, decoder])
}
