//! Heap allocations of a warmed-up training step (building the batch, forward,
//! backward, clipping, Adam), counted by a global allocator in this test binary: of
//! the char LM for every cell in f32 and bf16, and of the classifier, the CTC
//! recogniser, the tagger and the encoder–decoder, each at two lengths; for the char
//! LM and each of these tasks also through the trainer's `Task::train_batch` (which
//! gathers each batch). A warmed-up
//! step must allocate nothing (see [`Counted`]). The counts are printed by
//! `cargo test --release -p rnnkit --test allocations -- --nocapture`.

use rnnkit::data::Vocab;
use rnnkit::kernel::Precision;
use rnnkit::model::{CharLm, CharLmConfig};
use rnnkit::optim::{clip_grad_norm, Optimizer, OptimizerKind};
use rnnkit::task::char_lm::{Batching, CharLmRecipe, CharLmTask};
use rnnkit::task::Task;
use rnnkit::{CellKind, Parameters, Rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Mutex;

/// Counts the allocations (and reallocations) made on the threads of the pool, where
/// the training steps run (not those of the test harness's own threads), then
/// hands every call to the system.
struct Counting;

static COUNT: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

fn count(bytes: usize) {
    // A thread-local read: allocates nothing.
    if rayon::current_thread_index().is_some() {
        COUNT.fetch_add(1, Relaxed);
        BYTES.fetch_add(bytes, Relaxed);
    }
}

// SAFETY: every call is passed on to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One test at a time, from its first model on: the counters are global.
static SERIAL: Mutex<()> = Mutex::new(());

/// Holds [`SERIAL`] for a test.
fn alone() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// What training steps 6–15 (`step`, on the pool, then clipping and Adam) of a
/// model allocate.
#[derive(Clone, Copy, Debug)]
struct Counted {
    /// The fewest allocations of a step, and its bytes.
    fewest: (usize, usize),
    /// How many of the 10 steps allocated at all, and the most allocations of one.
    allocating: usize,
    most: usize,
}

impl Counted {
    /// Whether the training steps, once warmed up, allocate nothing: a whole step
    /// runs without allocating, and the steps that still allocate are a few early
    /// ones, not every step. (A task's buffers grow at the first batch longer than
    /// all before it, and which thread runs which split job varies from step to
    /// step; an allocation per step would be in all of them.)
    fn none_per_step(&self) -> bool {
        self.fewest.0 == 0 && self.allocating <= 3
    }
}

impl std::fmt::Display for Counted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} allocations ({} bytes) in the leanest step, {} of 10 steps allocating (at most {})",
            self.fewest.0, self.fewest.1, self.allocating, self.most
        )
    }
}

/// Counts the allocations of training steps 6–15 of `model` (see [`Counted`]).
fn warmed_up<M: Parameters<f32> + Send>(
    model: &mut M,
    mut step: impl FnMut(&mut M, &mut Rng) + Send,
) -> Counted {
    let mut rng = Rng::new(3);
    let mut optimizer = Optimizer::new(OptimizerKind::Adam, 0.0);
    let mut counted = Counted {
        fewest: (usize::MAX, 0),
        allocating: 0,
        most: 0,
    };
    for n in 0..15 {
        let before = (COUNT.load(Relaxed), BYTES.load(Relaxed));
        // As the trainer runs its steps.
        rnnkit::kernel::on_pool_polling(|| {
            model.zero_grad();
            step(model, &mut rng);
            clip_grad_norm(model, 1.0);
            optimizer.step(model, 1e-3);
        });
        let this = (
            COUNT.load(Relaxed) - before.0,
            BYTES.load(Relaxed) - before.1,
        );
        if n >= 5 {
            counted.fewest = counted.fewest.min(this);
            counted.allocating += usize::from(this.0 > 0);
            counted.most = counted.most.max(this.0);
        }
    }
    counted
}

/// [`warmed_up`] of the trainer's steps of `task` (`Task::train_batch`, batches in
/// the order of an epoch).
fn trained<T: Task>(task: &mut T) -> Counted {
    let batches = task.batches_per_epoch() as u64;
    let mut step = 0u64;
    warmed_up(task, |t, rng| {
        let (epoch, k) = (step / batches, (step % batches) as usize);
        if k == 0 {
            t.start_epoch(epoch);
        }
        let out = t.train_batch(epoch, k, rng, &mut |_| {}).unwrap();
        assert!(out.loss.is_finite());
        step += 1;
    })
}

/// [`warmed_up`] for a char LM of 2 layers of `hidden`, vocabulary 30, batch 32 ×
/// `seq_len` (16 rows a thread, enough for the packed per-step products).
fn char_lm_allocations(
    cell: CellKind,
    precision: Precision,
    hidden: usize,
    seq_len: usize,
) -> Counted {
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
    warmed_up(&mut model, |m, rng| {
        let (loss, _) = m
            .train_step(&ids, &targets, seq_len, batch, None, rng)
            .unwrap();
        assert!(loss.is_finite());
    })
}

#[test]
fn no_char_lm_training_step_allocates() {
    let _alone = alone();
    // f32 at a width whose W_hh is packed for the per-step products and at H 128
    // (packed for the LSTM, 2^16 elements; read in place for the GRU and the RNN);
    // bf16 at a small width.
    for (cell, f32_hidden) in [
        (CellKind::Lstm, 512),
        (CellKind::Gru, 600),
        (CellKind::RnnTanh, 1024),
    ] {
        for (precision, hidden) in [
            (Precision::F32, f32_hidden),
            (Precision::F32, 128),
            (Precision::Bf16, 64),
        ] {
            // Without AVX-512 (BF16) the per-step products fall to the GEMM crate,
            // which allocates on every call.
            if !rnnkit::kernel::packed_supported(precision) {
                continue;
            }
            // Two lengths: the buffers of one length must serve the other too.
            for seq_len in [40, 41] {
                let counted = char_lm_allocations(cell, precision, hidden, seq_len);
                println!("{cell} H{hidden} {precision:?}, {seq_len} timesteps: {counted}");
                assert!(
                    counted.none_per_step(),
                    "{cell} H{hidden} {precision:?}: a warmed-up training step allocates"
                );
            }
        }
    }
}

#[test]
fn no_char_lm_trainer_step_allocates() {
    let _alone = alone();
    if !rnnkit::kernel::packed_supported(Precision::F32) {
        return;
    }
    let chars: Vec<char> = ('a'..='z').chain(".,; ".chars()).collect();
    let mut rng = Rng::new(5);
    // 16 batches of 32 × 40 (and the validation tenth).
    let text: String = (0..23_000).map(|_| chars[rng.below(chars.len())]).collect();
    for (batching, carry_state) in [(Batching::Streams, true), (Batching::Shuffled, false)] {
        let recipe = CharLmRecipe {
            model: CharLmConfig {
                cell: CellKind::Lstm,
                embed_size: 16,
                hidden_size: 128,
                num_layers: 2,
                dropout: 0.1,
            },
            seq_len: 40,
            carry_state,
            batching,
        };
        let vocab = Vocab::from_chars(chars.clone()).unwrap();
        let model = CharLm::new(&recipe.model, vocab, &mut rng).unwrap();
        let mut task = CharLmTask::new(model, &recipe, 32, 0.1, 1, &text).unwrap();
        let counted = trained(&mut task);
        println!("char LM ({batching:?}): {counted}");
        assert!(
            counted.none_per_step(),
            "char LM ({batching:?}): a warmed-up trainer step allocates"
        );
    }
}

/// The task models' training steps on batches whose sequences are all `t` long
/// (the benchmark's synthetic data), as [`warmed_up`] counts them: the model's own
/// step on one batch, or the trainer's (`Task::train_batch`) on a new batch every
/// step, which also gathers the batch.
mod tasks {
    use super::*;
    use rnnkit::bench::{classify, ctc, seq2seq, tag};
    use rnnkit::data::{Series, TagColumn, TsDataset};
    use rnnkit::layer::PoolKind;
    use rnnkit::seq2seq::{AttentionKind, PairBatch, Seq2seqConfig};
    use rnnkit::task::classifier::{
        Classifier, ClassifierConfig, ClassifyTask, DenseBatch, Standardizer,
    };
    use rnnkit::task::ctc::{CtcConfig, CtcModel, CtcTask};
    use rnnkit::task::seq2seq::{EncodedExample, Seq2seqTask};
    use rnnkit::task::tagger::{TagTask, Tagger, TaggerConfig};

    /// Which step is counted.
    #[derive(Clone, Copy, Debug)]
    pub enum Level {
        /// The model's `train_step` on the same batch every step.
        Model,
        /// The task's `train_batch`, the batches in the order of one epoch.
        Task,
    }

    /// Batches of data made (more than the 15 counted steps: one epoch).
    const BATCHES: usize = 16;

    /// Sequence classification: bidirectional GRU, max pooling, 16 series of `t` steps.
    pub fn classify(t: usize, level: Level) -> Counted {
        let cfg = classify::ClassifyBenchConfig {
            model: ClassifierConfig {
                cell: CellKind::Gru,
                hidden_size: 96,
                num_layers: 2,
                bidirectional: true,
                dropout: 0.1,
                pool: PoolKind::Max,
            },
            channels: 6,
            classes: 4,
            min_len: t,
            max_len: t,
            batch: 16,
            steps: BATCHES,
            seed: 1,
            precision: Precision::F32,
        };
        let series = classify::series(&cfg);
        let cases: Vec<&Series> = series[..cfg.batch].iter().collect();
        let norm = Standardizer::fit(&cases, cfg.channels);
        let labels: Vec<String> = (0..cfg.classes).map(|k| format!("c{k}")).collect();
        let mut model = Classifier::new(
            &cfg.model,
            cfg.channels,
            labels.clone(),
            norm,
            &mut Rng::new(2),
        )
        .unwrap();
        if let Level::Task = level {
            let data = TsDataset {
                problem: String::new(),
                channels: cfg.channels,
                labels,
                cases: series,
            };
            let train: Vec<usize> = (0..data.cases.len()).collect();
            let mut task = ClassifyTask::new(model, &data, (&train, &[]), cfg.batch, 1).unwrap();
            return trained(&mut task);
        }
        let targets: Vec<usize> = cases.iter().map(|s| s.label).collect();
        let mut batch = DenseBatch::default();
        warmed_up(&mut model, |m, rng| {
            m.batch_into(&cases, &mut batch).unwrap();
            m.train_step(&batch, &targets, rng).unwrap();
        })
    }

    /// CTC: bidirectional LSTM over stacked frames, 16 utterances of `3t` frames.
    pub fn ctc(t: usize, level: Level) -> Counted {
        let cfg = ctc::CtcBenchConfig {
            model: CtcConfig {
                cell: CellKind::Lstm,
                hidden_size: 64,
                num_layers: 2,
                bidirectional: true,
                dropout: 0.1,
                stack: 3,
                augment: false,
            },
            bands: 13,
            labels: 8,
            frames: (3 * t, 3 * t),
            batch: 16,
            steps: BATCHES,
            seed: 1,
            precision: Precision::F32,
        };
        let mut utts = ctc::utterances(&cfg);
        // Targets of one length, as the frames are: the loss's lattices would
        // otherwise grow at each batch with a longer target than before.
        let shortest = utts.iter().map(|u| u.target.len()).min().unwrap_or(0);
        utts.iter_mut().for_each(|u| u.target.truncate(shortest));
        let labels = (0..cfg.labels)
            .map(|i| char::from(b'a' + i as u8))
            .collect();
        let mut model = CtcModel::new(&cfg.model, cfg.bands, labels, &mut Rng::new(2)).unwrap();
        if let Level::Task = level {
            let mut task =
                CtcTask::new(model, utts, Vec::new(), cfg.batch, 1, Default::default()).unwrap();
            return trained(&mut task);
        }
        let utts: Vec<_> = utts[..cfg.batch].iter().collect();
        let targets: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
        let mut batch = DenseBatch::default();
        warmed_up(&mut model, |m, rng| {
            m.batch_into(&utts, &mut batch).unwrap();
            m.train_step(&batch, &targets, rng).unwrap();
        })
    }

    /// Tagging: character LSTM under a word-level bidirectional LSTM, 16 sentences
    /// of `t` words.
    pub fn tag(t: usize, level: Level) -> Counted {
        let cfg = tag::TagBenchConfig {
            model: TaggerConfig {
                cell: CellKind::Lstm,
                word_embed: 32,
                char_embed: 16,
                char_hidden: 24,
                hidden_size: 64,
                num_layers: 2,
                dropout: 0.33,
                word_dropout: 0.25,
                min_freq: 1,
                column: TagColumn::Upos,
            },
            tags: 6,
            word_vocab: 300,
            char_vocab: 20,
            words_per_sentence: (t, t),
            chars_per_word: (2, 9),
            batch: 16,
            steps: BATCHES,
            seed: 1,
            precision: Precision::F32,
        };
        let (_, sentences) = tag::sentences(&cfg);
        let mut model = Tagger::new(&cfg.model, &sentences, &mut Rng::new(2)).unwrap();
        if let Level::Task = level {
            let mut task = TagTask::new(model, sentences, Vec::new(), cfg.batch, 1).unwrap();
            return trained(&mut task);
        }
        let batch: Vec<_> = sentences[..cfg.batch].iter().collect();
        warmed_up(&mut model, |m, rng| {
            m.train_step(&batch, rng).unwrap();
        })
    }

    /// Encoder–decoder: bidirectional LSTM 2×64 encoder, general attention, 16 pairs
    /// of `t` source and target tokens.
    pub fn seq2seq(t: usize, level: Level) -> Counted {
        let cfg = seq2seq::Seq2seqBenchConfig {
            model: Seq2seqConfig {
                cell: CellKind::Lstm,
                attention: AttentionKind::General,
                embed: 16,
                hidden_size: 64,
                num_layers: 2,
                bidirectional: true,
                dropout: 0.1,
                label_smoothing: 0.1,
            },
            src_vocab: 20,
            tgt_vocab: 20,
            lengths: (t, t),
            batch: 16,
            steps: BATCHES,
            decode_sources: 1,
            beam: 2,
            seed: 1,
            precision: Precision::F32,
        };
        let data = seq2seq::pairs(&cfg);
        let mut model = seq2seq::model(&cfg, &mut Rng::new(2)).unwrap();
        if let Level::Task = level {
            let examples: Vec<EncodedExample> = data
                .iter()
                .map(|(s, t)| EncodedExample {
                    source: s.clone(),
                    targets: vec![t.clone()],
                })
                .collect();
            let mut task = Seq2seqTask::new(model, &examples, Vec::new(), cfg.batch, 1).unwrap();
            return trained(&mut task);
        }
        let pairs: Vec<(&[usize], &[usize])> = data[..cfg.batch]
            .iter()
            .map(|(s, t)| (s.as_slice(), t.as_slice()))
            .collect();
        let mut batch = PairBatch::default();
        warmed_up(&mut model, |m, rng| {
            batch.fill(&pairs).unwrap();
            m.train_step(&batch, rng).unwrap();
        })
    }
}

#[test]
fn no_task_training_step_allocates() {
    let _alone = alone();
    // Without AVX-512 the per-step products fall to the GEMM crate (see above).
    if !rnnkit::kernel::packed_supported(Precision::F32) {
        return;
    }
    use tasks::Level;
    for (task, count) in [
        ("classify", tasks::classify as fn(usize, Level) -> Counted),
        ("ctc", tasks::ctc),
        ("tag", tasks::tag),
        ("seq2seq", tasks::seq2seq),
    ] {
        for level in [Level::Model, Level::Task] {
            for t in [30, 31] {
                let counted = count(t, level);
                println!("{task} ({level:?}), {t} timesteps: {counted}");
                assert!(
                    counted.none_per_step(),
                    "{task} ({level:?}): a warmed-up training step allocates"
                );
            }
        }
    }
}
