//! `rnnkit lab truncation`: the char LM's validation loss against the truncation
//! length of BPTT, every length trained on the same number of characters.

use crate::plot::write_svg;
use crate::train_cmd::{Cell, SHAKESPEARE};
use anyhow::Context;
use clap::Args;
use plotters::prelude::*;
use rnnkit::data::read_text;
use rnnkit::model::CharLmConfig;
use rnnkit::truncation::{train_truncated, TruncationConfig, TruncationResult};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `rnnkit lab truncation`.
#[derive(Args)]
pub struct TruncationOpts {
    /// Truncation lengths (window sizes) to compare, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [10u32, 25, 50, 100, 200],
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    lengths: Vec<u32>,
    /// Training characters of every run: equal compute for every length.
    #[arg(long, default_value_t = 3_000_000, value_parser = clap::value_parser!(u64).range(1..=10_000_000_000))]
    chars: u64,
    /// Recurrent cell.
    #[arg(long, value_enum, default_value = "lstm")]
    cell: Cell,
    /// Hidden units.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=4096))]
    hidden: u32,
    /// Embedding width.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    embed: u32,
    /// Streams per batch.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 5.0)]
    clip: f64,
    /// Share of the text held out for validation (its end).
    #[arg(long, default_value_t = 0.05)]
    val_frac: f64,
    /// Seed (the same initial weights for every length).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Text to learn [default: the bundled Shakespeare].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to draw validation loss against the truncation length.
    #[arg(long, default_value = "lab-truncation.svg")]
    svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Checks the flags as a run would, opening no file.
pub(crate) fn check(o: &TruncationOpts) -> anyhow::Result<()> {
    if !(o.lr > 0.0 && o.lr.is_finite() && o.clip >= 0.0 && o.clip.is_finite()) {
        anyhow::bail!("--lr must be a positive number and --clip finite and not negative");
    }
    if !(o.val_frac > 0.0 && o.val_frac < 1.0) {
        anyhow::bail!("--val-frac must be in (0, 1), got {}", o.val_frac);
    }
    if o.lengths.is_empty() {
        anyhow::bail!("give at least one truncation length");
    }
    Ok(())
}

pub fn run(o: TruncationOpts) -> anyhow::Result<ExitCode> {
    check(&o)?;
    let text = match &o.data {
        Some(p) => read_text(p).with_context(|| format!("--data {}", p.display()))?,
        None => SHAKESPEARE.to_string(),
    };
    let cfg = TruncationConfig {
        model: CharLmConfig {
            cell: o.cell.kind(),
            embed_size: o.embed as usize,
            hidden_size: o.hidden as usize,
            num_layers: 1,
            dropout: 0.0,
        },
        batch: o.batch as usize,
        chars: usize::try_from(o.chars).unwrap_or(usize::MAX),
        lr: o.lr,
        clip: o.clip,
        val_frac: o.val_frac,
        seed: o.seed,
    };
    eprintln!(
        "{} 1×{} (embedding {}), {} streams, {} training characters for every length, Adam {}, clip {}",
        o.cell.kind().name(),
        o.hidden,
        o.embed,
        o.batch,
        o.chars,
        o.lr,
        o.clip
    );
    println!(
        "{:>8} {:>9} {:>16} {:>9}",
        "window", "updates", "val nats/char", "seconds"
    );
    let mut lengths: Vec<usize> = o.lengths.iter().map(|&l| l as usize).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut results = Vec::new();
    for &len in &lengths {
        let r = train_truncated(&text, &cfg, len)?;
        println!(
            "{:>8} {:>9} {:>16.4} {:>9.1}",
            r.seq_len, r.updates, r.val_loss, r.seconds
        );
        results.push(r);
    }
    draw(&results, &o.svg)?;
    eprintln!("picture: {}", o.svg.display());
    if o.json {
        let runs: Vec<_> = results
            .iter()
            .map(|r| serde_json::json!({"seq_len": r.seq_len, "updates": r.updates, "val_nats_per_char": r.val_loss, "seconds": r.seconds}))
            .collect();
        let j = serde_json::json!({
            "cell": o.cell.kind().name(), "hidden": o.hidden, "embed": o.embed,
            "batch": o.batch, "chars": o.chars, "lr": o.lr, "runs": runs,
        });
        crate::print_stdout(&format!("{j}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Validation loss against the window length (log axis).
fn draw(results: &[TruncationResult], path: &Path) -> anyhow::Result<()> {
    let losses = || results.iter().map(|r| r.val_loss).filter(|v| v.is_finite());
    let lo = losses().fold(f64::MAX, f64::min);
    let hi = losses().fold(f64::MIN, f64::max);
    let pad = ((hi - lo) * 0.1).max(0.01);
    let x_lo = results.first().map_or(1, |r| r.seq_len) as f64;
    let x_hi = (results.last().map_or(2, |r| r.seq_len) as f64).max(x_lo * 1.5);
    write_svg(path, (800, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "truncated BPTT at equal compute: validation loss against the window",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d((x_lo..x_hi).log_scale(), (lo - pad)..(hi + pad))?;
        chart
            .configure_mesh()
            .x_desc("truncation length (characters per window)")
            .y_desc("validation loss, nats/char")
            .draw()?;
        let points: Vec<(f64, f64)> = results
            .iter()
            .filter(|r| r.val_loss.is_finite())
            .map(|r| (r.seq_len as f64, r.val_loss))
            .collect();
        let color = Palette99::pick(0).to_rgba();
        chart.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?;
        chart.draw_series(
            points
                .into_iter()
                .map(|p| Circle::new(p, 4, color.filled())),
        )?;
        Ok(())
    })
}
