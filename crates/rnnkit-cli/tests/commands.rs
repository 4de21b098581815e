//! The tests that run the `rnnkit` binary, one module per file beside this one, built
//! as one test binary (linked once, not once per file); `cargo test -p rnnkit-cli
//! --test commands workflow::` runs one file's. The Keras and MPI tests, which need
//! optional features, stay binaries of their own.

mod common;

mod cli;
mod ctc;
mod export;
mod hmm;
mod lab;
mod pytorch_checkpoints;
mod readme_names;
mod reliability;
mod seq2seq;
mod tasks;
mod trainer_workflow;
mod visualize;
mod workflow;

/// Every test file of both crates is a module of its crate's test binary or a binary
/// of its own: cargo no longer finds test files by itself (`autotests = false`), and a
/// file left out would never run.
#[test]
fn every_test_file_is_built() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let binaries: [(&str, &str, &[&str]); 2] = [
        ("rnnkit", "library", &["allocations"]),
        ("rnnkit-cli", "commands", &["keras_import", "mpi"]),
    ];
    for (krate, root, apart) in binaries {
        let dir = crates.join(krate).join("tests");
        let modules = std::fs::read_to_string(dir.join(format!("{root}.rs"))).unwrap();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let name = entry.unwrap().file_name().into_string().unwrap();
            let Some(module) = name.strip_suffix(".rs") else {
                continue;
            };
            assert!(
                module == root
                    || apart.contains(&module)
                    || modules.contains(&format!("\nmod {module};\n")),
                "crates/{krate}/tests/{name} is never built: add `mod {module};` to \
                 tests/{root}.rs (or a [[test]] of its own to crates/{krate}/Cargo.toml)"
            );
        }
    }
}
