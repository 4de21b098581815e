//! `rnnkit eval`: cross-entropy of a checkpoint on a text, batch 1, state carried.

use anyhow::Context;
use clap::Args;
use rnnkit::model::CharLm;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `rnnkit eval`.
#[derive(Args)]
pub struct EvalOpts {
    /// Checkpoint to evaluate (rnnkit's or a PyTorch CharLM state dict).
    #[arg(long)]
    checkpoint: PathBuf,
    /// UTF-8 text to score: predicts characters 2..N from a zero state.
    #[arg(long)]
    text: PathBuf,
    /// Print one JSON object: chars, nats_per_char, bits_per_char.
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Characters fed per forward call: bounds the activations kept in memory.
const CHUNK: usize = 1024;

pub fn run(o: EvalOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let (mut model, _) = CharLm::load(&o.checkpoint)?;
    let text = rnnkit::data::read_text(&o.text)?;
    let (chars, nats) = rnnkit::task::char_lm::eval_text(&mut model, &text, CHUNK)
        .with_context(|| format!("scoring {}", o.text.display()))?;
    let bits = nats / std::f64::consts::LN_2;
    if o.json {
        println!(
            "{}",
            serde_json::json!({ "chars": chars, "nats_per_char": nats, "bits_per_char": bits })
        );
    } else {
        println!("chars predicted: {chars}");
        println!("cross-entropy:   {nats:.4} nats/char = {bits:.4} bits/char");
    }
    Ok(ExitCode::SUCCESS)
}
