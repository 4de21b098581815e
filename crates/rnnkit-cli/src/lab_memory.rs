//! `rnnkit lab memory`: how far back each cell remembers. Trains every cell on a task
//! with a known dependency distance at each length, with one budget and seed set,
//! and reports where each stops solving it; then measures the gradient through time
//! of each cell at initialisation and after training. `rnnkit lab clipping` trains on
//! the same tasks from exploding recurrent weights, with and without clipping.

use crate::lab_cmd::draw_flow;
use crate::plot::write_svg;
use crate::train_cmd::Cell;
use clap::{Args, ValueEnum};
use plotters::prelude::*;
use rnnkit::gradflow::gradient_flow;
use rnnkit::memory::{probe, to_f64, train_memory, MemoryConfig, MemoryReport, MemoryTask};
use rnnkit::optim::OptimizerKind;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// `--task` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum TaskFlag {
    /// The sum of two marked numbers among T (regression; learning nothing: MSE 0.167).
    Adding,
    /// Write back 5 symbols after T blanks.
    Copy,
    /// Name the first of T random symbols after the last.
    Recall,
}

impl TaskFlag {
    fn task(self) -> MemoryTask {
        match self {
            TaskFlag::Adding => MemoryTask::Adding,
            TaskFlag::Copy => MemoryTask::Copy,
            TaskFlag::Recall => MemoryTask::Recall,
        }
    }
}

/// Flags of `rnnkit lab memory`.
#[derive(Args)]
pub struct MemoryOpts {
    /// The task.
    #[arg(long, value_enum, default_value = "adding")]
    task: TaskFlag,
    /// Cells to compare, comma-separated.
    #[arg(long, value_enum, value_delimiter = ',', default_values_t = [Cell::RnnTanh, Cell::RnnRelu, Cell::Lstm, Cell::Gru])]
    cells: Vec<Cell>,
    /// Dependency distances T, comma-separated.
    #[arg(long, value_delimiter = ',', default_values_t = [5u32, 10, 20, 50, 100, 200],
          value_parser = clap::value_parser!(u32).range(2..=5000))]
    lengths: Vec<u32>,
    /// Hidden units.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    hidden: u32,
    /// Training updates per run (the budget).
    #[arg(long, default_value_t = 1500, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    steps: u32,
    /// Sequences per update.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Adam's learning rate.
    #[arg(long, default_value_t = 3e-3)]
    lr: f32,
    /// Global gradient-norm clip (0: off).
    #[arg(long, default_value_t = 1.0)]
    clip: f64,
    /// Seeds per cell and length (1, 2, …); a length counts as solved when most seeds solve it.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=100))]
    seeds: u32,
    /// Where to draw the score against the length.
    #[arg(long, default_value = "lab-memory.svg")]
    svg: PathBuf,
    /// Where to draw the gradient through time of each cell, at initialisation and
    /// trained (at the longest length, at most 200).
    #[arg(long, default_value = "lab-memory-flow.svg")]
    flow_svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Flags of `rnnkit lab clipping`.
#[derive(Args)]
pub struct ClippingOpts {
    /// The task.
    #[arg(long, value_enum, default_value = "adding")]
    task: TaskFlag,
    /// Recurrent cell.
    #[arg(long, value_enum, default_value = "rnn_tanh")]
    cell: Cell,
    /// Dependency distance T (short enough for the vanilla RNN to learn once tamed).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(2..=5000))]
    length: u32,
    /// Hidden units.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=1024))]
    hidden: u32,
    /// Multiply every recurrent weight matrix by this after initialisation.
    #[arg(long, default_value_t = 3.0)]
    weight_scale: f64,
    /// Global gradient-norm clips to compare, comma-separated (0: no clipping).
    #[arg(long, value_delimiter = ',', default_values_t = [0.0, 1.0])]
    clips: Vec<f64>,
    /// Training updates per run.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    steps: u32,
    /// Sequences per update.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..=4096))]
    batch: u32,
    /// Learning rate (plain SGD, where an exploding gradient is a step of its size).
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    /// Seed of the weights and batches (the same for every clip).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where to draw the loss curves.
    #[arg(long, default_value = "lab-clipping.svg")]
    svg: PathBuf,
    /// Print one JSON object as the last line of stdout.
    #[arg(long)]
    json: bool,
}

/// Checks the flags of `lab clipping` as a run would, opening no file.
pub(crate) fn check_clipping(o: &ClippingOpts) -> anyhow::Result<()> {
    if !(o.lr > 0.0 && o.lr.is_finite()) {
        anyhow::bail!("--lr must be a positive number, got {}", o.lr);
    }
    if !(o.weight_scale.is_finite() && o.weight_scale.abs() <= 1e3) {
        anyhow::bail!(
            "--weight-scale must be a number in [-1000, 1000], got {}",
            o.weight_scale
        );
    }
    if o.clips.is_empty() || o.clips.iter().any(|c| !(c.is_finite() && *c >= 0.0)) {
        anyhow::bail!("--clips takes finite, non-negative norms (0: no clipping)");
    }
    Ok(())
}

pub fn clipping(o: ClippingOpts) -> anyhow::Result<ExitCode> {
    check_clipping(&o)?;
    let task = o.task.task();
    eprintln!(
        "task {} at T={}, cell {}, hidden {}, recurrent weights ×{}, {} SGD updates at {} of {} sequences",
        task.name(),
        o.length,
        o.cell.kind().name(),
        o.hidden,
        o.weight_scale,
        o.steps,
        o.lr,
        o.batch
    );
    println!(
        "{:>6} {:>12} {:>14} {:>14} {:>10}",
        "clip",
        "final loss",
        "median ‖g‖",
        "max ‖g‖",
        task.metric()
    );
    let mut runs = Vec::new();
    for &clip in &o.clips {
        let cfg = MemoryConfig {
            task,
            cell: o.cell.kind(),
            hidden: o.hidden as usize,
            length: o.length as usize,
            steps: o.steps as usize,
            batch: o.batch as usize,
            optimizer: OptimizerKind::Sgd,
            lr: o.lr,
            clip,
            weight_scale: o.weight_scale,
            seed: o.seed,
        };
        let r = train_memory(&cfg)?;
        let norms: Vec<f64> = r.curve.iter().map(|p| p.grad_norm).collect();
        let last = r.curve.last().map_or(f64::NAN, |p| p.loss);
        let name = if clip > 0.0 {
            format!("{clip}")
        } else {
            "off".into()
        };
        println!(
            "{name:>6} {:>12} {:>14.3e} {:>14.3e} {:>10.4}",
            match r.diverged {
                Some(step) => format!("NaN at {step}"),
                None => format!("{last:.4}"),
            },
            median(&norms),
            norms.iter().copied().fold(0.0f64, f64::max),
            r.score
        );
        runs.push((name, r));
    }
    draw_clipping(&runs, &o.svg)?;
    eprintln!("picture: {}", o.svg.display());
    if o.json {
        let rows: Vec<_> = runs
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "clip": name,
                    "diverged_at": r.diverged,
                    "score": r.score,
                    "curve": r.curve.iter().map(|p| [p.step as f64, p.loss, p.grad_norm]).collect::<Vec<_>>(),
                })
            })
            .collect();
        let j = serde_json::json!({
            "task": task.name(), "length": o.length, "cell": o.cell.kind().name(),
            "weight_scale": o.weight_scale, "lr": o.lr, "runs": rows,
        });
        crate::print_stdout(&format!("{j}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// Checks the flags as a run would, opening no file.
pub(crate) fn check(o: &MemoryOpts) -> anyhow::Result<()> {
    if !(o.lr > 0.0 && o.lr.is_finite() && o.clip >= 0.0 && o.clip.is_finite()) {
        anyhow::bail!("--lr must be a positive number and --clip finite and not negative");
    }
    if o.lengths.is_empty() || o.cells.is_empty() {
        anyhow::bail!("give at least one length and one cell");
    }
    Ok(())
}

/// One cell's results: per length, the score of each seed.
struct CellRuns {
    name: &'static str,
    scores: Vec<Vec<f64>>,
    /// ‖∂L/∂s_(T−k)‖ relative to k = 1, at initialisation and trained.
    flow: [Vec<f64>; 2],
}

pub fn run(o: MemoryOpts) -> anyhow::Result<ExitCode> {
    check(&o)?;
    let task = o.task.task();
    let mut lengths: Vec<usize> = o.lengths.iter().map(|&l| l as usize).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let flow_length = lengths.last().copied().unwrap_or(2).min(200);
    eprintln!(
        "task {}: solved at {}; hidden {}, {} updates of {} sequences, Adam {}, clip {}, {} seed(s)",
        task.name(),
        task.threshold_text(),
        o.hidden,
        o.steps,
        o.batch,
        o.lr,
        o.clip,
        o.seeds
    );
    let mut header = format!("{:<9}", "cell");
    for l in &lengths {
        header.push_str(&format!(" {:>9}", format!("T={l}")));
    }
    println!(
        "{header}  solved up to ({}, median of seeds)",
        task.metric()
    );
    let mut results = Vec::new();
    for cell in &o.cells {
        let kind = cell.kind();
        let mut scores = Vec::new();
        let mut line = format!("{:<9}", kind.name());
        let mut trained = None;
        for &length in &lengths {
            let mut per_seed = Vec::new();
            for seed in 1..=o.seeds as u64 {
                let cfg = MemoryConfig {
                    task,
                    cell: kind,
                    hidden: o.hidden as usize,
                    length,
                    steps: o.steps as usize,
                    batch: o.batch as usize,
                    optimizer: OptimizerKind::Adam,
                    lr: o.lr,
                    clip: o.clip,
                    weight_scale: 1.0,
                    seed,
                };
                let r = train_memory(&cfg)?;
                if let Some(step) = r.diverged {
                    eprintln!(
                        "{} T={length} seed {seed}: the loss became non-finite at update {step}",
                        kind.name()
                    );
                }
                if seed == 1 && length == *lengths.last().unwrap_or(&length) {
                    trained = Some(r.layer.clone());
                }
                per_seed.push(r.score);
            }
            line.push_str(&format!(" {:>9.4}", median(&per_seed)));
            scores.push(per_seed);
        }
        let reach = solved_up_to(task, &lengths, &scores);
        println!(
            "{line}  {}",
            reach.map_or_else(|| "none".to_string(), |l| format!("T={l}"))
        );
        let flow = cell_flow(kind, o.hidden as usize, task, flow_length, trained.as_ref())?;
        results.push(CellRuns {
            name: kind.name(),
            scores,
            flow,
        });
    }
    draw_scores(task, &lengths, &results, &o.svg)?;
    let trained: Vec<(String, Vec<f64>)> = results
        .iter()
        .map(|c| (c.name.to_string(), c.flow[1].clone()))
        .collect();
    let initialised: Vec<Vec<f64>> = results.iter().map(|c| c.flow[0].clone()).collect();
    draw_flow(
        &format!("gradient through time at T = {flow_length}: initialised (dashed) and trained"),
        &trained,
        &initialised,
        &o.flow_svg,
    )?;
    eprintln!(
        "pictures: {} (score against T), {} (gradient through time at T={flow_length})",
        o.svg.display(),
        o.flow_svg.display()
    );
    if o.json {
        let cells: Vec<_> = results
            .iter()
            .map(|c| {
                serde_json::json!({
                    "cell": c.name,
                    "scores": c.scores,
                    "median": c.scores.iter().map(|s| median(s)).collect::<Vec<_>>(),
                    "solved_up_to": solved_up_to(task, &lengths, &c.scores),
                    "flow_init": c.flow[0],
                    "flow_trained": c.flow[1],
                })
            })
            .collect();
        let j = serde_json::json!({
            "task": task.name(),
            "metric": task.metric(),
            "chance": task.chance(),
            "lengths": lengths,
            "hidden": o.hidden,
            "steps": o.steps,
            "batch": o.batch,
            "lr": o.lr,
            "clip": o.clip,
            "seeds": o.seeds,
            "flow_length": flow_length,
            "cells": cells,
        });
        crate::print_stdout(&format!("{j}\n"))?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The longest length up to which every length is solved by most seeds.
fn solved_up_to(task: MemoryTask, lengths: &[usize], scores: &[Vec<f64>]) -> Option<usize> {
    lengths
        .iter()
        .zip(scores)
        .take_while(|(_, s)| 2 * s.iter().filter(|&&v| task.solved(v)).count() > s.len())
        .last()
        .map(|(&l, _)| l)
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.to_vec();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

/// ‖∂L/∂s_(T−k)‖ / ‖∂L/∂s_(T−1)‖ on one task sequence, for a fresh layer (seed 1's
/// initialisation) and for the trained one; the loss is a fixed random projection
/// of the last step's output, the same for both.
fn cell_flow(
    kind: rnnkit::CellKind,
    hidden: usize,
    task: MemoryTask,
    length: usize,
    trained: Option<&rnnkit::Recurrent<f32>>,
) -> anyhow::Result<[Vec<f64>; 2]> {
    let x = probe(task, length, 7);
    let width = x.shape()[2];
    let mut rng = rnnkit::Rng::new(1);
    let mut init = rnnkit::RecurrentConfig::new(kind, width, hidden).init::<f64>(&mut rng)?;
    let mut dy_rng = rnnkit::Rng::new(99);
    let dy: Vec<f64> = (0..hidden).map(|_| dy_rng.normal()).collect();
    let relative = |v: Vec<f64>| -> Vec<f64> {
        let first = v.first().copied().unwrap_or(1.0);
        v.iter().map(|x| x / first).collect()
    };
    let at_init = relative(gradient_flow(&mut init, &x, &dy)?);
    let after = match trained {
        Some(t) => relative(gradient_flow(&mut to_f64(t)?, &x, &dy)?),
        None => Vec::new(),
    };
    Ok([at_init, after])
}

/// The median score against the length (log axes where the score is an MSE), one
/// line per cell, with the threshold dashed.
fn draw_scores(
    task: MemoryTask,
    lengths: &[usize],
    cells: &[CellRuns],
    path: &Path,
) -> anyhow::Result<()> {
    let x_lo = *lengths.first().unwrap_or(&2) as f64;
    let x_hi = (*lengths.last().unwrap_or(&2) as f64).max(x_lo * 1.5);
    let threshold = task.threshold();
    let title = format!("{}: {} against T", task.name(), task.metric());
    write_svg(path, (800, 480), |root| {
        let mut builder = ChartBuilder::on(root);
        let chart = builder
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64);
        let series = |c: &CellRuns| -> Vec<(f64, f64)> {
            lengths
                .iter()
                .zip(&c.scores)
                .map(|(&l, s)| (l as f64, median(s)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        };
        if task == MemoryTask::Adding {
            let mut chart =
                chart.build_cartesian_2d((x_lo..x_hi).log_scale(), (1e-5f64..1.0).log_scale())?;
            chart
                .configure_mesh()
                .x_desc("T (dependency distance)")
                .y_desc("test MSE")
                .y_label_formatter(&|v| format!("{v:.0e}"))
                .draw()?;
            lines(&mut chart, cells, series, (x_lo, x_hi), threshold)?;
        } else {
            let mut chart = chart.build_cartesian_2d((x_lo..x_hi).log_scale(), 0.0f64..1.0)?;
            chart
                .configure_mesh()
                .x_desc("T (dependency distance)")
                .y_desc("test accuracy")
                .draw()?;
            lines(&mut chart, cells, series, (x_lo, x_hi), threshold)?;
        }
        Ok(())
    })
}

/// Draws one line per cell and the dashed threshold, with a legend.
fn lines<'a, X, Y>(
    chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    cells: &[CellRuns],
    series: impl Fn(&CellRuns) -> Vec<(f64, f64)>,
    (x_lo, x_hi): (f64, f64),
    threshold: f64,
) -> anyhow::Result<()>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    chart
        .draw_series(DashedLineSeries::new(
            [(x_lo, threshold), (x_hi, threshold)],
            6,
            4,
            BLACK.stroke_width(1),
        ))?
        .label("threshold")
        .legend(|(x, y)| PathElement::new([(x, y), (x + 16, y)], BLACK));
    for (i, c) in cells.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let points = series(c);
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(c.name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        chart
            .draw_series(
                points
                    .into_iter()
                    .map(|p| Circle::new(p, 3, color.filled())),
            )
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    crate::plot::legend(chart)?;
    Ok(())
}

/// Training loss against updates for each clip, log scale (a run that diverged stops).
fn draw_clipping(runs: &[(String, MemoryReport)], path: &Path) -> anyhow::Result<()> {
    let losses = || {
        runs.iter()
            .flat_map(|(_, r)| r.curve.iter().map(|p| p.loss))
            .filter(|v| v.is_finite() && *v > 0.0)
    };
    let lo = losses().fold(f64::MAX, f64::min).min(1.0) * 0.8;
    let hi = losses().fold(0.0f64, f64::max).max(lo * 10.0) * 1.2;
    let steps = runs
        .iter()
        .flat_map(|(_, r)| r.curve.iter().map(|p| p.step))
        .max()
        .unwrap_or(1)
        .max(2);
    write_svg(path, (800, 480), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "training from exploding gradients, with and without clipping",
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(64)
            .build_cartesian_2d(0usize..steps, (lo..hi).log_scale())?;
        chart
            .configure_mesh()
            .x_desc("updates")
            .y_desc("training loss")
            .y_label_formatter(&|v| format!("{v:.0e}"))
            .draw()?;
        for (i, (name, r)) in runs.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let points = r
                .curve
                .iter()
                .filter(|p| p.loss.is_finite() && p.loss > 0.0)
                .map(|p| (p.step, p.loss.clamp(lo, hi)));
            chart
                .draw_series(LineSeries::new(points, color.stroke_width(2)))?
                .label(format!("clip {name}"))
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 16, y)], color));
        }
        crate::plot::legend(&mut chart)?;
        Ok(())
    })
}
