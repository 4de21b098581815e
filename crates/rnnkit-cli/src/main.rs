//! `rnnkit`: train, sample from and evaluate character language models.
//! This binary parses flags, calls the library and renders progress; it holds no math.

mod bench_cmd;
mod eval_cmd;
mod plot;
mod sample_cmd;
mod train_cmd;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Recurrent neural networks (RNN, LSTM, GRU) on the CPU.
#[derive(Parser)]
#[command(name = "rnnkit", version, about, long_about = None, args_override_self = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Train a character language model (default: 2-layer LSTM on the bundled Shakespeare).
    Train(Box<train_cmd::TrainOpts>),
    /// Generate text from a checkpoint, streaming it to stdout.
    Sample(sample_cmd::SampleOpts),
    /// Report the cross-entropy of a checkpoint on a text file.
    Eval(eval_cmd::EvalOpts),
    /// Measure training and sampling throughput on synthetic tokens.
    Bench(bench_cmd::BenchOpts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Train(o) => train_cmd::run(*o),
        Command::Sample(o) => sample_cmd::run(o),
        Command::Eval(o) => eval_cmd::run(o),
        Command::Bench(o) => bench_cmd::run(o),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Sets the number of worker threads for the whole process.
pub(crate) fn set_threads(threads: Option<usize>) -> anyhow::Result<()> {
    let n = threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build_global()
        .map_err(|e| anyhow::anyhow!("cannot start {n} threads: {e}"))
}
