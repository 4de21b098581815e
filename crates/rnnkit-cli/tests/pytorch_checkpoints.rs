//! Checkpoints cross between PyTorch and rnnkit both ways (fixtures in
//! tests/fixtures/charlm, made by tools/charlm_torch.py; see the README there).

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/charlm")
}

fn reference(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(fixtures().join(name)).unwrap()).unwrap()
}

fn rnnkit(args: &[&str]) -> String {
    let o = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(args)
        .current_dir(fixtures())
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

fn eval_nats(checkpoint: &str) -> (u64, f64) {
    let j: serde_json::Value = serde_json::from_str(
        rnnkit(&[
            "eval",
            "--checkpoint",
            checkpoint,
            "--text",
            "sonnet.txt",
            "--json",
        ])
        .trim(),
    )
    .unwrap();
    (
        j["chars"].as_u64().unwrap(),
        j["nats_per_char"].as_f64().unwrap(),
    )
}

#[test]
fn torch_written_checkpoints_give_torch_numbers() {
    for cell in ["lstm", "gru", "rnn_tanh"] {
        let r = reference(&format!("torch_charlm_{cell}.json"));
        let file = r["checkpoint"].as_str().unwrap();
        let (chars, nats) = eval_nats(file);
        assert_eq!(chars, r["chars"].as_u64().unwrap());
        let want = r["nats_per_char"].as_f64().unwrap();
        assert!(
            (nats - want).abs() <= 1e-5 * want,
            "{cell}: eval {nats} vs torch {want}"
        );
        let prime = r["prime"].as_str().unwrap();
        let out = rnnkit(&[
            "sample",
            "--checkpoint",
            file,
            "--prime",
            prime,
            "--length",
            "40",
            "--temperature",
            "0",
        ]);
        assert_eq!(
            out,
            r["greedy_output"].as_str().unwrap(),
            "{cell}: greedy continuation"
        );
    }
}

#[test]
fn rnnkit_written_checkpoints_give_the_same_numbers_in_torch() {
    for cell in ["lstm", "gru"] {
        let r = reference(&format!("rnnkit_charlm_{cell}.json"));
        let (_, nats) = eval_nats(r["checkpoint"].as_str().unwrap());
        let torch = r["nats_per_char"].as_f64().unwrap();
        assert!(
            (nats - torch).abs() <= 1e-5 * torch,
            "{cell}: rnnkit {nats} vs torch {torch}"
        );
    }
}
