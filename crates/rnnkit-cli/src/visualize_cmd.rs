//! `rnnkit visualize`: one self-contained HTML page showing a trained char LM at
//! work on a text: each character coloured by a chosen unit's activation (any
//! layer, h or the LSTM's cell state), the units that follow simple features of the
//! text, and how often each gate is saturated.

use crate::plot::svg_string;
use crate::train_cmd::SHAKESPEARE;
use anyhow::Context;
use base64::Engine;
use clap::Args;
use plotters::prelude::*;
use rnnkit::inspect::{correlated_units, saturation, text_features, trace, Trace, Unit};
use rnnkit::model::CharLm;
use std::path::PathBuf;
use std::process::ExitCode;

/// Flags of `rnnkit visualize`.
#[derive(Args)]
pub struct VisualizeOpts {
    /// A char-LM checkpoint (unidirectional).
    #[arg(long)]
    checkpoint: PathBuf,
    /// The text to run it on [default: the bundled Shakespeare].
    #[arg(long)]
    text: Option<PathBuf>,
    /// Characters of the text to show, from --start.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u32).range(1..=50_000))]
    chars: u32,
    /// Character offset in the text where the shown part starts.
    #[arg(long, default_value_t = 0)]
    start: u64,
    /// Units listed per feature of the text.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    top: u32,
    /// The page to write.
    #[arg(long, default_value = "visualize.html")]
    out: PathBuf,
}

pub fn run(o: VisualizeOpts) -> anyhow::Result<ExitCode> {
    let (model, _) = CharLm::load(&o.checkpoint)
        .with_context(|| format!("--checkpoint {}", o.checkpoint.display()))?;
    let text = match &o.text {
        Some(p) => rnnkit::data::read_text(p).with_context(|| format!("--text {}", p.display()))?,
        None => SHAKESPEARE.to_string(),
    };
    let part: String = text
        .chars()
        .skip(usize::try_from(o.start).unwrap_or(usize::MAX))
        .take(o.chars as usize)
        .collect();
    // Characters the model never saw cannot be fed: they are left out, and counted.
    let vocab = model.vocab();
    let shown: String = part.chars().filter(|&c| vocab.id(c).is_some()).collect();
    let dropped = part.chars().count() - shown.chars().count();
    if shown.is_empty() {
        anyhow::bail!(
            "no character of the text from --start {} is in the model's vocabulary; give another --text or --start",
            o.start
        );
    }
    if dropped > 0 {
        eprintln!("{dropped} characters not in the model's vocabulary were left out");
    }
    let ids = vocab.encode(&shown)?;
    let tr = trace(&model, &ids).context("running the model over the text")?;
    let features = text_features(&shown);
    let mut found = Vec::new();
    for (name, values) in &features {
        found.push((*name, correlated_units(&tr, values, o.top as usize)?));
    }
    let gates = gate_picture(&tr)?;
    let page = page(&o, &shown, &tr, &found, &gates)?;
    rnnkit::checkpoint::write_atomic(&o.out, page.as_bytes())
        .with_context(|| format!("--out {}", o.out.display()))?;
    for (name, units) in &found {
        match units.first() {
            Some((u, r)) => eprintln!("{name}: {} (r = {r:+.2})", unit_name(u)),
            None => eprintln!("{name}: constant in this text"),
        }
    }
    eprintln!(
        "page: {} ({} characters, {} layers of {} units)",
        o.out.display(),
        tr.steps,
        tr.h.len(),
        tr.hidden
    );
    Ok(ExitCode::SUCCESS)
}

fn unit_name(u: &Unit) -> String {
    format!(
        "layer {} {} unit {}",
        u.layer,
        if u.cell_state { "cell" } else { "h" },
        u.index
    )
}

/// Activations in [-1, 1] as signed bytes (×127), base64.
fn quantised(v: &[f32]) -> String {
    let bytes: Vec<u8> = v
        .iter()
        .map(|x| ((x.clamp(-1.0, 1.0) * 127.0).round() as i8) as u8)
        .collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Gate saturation, one panel per layer: each unit's share of steps with the gate
/// below 0.1 (x) and above 0.9 (y), one colour per gate.
fn gate_picture(tr: &Trace) -> anyhow::Result<String> {
    let layers = tr.gates.iter().filter(|g| !g.is_empty()).count();
    if layers == 0 {
        return Ok(String::new());
    }
    let panels: Vec<_> = (0..layers).map(|l| saturation(tr, l)).collect();
    svg_string((360 * layers as u32, 380), |root| {
        for (l, (area, gates)) in root
            .split_evenly((1, layers))
            .iter()
            .zip(&panels)
            .enumerate()
        {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("layer {l}"), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(36)
                .y_label_area_size(44)
                .build_cartesian_2d(0.0..1.0f64, 0.0..1.0f64)?;
            chart
                .configure_mesh()
                .x_desc("left-saturated (< 0.1)")
                .y_desc("right-saturated (> 0.9)")
                .draw()?;
            for (i, (name, units)) in gates.iter().enumerate() {
                let color = Palette99::pick(i).to_rgba();
                chart
                    .draw_series(
                        units
                            .iter()
                            .map(|&(x, y)| Circle::new((x, y), 3, color.filled())),
                    )?
                    .label(*name)
                    .legend(move |(x, y)| Circle::new((x + 6, y), 4, color.filled()));
            }
            crate::plot::legend(&mut chart)?;
        }
        Ok(())
    })
}

/// The page: the data as JSON, a renderer in plain JavaScript, no network.
fn page(
    o: &VisualizeOpts,
    text: &str,
    tr: &Trace,
    found: &[(&str, Vec<(Unit, f64)>)],
    gates: &str,
) -> anyhow::Result<String> {
    let layers: Vec<serde_json::Value> = (0..tr.h.len())
        .map(|l| {
            serde_json::json!({
                "h": quantised(&tr.h[l]),
                "c": if tr.c[l].is_empty() { serde_json::Value::Null } else { quantised(&tr.c[l]).into() },
            })
        })
        .collect();
    let features: Vec<serde_json::Value> = found
        .iter()
        .map(|(name, units)| {
            serde_json::json!({
                "feature": name,
                "units": units.iter().map(|(u, r)| serde_json::json!({
                    "layer": u.layer, "kind": if u.cell_state { "c" } else { "h" }, "unit": u.index, "r": r,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    let data = serde_json::json!({
        "checkpoint": o.checkpoint.display().to_string(),
        "cell": tr.cell.name(),
        "hidden": tr.hidden,
        "steps": tr.steps,
        "text": text,
        "layers": layers,
        "features": features,
    });
    // `</` inside a script would end it: JSON may escape the slash.
    let json = serde_json::to_string(&data)?.replace("</", "<\\/");
    let gate_section = if gates.is_empty() {
        "<p>This cell has no gates.</p>".to_string()
    } else {
        format!("<p>Each dot is a unit: the share of characters at which its gate is nearly closed (x) or nearly open (y).</p>\n{gates}")
    };
    Ok(format!(
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>rnnkit visualize</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; color: #222; background: #fff; }}
#text {{ font-family: monospace; font-size: 14px; line-height: 1.5; white-space: pre-wrap; word-break: break-all; border: 1px solid #ccc; padding: 0.6em; }}
#text span {{ padding: 0; }}
#controls {{ margin: 0.6em 0; }}
#controls select, #controls input {{ margin-right: 1em; }}
table {{ border-collapse: collapse; }}
td, th {{ border: 1px solid #ccc; padding: 0.2em 0.6em; text-align: left; }}
a {{ cursor: pointer; color: #0645ad; }}
</style></head>
<body>
<h1>Inside a char LM</h1>
<p id="about"></p>
<div id="controls">
layer <select id="layer"></select>
state <select id="kind"><option value="h">h (hidden)</option><option value="c">tanh(c) (cell)</option></select>
unit <input id="unit" type="number" min="0" value="0" style="width:5em">
<button id="prev">&#9664;</button><button id="next">&#9654;</button>
<span id="legend"></span>
</div>
<div id="text"></div>
<h2>Units that follow features of the text</h2>
<p>Pearson correlation over the characters shown; click a unit to colour the text by it.</p>
<table id="features"><tr><th>feature</th><th>units (r)</th></tr></table>
<h2>Gate saturation</h2>
{gate_section}
<script>
const DATA = {json};
const decode = b64 => Int8Array.from(atob(b64), ch => ch.charCodeAt(0));
const acts = DATA.layers.map(l => ({{ h: decode(l.h), c: l.c === null ? null : decode(l.c) }}));
const H = DATA.hidden, T = DATA.steps;
const $ = id => document.getElementById(id);
$('about').textContent = DATA.checkpoint + ': ' + DATA.cell + ', ' + DATA.layers.length + ' layer(s) of ' + H + ' units, ' + T + ' characters. Blue: positive activation, red: negative.';
DATA.layers.forEach((_, i) => {{ const o = document.createElement('option'); o.value = i; o.textContent = i; $('layer').appendChild(o); }});
$('unit').max = H - 1;
if (DATA.layers.every(l => l.c === null)) $('kind').querySelector('option[value=c]').disabled = true;
const spans = [];
for (const ch of DATA.text) {{ const s = document.createElement('span'); s.textContent = ch; $('text').appendChild(s); spans.push(s); }}
function colour(v) {{
  const a = Math.min(1, Math.abs(v) / 127);
  return v >= 0 ? `rgba(30, 90, 230, ${{a}})` : `rgba(220, 40, 40, ${{a}})`;
}}
function state() {{
  const p = new URLSearchParams(location.hash.slice(1));
  const layer = Math.min(Math.max(parseInt(p.get('layer') || '0', 10) || 0, 0), DATA.layers.length - 1);
  let kind = p.get('kind') === 'c' && acts[layer].c !== null ? 'c' : 'h';
  const unit = Math.min(Math.max(parseInt(p.get('unit') || '0', 10) || 0, 0), H - 1);
  return {{ layer, kind, unit }};
}}
function select(layer, kind, unit) {{ location.hash = `layer=${{layer}}&kind=${{kind}}&unit=${{unit}}`; }}
function render() {{
  const s = state();
  $('layer').value = s.layer; $('kind').value = s.kind; $('unit').value = s.unit;
  const a = acts[s.layer][s.kind];
  for (let t = 0; t < T; t++) spans[t].style.backgroundColor = colour(a[t * H + s.unit]);
  $('legend').textContent = `layer ${{s.layer}}, ${{s.kind === 'c' ? 'tanh(c)' : 'h'}}, unit ${{s.unit}}`;
}}
for (const f of DATA.features) {{
  const tr = document.createElement('tr');
  const name = document.createElement('td'); name.textContent = f.feature; tr.appendChild(name);
  const td = document.createElement('td');
  f.units.forEach((u, i) => {{
    const link = document.createElement('a');
    link.textContent = `${{u.layer}}/${{u.kind}}/${{u.unit}} (${{u.r.toFixed(2)}})`;
    link.onclick = () => select(u.layer, u.kind, u.unit);
    if (i) td.appendChild(document.createTextNode(', '));
    td.appendChild(link);
  }});
  tr.appendChild(td); $('features').appendChild(tr);
}}
const change = () => select($('layer').value, $('kind').value, $('unit').value);
$('layer').onchange = change; $('kind').onchange = change; $('unit').onchange = change;
$('prev').onclick = () => {{ const s = state(); select(s.layer, s.kind, (s.unit + H - 1) % H); }};
$('next').onclick = () => {{ const s = state(); select(s.layer, s.kind, (s.unit + 1) % H); }};
window.addEventListener('hashchange', render);
render();
</script>
</body></html>
"#
    ))
}
