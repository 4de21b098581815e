//! `rnnkit bench`: training and sampling throughput of the char-LM on synthetic tokens,
//! or training throughput of the classifier (`--task classify`), the tagger
//! (`--task tag`), the encoder–decoder (`--task seq2seq`) or the CTC recogniser
//! (`--task ctc`) on synthetic data.

use crate::classify_cmd::Pool;
use crate::train_cmd::Cell;
use anyhow::bail;
use clap::{Args, ValueEnum};
use rnnkit::bench::classify::ClassifyBenchConfig;
use rnnkit::bench::ctc::CtcBenchConfig;
use rnnkit::bench::seq2seq::Seq2seqBenchConfig;
use rnnkit::bench::tag::TagBenchConfig;
use rnnkit::bench::{self, BenchConfig, TaskReport};
use rnnkit::limits::{flag_range, MAX_BATCH, MAX_BENCH_VOCAB, MAX_LAYERS, MAX_SEQ_LEN, MAX_WIDTH};
use rnnkit::model::Precision;
use std::process::ExitCode;

/// `--task` values.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTask {
    /// The character language model: training and batch-1 sampling.
    CharLm,
    /// The sequence classifier of `rnnkit classify train`, on random series.
    Classify,
    /// The tagger of `rnnkit tag train`, on random sentences of random words.
    Tag,
    /// The encoder–decoder of `rnnkit seq2seq train`, on random pairs; and its decoding.
    Seq2seq,
    /// The recogniser of `rnnkit ctc train`, on random features and label sequences.
    Ctc,
}

/// Flags of `rnnkit bench`.
#[derive(Args)]
pub struct BenchOpts {
    /// What to measure.
    #[arg(long, value_enum, default_value = "char-lm")]
    task: BenchTask,
    /// Recurrent cell [default: lstm; classify, tag, ctc: their `train` recipe's, gru, lstm, lstm].
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Stacked recurrent layers [default: 2; classify, tag, ctc: their `train` recipe's, 2].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: Option<u32>,
    /// Hidden units per layer (per direction) [default: 512; classify: 256; tag: 200; ctc: 128, as their `train` recipes].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: Option<u32>,
    /// Embedding width (char-lm, seq2seq) [default: 64].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    embed: Option<u32>,
    /// Vocabulary size (char-lm) [default: 65].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(2, MAX_BENCH_VOCAB)))]
    vocab: Option<u32>,
    /// Sequences per batch [default: 64; classify: 16; tag, ctc: 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_BATCH)))]
    batch: Option<u32>,
    /// Timesteps per batch (char-lm) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_SEQ_LEN)))]
    seq_len: Option<u32>,
    /// Timed training steps [default: 10; classify: 100; tag, seq2seq, ctc: 20].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
    steps: Option<u32>,
    /// Timed batch-1 sampled characters (char-lm) [default: 500].
    #[arg(long)]
    sample_chars: Option<u32>,
    /// Input channels (classify) [default: 12].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    channels: Option<u32>,
    /// Classes (classify) [default: 9].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
    classes: Option<u32>,
    /// Fewest steps of a random series (classify) [default: 7], tokens of a random source (seq2seq) [default: 4], or 10 ms frames of a random utterance (ctc) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
    min_len: Option<u32>,
    /// Most steps of a random series (classify) [default: 29], tokens of a random source (seq2seq) [default: 12], or 10 ms frames of a random utterance (ctc) [default: 300].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100000))]
    max_len: Option<u32>,
    /// Pooling over time (classify) [default: max].
    #[arg(long, value_enum)]
    pool: Option<Pool>,
    /// Read each series, source or utterance in both directions (classify, seq2seq, ctc) [default: true].
    #[arg(long)]
    bidirectional: Option<bool>,
    /// Distinct words of the random lexicon (tag) [default: 16000].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=10_000_000))]
    word_vocab: Option<u32>,
    /// Characters the random words are spelled with (tag) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=20000))]
    char_vocab: Option<u32>,
    /// Distinct tags (tag) [default: 17].
    #[arg(long, value_parser = clap::value_parser!(u32).range(2..=65536))]
    tags: Option<u32>,
    /// Words of a random sentence, MIN-MAX or N (tag) [default: 5-30].
    #[arg(long, value_parser = parse_range)]
    words_per_sentence: Option<(usize, usize)>,
    /// Characters of a random word, MIN-MAX or N (tag) [default: 2-10].
    #[arg(long, value_parser = parse_range)]
    chars_per_word: Option<(usize, usize)>,
    /// Word embedding width (tag) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    word_embed: Option<u32>,
    /// Character embedding width (tag) [default: 32].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    char_embed: Option<u32>,
    /// Hidden units per direction of the character network, 0 for none (tag) [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=4096))]
    char_hidden: Option<u32>,
    /// How the decoder looks at the source (seq2seq) [default: general].
    #[arg(long, value_enum)]
    attention: Option<crate::seq2seq_cmd::Attend>,
    /// Source tokens (seq2seq) [default: 28].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    src_vocab: Option<u32>,
    /// Target tokens besides the end and start tokens (seq2seq) [default: 69].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    tgt_vocab: Option<u32>,
    /// Width of the timed beam search (seq2seq) [default: 5].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
    beam: Option<u32>,
    /// Sources decoded one at a time, greedy and with the beam (seq2seq) [default: 200].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    decode_sources: Option<u32>,
    /// Features per frame of the random utterances (ctc) [default: 40].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536))]
    bands: Option<u32>,
    /// Labels besides the blank (ctc) [default: 11, the digits and the space].
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_BENCH_VOCAB)))]
    labels: Option<u32>,
    /// Consecutive frames joined into one step (ctc) [default: 3, as `rnnkit ctc train`].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    stack: Option<u32>,
    /// Seed of the synthetic data (classify, tag, seq2seq, ctc) [default: 1].
    #[arg(long)]
    seed: Option<u64>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
    /// Train with bfloat16 matrix products (see `rnnkit train --bf16`).
    #[arg(long)]
    bf16: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
}

/// `MIN-MAX` or `N` (= `N-N`).
fn parse_range(s: &str) -> Result<(usize, usize), String> {
    let parse = |t: &str| {
        t.trim()
            .parse::<usize>()
            .map_err(|_| format!("expected MIN-MAX or N with whole numbers, got {s:?}"))
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (parse(a)?, parse(b)?),
        None => (parse(s)?, parse(s)?),
    };
    if lo == 0 || lo > hi || hi > 100_000 {
        return Err(format!("expected 1 ≤ MIN ≤ MAX ≤ 100000, got {s:?}"));
    }
    Ok((lo, hi))
}

impl BenchOpts {
    /// Refuses flags that the chosen task does not read.
    fn check_flags(&self) -> anyhow::Result<()> {
        use BenchTask::*;
        let flags: &[(&str, bool, &[BenchTask])] = &[
            ("--embed", self.embed.is_some(), &[CharLm, Seq2seq]),
            ("--vocab", self.vocab.is_some(), &[CharLm]),
            ("--seq-len", self.seq_len.is_some(), &[CharLm]),
            ("--sample-chars", self.sample_chars.is_some(), &[CharLm]),
            ("--channels", self.channels.is_some(), &[Classify]),
            ("--classes", self.classes.is_some(), &[Classify]),
            (
                "--min-len",
                self.min_len.is_some(),
                &[Classify, Seq2seq, Ctc],
            ),
            (
                "--max-len",
                self.max_len.is_some(),
                &[Classify, Seq2seq, Ctc],
            ),
            ("--pool", self.pool.is_some(), &[Classify]),
            (
                "--bidirectional",
                self.bidirectional.is_some(),
                &[Classify, Seq2seq, Ctc],
            ),
            ("--attention", self.attention.is_some(), &[Seq2seq]),
            ("--src-vocab", self.src_vocab.is_some(), &[Seq2seq]),
            ("--tgt-vocab", self.tgt_vocab.is_some(), &[Seq2seq]),
            ("--beam", self.beam.is_some(), &[Seq2seq]),
            (
                "--decode-sources",
                self.decode_sources.is_some(),
                &[Seq2seq],
            ),
            ("--word-vocab", self.word_vocab.is_some(), &[Tag]),
            ("--char-vocab", self.char_vocab.is_some(), &[Tag]),
            ("--tags", self.tags.is_some(), &[Tag]),
            (
                "--words-per-sentence",
                self.words_per_sentence.is_some(),
                &[Tag],
            ),
            ("--chars-per-word", self.chars_per_word.is_some(), &[Tag]),
            ("--word-embed", self.word_embed.is_some(), &[Tag]),
            ("--char-embed", self.char_embed.is_some(), &[Tag]),
            ("--char-hidden", self.char_hidden.is_some(), &[Tag]),
            ("--bands", self.bands.is_some(), &[Ctc]),
            ("--labels", self.labels.is_some(), &[Ctc]),
            ("--stack", self.stack.is_some(), &[Ctc]),
            (
                "--seed",
                self.seed.is_some(),
                &[Classify, Tag, Seq2seq, Ctc],
            ),
        ];
        for &(flag, given, tasks) in flags {
            if given && !tasks.contains(&self.task) {
                let names: Vec<String> = tasks
                    .iter()
                    .map(|t| t.to_possible_value().expect("named").get_name().to_string())
                    .collect();
                bail!("{flag} applies to --task {} only", names.join(" or "));
            }
        }
        Ok(())
    }

    fn precision(&self) -> Precision {
        if self.bf16 {
            Precision::Bf16
        } else {
            Precision::F32
        }
    }
}

pub fn run(o: BenchOpts) -> anyhow::Result<ExitCode> {
    o.check_flags()?;
    crate::set_threads(o.threads.map(usize::from))?;
    match o.task {
        BenchTask::CharLm => char_lm(o),
        BenchTask::Classify => classify(o),
        BenchTask::Tag => tag(o),
        BenchTask::Seq2seq => seq2seq(o),
        BenchTask::Ctc => ctc(o),
    }
}

fn char_lm(o: BenchOpts) -> anyhow::Result<ExitCode> {
    let (layers, hidden, embed) = (
        o.layers.unwrap_or(2),
        o.hidden.unwrap_or(512),
        o.embed.unwrap_or(64),
    );
    let (vocab, batch, seq_len) = (
        o.vocab.unwrap_or(65),
        o.batch.unwrap_or(64),
        o.seq_len.unwrap_or(100),
    );
    let cfg = BenchConfig {
        model: bench::model(
            o.cell.map_or(rnnkit::CellKind::Lstm, Cell::kind),
            layers as usize,
            hidden as usize,
            embed as usize,
        ),
        vocab: vocab as usize,
        batch: batch as usize,
        seq_len: seq_len as usize,
        steps: o.steps.unwrap_or(10) as usize,
        sample_chars: o.sample_chars.unwrap_or(500) as usize,
        precision: o.precision(),
    };
    let r = bench::run(&cfg)?;
    if o.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        println!(
            "{} {}x{} embed {} vocab {} batch {} seq {} threads {}, {} kernels",
            cfg.model.cell,
            layers,
            hidden,
            embed,
            vocab,
            batch,
            seq_len,
            r.threads,
            r.limits.kernels
        );
        println!(
            "training ({}): {:.0} tokens/s, {:.1} GFLOP/s = {:.1} % of {} ({:.3} s per step, median)",
            if o.bf16 { "bf16 products" } else { "f32" },
            r.train_tokens_per_sec,
            r.train_gflops,
            r.train_peak_percent,
            peak_name(o.bf16, &r.limits),
            r.step_seconds
        );
        println!(
            "  executed: {:.1} GFLOP/s = {:.1} % (the first layer's input products run over the vocabulary's rows, not every token's)",
            r.train_executed_gflops, r.train_executed_peak_percent
        );
        println!(
            "sampling: {:.1} µs per character (batch 1, {}), {:.2}× the bandwidth bound of {:.1} µs ({:.1} MB of weights at {:.1} GB/s)",
            r.sample_us_per_char,
            on_threads(r.sample_threads),
            r.sample_us_per_char / r.sample_bound_us_per_char,
            r.sample_bound_us_per_char,
            r.sample_weight_bytes as f64 / 1e6,
            r.sample_read_gbs
        );
        for (name, us, bound, threads) in [
            (
                "bf16",
                r.sample_bf16_us_per_char,
                r.sample_bf16_bound_us_per_char,
                r.sample_bf16_threads,
            ),
            (
                "int8",
                r.sample_int8_us_per_char,
                r.sample_int8_bound_us_per_char,
                r.sample_int8_threads,
            ),
        ] {
            println!(
                "sampling with {name} weights: {us:.1} µs per character ({}), {:.2}× its bound of {bound:.1} µs",
                on_threads(threads),
                us / bound
            );
        }
        if !rnnkit::kernel::int8_supported() {
            println!(
                "(this CPU has neither AVX-512 VNNI nor AVX2: int8 products run a portable loop)"
            );
        }
        println!("peak RSS: {:.1} MiB", r.peak_rss_mb);
    }
    Ok(ExitCode::SUCCESS)
}

fn classify(o: BenchOpts) -> anyhow::Result<ExitCode> {
    let recipe = crate::classify_cmd::default_recipe();
    let mut model = recipe.task;
    if let Some(c) = o.cell {
        model.cell = c.kind();
    }
    model.num_layers = o.layers.map_or(model.num_layers, |v| v as usize);
    model.hidden_size = o.hidden.map_or(model.hidden_size, |v| v as usize);
    model.bidirectional = o.bidirectional.unwrap_or(model.bidirectional);
    model.pool = o.pool.map_or(model.pool, Pool::kind);
    let (min_len, max_len) = (o.min_len.unwrap_or(7), o.max_len.unwrap_or(29));
    if min_len > max_len {
        bail!("--min-len ({min_len}) must not exceed --max-len ({max_len})");
    }
    let cfg = ClassifyBenchConfig {
        model,
        channels: o.channels.unwrap_or(12) as usize,
        classes: o.classes.unwrap_or(9) as usize,
        min_len: min_len as usize,
        max_len: max_len as usize,
        batch: o.batch.map_or(recipe.train.batch, |v| v as usize),
        steps: o.steps.unwrap_or(100) as usize,
        seed: o.seed.unwrap_or(1),
        precision: o.precision(),
    };
    let r = bench::classify::run(&cfg)?;
    let m = &cfg.model;
    let what = format!(
        "classify {} {}x{}{}, pool {}, dropout {}, {} channels, {} classes, lengths {}-{}, batch {}",
        m.cell,
        m.num_layers,
        m.hidden_size,
        if m.bidirectional {
            " bidirectional"
        } else {
            ""
        },
        m.pool,
        m.dropout,
        cfg.channels,
        cfg.classes,
        cfg.min_len,
        cfg.max_len,
        cfg.batch
    );
    report(&o, &what, "timesteps", &r)
}

fn tag(o: BenchOpts) -> anyhow::Result<ExitCode> {
    let recipe = crate::tag_cmd::default_recipe();
    let mut model = recipe.task;
    if let Some(c) = o.cell {
        model.cell = c.kind();
    }
    model.num_layers = o.layers.map_or(model.num_layers, |v| v as usize);
    model.hidden_size = o.hidden.map_or(model.hidden_size, |v| v as usize);
    model.word_embed = o.word_embed.map_or(model.word_embed, |v| v as usize);
    model.char_embed = o.char_embed.map_or(model.char_embed, |v| v as usize);
    model.char_hidden = o.char_hidden.map_or(model.char_hidden, |v| v as usize);
    let cfg = TagBenchConfig {
        model,
        tags: o.tags.unwrap_or(17) as usize,
        word_vocab: o.word_vocab.unwrap_or(16000) as usize,
        char_vocab: o.char_vocab.unwrap_or(100) as usize,
        words_per_sentence: o.words_per_sentence.unwrap_or((5, 30)),
        chars_per_word: o.chars_per_word.unwrap_or((2, 10)),
        batch: o.batch.map_or(recipe.train.batch, |v| v as usize),
        steps: o.steps.unwrap_or(20) as usize,
        seed: o.seed.unwrap_or(1),
        precision: o.precision(),
    };
    let r = bench::tag::run(&cfg)?;
    let m = &cfg.model;
    let what = format!(
        "tag {} {}x{} bidirectional, word embed {}, char embed {}, char hidden {}, dropout {}, word dropout {}, \
         {} words, {} characters, {} tags, {}-{} words of {}-{} characters, batch {}",
        m.cell,
        m.num_layers,
        m.hidden_size,
        m.word_embed,
        m.char_embed,
        m.char_hidden,
        m.dropout,
        m.word_dropout,
        cfg.word_vocab,
        cfg.char_vocab,
        cfg.tags,
        cfg.words_per_sentence.0,
        cfg.words_per_sentence.1,
        cfg.chars_per_word.0,
        cfg.chars_per_word.1,
        cfg.batch
    );
    report(&o, &what, "words", &r)
}

fn seq2seq(o: BenchOpts) -> anyhow::Result<ExitCode> {
    let recipe = crate::seq2seq_cmd::default_recipe();
    let mut model = recipe.task;
    if let Some(c) = o.cell {
        model.cell = c.kind();
    }
    if let Some(a) = o.attention {
        model.attention = a.kind();
    }
    model.num_layers = o.layers.map_or(model.num_layers, |v| v as usize);
    model.hidden_size = o.hidden.map_or(model.hidden_size, |v| v as usize);
    model.embed = o.embed.map_or(model.embed, |v| v as usize);
    model.bidirectional = o.bidirectional.unwrap_or(model.bidirectional);
    let cfg = Seq2seqBenchConfig {
        model,
        src_vocab: o.src_vocab.unwrap_or(28) as usize,
        tgt_vocab: o.tgt_vocab.unwrap_or(69) as usize,
        lengths: (
            o.min_len.unwrap_or(4) as usize,
            o.max_len.unwrap_or(12) as usize,
        ),
        batch: o.batch.map_or(recipe.train.batch, |v| v as usize),
        steps: o.steps.unwrap_or(20) as usize,
        decode_sources: o.decode_sources.unwrap_or(200) as usize,
        beam: o.beam.unwrap_or(5) as usize,
        seed: o.seed.unwrap_or(1),
        precision: o.precision(),
    };
    let r = bench::seq2seq::run(&cfg)?;
    if o.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(ExitCode::SUCCESS);
    }
    let m = &cfg.model;
    let what = format!(
        "seq2seq {} {}x{}{}, attention {}, embed {}, dropout {}, vocabularies {} → {}, sources of {}-{} tokens, batch {}",
        m.cell,
        m.num_layers,
        m.hidden_size,
        if m.bidirectional { " (bidirectional encoder)" } else { "" },
        m.attention,
        m.embed,
        m.dropout,
        cfg.src_vocab,
        cfg.tgt_vocab + 2,
        cfg.lengths.0,
        cfg.lengths.1,
        cfg.batch
    );
    report(&o, &what, "tokens", &r.train)?;
    println!(
        "decoding one source at a time: {:.0} words/s greedy, {:.0} words/s with beam {}",
        r.greedy_words_per_sec, r.beam_words_per_sec, r.beam
    );
    Ok(ExitCode::SUCCESS)
}

fn ctc(o: BenchOpts) -> anyhow::Result<ExitCode> {
    let recipe = crate::ctc_cmd::default_recipe();
    let mut model = recipe.task;
    if let Some(c) = o.cell {
        model.cell = c.kind();
    }
    model.num_layers = o.layers.map_or(model.num_layers, |v| v as usize);
    model.hidden_size = o.hidden.map_or(model.hidden_size, |v| v as usize);
    model.bidirectional = o.bidirectional.unwrap_or(model.bidirectional);
    model.stack = o.stack.map_or(model.stack, |v| v as usize);
    let (min_len, max_len) = (
        o.min_len.map_or(100, |v| v as usize),
        o.max_len.map_or(300, |v| v as usize),
    );
    if min_len > max_len {
        bail!("--min-len ({min_len}) must not exceed --max-len ({max_len})");
    }
    if min_len < 4 * model.stack {
        bail!(
            "--min-len ({min_len} frames) must be at least 4 × --stack ({}): every utterance needs room for a transcript",
            model.stack
        );
    }
    let cfg = CtcBenchConfig {
        model,
        bands: o.bands.unwrap_or(40) as usize,
        labels: o.labels.unwrap_or(11) as usize,
        frames: (min_len, max_len),
        batch: o.batch.map_or(recipe.train.batch, |v| v as usize),
        steps: o.steps.unwrap_or(20) as usize,
        seed: o.seed.unwrap_or(1),
        precision: o.precision(),
    };
    let r = bench::ctc::run(&cfg)?;
    let m = &cfg.model;
    let what = format!(
        "ctc {} {}x{}{}, dropout {}, stack {}, {} bands, {} labels + blank, {}-{} frames, batch {}",
        m.cell,
        m.num_layers,
        m.hidden_size,
        if m.bidirectional {
            " bidirectional"
        } else {
            ""
        },
        m.dropout,
        m.stack,
        cfg.bands,
        cfg.labels,
        cfg.frames.0,
        cfg.frames.1,
        cfg.batch
    );
    report(&o, &what, "stacked steps", &r)
}

/// The threads a sampling step is shared out between, in words.
fn on_threads(threads: usize) -> String {
    match threads {
        1 => "on 1 thread".into(),
        n => format!("on {n} threads"),
    }
}

/// The peak a training result is a share of, with its measured value.
fn peak_name(bf16: bool, l: &rnnkit::bench::peak::Limits) -> String {
    match (bf16, l.bf16_peak_gflops) {
        (true, Some(p)) => match l.bf16_unit {
            Some("amx") => format!("the measured bf16 peak of the AMX tiles, {p:.0} GFLOP/s"),
            _ => format!("the measured bf16 dot peak, {p:.0} GFLOP/s"),
        },
        _ => format!(
            "the measured f32 FMA peak, {:.0} GFLOP/s",
            l.fma_peak_gflops
        ),
    }
}

/// Prints a task's figures: one JSON object, or three lines.
fn report(o: &BenchOpts, what: &str, tokens: &str, r: &TaskReport) -> anyhow::Result<ExitCode> {
    if o.json {
        println!("{}", serde_json::to_string(r)?);
    } else {
        println!(
            "{what}, threads {}, {} kernels",
            r.threads, r.limits.kernels
        );
        println!(
            "training ({}): {:.0} {tokens}/s, {:.1} GFLOP/s = {:.1} % of {} ({:.2} ms per step, median; {:.0} {tokens} per step)",
            if o.bf16 { "bf16 products" } else { "f32" },
            r.train_tokens_per_sec,
            r.train_gflops,
            r.train_peak_percent,
            peak_name(o.bf16, &r.limits),
            r.step_seconds * 1e3,
            r.tokens_per_step
        );
        println!("peak RSS: {:.1} MiB", r.peak_rss_mb);
    }
    Ok(ExitCode::SUCCESS)
}
