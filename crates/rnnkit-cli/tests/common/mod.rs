//! Helpers shared by the tests that run the `rnnkit` binary.
// Each test file is its own crate and uses only some of these.
#![allow(dead_code)]

use rnnkit::checkpoint::TensorFile;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Runs `rnnkit ARGS` in `dir` and waits for it.
pub fn rnnkit(args: &[&str], dir: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(args)
        .current_dir(dir)
        .output()
        .expect("binary runs")
}

/// Runs `rnnkit ARGS` in `dir` with `input` on its stdin and waits for it.
pub fn rnnkit_with_stdin(args: &[&str], dir: &Path, input: &str) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rnnkit"))
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("binary runs");
    let mut stdin = child.stdin.take().expect("piped");
    // The command may fail before reading all of it: a closed pipe is its answer.
    let _ = stdin.write_all(input.as_bytes());
    drop(stdin);
    child.wait_with_output().expect("binary ends")
}

/// The repository's root (bundled data, fixtures).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// What the command wrote on stderr.
pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// What the command wrote on stdout, which must be UTF-8.
pub fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("UTF-8 stdout")
}

/// The command succeeded.
pub fn ok(o: &Output) {
    assert!(o.status.success(), "{}", stderr(o));
}

/// The command failed without a panic, saying `needle`; returns its stderr.
pub fn fails_with(o: &Output, needle: &str) -> String {
    let e = stderr(o);
    assert!(!o.status.success(), "expected failure, got success: {e}");
    assert!(e.contains(needle), "stderr lacks {needle:?}: {e}");
    assert!(!e.contains("panicked"), "panic: {e}");
    e
}

/// The training step a checkpoint holds.
pub fn step_of(path: &Path) -> u64 {
    TensorFile::open(path).unwrap().metadata()["train.step"]
        .parse()
        .unwrap()
}
