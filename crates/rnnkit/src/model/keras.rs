//! Keras character models as a [`CharLm`]: an optional `Embedding`, a stack of
//! `SimpleRNN`, `LSTM` or `GRU` layers and one `Dense`, as `model.save_weights` keeps
//! them. This module sees a weights file as layers of named, shaped variables
//! ([`KerasLayer`]) and reads their values only after every shape fits ([`KerasPlan`]);
//! the file itself (HDF5) is read by the caller.
//!
//! Keras keeps `kernel [in, G·H]`, `recurrent_kernel [H, G·H]` and one `bias`, torch
//! (and rnnkit) `weight_ih [G·H, in]`, `weight_hh [G·H, H]`, `bias_ih`, `bias_hh`:
//!
//! ```text
//! LSTM       Keras gates i, f, c, o = torch i, f, g, o    bias → bias_ih, bias_hh = 0
//! GRU        Keras gates z, r, h    → torch r, z, n
//!            reset_after=True:  bias [2, 3H] → bias_ih = bias[0], bias_hh = bias[1]   (cell `gru`)
//!            reset_after=False: bias [3H]    → bias_ih (no bias_hh)                  (cell `gru_reset_before`)
//! SimpleRNN  bias → bias_ih, bias_hh = 0; tanh or ReLU as the caller says (the file does not tell)
//! Dense      kernel [H, V] → head.weight [V, H] (transposed), bias → head.bias
//! ```
//!
//! What the weights cannot show is assumed to be Keras' default: the sigmoid as the
//! gates' `recurrent_activation`, tanh as `activation` (LSTM, GRU), forward time order,
//! and a linear `Dense` (a softmax on it changes no sampling).

use crate::cell::{CellKind, CellParams};
use crate::checkpoint;
use crate::data::Vocab;
use crate::error::{Error, Result};
use crate::layer::{Embedding, Linear, Recurrent, RecurrentConfig};
use crate::model::{CharLm, CharLmConfig};
use crate::tensor::Tensor;
use std::path::{Path, PathBuf};

/// One variable of a Keras layer, as the weights file describes it.
#[derive(Clone, Debug)]
pub struct KerasWeight {
    /// Its name where the file has one (Keras 2: `lstm/lstm_cell/kernel:0`); Keras 3
    /// numbers variables instead, and their order says what they are.
    pub name: Option<String>,
    /// Its shape.
    pub shape: Vec<usize>,
}

/// One layer of a Keras weights file.
#[derive(Clone, Debug)]
pub struct KerasLayer {
    /// Where the file keeps it (`layers/lstm_1`), for messages.
    pub path: String,
    /// The layer's name in the model (`name=`), for messages.
    pub name: String,
    /// Its class in snake case where the file tells it (Keras 3 names a layer's group
    /// after its class: `lstm`, `lstm_1`, …); `None` where it does not (Keras 2).
    pub class: Option<String>,
    /// Its variables in Keras' order: `embeddings`; `kernel`, `recurrent_kernel`,
    /// `bias`; or `kernel`, `bias`.
    pub weights: Vec<KerasWeight>,
}

/// What a layer is to the char LM.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Embedding,
    Recurrent(CellKind),
    Dense,
    /// No weights and no effect when sampling (Dropout, the input).
    Skipped,
}

impl Role {
    /// The place of the role in the model, for files that do not keep the layer order.
    fn rank(self) -> usize {
        match self {
            Role::Embedding => 0,
            Role::Recurrent(_) => 1,
            Role::Dense => 2,
            Role::Skipped => 3,
        }
    }
}

/// Classes that hold no weights and change nothing at inference.
const IDENTITY_CLASSES: [&str; 7] = [
    "dropout",
    "spatial_dropout1d",
    "gaussian_dropout",
    "gaussian_noise",
    "alpha_dropout",
    "input_layer",
    "activity_regularization",
];

/// What this importer reads, for messages.
const SUPPORTED: &str = "rnnkit imports an optional Embedding, then SimpleRNN, LSTM or GRU \
layers (all of one kind and width), then one Dense, with Dropout layers anywhere";

/// The shapes of a Keras char model checked against each other and the vocabulary:
/// which layer is which, and the [`CharLm`] it makes. Nothing is read yet.
#[derive(Clone, Debug)]
pub struct KerasPlan {
    file: PathBuf,
    embedding: Option<usize>,
    recurrent: Vec<usize>,
    dense: usize,
    config: CharLmConfig,
    input_size: usize,
}

impl KerasPlan {
    /// Works out the model from the layers' classes (where given) and shapes, for a
    /// vocabulary of `vocab` characters; `simple_rnn` is the cell a SimpleRNN maps to
    /// (`rnn_tanh` or `rnn_relu`: the activation is not in the file). `ordered` says
    /// the layers come in the model's order (Keras 2 files keep it); otherwise
    /// (Keras 3) the order follows from the roles, and layers of one class from the
    /// counter Keras appends to their names (`lstm`, `lstm_1`, …). `file` names the
    /// file in messages.
    pub fn new(
        file: &Path,
        layers: &[KerasLayer],
        ordered: bool,
        vocab: usize,
        simple_rnn: CellKind,
    ) -> Result<KerasPlan> {
        let err = |msg: String| Error::Checkpoint {
            path: file.to_path_buf(),
            msg,
        };
        if !matches!(simple_rnn, CellKind::RnnTanh | CellKind::RnnRelu) {
            return Err(Error::Config(format!(
                "a SimpleRNN maps to rnn_tanh or rnn_relu, not {simple_rnn}"
            )));
        }
        let mut roles = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let role = classify(layer, simple_rnn).map_err(err)?;
            if role != Role::Skipped {
                roles.push((i, role));
            }
        }
        if !ordered {
            roles.sort_by_key(|&(i, role)| (role.rank(), layer_counter(&layers[i].path)));
        }
        let listed = |roles: &[(usize, Role)]| {
            roles
                .iter()
                .map(|&(i, _)| describe(&layers[i]))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Embedding? Recurrent+ Dense, in that order.
        let mut rest = &roles[..];
        let embedding = match rest.first() {
            Some(&(i, Role::Embedding)) => {
                rest = &rest[1..];
                Some(i)
            }
            _ => None,
        };
        let n_rec = rest
            .iter()
            .take_while(|(_, r)| matches!(r, Role::Recurrent(_)))
            .count();
        let (recurrent, tail) = rest.split_at(n_rec);
        let shape_ok = matches!(tail, [(_, Role::Dense)]) && !recurrent.is_empty();
        if !shape_ok {
            let found = if roles.is_empty() {
                "no layer with weights".to_string()
            } else {
                format!("the layers {}", listed(&roles))
            };
            return Err(err(format!("{SUPPORTED}; the file has {found}")));
        }
        let dense = tail[0].0;
        let cell = match recurrent[0].1 {
            Role::Recurrent(c) => c,
            _ => unreachable!("counted as recurrent"),
        };
        if let Some(&(i, Role::Recurrent(other))) =
            recurrent.iter().find(|(_, r)| *r != Role::Recurrent(cell))
        {
            return Err(err(format!(
                "{} is {} but {} is {}: rnnkit stacks layers of one kind only",
                describe(&layers[recurrent[0].0]),
                kind_name(cell),
                describe(&layers[i]),
                kind_name(other)
            )));
        }
        let recurrent: Vec<usize> = recurrent.iter().map(|&(i, _)| i).collect();

        // Widths: every recurrent layer H wide, each taking the one before.
        let shape = |i: usize, w: usize| &layers[i].weights[w].shape;
        let hidden = shape(recurrent[0], 1)[0];
        let input_size = match embedding {
            Some(e) => {
                let [rows, dim] = shape(e, 0)[..] else {
                    unreachable!("classify checked 2-D")
                };
                if rows != vocab {
                    let hint = if rows == vocab + 1 {
                        " (one more: a vocabulary made by StringLookup keeps [UNK] at id 0; \
                         give --vocab-json with a stand-in character first)"
                    } else {
                        ""
                    };
                    return Err(err(format!(
                        "{} has {rows} rows but the vocabulary has {vocab} characters{hint}; \
                         give the vocabulary the model was trained with",
                        describe(&layers[e])
                    )));
                }
                dim
            }
            None => vocab,
        };
        let mut width = input_size;
        for (k, &i) in recurrent.iter().enumerate() {
            let (in_rows, h) = (shape(i, 0)[0], shape(i, 1)[0]);
            if h != hidden {
                return Err(err(format!(
                    "{} has {h} units but {} has {hidden}: rnnkit stacks layers of one width only",
                    describe(&layers[i]),
                    describe(&layers[recurrent[0]])
                )));
            }
            if in_rows != width {
                let from = match (k, embedding) {
                    (0, Some(e)) => format!("{} gives {width}", describe(&layers[e])),
                    (0, None) => format!(
                        "with no Embedding the inputs are one-hot vectors over the vocabulary \
                         of {width} characters"
                    ),
                    _ => format!("{} gives {width}", describe(&layers[recurrent[k - 1]])),
                };
                return Err(err(format!(
                    "{} takes {in_rows} inputs (kernel {:?}) but {from}",
                    describe(&layers[i]),
                    shape(i, 0)
                )));
            }
            width = h;
        }
        let kernel = shape(dense, 0);
        if kernel[..] != [hidden, vocab] {
            return Err(err(format!(
                "{} has kernel {kernel:?} but the model needs [{hidden}, {vocab}] \
                 ({hidden} units in, one output per character of the vocabulary of {vocab})",
                describe(&layers[dense])
            )));
        }
        let config = CharLmConfig {
            cell,
            embed_size: if embedding.is_some() { input_size } else { 0 },
            hidden_size: hidden,
            num_layers: recurrent.len(),
            dropout: 0.0,
        };
        config.validate().map_err(|e| err(e.to_string()))?;
        let plan = KerasPlan {
            file: file.to_path_buf(),
            embedding,
            recurrent,
            dense,
            config,
            input_size,
        };
        checkpoint::check_load_memory(file, plan.params(vocab))?;
        Ok(plan)
    }

    /// The sizes of the model this makes.
    pub fn config(&self) -> &CharLmConfig {
        &self.config
    }

    /// The layers used, in the model's order (indices into the layers given to
    /// [`KerasPlan::new`]); the others have no weights.
    pub fn layer_order(&self) -> Vec<usize> {
        self.embedding
            .iter()
            .chain(&self.recurrent)
            .chain(std::iter::once(&self.dense))
            .copied()
            .collect()
    }

    /// Number of parameters of the model (sizes were validated, so no product overflows).
    fn params(&self, vocab: usize) -> u64 {
        let c = &self.config;
        let (v, h, g) = (vocab as u64, c.hidden_size as u64, c.cell.gates() as u64);
        let rec: u64 = (0..c.num_layers as u64)
            .map(|l| {
                let input = if l == 0 { self.input_size as u64 } else { h };
                g * h * (input + h + 2)
            })
            .sum();
        v * c.embed_size as u64 + rec + v * (h + 1)
    }

    /// Reads every variable with `read(layer, variable)` (indices into the layers and
    /// their weights as given to [`KerasPlan::new`]; it must return the values in
    /// row-major order) and converts them into the model, with `vocab`.
    pub fn build(
        &self,
        layers: &[KerasLayer],
        vocab: Vocab,
        read: &mut dyn FnMut(usize, usize) -> Result<Vec<f32>>,
    ) -> Result<CharLm> {
        let mut get = |i: usize, w: usize| -> Result<Tensor<f32>> {
            let shape = &layers[i].weights[w].shape;
            let values = read(i, w)?;
            Tensor::from_vec(shape, values).map_err(|e| Error::Checkpoint {
                path: self.file.clone(),
                msg: format!("{}: {e}", describe(&layers[i])),
            })
        };
        let embed = match self.embedding {
            Some(e) => Some(Embedding::from_weight(get(e, 0)?)?),
            None => None,
        };
        let c = &self.config;
        let (h, cell) = (c.hidden_size, c.cell);
        let mut cells = Vec::with_capacity(self.recurrent.len());
        for &i in &self.recurrent {
            let kernel = get(i, 0)?;
            let recurrent_kernel = get(i, 1)?;
            let bias = match layers[i].weights.len() {
                3 => Some(get(i, 2)?),
                _ => None,
            };
            cells.push(cell_params(
                cell,
                h,
                &kernel,
                &recurrent_kernel,
                bias.as_ref(),
            ));
        }
        let rnn = Recurrent::from_params(
            RecurrentConfig::new(cell, self.input_size, h).with_layers(c.num_layers),
            cells,
        )?;
        let kernel = get(self.dense, 0)?;
        let v = kernel.shape()[1];
        let bias = match layers[self.dense].weights.len() {
            2 => get(self.dense, 1)?,
            _ => Tensor::zeros(&[v]),
        };
        let head = Linear::from_params(transpose_gates(&kernel, 1, &[0]), bias)?;
        CharLm::from_parts(embed, rnn, head, vocab)
    }
}

/// What `layer` is, from its class where the file gives one and from its variables'
/// names and shapes; the message says what is wrong otherwise.
fn classify(layer: &KerasLayer, simple_rnn: CellKind) -> std::result::Result<Role, String> {
    let what = describe(layer);
    let class = layer.class.as_deref();
    let names: Vec<String> = layer
        .weights
        .iter()
        .filter_map(|w| w.name.as_deref().map(variable_role))
        .collect();
    if layer.weights.iter().any(|w| {
        w.name
            .as_deref()
            .is_some_and(|n| n.contains("forward_") || n.contains("backward_"))
    }) || class == Some("bidirectional")
    {
        return Err(format!(
            "{what} is Bidirectional: a model that reads the text backwards too cannot \
             generate it one character at a time; {SUPPORTED}"
        ));
    }
    match class {
        Some(c) if IDENTITY_CLASSES.contains(&c) => {
            return if layer.weights.is_empty() {
                Ok(Role::Skipped)
            } else {
                Err(format!(
                    "{what} holds {} variables, unlike any {c}",
                    layer.weights.len()
                ))
            };
        }
        Some("activation") => {
            return Err(format!(
                "{what} is an Activation layer, whose function and place the weights file \
                 does not keep; {SUPPORTED} (a softmax belongs in Dense(..., \
                 activation=\"softmax\"), which changes no sampling)"
            ))
        }
        Some("embedding" | "dense" | "lstm" | "gru" | "simple_rnn") | None => {}
        Some(c) => {
            return Err(format!(
                "{what} is a layer of class {c}, which rnnkit does not import; {SUPPORTED}"
            ))
        }
    }
    let shapes: Vec<&[usize]> = layer.weights.iter().map(|w| &w.shape[..]).collect();
    let listed = || {
        layer
            .weights
            .iter()
            .enumerate()
            .map(|(k, w)| {
                let name = w.name.clone().unwrap_or_else(|| format!("variable {k}"));
                format!("{name} {:?}", w.shape)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    if layer.weights.is_empty() {
        return match class {
            // Keras 2 files do not name classes: a layer without weights there is
            // the input or a Dropout, as in every model this importer reads.
            None => Ok(Role::Skipped),
            Some(c) => Err(format!(
                "{what} has no weights, but an {c} layer has: was the model built before saving?"
            )),
        };
    }
    let names_are = |expected: &[&str]| names.is_empty() || names == expected;
    let is_embedding = match class {
        Some(c) => c == "embedding",
        None => names == ["embeddings"],
    };
    if is_embedding {
        return match shapes[..] {
            [[_, _]] if names_are(&["embeddings"]) => Ok(Role::Embedding),
            _ => Err(format!(
                "{what} should hold one 2-D table [vocabulary, width]; it has {}",
                listed()
            )),
        };
    }
    let is_recurrent = match class {
        Some(c) => c != "dense",
        None => names.iter().any(|n| n == "recurrent_kernel"),
    };
    if !is_recurrent {
        let dense = match class {
            Some(_) => true,
            None => names == ["kernel", "bias"] || names == ["kernel"],
        };
        return match shapes[..] {
            [[_, v]] | [[_, v], [_]]
                if dense
                    && names_are(&["kernel", "bias"][..shapes.len()])
                    && shapes.get(1).is_none_or(|b| b[0] == *v) =>
            {
                Ok(Role::Dense)
            }
            _ if dense => Err(format!(
                "{what} should be a Dense layer's kernel [in, out] and bias [out]; it has {}",
                listed()
            )),
            _ => Err(format!(
                "{what} is not a layer rnnkit can tell from its weights ({}); {SUPPORTED}",
                listed()
            )),
        };
    }
    // kernel [in, G·H], recurrent_kernel [H, G·H], bias [G·H] or [2, G·H].
    let (kernel, rk) = match shapes[..] {
        [k @ [_, _], r @ [_, _]] | [k @ [_, _], r @ [_, _], _]
            if names_are(&["kernel", "recurrent_kernel", "bias"][..shapes.len()]) =>
        {
            (k, r)
        }
        _ => {
            return Err(format!(
                "{what} should hold kernel [in, G·units], recurrent_kernel [units, G·units] \
                 and bias; it has {}",
                listed()
            ))
        }
    };
    let h = rk[0];
    let gh = rk[1];
    if h == 0 || gh % h != 0 || kernel[1] != gh {
        return Err(format!(
            "{what}: kernel {kernel:?} and recurrent_kernel {rk:?} do not fit one recurrent \
             layer ([in, G·units] and [units, G·units])"
        ));
    }
    let gates = gh / h;
    let expected_gates = match class {
        Some("lstm") => Some(4),
        Some("gru") => Some(3),
        Some("simple_rnn") => Some(1),
        _ => None,
    };
    if expected_gates.is_some_and(|g| g != gates) || ![1, 3, 4].contains(&gates) {
        return Err(format!(
            "{what}: recurrent_kernel {rk:?} has {gates} gate blocks, not those of {}",
            class.map_or("SimpleRNN (1), GRU (3) or LSTM (4)".to_string(), |c| c
                .to_string())
        ));
    }
    let bias = shapes.get(2).copied();
    let bias_bad = || {
        format!(
            "{what}: bias {:?} does not fit recurrent_kernel {rk:?}",
            bias.unwrap_or(&[])
        )
    };
    match gates {
        1 | 4 => match bias {
            None => {}
            Some([n]) if *n == gh => {}
            Some(_) => return Err(bias_bad()),
        },
        _ => match bias {
            // reset_after changes the equations even without biases, and nothing shows it.
            None => {
                return Err(format!(
                    "{what} is a GRU without bias, whose reset_after setting the file \
                     does not show; save it with use_bias=True"
                ))
            }
            Some([n]) if *n == gh => return Ok(Role::Recurrent(CellKind::GruResetBefore)),
            Some([2, n]) if *n == gh => return Ok(Role::Recurrent(CellKind::Gru)),
            Some(_) => return Err(bias_bad()),
        },
    }
    Ok(Role::Recurrent(if gates == 4 {
        CellKind::Lstm
    } else {
        simple_rnn
    }))
}

/// The role of a Keras 2 variable from its full name: `lstm/lstm_cell/kernel:0` → `kernel`.
fn variable_role(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split(':').next().unwrap_or(last).to_string()
}

/// The counter Keras appends to a group name (`lstm_2` → (`lstm`, 2); `lstm` → 0),
/// so that `lstm_10` comes after `lstm_9`.
fn layer_counter(path: &str) -> (String, u64) {
    let key = path.rsplit('/').next().unwrap_or(path);
    match key.rsplit_once('_') {
        Some((base, n)) if !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()) => {
            (base.to_string(), n.parse().unwrap_or(u64::MAX))
        }
        _ => (key.to_string(), 0),
    }
}

/// `layers/lstm_1 (a_lstm)`: where the layer is and what the model calls it.
fn describe(layer: &KerasLayer) -> String {
    if layer.name.is_empty() || layer.name == layer.path {
        format!("layer `{}`", layer.path)
    } else {
        format!("layer `{}` ({})", layer.path, layer.name)
    }
}

/// The Keras class of a cell kind, for messages.
fn kind_name(cell: CellKind) -> &'static str {
    match cell {
        CellKind::Lstm => "an LSTM",
        CellKind::Gru => "a GRU (reset_after=True)",
        CellKind::GruResetBefore => "a GRU (reset_after=False)",
        CellKind::RnnTanh | CellKind::RnnRelu => "a SimpleRNN",
    }
}

/// Keras' gate order → torch's: block `k` of torch's is block `perm[k]` of Keras'.
fn gate_order(cell: CellKind) -> &'static [usize] {
    match cell {
        // z, r, h → r, z, n.
        CellKind::Gru | CellKind::GruResetBefore => &[1, 0, 2],
        // i, f, c, o is torch's i, f, g, o already.
        CellKind::Lstm => &[0, 1, 2, 3],
        CellKind::RnnTanh | CellKind::RnnRelu => &[0],
    }
}

/// Keras `[in, G·H]` → torch `[G·H, in]`, gate blocks (`h` columns each) reordered by `perm`.
fn transpose_gates(keras: &Tensor<f32>, h: usize, perm: &[usize]) -> Tensor<f32> {
    let (rows, cols) = (keras.shape()[0], keras.shape()[1]);
    let h = if perm.len() == 1 { cols } else { h };
    let src = keras.data();
    let mut out = vec![0.0; rows * cols];
    for (g, &from) in perm.iter().enumerate() {
        for j in 0..h {
            let (dst_row, src_col) = (g * h + j, from * h + j);
            for i in 0..rows {
                out[dst_row * rows + i] = src[i * cols + src_col];
            }
        }
    }
    Tensor::from_vec(&[cols, rows], out).expect("same element count")
}

/// A bias vector `[G·H]` with its gate blocks reordered by `perm`.
fn reorder_bias(keras: &[f32], h: usize, perm: &[usize]) -> Tensor<f32> {
    let out: Vec<f32> = perm
        .iter()
        .flat_map(|&from| keras[from * h..(from + 1) * h].iter().copied())
        .collect();
    Tensor::from_vec(&[out.len()], out).expect("1-D")
}

/// One Keras recurrent layer's variables as rnnkit's cell parameters.
fn cell_params(
    cell: CellKind,
    h: usize,
    kernel: &Tensor<f32>,
    recurrent_kernel: &Tensor<f32>,
    bias: Option<&Tensor<f32>>,
) -> CellParams<f32> {
    let perm = gate_order(cell);
    let gh = cell.gates() * h;
    let zeros = vec![0.0; gh];
    let b = bias.map_or(&zeros[..], |b| b.data());
    // Keras' one bias acts where torch's bias_ih does; bias_hh stays zero. A
    // reset-after GRU has two rows: the input side's and the recurrent side's.
    let (b_ih, b_hh) = match cell {
        CellKind::Gru => (&b[..gh], Some(&b[gh..])),
        CellKind::GruResetBefore => (b, None),
        _ => (b, Some(&zeros[..])),
    };
    CellParams {
        w_ih: transpose_gates(kernel, h, perm),
        w_hh: transpose_gates(recurrent_kernel, h, perm),
        b_ih: reorder_bias(b_ih, h, perm),
        b_hh: b_hh.map(|b| reorder_bias(b, h, perm)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weight(shape: &[usize]) -> KerasWeight {
        KerasWeight {
            name: None,
            shape: shape.to_vec(),
        }
    }

    fn layer(path: &str, weights: &[&[usize]]) -> KerasLayer {
        let class = layer_counter(path).0;
        KerasLayer {
            path: format!("layers/{path}"),
            name: path.to_string(),
            class: Some(class),
            weights: weights.iter().map(|s| weight(s)).collect(),
        }
    }

    fn plan(layers: &[KerasLayer], vocab: usize) -> Result<KerasPlan> {
        KerasPlan::new(
            Path::new("m.weights.h5"),
            layers,
            false,
            vocab,
            CellKind::RnnTanh,
        )
    }

    fn message(r: Result<KerasPlan>) -> String {
        r.expect_err("refused").to_string()
    }

    #[test]
    fn keras3_order_comes_from_roles_and_counters() {
        let layers = [
            layer("dense", &[&[4, 9], &[9]]),
            layer("lstm_10", &[&[4, 16], &[4, 16], &[16]]),
            layer("dropout", &[]),
            layer("lstm", &[&[3, 16], &[4, 16], &[16]]),
            layer("lstm_2", &[&[4, 16], &[4, 16], &[16]]),
            layer("embedding", &[&[9, 3]]),
        ];
        let p = plan(&layers, 9).unwrap();
        assert_eq!(p.layer_order(), [5, 3, 4, 1, 0]);
        assert_eq!(p.config().cell, CellKind::Lstm);
        assert_eq!((p.config().embed_size, p.config().num_layers), (3, 3));
    }

    #[test]
    fn gru_forms_come_from_the_bias_shape() {
        let after = [
            layer("gru", &[&[9, 6], &[2, 6], &[2, 6]]),
            layer("dense", &[&[2, 9], &[9]]),
        ];
        assert_eq!(plan(&after, 9).unwrap().config().cell, CellKind::Gru);
        assert_eq!(plan(&after, 9).unwrap().config().embed_size, 0);
        let before = [
            layer("gru", &[&[9, 6], &[2, 6], &[6]]),
            layer("dense", &[&[2, 9], &[9]]),
        ];
        assert_eq!(
            plan(&before, 9).unwrap().config().cell,
            CellKind::GruResetBefore
        );
    }

    #[test]
    fn what_is_not_a_char_model_is_refused_saying_why() {
        let dense = || layer("dense", &[&[2, 9], &[9]]);
        let lstm = || layer("lstm", &[&[9, 8], &[2, 8], &[8]]);
        let m = message(plan(&[lstm(), dense(), layer("dense_1", &[&[9, 9]])], 9));
        assert!(m.contains("one Dense"), "{m}");
        let m = message(plan(&[lstm(), layer("conv1d", &[&[3, 9, 9]]), dense()], 9));
        assert!(m.contains("class conv1d"), "{m}");
        let m = message(plan(
            &[lstm(), layer("gru_1", &[&[2, 6], &[2, 6], &[6]]), dense()],
            9,
        ));
        assert!(m.contains("one kind"), "{m}");
        let m = message(plan(&[layer("embedding", &[&[10, 9]]), lstm(), dense()], 9));
        assert!(m.contains("10 rows") && m.contains("StringLookup"), "{m}");
        let m = message(plan(&[lstm(), layer("dense", &[&[2, 8], &[8]])], 9));
        assert!(m.contains("[2, 9]"), "{m}");
        let m = message(plan(
            &[layer("lstm", &[&[9, 8], &[2, 6], &[8]]), dense()],
            9,
        ));
        assert!(m.contains("do not fit"), "{m}");
        let m = message(plan(&[layer("gru", &[&[9, 6], &[2, 6]]), dense()], 9));
        assert!(m.contains("reset_after"), "{m}");
        let m = message(plan(&[layer("activation", &[]), lstm(), dense()], 9));
        assert!(m.contains("Activation"), "{m}");
        let m = message(plan(
            &[layer("lstm", &[&[7, 8], &[2, 8], &[8]]), dense()],
            9,
        ));
        assert!(m.contains("one-hot"), "{m}");
    }

    #[test]
    fn keras2_names_say_what_each_layer_is() {
        let named = |name: &str, weights: &[(&str, &[usize])]| KerasLayer {
            path: name.to_string(),
            name: name.to_string(),
            class: None,
            weights: weights
                .iter()
                .map(|(n, s)| KerasWeight {
                    name: Some(format!("{name}/{n}:0")),
                    shape: s.to_vec(),
                })
                .collect(),
        };
        let layers = [
            named("emb", &[("embeddings", &[9, 3])]),
            named("drop", &[]),
            named(
                "rnn",
                &[
                    ("kernel", &[3, 4]),
                    ("recurrent_kernel", &[4, 4]),
                    ("bias", &[4]),
                ],
            ),
            named("out", &[("kernel", &[4, 9]), ("bias", &[9])]),
        ];
        let p = KerasPlan::new(Path::new("m.h5"), &layers, true, 9, CellKind::RnnRelu).unwrap();
        assert_eq!(p.config().cell, CellKind::RnnRelu);
        assert_eq!(p.layer_order(), [0, 2, 3]);
        let swapped = [layers[0].clone(), layers[3].clone(), layers[2].clone()];
        let m = message(KerasPlan::new(
            Path::new("m.h5"),
            &swapped,
            true,
            9,
            CellKind::RnnTanh,
        ));
        assert!(m.contains("the file has the layers"), "{m}");
    }

    #[test]
    fn gates_move_to_torch_order_and_kernels_transpose() {
        // GRU, H = 1, input 2: kernel [2, 3] columns z, r, h.
        let k = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let t = transpose_gates(&k, 1, gate_order(CellKind::Gru));
        // torch rows r, z, n = Keras columns 1, 0, 2.
        assert_eq!(t.shape(), [3, 2]);
        assert_eq!(t.data(), [2., 5., 1., 4., 3., 6.]);
        let rk = Tensor::from_vec(&[1, 3], vec![7., 8., 9.]).unwrap();
        let bias = Tensor::from_vec(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        let p = cell_params(CellKind::Gru, 1, &k, &rk, Some(&bias));
        assert_eq!(p.w_hh.data(), [8., 7., 9.]);
        assert_eq!(p.b_ih.data(), [2., 1., 3.]);
        assert_eq!(p.b_hh.unwrap().data(), [5., 4., 6.]);
        let lstm = cell_params(
            CellKind::Lstm,
            1,
            &Tensor::from_vec(&[1, 4], vec![1., 2., 3., 4.]).unwrap(),
            &Tensor::from_vec(&[1, 4], vec![5., 6., 7., 8.]).unwrap(),
            None,
        );
        assert_eq!(lstm.w_ih.data(), [1., 2., 3., 4.]);
        assert_eq!(lstm.b_hh.unwrap().data(), [0.; 4]);
    }
}
