//! `rnnkit import`: a PyTorch CharLM state dict (safetensors) plus its cell and
//! vocabulary → an rnnkit checkpoint that `sample` and `eval` accept.

use anyhow::Context;
use clap::{ArgGroup, Args};
use rnnkit::checkpoint::{self, TensorFile, LISTED_NAMES};
use rnnkit::data::Vocab;
use rnnkit::model::CharLm;
use rnnkit::CellKind;
use std::collections::HashMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `rnnkit import`.
#[derive(Args)]
#[command(group(ArgGroup::new("vocab").required(true).args(["vocab_text", "vocab_json"])))]
pub struct ImportOpts {
    /// The state dict of the PyTorch CharLM module, saved with safetensors.torch.save_file
    /// (names embed.weight, rnn.weight_ih_l0, …, head.bias; F32, F64, F16 or BF16).
    #[arg(long)]
    state_dict: PathBuf,
    /// The training text: the vocabulary is its distinct characters, sorted, as `rnnkit train` builds it.
    #[arg(long)]
    vocab_text: Option<PathBuf>,
    /// The vocabulary as a JSON array of one-character strings, index = token id.
    #[arg(long)]
    vocab_json: Option<String>,
    /// The recurrence: rnn_tanh, rnn_relu, lstm, gru or gru_reset_before.
    #[arg(long, value_parser = parse_cell)]
    cell: CellKind,
    /// Checkpoint to write (atomically).
    #[arg(long)]
    out: PathBuf,
}

fn parse_cell(s: &str) -> Result<CellKind, String> {
    CellKind::from_name(s).ok_or_else(|| {
        let known: Vec<&str> = CellKind::ALL.iter().map(|k| k.name()).collect();
        format!("expected one of {}", known.join(", "))
    })
}

pub fn run(o: ImportOpts) -> anyhow::Result<ExitCode> {
    let vocab = match (&o.vocab_text, &o.vocab_json) {
        (Some(p), _) => {
            let text = rnnkit::data::read_text(p)
                .with_context(|| format!("--vocab-text {}", p.display()))?;
            Vocab::from_text(&text)?
        }
        (None, Some(json)) => Vocab::from_json(json).context("--vocab-json")?,
        (None, None) => unreachable!("clap requires one of them"),
    };
    let file = TensorFile::open(&o.state_dict)?;
    let model = CharLm::from_state_dict(&file, o.cell, vocab)
        .with_context(|| format!("--state-dict as a {} CharLM", o.cell))?;
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
            o.state_dict.display(),
            extra.len(),
            model.config().num_layers,
            o.cell,
            shown.join(", "),
            if extra.len() > LISTED_NAMES {
                ", …"
            } else {
                ""
            },
            used.join(", ")
        );
    }
    model.save(&o.out, &[], HashMap::new())?;
    let c = model.config();
    writeln!(
        std::io::stdout(),
        "wrote {}: {} × {} layers of {} (embedding {}), vocabulary of {} characters",
        o.out.display(),
        c.cell,
        c.num_layers,
        c.hidden_size,
        c.embed_size,
        model.vocab().len()
    )?;
    Ok(ExitCode::SUCCESS)
}
