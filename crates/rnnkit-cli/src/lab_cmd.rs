//! `rnnkit lab`: what the notes teach, measured. `lab rtrl` learns a character
//! stream online by RTRL and by truncated BPTT for several hidden sizes, and reports
//! loss, time per character and memory for each, with a picture of loss against time;
//! `lab gradients` measures how far back gradients reach; `lab memory` and
//! `lab clipping` (in `lab_memory.rs`) how far back each cell remembers and how
//! clipping tames exploding gradients; `lab truncation` (in `lab_truncation.rs`)
//! what the truncation length of BPTT costs the char LM.

use crate::plot::write_svg;
use crate::train_cmd::{Cell, SHAKESPEARE};
use anyhow::Context;
use clap::{Args, Subcommand};
use plotters::prelude::*;
use rnnkit::data::{read_text, Vocab};
use rnnkit::gradflow::gradient_flow;
use rnnkit::layer::Parameters;
use rnnkit::online::{
    bptt_floats_per_step, train_online, OnlineConfig, OnlineMethod, OnlineReport,
};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `rnnkit lab` subcommands.
#[derive(Subcommand)]
pub enum LabCmd {
    /// Online learning by RTRL against truncated BPTT: loss, time and memory by hidden size.
    Rtrl(RtrlOpts),
    /// How far back gradients reach in each cell: ‖∂L/∂s_{T−k}‖ against k, at initialisation.
    Gradients(GradientOpts),
    /// How far back each cell remembers: the adding, copy or recall task at each length.
    Memory(crate::lab_memory::MemoryOpts),
    /// Training from exploding gradients (scaled recurrent weights), with and without clipping.
    Clipping(crate::lab_memory::ClippingOpts),
    /// The char LM's validation loss against the truncation length of BPTT, at equal compute.
    Truncation(crate::lab_truncation::TruncationOpts),
}

/// Flags of `rnnkit lab gradients`.
#[derive(Args)]
pub struct GradientOpts {
    /// Cells to compare, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru])]
    cells: Vec<Cell>,
    /// Hidden units (the input has as many random features).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=1024))]
    hidden: u32,
    /// Sequence length T.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    steps: u32,
    /// Random initialisations and sequences averaged (geometric mean of the norms).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..=1000))]
    draws: u32,
    /// Multiply every recurrent weight matrix by this after initialisation (large: exploding gradients).
    #[arg(long, default_value_t = 1.0)]
    weight_scale: f64,
    /// Seed of the first draw.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to draw the norms against k (logarithmic).
    #[arg(long, default_value = "lab-gradients.svg")]
    svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Flags of `rnnkit lab rtrl`.
#[derive(Args)]
pub struct RtrlOpts {
    /// Recurrent cell.
    #[arg(long, value_enum, default_value = "rnn_tanh")]
    cell: Cell,
    /// Hidden sizes to compare, comma-separated (RTRL costs O(H⁴) a character).
    #[arg(long, value_delimiter = ',', default_values_t = [8u32, 16, 32, 64],
          value_parser = clap::value_parser!(u32).range(1..=256))]
    hidden: Vec<u32>,
    /// Characters to learn from (the start of the text).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    steps: u32,
    /// Window of truncated BPTT, in characters.
    #[arg(long, default_value_t = 25, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    truncation: u32,
    /// SGD learning rate per character.
    #[arg(long, default_value_t = 0.05)]
    lr: f32,
    /// Clip each update's global gradient norm to this per character it learns from (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seed of the initial weights (the same for both methods).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Text to learn from [default: the bundled Shakespeare].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Where to draw loss against time.
    #[arg(long, default_value = "lab-rtrl.svg")]
    svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(cmd: LabCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        LabCmd::Rtrl(o) => rtrl(o),
        LabCmd::Gradients(o) => gradients(o),
        LabCmd::Memory(o) => crate::lab_memory::run(o),
        LabCmd::Clipping(o) => crate::lab_memory::clipping(o),
        LabCmd::Truncation(o) => crate::lab_truncation::run(o),
    }
}

/// Checks the flags of `rnnkit lab` as a run would, opening no file.
pub(crate) fn check(cmd: &LabCmd) -> anyhow::Result<()> {
    match cmd {
        LabCmd::Rtrl(o) => check_rtrl(o),
        LabCmd::Gradients(o) => check_gradients(o),
        LabCmd::Memory(o) => crate::lab_memory::check(o),
        LabCmd::Clipping(o) => crate::lab_memory::check_clipping(o),
        LabCmd::Truncation(o) => crate::lab_truncation::check(o),
    }
}

fn check_gradients(o: &GradientOpts) -> anyhow::Result<()> {
    if !(o.weight_scale.is_finite() && o.weight_scale.abs() <= 1e3) {
        anyhow::bail!(
            "--weight-scale must be a number in [-1000, 1000], got {}",
            o.weight_scale
        );
    }
    Ok(())
}

fn check_rtrl(o: &RtrlOpts) -> anyhow::Result<()> {
    if !(o.lr >= 0.0 && o.lr.is_finite() && o.clip >= 0.0 && o.clip.is_finite()) {
        anyhow::bail!("--lr and --clip must be finite and not negative");
    }
    Ok(())
}

fn rtrl(o: RtrlOpts) -> anyhow::Result<ExitCode> {
    check_rtrl(&o)?;
    let text = match &o.data {
        Some(p) => read_text(p).with_context(|| format!("--data {}", p.display()))?,
        None => SHAKESPEARE.to_string(),
    };
    let steps = o.steps as usize;
    // The vocabulary of the part learned from, so no output is never seen.
    let part: String = text.chars().take(steps + 1).collect();
    let vocab = Vocab::from_text(&part)?;
    let ids = vocab.encode(&part)?;
    if ids.len() <= steps {
        anyhow::bail!(
            "--steps {steps} needs {} characters; the text has {}",
            steps + 1,
            ids.len()
        );
    }
    let cell = o.cell.kind();
    let report_every = (steps / 20).max(1);
    eprintln!(
        "{} characters, vocabulary {}, cell {}, SGD at {} per character, clip {}, BPTT window {}",
        steps,
        vocab.len(),
        cell.name(),
        o.lr,
        o.clip,
        o.truncation
    );
    println!(
        "{:>6}  {:<9} {:>8} {:>10} {:>12}  loss (last {} chars)",
        "hidden", "method", "params", "µs/char", "memory", report_every
    );
    let mut runs: Vec<(usize, OnlineReport)> = Vec::new();
    let mut rows = Vec::new();
    for &h in &o.hidden {
        let h = h as usize;
        let cfg = OnlineConfig {
            cell,
            hidden: h,
            lr: o.lr,
            clip: o.clip,
            steps,
            report_every,
            seed: o.seed,
        };
        for method in [
            OnlineMethod::Rtrl,
            OnlineMethod::Tbptt(o.truncation as usize),
        ] {
            let r = train_online(&cfg, method, &ids, vocab.len())?;
            let last = r.curve.last().map_or(f64::NAN, |p| p.loss);
            let us = r.seconds * 1e6 / steps as f64;
            println!(
                "{h:>6}  {:<9} {:>8} {:>10.1} {:>12}  {last:.3}",
                method.name(),
                r.params,
                us,
                bytes(r.state_bytes)
            );
            rows.push(serde_json::json!({
                "hidden": h,
                "method": method.name(),
                "params": r.params,
                "us_per_char": us,
                "state_bytes": r.state_bytes,
                "final_loss": last,
                "curve": r.curve.iter().map(|p| [p.step as f64, p.seconds, p.loss]).collect::<Vec<_>>(),
            }));
            runs.push((h, r));
        }
    }
    // Memory: RTRL's sensitivities do not grow with the sequence; full BPTT keeps
    // every step's activations, so it needs more beyond this many characters.
    let crossover: Vec<(usize, usize)> = runs
        .iter()
        .filter(|(_, r)| r.method == OnlineMethod::Rtrl)
        .map(|(h, r)| (*h, r.state_bytes / 4 / bptt_floats_per_step(cell, *h)))
        .collect();
    for (h, t) in &crossover {
        println!(
            "hidden {h}: full BPTT holds more than RTRL on sequences longer than {t} characters"
        );
    }
    draw(&runs, &o.svg)?;
    eprintln!("picture: {}", o.svg.display());
    if o.json {
        let j = serde_json::json!({
            "cell": cell.name(),
            "steps": steps,
            "vocab": vocab.len(),
            "truncation": o.truncation,
            "runs": rows,
            "memory_crossover_chars": crossover.iter().map(|(h, t)| serde_json::json!({"hidden": h, "chars": t})).collect::<Vec<_>>(),
        });
        crate::print_stdout(&format!("{j}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

fn gradients(o: GradientOpts) -> anyhow::Result<ExitCode> {
    check_gradients(&o)?;
    let (h, steps) = (o.hidden as usize, o.steps as usize);
    eprintln!(
        "‖∂L/∂s_(T−k)‖ / ‖∂L/∂s_(T−1)‖ for a loss on the last of {steps} steps, hidden {h}, recurrent weights ×{}, geometric mean of {} draws",
        o.weight_scale, o.draws
    );
    let marks: Vec<usize> = [1, 5, 10, 20, 50, 100, 200, 500, 1000]
        .into_iter()
        .filter(|&k| k <= steps)
        .collect();
    let mut header = format!("{:<9}", "cell");
    for k in &marks {
        header.push_str(&format!(" {:>9}", format!("k={k}")));
    }
    println!("{header}  below 1 % from k");
    let mut lines = Vec::new();
    let mut rows = Vec::new();
    for cell in &o.cells {
        let kind = cell.kind();
        let mut log_sum = vec![0.0f64; steps];
        for d in 0..o.draws as u64 {
            let mut rng = rnnkit::Rng::new(o.seed.wrapping_add(d));
            let mut layer = rnnkit::RecurrentConfig::new(kind, h, h).init::<f64>(&mut rng)?;
            layer.visit_params_mut(&mut |name, t, _| {
                if name.starts_with("weight_hh") {
                    t.data_mut().iter_mut().for_each(|v| *v *= o.weight_scale);
                }
            });
            let x = rnnkit::Tensor::from_vec(
                &[steps, 1, h],
                (0..steps * h).map(|_| rng.normal()).collect(),
            )?;
            let dy: Vec<f64> = (0..h).map(|_| rng.normal()).collect();
            let flow = gradient_flow(&mut layer, &x, &dy)?;
            for (acc, v) in log_sum.iter_mut().zip(&flow) {
                *acc += v.max(f64::MIN_POSITIVE).ln();
            }
        }
        let mean: Vec<f64> = log_sum.iter().map(|s| (s / o.draws as f64).exp()).collect();
        let rel: Vec<f64> = mean.iter().map(|v| v / mean[0]).collect();
        let reach = rel.iter().position(|&r| r < 0.01).map(|i| i + 1);
        let mut line = format!("{:<9}", kind.name());
        for &k in &marks {
            line.push_str(&format!(" {:>9.2e}", rel[k - 1]));
        }
        println!(
            "{line}  {}",
            reach.map_or_else(|| format!("not within {steps}"), |k| k.to_string())
        );
        rows.push(serde_json::json!({"cell": kind.name(), "relative_norm": rel, "below_1pct_from": reach}));
        lines.push((kind.name().to_string(), rel));
    }
    draw_flow(
        "gradient through time, relative to k = 1",
        &lines,
        &[],
        &o.svg,
    )?;
    eprintln!("picture: {}", o.svg.display());
    if o.json {
        let j = serde_json::json!({"hidden": h, "steps": steps, "draws": o.draws, "weight_scale": o.weight_scale, "cells": rows});
        crate::print_stdout(&format!("{j}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The relative norms against k on a logarithmic axis, one line per cell; a line of
/// `before` (same index, same colour) is drawn dashed beside it.
pub(crate) fn draw_flow(
    title: &str,
    lines: &[(String, Vec<f64>)],
    before: &[Vec<f64>],
    path: &Path,
) -> anyhow::Result<()> {
    let finite = || {
        lines
            .iter()
            .map(|(_, v)| v)
            .chain(before)
            .flat_map(|v| v.iter().copied())
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lo = finite().fold(f64::MAX, f64::min).clamp(1e-300, 0.5);
    let hi = finite().fold(0.0f64, f64::max).max(2.0);
    let steps = lines.iter().map(|(_, v)| v.len()).max().unwrap_or(1);
    let points = |v: &[f64]| -> Vec<(usize, f64)> {
        v.iter()
            .enumerate()
            .filter(|(_, v)| v.is_finite() && **v > 0.0)
            .map(|(k, &v)| (k + 1, v.clamp(lo, hi)))
            .collect()
    };
    write_svg(path, (800, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(1usize..steps.max(2), (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("k (steps back from the loss)")
            .y_desc("‖∂L/∂s_(T−k)‖ / ‖∂L/∂s_(T−1)‖")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        for (i, (name, rel)) in lines.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            if let Some(b) = before.get(i) {
                chart.draw_series(DashedLineSeries::new(
                    points(b),
                    6,
                    4,
                    color.stroke_width(1),
                ))?;
            }
            chart
                .draw_series(LineSeries::new(points(rel), color.stroke_width(2)))?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
        crate::plot::legend(&mut chart)?;
        Ok(())
    })
}

fn bytes(n: usize) -> String {
    match n {
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// Loss against seconds, one line per hidden size and method (RTRL solid, BPTT dashed).
fn draw(runs: &[(usize, OnlineReport)], path: &Path) -> anyhow::Result<()> {
    let x_max = runs
        .iter()
        .flat_map(|(_, r)| r.curve.iter().map(|p| p.seconds))
        .fold(1e-6f64, f64::max);
    let losses = || {
        runs.iter()
            .flat_map(|(_, r)| r.curve.iter().map(|p| p.loss))
    };
    let y_max = losses().filter(|v| v.is_finite()).fold(0.0f64, f64::max) * 1.05;
    let y_min = losses()
        .filter(|v| v.is_finite())
        .fold(f64::MAX, f64::min)
        .min(y_max)
        * 0.95;
    write_svg(path, (800, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "online learning: RTRL vs truncated BPTT",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0.0..x_max, y_min..y_max.max(y_min + 1e-3))?;
        chart
            .configure_mesh()
            .x_desc("seconds")
            .y_desc("loss, nats/char")
            .draw()?;
        for (i, (h, r)) in runs.iter().enumerate() {
            let color = Palette99::pick(i / 2).to_rgba();
            let points = r.curve.iter().map(|p| (p.seconds, p.loss));
            let label = format!("H {h} {}", r.method.name());
            if r.method == OnlineMethod::Rtrl {
                chart
                    .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            } else {
                chart
                    .draw_series(DashedLineSeries::new(points, 6, 4, color.stroke_width(2)))?
                    .label(label)
                    .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
            }
        }
        crate::plot::legend(&mut chart)?;
        Ok(())
    })
}
