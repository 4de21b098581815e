//! `rnnkit lab` end to end: the real binary in a temporary folder.

use crate::common::*;

#[test]
fn lab_rtrl_compares_both_methods_for_each_hidden_size() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "lab",
            "rtrl",
            "--hidden",
            "4,8",
            "--steps",
            "400",
            "--truncation",
            "10",
            "--json",
            "--svg",
            "r.svg",
        ],
        dir.path(),
    );
    ok(&o);
    let out = stdout(&o);
    let j: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    let runs = j["runs"].as_array().unwrap();
    let methods: Vec<(u64, &str)> = runs
        .iter()
        .map(|r| (r["hidden"].as_u64().unwrap(), r["method"].as_str().unwrap()))
        .collect();
    assert_eq!(
        methods,
        [(4, "rtrl"), (4, "tbptt-10"), (8, "rtrl"), (8, "tbptt-10")]
    );
    for r in runs {
        let curve = r["curve"].as_array().unwrap();
        assert_eq!(curve.len(), 20);
        let first = curve[0][2].as_f64().unwrap();
        let last = r["final_loss"].as_f64().unwrap();
        assert!(last.is_finite() && last < first, "{r}");
        assert!(r["state_bytes"].as_u64().unwrap() > 0);
    }
    // RTRL's sensitivities (H·P floats) outweigh a 10-step BPTT window.
    assert!(runs[0]["state_bytes"].as_u64() > runs[1]["state_bytes"].as_u64());
    assert_eq!(j["memory_crossover_chars"].as_array().unwrap().len(), 2);
    let svg = std::fs::read_to_string(dir.path().join("r.svg")).unwrap();
    assert!(svg.contains("RTRL vs truncated BPTT"), "{svg}");
}

#[test]
fn lab_rtrl_refuses_a_short_text_and_bad_numbers() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("t.txt"), "abcabc").unwrap();
    let o = rnnkit(
        &["lab", "rtrl", "--data", "t.txt", "--steps", "10"],
        dir.path(),
    );
    fails_with(&o, "needs 11 characters");
    fails_with(&rnnkit(&["lab", "rtrl", "--lr", "NaN"], dir.path()), "--lr");
    fails_with(
        &rnnkit(&["lab", "rtrl", "--hidden", "0"], dir.path()),
        "--hidden",
    );
    fails_with(
        &rnnkit(&["lab", "rtrl", "--data", "none.txt"], dir.path()),
        "none.txt",
    );
}

#[test]
fn lab_gradients_shows_vanishing_at_init_and_explosion_with_large_weights() {
    let dir = tempfile::tempdir().unwrap();
    let run = |extra: &[&str]| {
        let mut args = vec![
            "lab",
            "gradients",
            "--hidden",
            "16",
            "--steps",
            "40",
            "--draws",
            "2",
            "--json",
        ];
        args.extend_from_slice(extra);
        let o = rnnkit(&args, dir.path());
        ok(&o);
        let j: serde_json::Value =
            serde_json::from_str(stdout(&o).lines().last().unwrap()).unwrap();
        j["cells"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let rel: Vec<f64> = c["relative_norm"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                (c["cell"].as_str().unwrap().to_string(), rel)
            })
            .collect::<Vec<_>>()
    };
    let init = run(&["--svg", "g.svg"]);
    let names: Vec<&str> = init.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["rnn_tanh", "rnn_relu", "lstm", "gru"]);
    for (name, rel) in &init {
        assert_eq!(rel.len(), 40);
        assert!((rel[0] - 1.0).abs() < 1e-12);
        assert!(rel[39] < 1e-3, "{name} at init should vanish: {}", rel[39]);
    }
    assert!(std::fs::read_to_string(dir.path().join("g.svg"))
        .unwrap()
        .contains("gradient through time"));
    let big = run(&[
        "--cells",
        "rnn_relu",
        "--weight-scale",
        "3",
        "--svg",
        "h.svg",
    ]);
    assert!(
        big[0].1[39] > 1e3,
        "relu with 3× weights should explode: {}",
        big[0].1[39]
    );
    fails_with(
        &rnnkit(&["lab", "gradients", "--weight-scale", "inf"], dir.path()),
        "--weight-scale",
    );
}

/// The last line of stdout as JSON.
fn json_of(o: &std::process::Output) -> serde_json::Value {
    serde_json::from_str(stdout(o).lines().last().unwrap()).unwrap()
}

#[test]
fn lab_memory_finds_where_each_cell_stops_and_draws_both_pictures() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "lab",
            "memory",
            "--task",
            "adding",
            "--cells",
            "rnn_tanh,gru",
            "--lengths",
            "4,30",
            "--hidden",
            "16",
            "--steps",
            "300",
            "--lr",
            "0.01",
            "--seeds",
            "1",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let j = json_of(&o);
    assert_eq!(j["task"], "adding");
    assert_eq!(j["lengths"], serde_json::json!([4, 30]));
    let cells = j["cells"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    for c in cells {
        let med: Vec<f64> = serde_json::from_value(c["median"].clone()).unwrap();
        // Short dependencies are learned; every score is a real MSE.
        assert!(med[0] < 0.05 && med.iter().all(|m| m.is_finite()), "{c}");
        // The gradient through time: a norm per step back, relative to the last.
        for key in ["flow_init", "flow_trained"] {
            let flow = c[key].as_array().unwrap();
            assert_eq!(flow.len(), 30, "{key}");
            assert_eq!(flow[0].as_f64(), Some(1.0));
        }
    }
    // The vanilla RNN's gradient from 30 steps back has vanished at initialisation.
    assert!(
        cells[0]["flow_init"][29].as_f64().unwrap() < 1e-3,
        "{}",
        cells[0]
    );
    assert!(stdout(&o).contains("solved up to"));
    let svg = std::fs::read_to_string(dir.path().join("lab-memory.svg")).unwrap();
    assert!(
        svg.contains("adding: mse against T") && svg.contains("gru"),
        "{svg}"
    );
    let flow = std::fs::read_to_string(dir.path().join("lab-memory-flow.svg")).unwrap();
    assert!(flow.contains("gradient through time at T = 30"));
}

#[test]
fn lab_memory_recall_and_copy_score_accuracy() {
    let dir = tempfile::tempdir().unwrap();
    for task in ["copy", "recall"] {
        let o = rnnkit(
            &[
                "lab",
                "memory",
                "--task",
                task,
                "--cells",
                "lstm",
                "--lengths",
                "3",
                "--hidden",
                "8",
                "--steps",
                "5",
                "--seeds",
                "2",
                "--json",
            ],
            dir.path(),
        );
        ok(&o);
        let j = json_of(&o);
        assert_eq!(j["metric"], "accuracy");
        let scores: Vec<Vec<f64>> =
            serde_json::from_value(j["cells"][0]["scores"].clone()).unwrap();
        assert_eq!(scores.len(), 1);
        assert_eq!(scores[0].len(), 2, "one score per seed");
        // Five updates learn nothing: near chance (1/8), far from solving.
        assert!(
            scores[0].iter().all(|&s| (0.0..0.5).contains(&s)),
            "{scores:?}"
        );
        assert_eq!(j["cells"][0]["solved_up_to"], serde_json::Value::Null);
    }
}

#[test]
fn lab_clipping_keeps_an_exploding_run_finite() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "lab",
            "clipping",
            "--length",
            "30",
            "--hidden",
            "16",
            "--weight-scale",
            "6",
            "--steps",
            "100",
            "--clips",
            "0,1",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let j = json_of(&o);
    let runs = j["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    let max_norm = |r: &serde_json::Value| {
        r["curve"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p[2].as_f64().unwrap_or(f64::INFINITY))
            .fold(0.0f64, f64::max)
    };
    // Scaled weights: gradients far above the clip; the clipped run stays finite.
    assert!(max_norm(&runs[0]) > 10.0, "{}", runs[0]);
    assert_eq!(runs[1]["diverged_at"], serde_json::Value::Null);
    assert!(runs[1]["curve"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p[1].as_f64().is_some_and(f64::is_finite)));
    assert!(dir.path().join("lab-clipping.svg").exists());
    fails_with(
        &rnnkit(&["lab", "clipping", "--clips=0,-1"], dir.path()),
        "--clips",
    );
    fails_with(
        &rnnkit(&["lab", "memory", "--lengths", "1"], dir.path()),
        "--lengths",
    );
    // Sizes no machine holds are refused before anything is allocated.
    let o = rnnkit(
        &[
            "lab",
            "memory",
            "--lengths",
            "5000",
            "--batch",
            "4096",
            "--hidden",
            "1024",
        ],
        dir.path(),
    );
    fails_with(&o, "memory");
    let o = rnnkit(
        &[
            "lab",
            "truncation",
            "--lengths",
            "10000",
            "--batch",
            "4096",
            "--hidden",
            "4096",
        ],
        dir.path(),
    );
    fails_with(&o, "memory");
}

#[test]
fn lab_truncation_trains_every_window_on_the_same_characters() {
    let dir = tempfile::tempdir().unwrap();
    let o = rnnkit(
        &[
            "lab",
            "truncation",
            "--lengths",
            "5,20",
            "--chars",
            "20000",
            "--hidden",
            "16",
            "--embed",
            "8",
            "--batch",
            "8",
            "--json",
        ],
        dir.path(),
    );
    ok(&o);
    let j = json_of(&o);
    let runs = j["runs"].as_array().unwrap();
    let updates: Vec<u64> = runs
        .iter()
        .map(|r| r["updates"].as_u64().unwrap())
        .collect();
    // 20000 characters in batches of 8 streams: 500 windows of 5, 125 of 20.
    assert_eq!(updates, [500, 125]);
    for r in runs {
        let v = r["val_nats_per_char"].as_f64().unwrap();
        // Below a uniform guess over Shakespeare's ~65 characters (ln 65 ≈ 4.17).
        assert!(v.is_finite() && v < 4.0, "{r}");
    }
    assert!(dir.path().join("lab-truncation.svg").exists());
    fails_with(
        &rnnkit(&["lab", "truncation", "--val-frac", "0"], dir.path()),
        "--val-frac",
    );
}
