//! The loss curve (train and validation against steps) as an SVG picture.

use plotters::prelude::*;
use rnnkit::train::EvalReport;
use std::path::Path;

/// Draws `history` to `path` (SVG), replacing the file atomically.
pub fn loss_curve(history: &[EvalReport], path: &Path) -> anyhow::Result<()> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (800, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let train: Vec<(f64, f64)> = history
            .iter()
            .map(|e| (e.step as f64, e.train_nats_per_char))
            .filter(|p| p.1.is_finite())
            .collect();
        let val: Vec<(f64, f64)> = history
            .iter()
            .filter_map(|e| e.val_nats_per_char.map(|v| (e.step as f64, v)))
            .collect();
        let all = train.iter().chain(&val);
        let x_max = all.clone().map(|p| p.0).fold(1.0, f64::max);
        let y_max = all.clone().map(|p| p.1).fold(0.5, f64::max) * 1.05;
        let y_min = all.map(|p| p.1).fold(y_max, f64::min) * 0.95;
        let mut chart = ChartBuilder::on(&root)
            .caption("cross-entropy (nats per character)", ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(35)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..x_max, y_min.min(y_max - 1e-3)..y_max)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("nats/char")
            .draw()?;
        chart
            .draw_series(LineSeries::new(train, &BLUE))?
            .label("train")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], BLUE));
        chart
            .draw_series(LineSeries::new(val, &RED))?
            .label("validation")
            .legend(|(x, y)| PathElement::new([(x, y), (x + 20, y)], RED));
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE)
            .draw()?;
        root.present()?;
    }
    rnnkit::checkpoint::write_atomic(path, svg.as_bytes())?;
    Ok(())
}
