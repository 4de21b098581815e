//! `rnnkit sample`: prime, then generate, streaming characters to stdout.

use clap::Args;
use rnnkit::decode::{generate, SamplingConfig};
use rnnkit::model::{CharLm, Weights};
use rnnkit::Rng;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `rnnkit sample`.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct SampleOpts {
    /// Checkpoint to sample from (rnnkit's or a PyTorch CharLM state dict).
    #[arg(long)]
    checkpoint: PathBuf,
    /// Text fed to the model first and printed as is; empty starts from a newline.
    #[arg(long, default_value = "")]
    prime: String,
    /// Number of characters to generate.
    #[arg(long, default_value_t = 500)]
    length: usize,
    /// Softmax temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.8)]
    temperature: f32,
    /// Sample only among the k most likely characters.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    top_k: Option<u32>,
    /// Sample only among the most likely characters whose probability adds up to p, in (0, 1].
    #[arg(long)]
    top_p: Option<f32>,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Hold the weights in bfloat16: 1.4–1.7× faster on large models (README, performance),
    /// logits within about 1 % of f32 (the same seed may then give a different text).
    #[arg(long)]
    bf16: bool,
    /// Hold the weights in 8-bit integers (a scale per row): faster again than --bf16
    /// on CPUs with AVX-512 VNNI or AVX2 (README, performance), logits within a few % of f32.
    #[arg(long, conflicts_with = "bf16")]
    int8: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// The sampling settings of the flags, checked.
fn sampling(o: &SampleOpts) -> anyhow::Result<SamplingConfig> {
    let cfg = SamplingConfig {
        temperature: o.temperature,
        top_k: o.top_k.map(|k| k as usize),
        top_p: o.top_p,
        weights: weights(o.bf16, o.int8),
    };
    cfg.validate()
        .map_err(|e| anyhow::anyhow!("{e} (check --temperature, --top-k, --top-p)"))?;
    Ok(cfg)
}

/// The weights of `--bf16` / `--int8` (which clap keeps apart).
pub(crate) fn weights(bf16: bool, int8: bool) -> Weights {
    match (bf16, int8) {
        (true, _) => Weights::Bf16,
        (_, true) => Weights::Int8,
        _ => Weights::F32,
    }
}

/// Checks the flags of `rnnkit sample` as a run would, opening no file.
pub(crate) fn check(o: &SampleOpts) -> anyhow::Result<()> {
    sampling(o).map(drop)
}

pub fn run(o: SampleOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let cfg = sampling(&o)?;
    let (model, _) = CharLm::load(&o.checkpoint)?;
    // Check the prime before anything is printed.
    model
        .vocab()
        .encode(&o.prime)
        .map_err(|e| anyhow::anyhow!("--prime: {e}"))?;
    // On a terminal each character shows as it is drawn; into a file or a pipe the
    // text goes in blocks: a write a character took 3.5 µs a character of LSTM 1×128,
    // whose own step takes 1.5–2.
    let stdout = std::io::stdout();
    let live = stdout.is_terminal();
    let mut out = BufWriter::new(stdout);
    let show = |out: &mut BufWriter<_>, text: &[u8]| {
        out.write_all(text)
            .and_then(|_| if live { out.flush() } else { Ok(()) })
    };
    show(&mut out, o.prime.as_bytes())?;
    let mut buf = [0u8; 4];
    generate(
        &model,
        &o.prime,
        o.length,
        &cfg,
        &mut Rng::new(o.seed),
        &mut |c| {
            show(&mut out, c.encode_utf8(&mut buf).as_bytes()).map_err(|e| rnnkit::Error::Io {
                path: "<stdout>".into(),
                source: e,
            })
        },
    )?;
    out.flush()?;
    Ok(ExitCode::SUCCESS)
}
