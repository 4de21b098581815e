//! `rnnkit lab` end to end: the real binary in a temporary folder.

mod common;
use common::*;

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
