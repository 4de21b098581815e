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
