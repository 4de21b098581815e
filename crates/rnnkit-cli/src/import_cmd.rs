//! `rnnkit import`: a PyTorch CharLM state dict (safetensors) plus its cell and
//! vocabulary, or a Keras char model's weights file plus its vocabulary → an rnnkit
//! checkpoint that `sample` and `eval` accept.

use anyhow::Context;
use clap::{ArgGroup, Args, ValueEnum};
use rnnkit::checkpoint::{self, TensorFile, LISTED_NAMES};
use rnnkit::data::Vocab;
use rnnkit::model::CharLm;
use rnnkit::CellKind;
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `rnnkit import`.
#[derive(Args)]
#[command(group(ArgGroup::new("vocab").required(true).args(["vocab_text", "vocab_json"])))]
#[command(group(ArgGroup::new("source").required(true).args(["state_dict", "keras"])))]
pub struct ImportOpts {
    /// The state dict of the PyTorch CharLM module, saved with safetensors.torch.save_file
    /// (names embed.weight, rnn.weight_ih_l0, …, head.bias; F32, F64, F16 or BF16).
    #[arg(long)]
    state_dict: Option<PathBuf>,
    /// Instead of --state-dict: the weights of a Keras model Embedding (optional) →
    /// SimpleRNN, LSTM or GRU layers → Dense, from model.save_weights("x.weights.h5")
    /// (Keras 3) or Keras 2's save_weights("x.h5"); the cell is read from the shapes.
    /// Needs rnnkit built with `--features keras`.
    #[arg(long)]
    keras: Option<PathBuf>,
    /// The training text: the vocabulary is its distinct characters, sorted, as `rnnkit train` builds it.
    #[arg(long)]
    vocab_text: Option<PathBuf>,
    /// The vocabulary as a JSON array of one-character strings, index = token id.
    #[arg(long)]
    vocab_json: Option<String>,
    /// The recurrence of --state-dict: rnn_tanh, rnn_relu, lstm, gru or gru_reset_before.
    #[arg(long, value_parser = parse_cell, required_unless_present = "keras", conflicts_with = "keras")]
    cell: Option<CellKind>,
    /// With --keras: the activation of SimpleRNN layers, which the file does not keep
    /// [default: tanh, Keras' own].
    #[arg(long, value_enum, conflicts_with = "state_dict")]
    activation: Option<Activation>,
    /// Checkpoint to write (atomically).
    #[arg(long)]
    out: PathBuf,
}

/// A Keras SimpleRNN's `activation`.
#[derive(Clone, Copy, ValueEnum)]
enum Activation {
    Tanh,
    Relu,
}

/// What to say when `--keras` is asked of a build without HDF5.
#[cfg(not(feature = "keras"))]
const NO_KERAS: &str = "--keras needs rnnkit built with HDF5 support: install the HDF5 \
library (Debian/Ubuntu: apt-get install libhdf5-dev) and rebuild with \
`cargo build --release --features keras`";

fn parse_cell(s: &str) -> Result<CellKind, String> {
    CellKind::from_name(s).ok_or_else(|| {
        let known: Vec<&str> = CellKind::ALL.iter().map(|k| k.name()).collect();
        format!("expected one of {}", known.join(", "))
    })
}

pub fn run(o: ImportOpts) -> anyhow::Result<ExitCode> {
    #[cfg(not(feature = "keras"))]
    if o.keras.is_some() {
        anyhow::bail!(NO_KERAS);
    }
    let vocab = match (&o.vocab_text, &o.vocab_json) {
        (Some(p), _) => {
            let text = rnnkit::data::read_text(p)
                .with_context(|| format!("--vocab-text {}", p.display()))?;
            Vocab::from_text(&text)?
        }
        (None, Some(json)) => Vocab::from_json(json).context("--vocab-json")?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let (model, from) = match (&o.state_dict, o.cell, &o.keras) {
        (Some(path), Some(cell), _) => (from_state_dict(path, cell, vocab)?, String::new()),
        (None, None, Some(path)) => {
            let simple_rnn = match o.activation.unwrap_or(Activation::Tanh) {
                Activation::Tanh => CellKind::RnnTanh,
                Activation::Relu => CellKind::RnnRelu,
            };
            from_keras(path, vocab, simple_rnn)?
        }
        _ => unreachable!("clap requires --state-dict with --cell, or --keras"),
    };
    model.save(&o.out, &[], HashMap::new())?;
    let c = model.config();
    writeln!(
        std::io::stdout(),
        "wrote {}: {} × {} layers of {} (embedding {}), vocabulary of {} characters{from}",
        o.out.display(),
        c.cell,
        c.num_layers,
        c.hidden_size,
        c.embed_size,
        model.vocab().len()
    )?;
    Ok(ExitCode::SUCCESS)
}

/// The model of a PyTorch CharLM state dict, refusing tensors that are not its own.
fn from_state_dict(path: &Path, cell: CellKind, vocab: Vocab) -> anyhow::Result<CharLm> {
    let file = TensorFile::open(path)?;
    let model = CharLm::from_state_dict(&file, cell, vocab)
        .with_context(|| format!("--state-dict as a {cell} CharLM"))?;
    // Every tensor must be one of the model's: a stray one means another module.
    let used: Vec<String> = checkpoint::named_params(&model, "")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let extra: Vec<String> = file
        .names()
        .into_iter()
        .filter(|n| !used.contains(n))
        .collect();
    if !extra.is_empty() {
        let shown: Vec<&str> = extra
            .iter()
            .take(LISTED_NAMES)
            .map(String::as_str)
            .collect();
        anyhow::bail!(
            "{}: {} tensors are not part of a {}-layer {} CharLM: {}{}; expected only {}",
            path.display(),
            extra.len(),
            model.config().num_layers,
            cell,
            shown.join(", "),
            if extra.len() > LISTED_NAMES {
                ", …"
            } else {
                ""
            },
            used.join(", ")
        );
    }
    Ok(model)
}

/// The model of a Keras weights file and, for the summary, the layers it came from
/// in the order used.
#[cfg(feature = "keras")]
fn from_keras(path: &Path, vocab: Vocab, simple_rnn: CellKind) -> anyhow::Result<(CharLm, String)> {
    use rnnkit::model::keras::KerasPlan;
    let file = crate::keras_h5::open(path)?;
    let plan = KerasPlan::new(path, &file.layers, file.ordered, vocab.len(), simple_rnn)?;
    let model = plan.build(&file.layers, vocab, &mut |l, w| file.read(l, w))?;
    let order: Vec<String> = plan
        .layer_order()
        .into_iter()
        .map(|i| {
            let l = &file.layers[i];
            if l.name == l.path {
                l.path.clone()
            } else {
                format!("{} ({})", l.path, l.name)
            }
        })
        .collect();
    Ok((
        model,
        format!("\nfrom the Keras layers {}", order.join(" → ")),
    ))
}

#[cfg(not(feature = "keras"))]
fn from_keras(_: &Path, _: Vocab, _: CellKind) -> anyhow::Result<(CharLm, String)> {
    anyhow::bail!(NO_KERAS)
}
