//! `rnnkit bench`: training and sampling throughput of the char-LM on synthetic tokens.

use crate::train_cmd::Cell;
use clap::Args;
use rnnkit::bench::{self, BenchConfig};
use rnnkit::limits::{flag_range, MAX_BATCH, MAX_BENCH_VOCAB, MAX_LAYERS, MAX_SEQ_LEN, MAX_WIDTH};
use rnnkit::model::Precision;
use std::process::ExitCode;

/// Flags of `rnnkit bench`.
#[derive(Args)]
pub struct BenchOpts {
    /// Recurrent cell.
    #[arg(long, value_enum, default_value = "lstm")]
    cell: Cell,
    /// Stacked recurrent layers.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: u32,
    /// Hidden units per layer.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: u32,
    /// Embedding width.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    embed: u32,
    /// Vocabulary size.
    #[arg(long, default_value_t = 65, value_parser = clap::value_parser!(u32).range(flag_range(2, MAX_BENCH_VOCAB)))]
    vocab: u32,
    /// Sequences per batch.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_BATCH)))]
    batch: u32,
    /// Timesteps per batch.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_SEQ_LEN)))]
    seq_len: u32,
    /// Timed training steps (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    steps: u32,
    /// Timed batch-1 sampled characters.
    #[arg(long, default_value_t = 500)]
    sample_chars: u32,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Train with bfloat16 matrix products (see `rnnkit train --bf16`).
    #[arg(long)]
    bf16: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

pub fn run(o: BenchOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let cfg = BenchConfig {
        model: bench::model(
            o.cell.kind(),
            o.layers as usize,
            o.hidden as usize,
            o.embed as usize,
        ),
        vocab: o.vocab as usize,
        batch: o.batch as usize,
        seq_len: o.seq_len as usize,
        steps: o.steps as usize,
        sample_chars: o.sample_chars as usize,
        precision: if o.bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        },
    };
    let r = bench::run(&cfg)?;
    if o.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {}x{} embed {} vocab {} batch {} seq {} threads {}",
            cfg.model.cell, o.layers, o.hidden, o.embed, o.vocab, o.batch, o.seq_len, r.threads
        );
        println!(
            "training ({}): {:.0} tokens/s, {:.1} GFLOP/s ({:.3} s per step, median)",
            if o.bf16 { "bf16 products" } else { "f32" },
            r.train_tokens_per_sec,
            r.train_gflops,
            r.step_seconds
        );
        println!(
            "sampling: {:.1} µs per character (batch 1), {:.1} with bf16 weights",
            r.sample_us_per_char, r.sample_bf16_us_per_char
        );
        println!("peak RSS: {:.1} MiB", r.peak_rss_mb);
    }
    Ok(ExitCode::SUCCESS)
}
