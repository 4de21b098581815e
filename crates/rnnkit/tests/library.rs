//! The library's integration tests, one module per file beside this one, built as one
//! binary: linked once rather than once per file, and the library's generic code
//! compiled once for all of them (a fifth of a cold test build's compile time when
//! each file was its own binary). `cargo test -p rnnkit --test library gradient_check::` runs one file's.
//! The allocation counter (`allocations.rs`) stays a binary of its own: it replaces
//! the global allocator, which would count the other tests' allocations.

mod common;

mod audio;
mod bf16;
mod charlm_step;
mod charlm_steps;
mod conllu_reader;
mod ctc_decode;
mod ctc_loss;
mod ctc_task;
mod embedded;
mod gradient_check;
mod hmm;
mod kept_buffers;
mod lab;
mod loss_parity;
mod onnx_export;
mod packed_steps;
mod packing;
mod pytorch_parity;
mod reliability;
mod seq2seq;
mod seq2seq_parity;
mod state_dict;
mod stepper;
mod task_parity;
mod ts_reader;
