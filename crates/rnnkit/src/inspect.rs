//! A look inside a trained char LM (after Karpathy, Johnson and Fei-Fei 2015): every
//! unit's activation at every character of a text, the units that follow simple
//! features of the text, and how often each gate is saturated.

use crate::cell::CellKind;
use crate::error::{Error, Result};
use crate::model::{CharLm, Precision, Stepper};

/// Activations of every layer along a text, one row per character.
#[derive(Clone, Debug)]
pub struct Trace {
    /// The recurrence.
    pub cell: CellKind,
    /// Hidden units per layer.
    pub hidden: usize,
    /// Characters traced.
    pub steps: usize,
    /// Per layer, `h_t` after each character `[T, H]`.
    pub h: Vec<Vec<f32>>,
    /// Per layer, `tanh(c_t)` after each character `[T, H]` (LSTM only; else empty).
    pub c: Vec<Vec<f32>>,
    /// Per layer, the activated gates at each character `[T, G, H]` (gated cells only).
    pub gates: Vec<Vec<f32>>,
}

/// Runs `model` over `ids` from the zero state, one character at a time, keeping
/// every layer's state and gates at every step.
pub fn trace(model: &CharLm, ids: &[usize]) -> Result<Trace> {
    let cfg = model.rnn.config();
    let (layers, hidden, cell) = (cfg.num_layers, cfg.hidden_size, cfg.cell);
    // h, tanh(c) and the gates of every layer at every step.
    let floats = (ids.len() as u64).saturating_mul((layers * hidden * (cell.gates() + 2)) as u64);
    crate::train::check_memory(floats.saturating_mul(4), "--chars")?;
    let mut stepper = Stepper::new(model, Precision::F32)?;
    stepper.record_gates(true);
    let lstm = cell == CellKind::Lstm;
    let (mut h, mut c, mut gates) = (
        vec![Vec::with_capacity(ids.len() * hidden); layers],
        vec![Vec::new(); layers],
        vec![Vec::new(); layers],
    );
    for &id in ids {
        stepper.feed(id)?;
        for l in 0..layers {
            let (hl, cl) = stepper.state(l);
            h[l].extend_from_slice(hl);
            if lstm {
                c[l].extend(cl.iter().map(|v| v.tanh()));
            }
            gates[l].extend_from_slice(stepper.gates(l));
        }
    }
    Ok(Trace {
        cell,
        hidden,
        steps: ids.len(),
        h,
        c,
        gates,
    })
}

/// The names of a cell's gates, in their order in [`Trace::gates`].
pub fn gate_names(cell: CellKind) -> &'static [&'static str] {
    match cell {
        CellKind::Lstm => &["input", "forget", "cell", "output"],
        CellKind::Gru | CellKind::GruResetBefore => &["reset", "update", "candidate"],
        CellKind::RnnTanh | CellKind::RnnRelu => &[],
    }
}

/// Per gate (sigmoid gates only) and unit of `layer`, the fractions of steps at
/// which the gate is left-saturated (< 0.1) and right-saturated (> 0.9).
pub fn saturation(trace: &Trace, layer: usize) -> Vec<(&'static str, Vec<(f64, f64)>)> {
    let names = gate_names(trace.cell);
    let h = trace.hidden;
    let g = names.len();
    let data = &trace.gates[layer];
    let mut out = Vec::new();
    for (gate, &name) in names.iter().enumerate() {
        if matches!(name, "cell" | "candidate") {
            continue; // tanh, not a gate
        }
        let units = (0..h)
            .map(|j| {
                let (mut left, mut right) = (0usize, 0usize);
                for t in 0..trace.steps {
                    let v = data[(t * g + gate) * h + j];
                    left += usize::from(v < 0.1);
                    right += usize::from(v > 0.9);
                }
                let n = trace.steps.max(1) as f64;
                (left as f64 / n, right as f64 / n)
            })
            .collect();
        out.push((name, units));
    }
    out
}

/// Simple features of each character of `text`, as numbers: inside double quotes,
/// inside square brackets (a play's stage directions), position in the line,
/// indentation of the line, inside a speaker's name (a line of one or two words
/// ending in `:` or `.` after an empty line, as in a play), the character is a space.
pub fn text_features(text: &str) -> Vec<(&'static str, Vec<f32>)> {
    let mut f: [Vec<f32>; 6] = Default::default();
    let (mut quoted, mut bracketed, mut after_blank) = (false, false, true);
    for line in text.split_inclusive('\n') {
        let body = line.strip_suffix('\n').unwrap_or(line);
        let lead = body.chars().take_while(|c| *c == ' ' || *c == '\t').count();
        let words = body.split_whitespace().count();
        let name = after_blank
            && (1..=2).contains(&words)
            && (body.ends_with(':') || body.ends_with('.'))
            && body.trim_start().starts_with(char::is_uppercase);
        after_blank = body.trim().is_empty();
        for (column, ch) in line.chars().enumerate() {
            match ch {
                '"' => quoted = !quoted,
                '[' => bracketed = true,
                _ => {}
            }
            let values = [
                f32::from(u8::from(quoted)),
                f32::from(u8::from(bracketed)),
                column as f32,
                lead as f32,
                f32::from(u8::from(name)),
                f32::from(u8::from(ch == ' ')),
            ];
            for (list, v) in f.iter_mut().zip(values) {
                list.push(v);
            }
            if ch == ']' {
                bracketed = false;
            }
        }
    }
    let [quote, bracket, column, indent, speaker, space] = f;
    vec![
        ("inside quotes", quote),
        ("inside brackets", bracket),
        ("position in line", column),
        ("indentation", indent),
        ("speaker's name", speaker),
        ("space", space),
    ]
}

/// A unit of the trace: layer, which state, index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Layer.
    pub layer: usize,
    /// `true`: `tanh(c)` (LSTM), `false`: `h`.
    pub cell_state: bool,
    /// Index within the layer.
    pub index: usize,
}

/// For `feature` (one value per step of `trace`), the `top` units whose activation
/// correlates most with it (Pearson r, by |r|), over every layer's h and tanh(c).
pub fn correlated_units(trace: &Trace, feature: &[f32], top: usize) -> Result<Vec<(Unit, f64)>> {
    if feature.len() != trace.steps {
        return Err(Error::Shape(format!(
            "{} feature values for a trace of {} steps",
            feature.len(),
            trace.steps
        )));
    }
    let mut all = Vec::new();
    for layer in 0..trace.h.len() {
        for (cell_state, data) in [(false, &trace.h[layer]), (true, &trace.c[layer])] {
            if data.is_empty() {
                continue;
            }
            for index in 0..trace.hidden {
                let acts = (0..trace.steps).map(|t| data[t * trace.hidden + index]);
                if let Some(r) = pearson(acts, feature) {
                    all.push((
                        Unit {
                            layer,
                            cell_state,
                            index,
                        },
                        r,
                    ));
                }
            }
        }
    }
    all.sort_by(|a, b| b.1.abs().total_cmp(&a.1.abs()));
    all.truncate(top);
    Ok(all)
}

/// Pearson's r of `a` and `b`; `None` when either is constant.
fn pearson(a: impl Iterator<Item = f32> + Clone, b: &[f32]) -> Option<f64> {
    let n = b.len() as f64;
    let ma = a.clone().map(f64::from).sum::<f64>() / n;
    let mb = b.iter().map(|&v| f64::from(v)).sum::<f64>() / n;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, &y) in a.zip(b) {
        let (dx, dy) = (f64::from(x) - ma, f64::from(y) - mb);
        sab += dx * dy;
        saa += dx * dx;
        sbb += dy * dy;
    }
    (saa > 0.0 && sbb > 0.0).then(|| sab / (saa * sbb).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_mark_quotes_brackets_columns_indents_and_speakers() {
        let text = "Ber.\nSay \"hi\" [Exit.]\n\n  Hor.\nYes.\n";
        let f = text_features(text);
        let get = |name: &str| f.iter().find(|(n, _)| *n == name).unwrap().1.clone();
        let at = |s: &str| text.find(s).unwrap();
        assert_eq!(get("inside quotes")[at("hi")], 1.0);
        assert_eq!(get("inside quotes")[at("Say")], 0.0);
        assert_eq!(get("inside brackets")[at("Exit")], 1.0);
        assert_eq!(get("inside brackets")[at("]")], 1.0);
        assert_eq!(get("inside brackets")[at("Say")], 0.0);
        assert_eq!(get("position in line")[at("hi")], 5.0);
        assert_eq!(get("indentation")[at("Hor")], 2.0);
        // Speakers: a short line after an empty one; "Yes." follows a speaker, not a blank.
        assert_eq!(get("speaker's name")[at("Ber")], 1.0);
        assert_eq!(get("speaker's name")[at("Hor")], 1.0);
        assert_eq!(get("speaker's name")[at("Yes")], 0.0);
        assert_eq!(get("space")[at(" \"hi")], 1.0);
        assert!(f.iter().all(|(_, v)| v.len() == text.chars().count()));
    }

    #[test]
    fn pearson_finds_the_unit_that_follows_a_feature() {
        let feature = [0.0, 1.0, 1.0, 0.0, 1.0, 0.0];
        let trace = Trace {
            cell: CellKind::RnnTanh,
            hidden: 2,
            steps: 6,
            // Unit 1 follows the feature inverted; unit 0 is noise.
            h: vec![vec![
                0.3, 0.9, -0.1, -0.8, 0.2, -0.7, 0.5, 0.6, -0.4, -0.9, 0.1, 0.8,
            ]],
            c: vec![Vec::new()],
            gates: vec![Vec::new()],
        };
        let top = correlated_units(&trace, &feature, 1).unwrap();
        assert_eq!(top[0].0.index, 1);
        assert!((top[0].1 + 1.0).abs() < 0.05, "{}", top[0].1);
        assert!(correlated_units(&trace, &feature[..3], 1).is_err());
        // A constant feature correlates with nothing.
        assert!(correlated_units(&trace, &[1.0; 6], 3).unwrap().is_empty());
    }
}
