//! Character-level language model: characters → embedding → recurrent stack →
//! linear → softmax, stored as the PyTorch module
//! `CharLM(embed = nn.Embedding, rnn = nn.RNN/LSTM/GRU(batch_first=True), head = nn.Linear)`.

use crate::cell::CellKind;
use crate::checkpoint::{self, CheckpointSource, TensorFile};
use crate::data::Vocab;
use crate::error::{Error, Result};
use crate::kernel::{with_precision, Precision};
use crate::layer::{
    Embedding, Kept, Linear, ParamVisitor, Parameters, Recurrent, RecurrentConfig, RecurrentState,
};
use crate::loss::softmax_cross_entropy;
use crate::rng::Rng;
use crate::tensor::{overwritten, Tensor};
use crate::train::GradientSink;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Metadata key of the cell kind.
pub const META_CELL: &str = "rnnkit.cell";
/// Metadata key of the vocabulary (JSON array of one-character strings).
pub const META_VOCAB: &str = "rnnkit.vocab";

/// Sizes of a [`CharLm`]; the vocabulary size comes from its [`Vocab`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CharLmConfig {
    /// The recurrence.
    pub cell: CellKind,
    /// Embedding width E; 0 feeds one-hot vectors to the first layer (no embedding).
    pub embed_size: usize,
    /// Hidden width H of every recurrent layer.
    pub hidden_size: usize,
    /// Number of stacked recurrent layers.
    pub num_layers: usize,
    /// Dropout between recurrent layers, in training.
    pub dropout: f32,
}

impl CharLmConfig {
    fn recurrent(&self, vocab: usize) -> RecurrentConfig {
        let input = if self.embed_size == 0 {
            vocab
        } else {
            self.embed_size
        };
        RecurrentConfig::new(self.cell, input, self.hidden_size)
            .with_layers(self.num_layers)
            .with_dropout(self.dropout)
    }

    /// Fails with a message naming the field if a value is impossible.
    pub fn validate(&self) -> Result<()> {
        if self.embed_size > crate::limits::MAX_WIDTH {
            return Err(Error::Config(format!(
                "embed_size must be at most {}, got {}",
                crate::limits::MAX_WIDTH,
                self.embed_size
            )));
        }
        self.recurrent(1).validate()
    }

    /// Bytes that training needs, roughly: parameters with their gradients and Adam
    /// moments, plus the activations one `batch × seq_len` batch keeps for backward.
    pub fn training_memory(&self, vocab: usize, batch: usize, seq_len: usize) -> u64 {
        let (e, h, g, l, v) = (
            self.embed_size as u64,
            self.hidden_size as u64,
            self.cell.gates() as u64,
            self.num_layers as u64,
            vocab as u64,
        );
        let params = v * e
            + (0..l)
                .map(|k| (if k == 0 { e } else { h } + h + 2) * g * h)
                .sum::<u64>()
            + (h + 1) * v;
        // Per layer and token: gates twice (values and gradients), a few H-wide
        // buffers and the layer input; then embeddings and logits with their gradients.
        // Saturating: the sizes may come from a file and are checked after this.
        let per_token = l
            .saturating_mul(2 * g * h + 6 * h + e.max(h))
            .saturating_add(2 * e + 2 * v);
        let activations = (batch as u64)
            .saturating_mul(seq_len as u64)
            .saturating_mul(per_token);
        4u64.saturating_mul(params.saturating_mul(4).saturating_add(activations))
    }

    /// Multiply-adds ×2 per predicted token of one forward pass (embedding lookups excluded).
    pub fn flops_per_token(&self, vocab: usize) -> u64 {
        let (e, h, g) = (
            self.embed_size as u64,
            self.hidden_size as u64,
            self.cell.gates() as u64,
        );
        let rnn: u64 = (0..self.num_layers as u64)
            .map(|l| 2 * (if l == 0 { e } else { h } + h) * g * h)
            .sum();
        rnn + 2 * h * vocab as u64
    }

    /// Multiply-adds ×2 of one training step on `batch × seq_len` tokens (forward and
    /// backward) as this library runs it: 3 × [`Self::flops_per_token`] per token,
    /// except the first layer's three input products (the projection, its weight
    /// gradient, the embedding's gradient), which run over the `vocab` rows of the
    /// embedding (per-id projections and sums) instead of a row per token.
    pub fn executed_flops_per_step(&self, vocab: usize, batch: usize, seq_len: usize) -> u64 {
        let rows = (batch as u64).saturating_mul(seq_len as u64);
        let per_row = 3 * 2 * (self.embed_size * self.cell.gates() * self.hidden_size) as u64;
        let counted = (3 * self.flops_per_token(vocab)).saturating_mul(rows);
        counted - per_row.saturating_mul(rows.saturating_sub(vocab as u64))
    }
}

/// The model, its gradients and its vocabulary.
#[derive(Clone, Debug)]
pub struct CharLm {
    /// `embed.weight [V, E]`; `None` for one-hot inputs (embed size 0), where
    /// `rnn.weight_ih_l0` is `[G·H, V]` as in torch's `nn.LSTM(V, H)` on one-hot vectors.
    pub embed: Option<Embedding<f32>>,
    /// `rnn.*`, torch names.
    pub rnn: Recurrent<f32>,
    /// `head.weight [V, H·D]`, `head.bias [V]`.
    pub head: Linear<f32>,
    vocab: Vocab,
    precision: Precision,
    work: Work,
}

/// The buffers of a training step, kept between steps (they are tens of MB for
/// large models, and allocating them afresh cost page faults on every step).
#[derive(Clone, Debug, Default)]
struct Work {
    /// The recurrent stack's output `[T, B, H·D]`, final state and gradients.
    rnn: Kept<f32>,
    /// The head's logits `[T·B, V]`.
    logits: Vec<f32>,
    /// Their gradient.
    dlogits: Vec<f32>,
    /// The gradient of the stack's output.
    dy: Tensor<f32>,
}

impl CharLm {
    /// A freshly initialised model (torch.nn's default initialisation for every part).
    pub fn new(config: &CharLmConfig, vocab: Vocab, rng: &mut Rng) -> Result<Self> {
        config.validate()?;
        let embed =
            (config.embed_size > 0).then(|| Embedding::new(vocab.len(), config.embed_size, rng));
        let rnn = config.recurrent(vocab.len()).init(rng)?;
        let head = Linear::new(config.hidden_size, vocab.len(), rng);
        Ok(CharLm {
            embed,
            rnn,
            head,
            vocab,
            precision: Precision::F32,
            work: Work::default(),
        })
    }

    /// The sizes (dropout as configured for training).
    pub fn config(&self) -> CharLmConfig {
        let r = self.rnn.config();
        CharLmConfig {
            cell: r.cell,
            embed_size: self.embed.as_ref().map_or(0, |e| e.dim()),
            hidden_size: r.hidden_size,
            num_layers: r.num_layers,
            dropout: r.dropout,
        }
    }

    /// Sets the dropout used by [`CharLm::train_step`].
    pub fn set_dropout(&mut self, dropout: f32) -> Result<()> {
        let cfg = self.rnn.config().clone().with_dropout(dropout);
        cfg.validate()?;
        self.rnn = Recurrent::from_params(cfg, self.rnn.cells().to_vec())?;
        Ok(())
    }

    /// Sets the arithmetic of the matrix products of [`CharLm::train_step`],
    /// [`CharLm::loss`] and [`CharLm::next_logits`] (f32 unless set).
    pub fn set_precision(&mut self, precision: Precision) {
        self.precision = precision;
    }

    /// The arithmetic of the matrix products.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The vocabulary.
    pub fn vocab(&self) -> &Vocab {
        &self.vocab
    }

    /// Runs the model over `inputs` into `self.work` (`y`, the logits and the
    /// final state).
    fn logits(
        &mut self,
        inputs: &[usize],
        steps: usize,
        batch: usize,
        init: Option<&RecurrentState<f32>>,
        rng: Option<&mut Rng>,
    ) -> Result<()> {
        with_precision(self.precision, || {
            // The count of inputs is checked by the recurrent layer.
            self.check_in_vocab("input", inputs)?;
            let n = steps * batch;
            let Work { rnn, logits, .. } = &mut self.work;
            let shape = (steps, batch);
            match &self.embed {
                Some(e) => self.rnn.forward_embedded_into(
                    &e.weight,
                    inputs,
                    shape,
                    None,
                    init,
                    rng,
                    rnn.forward(),
                )?,
                None => {
                    let into = rnn.forward();
                    self.rnn
                        .forward_one_hot_into(inputs, shape, None, init, rng, into)?
                }
            };
            let logits = overwritten(logits, n * self.vocab.len());
            self.head.forward(rnn.y.data(), n, logits);
            Ok(())
        })
    }

    fn check_targets(&self, targets: &[usize], n: usize) -> Result<()> {
        if targets.len() != n {
            return Err(Error::Shape(format!(
                "{} targets given for {n} inputs",
                targets.len()
            )));
        }
        self.check_in_vocab("target", targets)
    }

    fn check_in_vocab(&self, what: &str, ids: &[usize]) -> Result<()> {
        match ids.iter().position(|&t| t >= self.vocab.len()) {
            Some(k) => Err(Error::Input(format!(
                "{what} id {} at position {k} is outside the vocabulary of {}",
                ids[k],
                self.vocab.len()
            ))),
            None => Ok(()),
        }
    }

    /// Forward with dropout, mean cross-entropy of `targets`, and backward: adds the
    /// gradients of that mean loss to every parameter. `inputs` and `targets` are
    /// time-major `[T, B]`. Returns the loss (nats per character) and the final state,
    /// from which the next batch may continue (gradients stop at the batch boundary);
    /// the model keeps that state (and every buffer of the step) until the next step,
    /// so a warmed-up step allocates nothing.
    pub fn train_step(
        &mut self,
        inputs: &[usize],
        targets: &[usize],
        steps: usize,
        batch: usize,
        init: Option<&RecurrentState<f32>>,
        rng: &mut Rng,
    ) -> Result<(f64, &RecurrentState<f32>)> {
        self.train_step_with(inputs, targets, steps, batch, init, rng, &mut |_| {})
    }

    /// [`CharLm::train_step`], handing each group of finished gradients to `ready`
    /// as the backward pass goes (the head's, then each recurrent layer's from the
    /// top, then the embedding's), for data-parallel training to sum meanwhile.
    #[allow(clippy::too_many_arguments)]
    pub fn train_step_with(
        &mut self,
        inputs: &[usize],
        targets: &[usize],
        steps: usize,
        batch: usize,
        init: Option<&RecurrentState<f32>>,
        rng: &mut Rng,
        ready: &mut GradientSink<'_>,
    ) -> Result<(f64, &RecurrentState<f32>)> {
        let n = steps * batch;
        self.check_targets(targets, n)?;
        self.logits(inputs, steps, batch, init, Some(rng))?;
        let Work {
            rnn,
            logits,
            dlogits,
            dy,
        } = &mut self.work;
        let dlogits = overwritten(dlogits, logits.len());
        let loss = softmax_cross_entropy(logits, targets, self.vocab.len(), Some(dlogits));
        dy.reshape_overwritten(rnn.y.shape());
        with_precision(self.precision, || -> Result<()> {
            // Writes every element of dy.
            self.head
                .backward(rnn.y.data(), dlogits, n, Some(dy.data_mut()));
            ready(&[&self.head.grad_weight, &self.head.grad_bias]);
            // The embedded forward pass hands back the embedding's gradient directly.
            self.rnn.backward_into(dy, None, ready, rnn.backward())?;
            let Some(embed) = &mut self.embed else {
                return Ok(());
            };
            embed
                .grad_weight
                .data_mut()
                .iter_mut()
                .zip(rnn.dx.data())
                .for_each(|(g, &d)| *g += d);
            ready(&[&embed.grad_weight]);
            Ok(())
        })?;
        Ok((loss, &self.work.rnn.fin))
    }

    /// Mean cross-entropy of `targets` (nats per character) without dropout or gradients.
    pub fn loss(
        &mut self,
        inputs: &[usize],
        targets: &[usize],
        steps: usize,
        batch: usize,
        init: Option<&RecurrentState<f32>>,
    ) -> Result<(f64, RecurrentState<f32>)> {
        self.check_targets(targets, steps * batch)?;
        self.logits(inputs, steps, batch, init, None)?;
        Ok((
            softmax_cross_entropy(&self.work.logits, targets, self.vocab.len(), None),
            self.work.rnn.fin.clone(),
        ))
    }

    /// Logits `[T, B, V]` (time-major) of `inputs [T, B]` from `init` (zeros when
    /// `None`), without dropout, and the final state.
    pub fn batch_logits(
        &mut self,
        inputs: &[usize],
        steps: usize,
        batch: usize,
        init: Option<&RecurrentState<f32>>,
    ) -> Result<(Vec<f32>, RecurrentState<f32>)> {
        self.logits(inputs, steps, batch, init, None)?;
        Ok((self.work.logits.clone(), self.work.rnn.fin.clone()))
    }

    /// Feeds `ids` to one sequence (batch 1) from `state`; returns the logits
    /// of the character after the last id, and the new state.
    pub fn next_logits(
        &mut self,
        ids: &[usize],
        state: Option<&RecurrentState<f32>>,
    ) -> Result<(Vec<f32>, RecurrentState<f32>)> {
        if ids.is_empty() {
            return Err(Error::Input("no character to feed".into()));
        }
        self.logits(ids, ids.len(), 1, state, None)?;
        let v = self.vocab.len();
        let last = self.work.logits[(ids.len() - 1) * v..].to_vec();
        Ok((last, self.work.rnn.fin.clone()))
    }

    /// Writes the model as the PyTorch `CharLM` state dict plus `extra` tensors and
    /// metadata (training state), atomically.
    pub fn save(
        &self,
        path: &Path,
        extra: &[(String, Tensor<f32>)],
        metadata: HashMap<String, String>,
    ) -> Result<()> {
        let mut meta = metadata;
        meta.insert(META_CELL.into(), self.rnn.config().cell.name().into());
        meta.insert(META_VOCAB.into(), self.vocab.to_json());
        let named = checkpoint::named_params(self, "");
        let refs: Vec<(String, &Tensor<f32>)> = named
            .iter()
            .chain(extra)
            .map(|(n, t)| (n.clone(), t))
            .collect();
        checkpoint::save(path, &refs, &meta)
    }

    /// Reads a checkpoint written by [`CharLm::save`] or by PyTorch for the `CharLM`
    /// module; checks the cell, the vocabulary and that every shape fits. Returns the
    /// open file too, for any training state in it.
    pub fn load(source: impl CheckpointSource) -> Result<(CharLm, TensorFile)> {
        let file = source.open()?;
        check_charlm_names(&file)?;
        let meta = |key: &str, what: &str| {
            file.metadata().get(key).ok_or_else(|| {
                file.error(format!(
                    "metadata `{key}` ({what}) is missing: the tensors look like a PyTorch CharLM \
                     state dict, but an rnnkit checkpoint also names its cell and vocabulary. \
                     Save it with them: safetensors.torch.save_file(sd, path, metadata=\
                     {{\"{META_CELL}\": \"{}\", \"{META_VOCAB}\": json.dumps(list(chars))}}) \
                     where the cell is one of rnn_tanh, rnn_relu, lstm, gru, gru_reset_before \
                     and chars are the model's characters in token-id order \
                     (sorted(set(text)) if built as `rnnkit train` builds it), \
                     or convert it with `rnnkit import`",
                    guess_cell(&file)
                ))
            })
        };
        let cell_name = meta(META_CELL, "the cell")?;
        let cell = CellKind::from_name(cell_name).ok_or_else(|| {
            let known: Vec<&str> = CellKind::ALL.iter().map(|k| k.name()).collect();
            file.error(format!(
                "metadata `{META_CELL}` is {cell_name:?}; expected one of {}",
                known.join(", ")
            ))
        })?;
        let vocab = Vocab::from_json(meta(META_VOCAB, "the vocabulary")?)
            .map_err(|e| file.error(format!("metadata `{META_VOCAB}`: {e}")))?;
        let model = CharLm::from_state_dict(&file, cell, vocab)?;
        Ok((model, file))
    }

    /// Builds a model from the PyTorch `CharLM` tensors of `file` with the cell and
    /// vocabulary given (not read from the metadata): sizes come from the shapes, and
    /// every shape is checked against the others and the vocabulary. Other tensors are ignored.
    pub fn from_state_dict(file: &TensorFile, cell: CellKind, vocab: Vocab) -> Result<CharLm> {
        check_charlm_names(file)?;
        // Every shape is checked against the others from the header before anything
        // is allocated: sizes read from one tensor never size an allocation that the
        // file's other tensors do not back.
        let v = vocab.len();
        // Without `embed.weight` the model reads one-hot vectors (`--embed 0`).
        let embed_dim = match file.shape("embed.weight") {
            None => None,
            Some(shape) => {
                let [rows, dim] = shape[..] else {
                    return Err(file.error(format!(
                        "`embed.weight` must be [vocab, dim], got {shape:?}"
                    )));
                };
                if rows != v {
                    return Err(file.error(format!(
                        "`embed.weight` has {rows} rows but the vocabulary has {v} characters"
                    )));
                }
                file.expect_float("embed.weight", &shape)?;
                Some(dim)
            }
        };
        let (rnn_cfg, rnn_params) = checkpoint::recurrent_config(file, "rnn.", cell)?;
        let (width, what) = match embed_dim {
            Some(e) => (e, "`embed.weight` gives"),
            None => (
                v,
                "one-hot inputs (no `embed.weight`) over the vocabulary give",
            ),
        };
        if rnn_cfg.input_size != width {
            return Err(file.error(format!(
                "`rnn.weight_ih_l0` takes {} inputs but {what} {width}",
                rnn_cfg.input_size,
            )));
        }
        let out = rnn_cfg.output_size();
        file.expect_float("head.weight", &[v, out])?;
        file.expect_float("head.bias", &[v])?;
        // Each of these is a tensor of the file, so the products fit.
        let params = (v * embed_dim.unwrap_or(0) + v * out + v) as u64 + rnn_params;
        checkpoint::check_model_memory(file, params)?;
        let embed = match embed_dim {
            None => None,
            Some(_) => Some(
                Embedding::from_weight(file.get("embed.weight", None)?)
                    .map_err(|e| file.error(e.to_string()))?,
            ),
        };
        let rnn = Recurrent::from_state_dict(file, "rnn.", cell)?;
        let head = Linear::from_params(
            file.get("head.weight", Some(&[v, out]))?,
            file.get("head.bias", Some(&[v]))?,
        )?;
        Ok(CharLm {
            embed,
            rnn,
            head,
            vocab,
            precision: Precision::F32,
            work: Work::default(),
        })
    }
}

impl CharLm {
    /// Assembles a model from built layers (an importer's end), checking that the
    /// embedding, the stack's input and the head fit each other and the vocabulary.
    pub fn from_parts(
        embed: Option<Embedding<f32>>,
        rnn: Recurrent<f32>,
        head: Linear<f32>,
        vocab: Vocab,
    ) -> Result<CharLm> {
        let v = vocab.len();
        let r = rnn.config();
        let width = match &embed {
            Some(e) if e.vocab() != v => {
                return Err(Error::Shape(format!(
                    "the embedding has {} rows but the vocabulary has {v} characters",
                    e.vocab()
                )))
            }
            Some(e) => e.dim(),
            None => v,
        };
        if r.input_size != width {
            return Err(Error::Shape(format!(
                "the first recurrent layer takes {} inputs but gets {width}",
                r.input_size
            )));
        }
        if head.in_features() != r.output_size() || head.out_features() != v {
            return Err(Error::Shape(format!(
                "the output layer maps {} → {} but the model needs {} → {v}",
                head.in_features(),
                head.out_features(),
                r.output_size()
            )));
        }
        Ok(CharLm {
            embed,
            rnn,
            head,
            vocab,
            precision: Precision::F32,
            work: Work::default(),
        })
    }
}

/// The tensors every `CharLM` state dict has, whatever its size.
const CHARLM_ANCHORS: [&str; 3] = ["rnn.weight_ih_l0", "head.weight", "head.bias"];

/// Refuses a file without the `CharLM` tensor names, listing the names expected
/// against those found, with a hint when the names differ only by a prefix.
fn check_charlm_names(file: &TensorFile) -> Result<()> {
    let missing: Vec<String> = CHARLM_ANCHORS
        .iter()
        .filter(|n| file.shape(n).is_none())
        .map(|n| format!("`{n}`"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names = file.names();
    let mut hint = String::new();
    if let Some(found) = names.iter().find(|n| n.ends_with("weight_ih_l0")) {
        let prefix = &found[..found.len() - "weight_ih_l0".len()];
        if prefix != "rnn." {
            hint = format!(
                "; the recurrent weights are under `{prefix}`: rename the keys before saving \
                 (e.g. {{k.replace('{prefix}', 'rnn.', 1): v for k, v in sd.items()}}), and the \
                 embedding and output layer to `embed.` and `head.`"
            );
        }
    }
    Err(file.error(format!(
        "not a PyTorch CharLM state dict: {} missing. Expected embed.weight [V, E] (none for one-hot inputs); \
         rnn.weight_ih_l{{k}}, rnn.weight_hh_l{{k}}, rnn.bias_ih_l{{k}}, rnn.bias_hh_l{{k}} \
         for each layer k (`_reverse` for a backward direction); head.weight [V, H]; \
         head.bias [V]. The file has {}{hint}",
        missing.join(", "),
        file.describe_tensors()
    )))
}

/// The cell a state dict's shapes suggest, for a message: `W_hh` is `[G·H, H]`.
fn guess_cell(file: &TensorFile) -> &'static str {
    let gates = match file.shape("rnn.weight_hh_l0").as_deref() {
        Some(&[gh, h]) if h > 0 => gh / h,
        _ => 0,
    };
    let has_bias_hh = file.shape("rnn.bias_hh_l0").is_some();
    match gates {
        4 => "lstm",
        3 if has_bias_hh => "gru",
        3 => "gru_reset_before",
        _ => "rnn_tanh",
    }
}

impl Parameters<f32> for CharLm {
    /// Names as the PyTorch module: `embed.weight`, `rnn.weight_ih_l0`, …, `head.bias`.
    fn visit_params(&self, f: &mut dyn FnMut(&str, &Tensor<f32>)) {
        if let Some(e) = &self.embed {
            f("embed.weight", &e.weight);
        }
        self.rnn.visit_params(&mut |n, t| {
            crate::layer::with_name(format_args!("rnn.{n}"), |n| f(n, t))
        });
        f("head.weight", &self.head.weight);
        f("head.bias", &self.head.bias);
    }

    fn visit_params_mut(&mut self, f: &mut ParamVisitor<'_, f32>) {
        if let Some(e) = &mut self.embed {
            f("embed.weight", &mut e.weight, &mut e.grad_weight);
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
