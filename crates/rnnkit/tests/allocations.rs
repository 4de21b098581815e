//! Heap allocations of a warmed-up char-LM training step (forward, backward, clipping,
//! Adam), counted by a global allocator in this test binary, for every cell in f32
//! and bf16: none may happen per timestep (a step of 41 timesteps makes as many as
//! one of 40). What a step still allocates (the layers' returned tensors, and in f32
//! the `gemm` crate's buffers for the products hoisted out of the time loop) is
//! printed by `cargo test --release -p rnnkit --test allocations -- --nocapture`.

use rnnkit::data::Vocab;
use rnnkit::kernel::Precision;
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use rnnkit::{CellKind, Parameters, Rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Counts allocations (and reallocations) of every thread, then hands them to the system.
struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size(), Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(layout.size(), Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(new_size, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One measurement at a time: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Allocations and bytes of the leanest of training steps 4–8 of a fresh model, 2
/// layers of `hidden`, vocabulary 30, batch 32 × `seq_len` (16 rows a thread, enough
/// for the packed per-step products). The leanest: which thread runs which job
/// varies, and a thread's first job of a kind sizes its buffers; an allocation per
/// timestep counts in every step.
fn step_allocations(
    cell: CellKind,
    precision: Precision,
    hidden: usize,
    seq_len: usize,
) -> (usize, usize) {
    let chars: Vec<char> = ('a'..='z').chain(".,; ".chars()).collect();
    let vocab = chars.len();
    let mut rng = Rng::new(7);
    let config = CharLmConfig {
        cell,
        embed_size: 16,
        hidden_size: hidden,
        num_layers: 2,
        dropout: 0.1,
    };
    let mut model = CharLm::new(&config, Vocab::from_chars(chars).unwrap(), &mut rng).unwrap();
    model.set_precision(precision);
    let batch = 32;
    let ids: Vec<usize> = (0..batch * seq_len).map(|_| rng.below(vocab)).collect();
    let targets: Vec<usize> = (0..batch * seq_len).map(|_| rng.below(vocab)).collect();
    let mut optimizer = Optimizer::new(OptimizerKind::Adam, 0.0);
    let _one_at_a_time = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut counted = (usize::MAX, 0);
    for step in 0..8 {
        let before = (COUNT.load(Relaxed), BYTES.load(Relaxed));
        rnnkit::kernel::on_pool(|| {
            model.zero_grad();
            let (loss, _) = model
                .train_step(&ids, &targets, seq_len, batch, None, &mut rng)
                .unwrap();
            assert!(loss.is_finite());
            clip_grad_norm(&mut model, 1.0);
            optimizer.step(&mut model, 1e-3);
        });
        let this = (
            COUNT.load(Relaxed) - before.0,
            BYTES.load(Relaxed) - before.1,
        );
        if step >= 3 {
            counted = counted.min(this);
        }
    }
    counted
}

#[test]
fn no_allocation_grows_with_the_timesteps() {
    // f32 at widths whose W_hh is packed for the per-step products (smaller f32
    // products go to the GEMM crate, which allocates on every call).
    for (cell, f32_hidden) in [
        (CellKind::Lstm, 512),
        (CellKind::Gru, 600),
        (CellKind::RnnTanh, 1024),
    ] {
        for (precision, hidden) in [(Precision::F32, f32_hidden), (Precision::Bf16, 64)] {
            // Without AVX-512 (BF16) no product is packed: the GEMM crate runs them all.
            if !rnnkit::kernel::packed_supported(precision) {
                continue;
            }
            // One timestep more: an allocation per timestep would count once more.
            let short = step_allocations(cell, precision, hidden, 40);
            let long = step_allocations(cell, precision, hidden, 41);
            println!(
                "{cell} H{hidden} {precision:?}: {} allocations ({} bytes) a step of 40 \
                 timesteps, {} ({} bytes) of 41",
                short.0, short.1, long.0, long.1
            );
            assert_eq!(
                short.0, long.0,
                "{cell} {precision:?}: an allocation per timestep"
            );
        }
    }
}
