//! `rnnkit eval`: cross-entropy of a checkpoint on a text, batch 1, state carried.

use anyhow::Context;
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use rnnkit::data::UnknownPolicy;
use rnnkit::model::{CharLm, Weights};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `rnnkit eval`.
#[derive(Args)]
pub struct EvalOpts {
    /// Checkpoint to evaluate (rnnkit's or a PyTorch CharLM state dict).
    #[arg(long)]
    checkpoint: PathBuf,
    /// UTF-8 text to score: predicts characters 2..N from a zero state. Windows line
    /// endings (\r\n) are read as \n when the vocabulary has no \r.
    #[arg(long)]
    text: PathBuf,
    /// Characters the vocabulary lacks: `error` lists them all with their counts,
    /// `skip` leaves them out of the text (and the score), `replace` puts
    /// --replace-with in their place.
    #[arg(long, value_enum, default_value_t = Unknown::Error)]
    unknown: Unknown,
    /// The character `--unknown replace` puts in place of unknown ones (one of the
    /// vocabulary's) [default: ' ' when the vocabulary has it].
    #[arg(long)]
    replace_with: Option<char>,
    /// Print one JSON object: chars, nats_per_char, bits_per_char, unknown (the count
    /// of characters skipped or replaced).
    #[arg(long)]
    json: bool,
    /// Score with the weights `rnnkit sample --bf16` uses (one character at a time).
    #[arg(long)]
    bf16: bool,
    /// Score with the int8 weights of `rnnkit sample --int8` (one character at a time).
    #[arg(long, conflicts_with = "bf16")]
    int8: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// What `--unknown` does with characters outside the vocabulary.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Unknown {
    Error,
    Skip,
    Replace,
}

/// Characters fed per forward call: bounds the activations kept in memory.
const CHUNK: usize = 1024;

/// Texts longer than this many characters get a progress bar (on a terminal).
const BAR_MIN_CHARS: usize = 64 * CHUNK;

pub fn run(o: EvalOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let (mut model, _) = CharLm::load(&o.checkpoint)?;
    let text = rnnkit::data::read_text(&o.text)?;
    let policy = policy(&o, model.vocab())?;
    let (ids, report) = model
        .vocab()
        .encode_with(&text, policy)
        .map_err(|e| match policy {
            UnknownPolicy::Error => anyhow::anyhow!(
                "{e}; pass --unknown skip to leave them out of the score, or --unknown replace \
                 (with --replace-with C) to put a known character in their place"
            ),
            _ => e.into(),
        })
        .with_context(|| format!("--text {}", o.text.display()))?;
    let bar = if o.json || ids.len() < BAR_MIN_CHARS {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(ids.len().saturating_sub(1) as u64).with_style(
            ProgressStyle::with_template(
                "{bar:30.cyan/blue} {human_pos}/{human_len} chars | {per_sec:0} | ETA {eta}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        )
    };
    let progress = |n: usize| bar.inc(n as u64);
    let scored = match crate::sample_cmd::weights(o.bf16, o.int8) {
        Weights::F32 => rnnkit::task::char_lm::eval_ids(&mut model, &ids, CHUNK, progress),
        w => rnnkit::task::char_lm::eval_ids_stepped(&model, &ids, w, progress),
    };
    bar.finish_and_clear();
    let (chars, nats) = scored.with_context(|| format!("scoring {}", o.text.display()))?;
    let bits = nats / std::f64::consts::LN_2;
    let unknown = report.total();
    let mut out = std::io::stdout().lock();
    if o.json {
        writeln!(
            out,
            "{}",
            serde_json::json!({
                "chars": chars,
                "nats_per_char": nats,
                "bits_per_char": bits,
                "unknown": unknown,
            })
        )?;
    } else {
        writeln!(out, "chars predicted: {chars}")?;
        writeln!(
            out,
            "cross-entropy:   {nats:.4} nats/char = {bits:.4} bits/char"
        )?;
        if unknown > 0 {
            let how = match policy {
                UnknownPolicy::Replace(c) => format!("replaced by {c:?}"),
                _ => "skipped".into(),
            };
            writeln!(out, "unknown chars:   {unknown} {how}: {report}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The library's policy for `--unknown` / `--replace-with`, checked against the vocabulary.
fn policy(o: &EvalOpts, vocab: &rnnkit::data::Vocab) -> anyhow::Result<UnknownPolicy> {
    match (o.unknown, o.replace_with) {
        (Unknown::Error, None) => Ok(UnknownPolicy::Error),
        (Unknown::Skip, None) => Ok(UnknownPolicy::Skip),
        (Unknown::Replace, Some(c)) => Ok(UnknownPolicy::Replace(c)),
        (Unknown::Replace, None) if vocab.id(' ').is_some() => Ok(UnknownPolicy::Replace(' ')),
        (Unknown::Replace, None) => anyhow::bail!(
            "--unknown replace: the vocabulary has no ' ' to put in place of unknown \
             characters; pass --replace-with C with one of its characters (e.g. {:?})",
            vocab.char(0)
        ),
        (_, Some(_)) => anyhow::bail!("--replace-with needs --unknown replace"),
    }
}
