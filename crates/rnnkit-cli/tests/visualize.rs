//! `rnnkit visualize` end to end: a small model trained by the real binary, the page it
//! writes read back, and (where Chromium is installed; `.ci/run` installs it) the page
//! rendered headless as a person would see it.

use crate::common::*;

use base64::Engine;
use std::path::Path;
use std::process::Command;

/// A small 2-layer LSTM trained for a few steps on a text with quotes and speakers.
fn trained(dir: &Path) -> String {
    let line = "FIRST:\n\"Say it,\" she said.\n\nSECOND:\n  we go on, and on.\n\n";
    std::fs::write(dir.join("t.txt"), line.repeat(60)).unwrap();
    ok(&rnnkit(
        &[
            "train",
            "--data",
            "t.txt",
            "--hidden",
            "16",
            "--layers",
            "2",
            "--embed",
            "8",
            "--batch",
            "4",
            "--seq-len",
            "20",
            "--steps",
            "40",
            "--out",
            "m",
        ],
        dir,
    ));
    "m/latest.safetensors".into()
}

/// The JSON the page carries.
fn page_data(page: &str) -> serde_json::Value {
    let start = page.find("const DATA = ").unwrap() + "const DATA = ".len();
    let end = start + page[start..].find(";\n").unwrap();
    serde_json::from_str(&page[start..end].replace("<\\/", "</")).unwrap()
}

#[test]
fn visualize_writes_a_self_contained_page_with_every_unit() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained(dir.path());
    let o = rnnkit(
        &[
            "visualize",
            "--checkpoint",
            &ckpt,
            "--text",
            "t.txt",
            "--chars",
            "300",
            "--out",
            "p.html",
        ],
        dir.path(),
    );
    ok(&o);
    let page = std::fs::read_to_string(dir.path().join("p.html")).unwrap();
    // Nothing is fetched: no URL a browser would load (the SVG namespace is a name only).
    let urls = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    assert!(!urls.contains("http") && !urls.contains("src=") && !urls.contains("<link"));
    let data = page_data(&page);
    assert_eq!(data["steps"], 300);
    assert_eq!(data["hidden"], 16);
    assert_eq!(data["text"].as_str().unwrap().chars().count(), 300);
    let layers = data["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    for l in layers {
        for kind in ["h", "c"] {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(l[kind].as_str().unwrap())
                .unwrap();
            assert_eq!(
                bytes.len(),
                300 * 16,
                "{kind}: one byte per character and unit"
            );
            assert!(
                bytes.iter().any(|&b| b != 0),
                "{kind}: activations, not zeros"
            );
        }
    }
    let features: Vec<&str> = data["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["feature"].as_str().unwrap())
        .collect();
    assert_eq!(
        features,
        [
            "inside quotes",
            "inside brackets",
            "position in line",
            "indentation",
            "speaker's name",
            "space"
        ]
    );
    // The text has no brackets: that feature is constant and follows no unit.
    for f in data["features"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["feature"] != "inside brackets")
    {
        let units = f["units"].as_array().unwrap();
        assert_eq!(units.len(), 5);
        let r = units[0]["r"].as_f64().unwrap();
        assert!(r.abs() <= 1.0 && r.abs() > 0.0, "{f}");
    }
    // The gate picture: input, forget and output gates of both layers.
    assert!(page.contains("<svg") && page.contains("forget") && page.contains("layer 1"));
    assert!(stderr(&o).contains("inside quotes: layer"));
}

#[test]
fn visualize_refuses_what_it_cannot_show() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained(dir.path());
    std::fs::write(dir.path().join("greek.txt"), "αβγδ").unwrap();
    fails_with(
        &rnnkit(
            &["visualize", "--checkpoint", &ckpt, "--text", "greek.txt"],
            dir.path(),
        ),
        "no character of the text",
    );
    fails_with(
        &rnnkit(
            &["visualize", "--checkpoint", "none.safetensors"],
            dir.path(),
        ),
        "none.safetensors",
    );
    fails_with(
        &rnnkit(
            &["visualize", "--checkpoint", &ckpt, "--text", "missing.txt"],
            dir.path(),
        ),
        "missing.txt",
    );
}

/// Chromium's binary, if installed.
fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// Renders `url` headless into `png` and returns its pixels (RGBA) and width.
fn screenshot(browser: &str, url: &str, png: &Path) -> (Vec<u8>, usize) {
    let o = Command::new(browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            "--window-size=900,700",
            &format!("--screenshot={}", png.display()),
            url,
        ])
        .output()
        .unwrap();
    assert!(
        png.exists(),
        "no screenshot: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(png).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    buf.truncate(info.buffer_size());
    let channels = info.color_type.samples();
    let rgba: Vec<u8> = buf
        .chunks_exact(channels)
        .flat_map(|p| [p[0], p[1 % channels], p[2 % channels], 255])
        .collect();
    (rgba, info.width as usize)
}

#[test]
fn the_page_draws_in_a_browser_and_the_selector_recolours_the_text() {
    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("RNNKIT_REQUIRE_CHROMIUM").is_none(),
            "RNNKIT_REQUIRE_CHROMIUM is set but no Chromium was found"
        );
        eprintln!("skipped: no Chromium installed (apt-get install chromium)");
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let ckpt = trained(dir.path());
    ok(&rnnkit(
        &[
            "visualize",
            "--checkpoint",
            &ckpt,
            "--text",
            "t.txt",
            "--chars",
            "400",
            "--out",
            "p.html",
        ],
        dir.path(),
    ));
    let page = dir.path().join("p.html");
    let url = |unit: u32| format!("file://{}#layer=1&kind=h&unit={unit}", page.display());
    let (a, width) = screenshot(browser, &url(3), &dir.path().join("a.png"));
    let (b, _) = screenshot(browser, &url(11), &dir.path().join("b.png"));
    // Drawn: many colours, text and coloured backgrounds, not a blank page.
    let colours: std::collections::HashSet<&[u8]> = a.chunks_exact(4).collect();
    assert!(
        colours.len() > 50,
        "{} colours: a blank page?",
        colours.len()
    );
    let tinted = a
        .chunks_exact(4)
        .filter(|p| p[2] as i32 - p[0] as i32 > 40 || p[0] as i32 - p[2] as i32 > 40)
        .count();
    assert!(
        tinted > 1000,
        "{tinted} blue or red pixels: the text is not coloured"
    );
    // Another unit colours the text differently.
    assert_eq!(a.len(), b.len());
    let differ = a
        .chunks_exact(4)
        .zip(b.chunks_exact(4))
        .filter(|(x, y)| x != y)
        .count();
    assert!(
        differ > 1000,
        "{differ} pixels changed with the unit (width {width})"
    );
}
