//! Helpers shared by the tests that run the `rnnkit` binary.
// The Keras and MPI test binaries use only some of these.
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

/// A 16-bit mono PCM WAV file of `samples` at `rate`.
pub fn write_wav(path: &Path, samples: &[f32], rate: u32) {
    let data: Vec<u8> = samples
        .iter()
        .flat_map(|s| ((s.clamp(-1.0, 1.0) * 32767.0) as i16).to_le_bytes())
        .collect();
    let mut b = Vec::with_capacity(44 + data.len());
    b.extend_from_slice(b"RIFF");
    b.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
    b.extend_from_slice(b"WAVEfmt ");
    b.extend_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&1u16.to_le_bytes()); // PCM
    b.extend_from_slice(&1u16.to_le_bytes()); // mono
    b.extend_from_slice(&rate.to_le_bytes());
    b.extend_from_slice(&(rate * 2).to_le_bytes());
    b.extend_from_slice(&2u16.to_le_bytes());
    b.extend_from_slice(&16u16.to_le_bytes());
    b.extend_from_slice(b"data");
    b.extend_from_slice(&(data.len() as u32).to_le_bytes());
    b.extend_from_slice(&data);
    std::fs::write(path, b).unwrap();
}

/// `n` utterances of 1–4 labels from "abc" (a = 400 Hz, b = 1200 Hz, c = 3000 Hz tones
/// of 120–200 ms with 60–120 ms pauses, a little noise) and their manifest `name`.
pub fn write_tones(dir: &Path, name: &str, n: usize, seed: u64) {
    let mut rng = rnnkit::Rng::new(seed);
    let rate = 16_000.0;
    let mut manifest = String::new();
    for i in 0..n {
        let len = 1 + rng.below(4);
        let text: String = (0..len).map(|_| ['a', 'b', 'c'][rng.below(3)]).collect();
        let mut s = Vec::new();
        let pause = |rng: &mut rnnkit::Rng, s: &mut Vec<f32>| {
            let k = (rate * rng.uniform_in(0.06, 0.12)) as usize;
            s.extend((0..k).map(|_| 0.0));
        };
        pause(&mut rng, &mut s);
        for c in text.chars() {
            let f = match c {
                'a' => 400.0,
                'b' => 1200.0,
                _ => 3000.0,
            };
            let k = (rate * rng.uniform_in(0.12, 0.2)) as usize;
            s.extend(
                (0..k)
                    .map(|t| 0.5 * (2.0 * std::f64::consts::PI * f * t as f64 / rate).sin() as f32),
            );
            pause(&mut rng, &mut s);
        }
        for v in s.iter_mut() {
            *v += 0.01 * rng.uniform_in(-1.0, 1.0) as f32;
        }
        let file = format!("{name}-{i}.wav");
        write_wav(&dir.join(&file), &s, 16_000);
        manifest.push_str(&format!("{file}\t{text}\tspeaker{}\n", i % 2));
    }
    std::fs::write(dir.join(format!("{name}.tsv")), manifest).unwrap();
}
