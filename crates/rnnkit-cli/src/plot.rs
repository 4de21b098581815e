//! The training picture (SVG): training loss (each logged point, and smoothed) and
//! validation loss against steps; below it the validation scores, when the task has any.

use plotters::coord::Shift;
use plotters::prelude::*;
use rnnkit::train::LogEntry;
use std::collections::BTreeMap;
use std::path::Path;

/// File name of the picture in the output folder.
pub const LOSS_SVG: &str = "loss.svg";

/// How to draw.
pub struct Style {
    /// The loss's unit as logged (e.g. `nats_per_char`).
    pub loss_name: &'static str,
    /// Logarithmic loss axis.
    pub log_scale: bool,
}

/// Draws on a white SVG canvas of `size` with `draw`, then replaces `path` with it
/// atomically: every picture the CLI writes goes through here.
pub fn write_svg(
    path: &Path,
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let svg = svg_string(size, draw)?;
    rnnkit::checkpoint::write_atomic(path, svg.as_bytes())?;
    Ok(())
}

/// Draws on a white SVG canvas of `size` with `draw`, returning the SVG text.
pub fn svg_string(
    size: (u32, u32),
    draw: impl FnOnce(&DrawingArea<SVGBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE)?;
        draw(&root)?;
        root.present()?;
    }
    Ok(svg)
}

/// Draws the framed legend of `chart`'s labelled series, as every picture does.
pub fn legend<'a, DB: DrawingBackend + 'a, X: Ranged, Y: Ranged>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    Ok(())
}

/// Draws `history` to `path` (SVG), replacing the file atomically.
pub fn loss_curve(history: &[LogEntry], style: &Style, path: &Path) -> anyhow::Result<()> {
    let mut scores: BTreeMap<&str, Vec<(u64, f64)>> = BTreeMap::new();
    for e in history {
        for (k, v) in e.val.iter().flat_map(|v| &v.scores) {
            scores.entry(k).or_default().push((e.step, *v));
        }
    }
    let height = if scores.is_empty() { 480 } else { 760 };
    write_svg(path, (800, height), |root| {
        if scores.is_empty() {
            losses(root, history, style)
        } else {
            let (top, bottom) = root.split_vertically(480);
            losses(&top, history, style)?;
            score_panel(&bottom, &scores, x_max(history))
        }
    })
}

fn x_max(history: &[LogEntry]) -> u64 {
    history.iter().map(|e| e.step).max().unwrap_or(1).max(1)
}

/// Exponential moving average, as TensorBoard smooths curves (weight 0.8 on the past).
fn smoothed(points: &[(u64, f64)]) -> Vec<(u64, f64)> {
    let mut out = Vec::with_capacity(points.len());
    let mut avg: Option<f64> = None;
    for &(x, y) in points {
        let a = avg.map_or(y, |a| 0.8 * a + 0.2 * y);
        avg = Some(a);
        out.push((x, a));
    }
    out
}

fn losses<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    history: &[LogEntry],
    style: &Style,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let train: Vec<(u64, f64)> = history
        .iter()
        .map(|e| (e.step, e.train_loss))
        .filter(|p| p.1.is_finite() && (!style.log_scale || p.1 > 0.0))
        .collect();
    let val: Vec<(u64, f64)> = history
        .iter()
        .filter_map(|e| e.val.as_ref().map(|v| (e.step, v.loss)))
        .filter(|p| p.1.is_finite() && (!style.log_scale || p.1 > 0.0))
        .collect();
    let all = train.iter().chain(&val).map(|p| p.1);
    let y_hi = all.clone().fold(f64::MIN, f64::max);
    let y_lo = all.fold(f64::MAX, f64::min);
    let (y_lo, y_hi) = if y_hi < y_lo {
        (0.1, 1.0)
    } else {
        let pad = ((y_hi - y_lo) * 0.05).max(1e-3);
        let lo = if style.log_scale {
            y_lo * 0.95
        } else {
            y_lo - pad
        };
        (lo, y_hi + pad)
    };
    let unit = style.loss_name.replace("nats_per_char", "nats/char");
    let caption = format!(
        "training and validation loss ({unit}){}",
        if style.log_scale { ", log scale" } else { "" }
    );
    let x_max = x_max(history);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(caption, ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55);
    // The two axis kinds are different types, so each branch draws its own chart.
    macro_rules! draw {
        ($chart:expr) => {{
            let mut chart = $chart;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc(unit.as_str())
                .x_label_formatter(&|x| x.to_string())
                .draw()?;
            chart
                .draw_series(LineSeries::new(train.clone(), BLUE.mix(0.25)))?
                .label("train (logged)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE.mix(0.25)));
            chart
                .draw_series(LineSeries::new(smoothed(&train), &BLUE))?
                .label("train (smoothed)")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
            chart
                .draw_series(LineSeries::new(val.clone(), &RED))?
                .label("validation")
                .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
            chart.draw_series(val.iter().map(|&p| Circle::new(p, 3, RED.filled())))?;
            legend(&mut chart)?;
        }};
    }
    if style.log_scale {
        draw!(builder.build_cartesian_2d(0u64..x_max, (y_lo..y_hi).log_scale())?);
    } else {
        draw!(builder.build_cartesian_2d(0u64..x_max, y_lo..y_hi)?);
    }
    Ok(())
}

fn score_panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    scores: &BTreeMap<&str, Vec<(u64, f64)>>,
    x_max: u64,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let all = scores.values().flatten().map(|p| p.1);
    let lo = all.clone().fold(f64::MAX, f64::min).min(1.0);
    let hi = all.fold(f64::MIN, f64::max).max(lo + 1e-3);
    let mut chart = ChartBuilder::on(area)
        .caption("validation scores", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(35)
        .y_label_area_size(55)
        .build_cartesian_2d(0u64..x_max, (lo - 0.02).max(0.0)..(hi + 0.02).min(1.0))?;
    chart
        .configure_mesh()
        .x_desc("step")
        .x_label_formatter(&|x| x.to_string())
        .draw()?;
    let colors = [GREEN, MAGENTA, CYAN, BLACK];
    for (i, (name, pts)) in scores.iter().enumerate() {
        let c = colors[i % colors.len()];
        chart
            .draw_series(LineSeries::new(pts.clone(), c))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c));
        chart.draw_series(pts.iter().map(|&p| Circle::new(p, 3, c.filled())))?;
    }
    legend(&mut chart)?;
    Ok(())
}

/// Draws a confusion matrix (rows: true classes, columns: predictions) as an SVG heat map.
pub fn confusion(matrix: &[Vec<usize>], labels: &[String], path: &Path) -> anyhow::Result<()> {
    let k = labels.len().max(1);
    let cell = (480 / k).clamp(12, 60) as i32;
    let side = cell * k as i32;
    write_svg(path, (side as u32 + 200, side as u32 + 120), |root| {
        root.draw(&Text::new(
            "confusion matrix (rows: true class, columns: predicted)",
            (10, 10),
            ("sans-serif", 16),
        ))?;
        let (x0, y0) = (150, 60);
        for (i, row) in matrix.iter().enumerate() {
            let total = row.iter().sum::<usize>().max(1) as f64;
            root.draw(&Text::new(
                labels[i].clone(),
                (10, y0 + i as i32 * cell + cell / 3),
                ("sans-serif", 12),
            ))?;
            for (j, &v) in row.iter().enumerate() {
                let shade = 1.0 - v as f64 / total;
                let c = RGBColor((255.0 * shade) as u8, (255.0 * shade) as u8, 255);
                let (x, y) = (x0 + j as i32 * cell, y0 + i as i32 * cell);
                root.draw(&Rectangle::new([(x, y), (x + cell, y + cell)], c.filled()))?;
                root.draw(&Rectangle::new(
                    [(x, y), (x + cell, y + cell)],
                    BLACK.stroke_width(1),
                ))?;
                if cell >= 20 {
                    root.draw(&Text::new(
                        v.to_string(),
                        (x + 4, y + cell / 3),
                        ("sans-serif", 11),
                    ))?;
                }
            }
        }
        for (j, l) in labels.iter().enumerate() {
            root.draw(&Text::new(
                l.clone(),
                (x0 + j as i32 * cell + 2, y0 + side + 8),
                ("sans-serif", 11),
            ))?;
        }
        Ok(())
    })
}

/// Draws attention weights (rows: output tokens, columns: source tokens) as an SVG
/// heat map, darker for more weight, each row's weights summing to 1.
pub fn attention(
    source: &[String],
    output: &[String],
    weights: &[Vec<f64>],
    path: &Path,
) -> anyhow::Result<()> {
    let cell = 28i32;
    let (x0, y0) = (70, 60);
    let (w, h) = (source.len() as i32 * cell, output.len() as i32 * cell);
    write_svg(
        path,
        ((x0 + w + 20).max(340) as u32, (y0 + h + 20) as u32),
        |root| {
            root.draw(&Text::new(
                "attention (rows: output, columns: source)",
                (10, 10),
                ("sans-serif", 14),
            ))?;
            for (j, s) in source.iter().enumerate() {
                root.draw(&Text::new(
                    s.clone(),
                    (x0 + j as i32 * cell + cell / 3, y0 - 20),
                    ("sans-serif", 13),
                ))?;
            }
            for (i, (label, row)) in output.iter().zip(weights).enumerate() {
                let y = y0 + i as i32 * cell;
                root.draw(&Text::new(
                    label.clone(),
                    (10, y + cell / 3),
                    ("sans-serif", 13),
                ))?;
                for (j, &a) in row.iter().enumerate() {
                    let shade = (255.0 * (1.0 - a.clamp(0.0, 1.0))) as u8;
                    let x = x0 + j as i32 * cell;
                    let rect = [(x, y), (x + cell, y + cell)];
                    root.draw(&Rectangle::new(
                        rect,
                        RGBColor(shade, shade, shade).filled(),
                    ))?;
                    root.draw(&Rectangle::new(
                        rect,
                        RGBColor(200, 200, 200).stroke_width(1),
                    ))?;
                }
            }
            Ok(())
        },
    )
}
