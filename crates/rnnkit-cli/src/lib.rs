//! The `rnnkit` command line: parses flags, calls the library and renders progress;
//! it holds no math. The binary is `main`; `check_args` serves the argument fuzzer.

mod bench_cmd;
mod classify_cmd;
mod ctc_cmd;
mod eval_cmd;
mod export_cmd;
mod hmm_cmd;
mod import_cmd;
#[cfg(feature = "keras")]
mod keras_h5;
mod lab_cmd;
mod lab_memory;
mod lab_truncation;
#[cfg(feature = "mpi")]
mod mpi_run;
mod plot;
mod run_lock;
mod sample_cmd;
mod seq2seq_cmd;
mod tag_cmd;
mod train_cmd;
mod trainer;
mod visualize_cmd;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
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
    /// Classify whole sequences (UEA/UCR `.ts` time series): train, eval, predict.
    #[command(subcommand)]
    Classify(classify_cmd::ClassifyCmd),
    /// Tag every word (part of speech from CoNLL-U treebanks): train, eval, predict.
    #[command(subcommand)]
    Tag(tag_cmd::TagCmd),
    /// Transduce sequences to sequences of another length (grapheme-to-phoneme): train, eval, predict.
    #[command(subcommand)]
    Seq2seq(seq2seq_cmd::Seq2seqCmd),
    /// Speech to text with CTC (spoken digit strings from WAV files): train, eval, transcribe.
    #[command(subcommand)]
    Ctc(ctc_cmd::CtcCmd),
    /// Measure training throughput on synthetic data: the char LM (and its sampling), the classifier, the tagger or the encoder–decoder (and its decoding).
    Bench(bench_cmd::BenchOpts),
    /// What the notes teach, measured: gradients through time, memory, clipping, truncation, RTRL.
    #[command(subcommand)]
    Lab(lab_cmd::LabCmd),
    /// Turn a PyTorch CharLM state dict (safetensors) or Keras char-RNN weights (HDF5) into a checkpoint, given its vocabulary.
    Import(import_cmd::ImportOpts),
    /// Write any model as ONNX (standard LSTM/GRU/RNN operators) for ONNX Runtime and other runtimes.
    Export(export_cmd::ExportOpts),
    /// Look inside a trained char LM: an HTML page colouring a text by any unit's activation.
    Visualize(visualize_cmd::VisualizeOpts),
}

/// Runs the command line: `std::env::args`, errors on stderr, the exit status.
pub fn main() -> ExitCode {
    exit_quietly_when_stdout_closes();
    let cli = match Cli::from_arg_matches(&command().get_matches()) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // Under mpirun every process runs the command; training shares its batches.
    #[cfg(feature = "mpi")]
    let _mpi = mpi_run::init();
    let result = match cli.command {
        Command::Train(o) => train_cmd::run(*o),
        Command::Sample(o) => sample_cmd::run(o),
        Command::Eval(o) => eval_cmd::run(o),
        Command::Classify(c) => classify_cmd::run(c),
        Command::Tag(c) => tag_cmd::run(c),
        Command::Seq2seq(c) => seq2seq_cmd::run(c),
        Command::Ctc(c) => ctc_cmd::run(c),
        Command::Bench(o) => bench_cmd::run(o),
        Command::Import(o) => import_cmd::run(o),
        Command::Export(o) => export_cmd::run(o),
        Command::Lab(c) => lab_cmd::run(c),
        Command::Visualize(o) => visualize_cmd::run(o),
    };
    match result {
        Ok(code) => code,
        // The reader of our output is gone (`rnnkit sample | head`): nothing is wrong.
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            #[cfg(feature = "mpi")]
            if !mpi_run::shard().is_whole() {
                let s = mpi_run::shard();
                eprintln!(
                    "error (process {} of {}): {}",
                    s.rank + 1,
                    s.ranks,
                    one_line(&e)
                );
                mpi_run::abort_others();
            }
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Parses `args` (the program's name first) and checks every flag as the command
/// would before it opens a file; nothing is read, written or run. The argument
/// fuzzer's entry point: any input must give `Ok` or an error, never a panic.
pub fn check_args<I, T>(args: I) -> anyhow::Result<()>
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    // Built once: building the command with its defaults costs more than parsing.
    static COMMAND: std::sync::OnceLock<clap::Command> = std::sync::OnceLock::new();
    let matches = COMMAND
        .get_or_init(command)
        .clone()
        .try_get_matches_from(args)?;
    let cli = Cli::from_arg_matches(&matches)?;
    match &cli.command {
        Command::Train(o) => train_cmd::check(o),
        Command::Sample(o) => sample_cmd::check(o),
        Command::Classify(classify_cmd::ClassifyCmd::Train(o)) => classify_cmd::check(o),
        Command::Tag(tag_cmd::TagCmd::Train(o)) => tag_cmd::check(o),
        Command::Seq2seq(seq2seq_cmd::Seq2seqCmd::Train(o)) => seq2seq_cmd::check(o),
        Command::Ctc(ctc_cmd::CtcCmd::Train(o)) => ctc_cmd::check(o),
        Command::Lab(c) => lab_cmd::check(c),
        // Their flags are checked by clap alone before they open their files.
        Command::Eval(_)
        | Command::Classify(_)
        | Command::Tag(_)
        | Command::Seq2seq(_)
        | Command::Ctc(_)
        | Command::Bench(_)
        | Command::Import(_)
        | Command::Export(_)
        | Command::Visualize(_) => Ok(()),
    }
}

/// The error and its causes on one line, each said once: a cause whose text is
/// already on the line (a library error that quotes the OS message, whose source is
/// that same OS error) is left out.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let msg = cause.to_string();
        if line.contains(&msg) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&msg);
    }
    line
}

/// Whether `e` comes from writing to a pipe whose reader has closed it.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// `println!` panics when stdout is a closed pipe (Rust ignores SIGPIPE); end the
/// process quietly with success then, as a filter would, whatever command printed.
fn exit_quietly_when_stdout_closes() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let msg = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        let broken = std::io::Error::from_raw_os_error(libc::EPIPE).to_string();
        if msg.starts_with("failed printing to stdout") && msg.contains(&broken) {
            std::process::exit(0);
        }
        default(info)
    }));
}

/// The command line, with each task's defaults shown in its `--help`.
fn command() -> clap::Command {
    Cli::command()
        .mut_subcommand("train", |c| {
            trainer::with_defaults(c, &train_cmd::shown_defaults())
        })
        .mut_subcommand("classify", |c| {
            c.mut_subcommand("train", |c| {
                trainer::with_defaults(c, &classify_cmd::shown_defaults())
            })
        })
        .mut_subcommand("tag", |c| {
            c.mut_subcommand("train", |c| {
                trainer::with_defaults(c, &tag_cmd::shown_defaults())
            })
        })
        .mut_subcommand("seq2seq", |c| {
            c.mut_subcommand("train", |c| {
                trainer::with_defaults(c, &seq2seq_cmd::shown_defaults())
            })
        })
        .mut_subcommand("ctc", |c| {
            c.mut_subcommand("train", |c| {
                trainer::with_defaults(c, &ctc_cmd::shown_defaults())
            })
        })
}

/// Writes `text` to stdout; a closed pipe (`… | head`) is not an error.
pub(crate) fn print_stdout(text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The `[default: …]` that `rnnkit SUB --help` shows for flag `id`.
    fn shown_default(sub: &str, id: &str) -> String {
        let cmd = command();
        let sub = cmd.find_subcommand(sub).expect("subcommand");
        let arg = sub
            .get_arguments()
            .find(|a| a.get_id() == id)
            .unwrap_or_else(|| panic!("no flag {id}"));
        let help = arg.get_help().expect("documented").to_string();
        let tail = help
            .split("[default: ")
            .nth(1)
            .unwrap_or_else(|| panic!("{id}: no default in {help:?}"));
        tail.split([']', ' ']).next().unwrap().to_string()
    }

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let e = anyhow::Error::new(rnnkit::Error::Io {
            path: "x.txt".into(),
            source: io,
        })
        .context("reading the text");
        let line = one_line(&e);
        assert_eq!(line.matches("not found").count(), 1, "{line}");
        assert!(line.starts_with("reading the text: x.txt: "), "{line}");
        let pipe = anyhow::Error::new(std::io::Error::from(std::io::ErrorKind::BrokenPipe))
            .context("writing");
        assert!(is_broken_pipe(&pipe) && !is_broken_pipe(&e));
    }

    #[test]
    fn help_shows_the_defaults_that_are_used() {
        // The README's table states these; the help text is generated from the
        // recipe the run uses, so both agree with what a run does.
        let cases = [
            ("cell", "lstm"),
            ("layers", "2"),
            ("hidden", "256"),
            ("embed", "64"),
            ("dropout", "0.1"),
            ("batch", "32"),
            ("seq_len", "100"),
            ("lr", "0.003"),
            ("lr_decay", "0.75"),
            ("decay_after", "1"),
            ("grad_clip", "5"),
            ("momentum", "0.9"),
            ("val_frac", "0.05"),
            ("seed", "1"),
            ("steps", "2000"),
            ("eval_every", "100"),
            ("checkpoint_every", "200"),
            ("optimizer", "adam"),
            ("log_every", "10"),
        ];
        for (id, shown) in cases {
            assert_eq!(shown_default("train", id), shown, "--{id}");
        }
        let r = train_cmd::default_recipe();
        assert_eq!(r.train.lr, 0.003);
        assert_eq!(train_cmd::default_schedule().steps, Some(2000));
    }
}
