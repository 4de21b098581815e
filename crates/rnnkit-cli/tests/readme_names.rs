//! Every source file and tool the README names exists, so its pointers stay true.

use std::path::{Path, PathBuf};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every file under `dir` (recursively), as paths.
fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        let name = e.file_name();
        if name == "target" || name == ".git" || name == "runs" {
            continue;
        }
        if p.is_dir() {
            files(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Folders the README tells the user to make (ignored by git, absent from a clone).
const GENERATED: &[&str] = &["data/digits"];

#[test]
fn every_file_the_readme_names_exists() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut all = Vec::new();
    files(&repo(), &mut all);
    let mut missing = Vec::new();
    for word in readme.split(|c: char| !(c.is_alphanumeric() || "_./-".contains(c))) {
        let word = word.trim_matches('.');
        let is_source = [".rs", ".py", ".md"].iter().any(|x| word.ends_with(x)) && word.len() > 3;
        let is_repo_path = ["crates/", "tools/", "bench/", "data/", "tests/"]
            .iter()
            .any(|p| word.starts_with(p));
        if GENERATED.iter().any(|g| word.starts_with(g)) {
            continue;
        }
        if is_repo_path {
            if !repo().join(word).exists() && !word.contains('*') {
                missing.push(word.to_string());
            }
        } else if is_source && !all.iter().any(|p| p.ends_with(word)) {
            missing.push(word.to_string());
        }
    }
    missing.sort();
    missing.dedup();
    assert!(
        missing.is_empty(),
        "the README names files that do not exist: {missing:?}"
    );
}
