//! `rnnkit seq2seq train|eval|predict`: an output sequence of another length
//! (grapheme-to-phoneme on the bundled CMUdict by default) with the encoder–decoder
//! and the shared trainer.

use crate::train_cmd::Cell;
use crate::trainer::{self, set, Ready, Resolved, Start, TrainerOpts};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rnnkit::data::{read_cmudict, read_pairs, Example, Part, Split};
use rnnkit::limits::{flag_range, MAX_LAYERS, MAX_WIDTH};
use rnnkit::model::Precision;
use rnnkit::optim::OptimizerKind;
use rnnkit::seq2seq::{AttentionKind, DecodeOptions, Seq2seq, Seq2seqConfig};
use rnnkit::task::seq2seq::{
    encode_examples, evaluate, EncodedExample, Seq2seqTask, TransductionScores, META_DEV_PATH,
    META_TEST_PATH,
};
use rnnkit::train::{Recipe, Schedule, Settings, TrainSettings};
use rnnkit::{CellKind, Rng};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The bundled dictionary used when `--data` is not given (see data/README).
const DEFAULT_DATA: &str = "data/cmudict/cmudict.dict";

/// Subcommands of `rnnkit seq2seq`.
#[derive(Subcommand)]
pub enum Seq2seqCmd {
    /// Train an encoder–decoder on `source<TAB>target` pairs [default: CMUdict grapheme-to-phoneme].
    Train(Box<Seq2seqTrainOpts>),
    /// Word (sequence) and phoneme (token) error rates of a checkpoint on pairs.
    Eval(Seq2seqEvalOpts),
    /// Transduce source lines from stdin, one output line each on stdout.
    Predict(Seq2seqPredictOpts),
}

/// `--tokens` values.
#[derive(Clone, Copy, ValueEnum)]
enum Tokens {
    /// Every character is a token.
    Chars,
    /// Tokens are separated by spaces.
    Space,
}

impl Tokens {
    fn split(self) -> Split {
        match self {
            Tokens::Chars => Split::Chars,
            Tokens::Space => Split::Space,
        }
    }
}

/// `--attention` values.
#[derive(Clone, Copy, ValueEnum)]
pub enum Attend {
    /// The plain encoder–decoder.
    None,
    /// Luong's dot score.
    Dot,
    /// Luong's general (bilinear) score.
    General,
    /// Bahdanau's additive score.
    Additive,
}

impl Attend {
    /// The library's attention kind.
    pub fn kind(self) -> AttentionKind {
        match self {
            Attend::None => AttentionKind::None,
            Attend::Dot => AttentionKind::Dot,
            Attend::General => AttentionKind::General,
            Attend::Additive => AttentionKind::Additive,
        }
    }
}

/// How lines are read and outputs decoded, shared by train, eval and predict.
#[derive(Args, Clone)]
struct DecodeFlags {
    /// Hypotheses kept by the beam search (1: greedy).
    #[arg(long, default_value_t = 5)]
    beam: usize,
    /// α of the beam's length normalisation log p / len^α (0: raw log-probability).
    #[arg(long, default_value_t = 1.0)]
    length_penalty: f64,
}

impl DecodeFlags {
    fn options(&self) -> anyhow::Result<DecodeOptions> {
        if self.beam == 0 {
            bail!("--beam 0: the beam must keep at least 1 hypothesis (1 is greedy decoding)");
        }
        if !(self.length_penalty.is_finite() && self.length_penalty >= 0.0) {
            bail!(
                "--length-penalty {}: must be a finite number ≥ 0",
                self.length_penalty
            );
        }
        Ok(DecodeOptions {
            beam: self.beam,
            length_penalty: self.length_penalty,
        })
    }
}

/// Flags of `rnnkit seq2seq train`.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct Seq2seqTrainOpts {
    /// Training pairs, one `source<TAB>target` per line [default: the bundled CMUdict's train part].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation pairs: best checkpoint and early stopping (else --val-frac of --data is held out).
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Test pairs, scored once at the end with the best checkpoint, greedy and with the beam.
    #[arg(long)]
    test: Option<PathBuf>,
    /// How both sides of a line split into tokens (CMUdict: letters → space-separated phonemes).
    #[arg(long, value_enum, default_value = "chars")]
    tokens: Tokens,
    /// How sources split into tokens [default: --tokens].
    #[arg(long, value_enum)]
    source_tokens: Option<Tokens>,
    /// How targets split into tokens [default: --tokens].
    #[arg(long, value_enum)]
    target_tokens: Option<Tokens>,
    /// Recurrent cell of encoder and decoder.
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// How the decoder looks at the source.
    #[arg(long, value_enum)]
    attention: Option<Attend>,
    /// Embedding width of both sides.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    embed: Option<u32>,
    /// Decoder width (a bidirectional encoder has half per direction).
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: Option<u32>,
    /// Layers of the encoder and of the decoder.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: Option<u32>,
    /// Read the source in both directions.
    #[arg(long)]
    bidirectional: Option<bool>,
    /// Dropout between recurrent layers and on the decoder's output, in [0, 1).
    #[arg(long)]
    dropout: Option<f32>,
    /// Label smoothing ε of the training loss: targets (1 − ε)·one-hot + ε uniform, in [0, 1).
    #[arg(long)]
    label_smoothing: Option<f32>,
    #[command(flatten)]
    decode: DecodeFlags,
    #[command(flatten)]
    common: TrainerOpts,
}

/// The default recipe of `rnnkit seq2seq train`.
pub(crate) fn default_recipe() -> Recipe<Seq2seqConfig> {
    Recipe {
        task: Seq2seqConfig {
            cell: CellKind::Lstm,
            attention: AttentionKind::General,
            embed: 64,
            hidden_size: 256,
            num_layers: 2,
            bidirectional: true,
            dropout: 0.2,
            label_smoothing: 0.0,
        },
        train: TrainSettings {
            batch: 64,
            lr: 2e-3,
            lr_decay: 0.8,
            decay_after: 3,
            grad_clip: Some(5.0),
            clip_value: None,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            val_frac: 0.05,
            seed: 1,
            precision: Precision::F32,
            average: Some(0.999),
        },
    }
}

/// The default bounds and cadences of `rnnkit seq2seq train`: 28 minutes of training.
pub(crate) fn default_schedule() -> Schedule {
    Schedule {
        steps: None,
        epochs: Some(20.0),
        time_limit: Some(1680.0),
        eval_every: 1000,
        checkpoint_every: 1000,
        checkpoint_every_epochs: None,
        log_every: 20,
        patience: Some(6),
    }
}

/// Every default `--help` shows for `rnnkit seq2seq train`.
pub(crate) fn shown_defaults() -> Vec<rnnkit::train::Setting> {
    let mut s = default_recipe().settings();
    s.extend(default_schedule().settings());
    s
}

/// Flags of `rnnkit seq2seq eval`.
#[derive(Args)]
pub struct Seq2seqEvalOpts {
    /// Checkpoint of `rnnkit seq2seq train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Pairs to score, `source<TAB>target` (split as the model was trained) [default: the bundled CMUdict's test part].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeFlags,
    /// Score with the digits removed from every output and reference token: ARPAbet
    /// phonemes without their stress, as stress-free G2P benchmarks score them.
    #[arg(long)]
    ignore_digits: bool,
    /// Print one JSON object: wer, per, sources, beam, seconds, ignore_digits.
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Flags of `rnnkit seq2seq predict`.
#[derive(Args)]
pub struct Seq2seqPredictOpts {
    /// Checkpoint of `rnnkit seq2seq train`.
    #[arg(long)]
    checkpoint: PathBuf,
    #[command(flatten)]
    decode: DecodeFlags,
    /// Write the attention weights of each output as a heat map DIR/LINE.svg.
    #[arg(long, value_name = "DIR")]
    attention_plots: Option<PathBuf>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

pub fn run(cmd: Seq2seqCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        Seq2seqCmd::Train(o) => train(*o),
        Seq2seqCmd::Eval(o) => eval(o),
        Seq2seqCmd::Predict(o) => predict(o),
    }
}

impl Seq2seqTrainOpts {
    fn overlay(&self, m: &mut Seq2seqConfig) -> anyhow::Result<()> {
        if let Some(c) = self.cell {
            m.cell = c.kind();
        }
        if let Some(a) = self.attention {
            m.attention = a.kind();
        }
        set(&mut m.embed, self.embed.map(|v| v as usize));
        set(&mut m.hidden_size, self.hidden.map(|v| v as usize));
        set(&mut m.num_layers, self.layers.map(|v| v as usize));
        set(&mut m.bidirectional, self.bidirectional);
        set(&mut m.dropout, self.dropout);
        set(&mut m.label_smoothing, self.label_smoothing);
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("--dropout {} must be in [0, 1)", m.dropout);
        }
        m.validate()?;
        Ok(())
    }

    fn splits(&self) -> (Split, Split) {
        (
            self.source_tokens.unwrap_or(self.tokens).split(),
            self.target_tokens.unwrap_or(self.tokens).split(),
        )
    }
}

/// The flags resolved against the defaults (or the resumed checkpoint).
fn settings(o: &Seq2seqTrainOpts) -> anyhow::Result<Resolved<Seq2seqConfig>> {
    if o.common.init.is_some() {
        bail!("--init is not supported by seq2seq train yet; use --resume to continue a run");
    }
    o.decode.options()?;
    trainer::resolve(
        &o.common,
        default_recipe(),
        default_schedule(),
        "runs/seq2seq",
        |m| o.overlay(m),
    )
}

/// Checks the flags of `seq2seq train` as a run would, opening no file.
pub(crate) fn check(o: &Seq2seqTrainOpts) -> anyhow::Result<()> {
    trainer::check(o.common.resume.is_none().then(|| settings(o)))
}

/// The bundled CMUdict's examples of `part`.
fn cmudict(part: Part) -> anyhow::Result<Vec<Example>> {
    let path = crate::classify_cmd::bundled(DEFAULT_DATA);
    let (all, _) = read_cmudict(&path).with_context(|| format!("{}", path.display()))?;
    Ok(all
        .into_iter()
        .filter(|(p, _)| *p == part)
        .map(|(_, e)| e)
        .collect())
}

/// The training, validation and test examples a run reads, with the splits.
struct RunData {
    train: Vec<Example>,
    dev: Vec<Example>,
    test: Option<(String, Vec<Example>)>,
    splits: (Split, Split),
    path: PathBuf,
    /// The --dev and --test files read (recorded for resume).
    files: (Option<PathBuf>, Option<PathBuf>),
}

fn read_data(o: &Seq2seqTrainOpts, r: &Resolved<Seq2seqConfig>) -> anyhow::Result<RunData> {
    let data_path = r.data_path(&o.data);
    // A resumed run reads the validation and test files it was started with.
    let dev_path = r.recorded_path(&o.dev, META_DEV_PATH);
    let test_path = r.recorded_path(&o.test, META_TEST_PATH);
    let files = (dev_path.clone(), test_path.clone());
    let bundled = data_path
        .as_ref()
        .is_none_or(|p| crate::classify_cmd::is_bundled(p, DEFAULT_DATA));
    if bundled {
        if o.source_tokens.is_some() || o.target_tokens.is_some() {
            bail!("--source-tokens/--target-tokens apply to --data; the bundled CMUdict is letters → phonemes");
        }
        let dev = match &dev_path {
            Some(p) => read(p, "--dev", (Split::Chars, Split::Space))?,
            None => cmudict(Part::Dev)?,
        };
        let test = match &test_path {
            Some(p) => Some((
                p.display().to_string(),
                read(p, "--test", (Split::Chars, Split::Space))?,
            )),
            None => Some(("the CMUdict test part".to_string(), cmudict(Part::Test)?)),
        };
        return Ok(RunData {
            train: cmudict(Part::Train)?,
            dev,
            test,
            splits: (Split::Chars, Split::Space),
            path: crate::classify_cmd::bundled(DEFAULT_DATA),
            files,
        });
    }
    let path = data_path.expect("not bundled");
    let splits = match &r.resume {
        // A resumed run reads its data as it was first read.
        Some((p, _)) => Seq2seq::load(p)?.0.splits,
        None => o.splits(),
    };
    let mut train = read(&path, "--data", splits)?;
    let dev = match &dev_path {
        Some(p) => read(p, "--dev", splits)?,
        None => {
            // Hold out a seeded share of the sources (all references of a source together).
            let mut rng = Rng::new(r.recipe.train.seed ^ 0x5eed_da7a);
            rng.shuffle(&mut train);
            let n = (train.len() as f64 * r.recipe.train.val_frac).round() as usize;
            let n = n.min(train.len().saturating_sub(1));
            train.split_off(train.len() - n)
        }
    };
    let test = test_path
        .as_ref()
        .map(|p| Ok::<_, anyhow::Error>((p.display().to_string(), read(p, "--test", splits)?)))
        .transpose()?;
    Ok(RunData {
        train,
        dev,
        test,
        splits,
        path,
        files,
    })
}

fn read(path: &Path, what: &str, splits: (Split, Split)) -> anyhow::Result<Vec<Example>> {
    read_pairs(path, splits).with_context(|| format!("{what} {}", path.display()))
}

fn train(o: Seq2seqTrainOpts) -> anyhow::Result<ExitCode> {
    let c = &o.common;
    let resolved = settings(&o)?;
    let decode = o.decode.options()?;
    crate::set_threads(c.threads.map(usize::from))?;
    let data = read_data(&o, &resolved)?;
    let bytes =
        std::fs::read(&data.path).with_context(|| format!("--data {}", data.path.display()))?;
    let data_fingerprint = rnnkit::data::fingerprint(&String::from_utf8_lossy(&bytes));
    drop(bytes);
    let r = &resolved.recipe;
    let (model, start) = match &resolved.resume {
        Some((p, _)) => {
            let (mut model, file) =
                Seq2seq::load(p).with_context(|| format!("--resume {}", p.display()))?;
            model.set_dropout(r.task.dropout)?;
            model.set_label_smoothing(r.task.label_smoothing)?;
            (model, Start::Resumed(file))
        }
        None => {
            let mut rng = Rng::new(r.train.seed);
            let model = Seq2seq::new(
                &r.task,
                rnnkit::data::TokenVocab::of_sources(&data.train),
                rnnkit::data::TokenVocab::of_targets(&data.train),
                data.splits,
                &mut rng,
            )?;
            (model, Start::Fresh(rng))
        }
    };
    let train = encode_examples(&model, &data.train, "--data")?;
    let dev = encode_examples(&model, &data.dev, "--dev")?;
    let task = Seq2seqTask::new(model, &train, dev, r.train.batch, r.train.seed)?
        .with_files(data.files.0.as_deref(), data.files.1.as_deref());
    let ready = Ready {
        resolved,
        task,
        start,
        data_fingerprint,
        data_path: Some(data.path.clone()),
    };
    let finished = trainer::train(c, ready, "rnnkit seq2seq train")?;
    if !finished.lead {
        return Ok(finished.code);
    }
    let s = &finished.summary;
    let mut json = trainer::summary_json(s);
    if let (Some((name, test)), false) = (&data.test, s.interrupted) {
        let chosen = s.chosen_checkpoint();
        let (mut model, _) = Seq2seq::load(chosen)?;
        let test = encode_examples(&model, test, "--test")?;
        let mut modes = vec![DecodeOptions { beam: 1, ..decode }];
        if decode.beam > 1 {
            modes.push(decode);
        }
        for mode in modes {
            let t0 = Instant::now();
            let (scores, _) = evaluate(&mut model, &test, &mode)?;
            let how = if mode.beam == 1 {
                "greedy".to_string()
            } else {
                format!("beam {}", mode.beam)
            };
            eprintln!(
                "test, {how} ({} sources of {name}, {}, {:.1} s): WER {:.2} %, PER {:.2} %",
                scores.sources,
                chosen.display(),
                t0.elapsed().as_secs_f64(),
                100.0 * scores.wer(),
                100.0 * scores.per()
            );
            let key = if mode.beam == 1 { "greedy" } else { "beam" };
            json[format!("test_wer_{key}")] = scores.wer().into();
            json[format!("test_per_{key}")] = scores.per().into();
        }
        json["test_sources"] = test.len().into();
        json["test_checkpoint"] = serde_json::json!(chosen);
    }
    if c.json {
        println!("{json}");
    }
    Ok(finished.code)
}

fn load(path: &Path) -> anyhow::Result<Seq2seq> {
    Ok(Seq2seq::load(path)
        .with_context(|| format!("--checkpoint {}", path.display()))?
        .0)
}

fn eval(o: Seq2seqEvalOpts) -> anyhow::Result<ExitCode> {
    let opts = o.decode.options()?;
    crate::set_threads(o.threads.map(usize::from))?;
    let mut model = load(&o.checkpoint)?;
    let (examples, name) = match &o.data {
        Some(p) => (read(p, "--data", model.splits)?, p.display().to_string()),
        None => (cmudict(Part::Test)?, "the CMUdict test part".into()),
    };
    let encoded: Vec<EncodedExample> = encode_examples(&model, &examples, &name)?;
    let t0 = Instant::now();
    let (mut s, outputs) = evaluate(&mut model, &encoded, &opts)?;
    let secs = t0.elapsed().as_secs_f64();
    if o.ignore_digits {
        let classes = model.target_vocab.digitless_classes();
        s = TransductionScores::with_classes(&outputs, &encoded, &classes);
    }
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "wer": s.wer(), "per": s.per(), "sources": s.sources, "beam": opts.beam,
                "length_penalty": opts.length_penalty, "seconds": secs,
                "sources_per_second": s.sources as f64 / secs.max(1e-9),
                "ignore_digits": o.ignore_digits,
            })
        );
    } else {
        let digits = if o.ignore_digits {
            " (digits ignored)"
        } else {
            ""
        };
        println!("sources:  {}", s.sources);
        println!("WER:      {:.2} %{digits}", 100.0 * s.wer());
        println!("PER:      {:.2} %{digits}", 100.0 * s.per());
        println!(
            "decoding: beam {}, {:.1} s ({:.0} sources/s)",
            opts.beam,
            secs,
            s.sources as f64 / secs.max(1e-9)
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn predict(o: Seq2seqPredictOpts) -> anyhow::Result<ExitCode> {
    let opts = o.decode.options()?;
    crate::set_threads(o.threads.map(usize::from))?;
    let mut model = load(&o.checkpoint)?;
    let mut text = String::new();
    std::io::stdin()
        .read_to_string(&mut text)
        .context("reading stdin (UTF-8 text expected)")?;
    let mut sources = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.strip_suffix('\r').unwrap_or(line);
        let tokens = model.splits.0.tokens(line);
        if tokens.is_empty() {
            bail!("stdin line {}: empty; give one source per line", i + 1);
        }
        if tokens.len() > rnnkit::data::MAX_TOKENS {
            bail!(
                "stdin line {}: {} tokens, more than the limit of {}",
                i + 1,
                tokens.len(),
                rnnkit::data::MAX_TOKENS
            );
        }
        sources.push(
            model
                .source_vocab
                .encode(&tokens, &format!("stdin line {}", i + 1))?,
        );
    }
    let decoded = model.decode(&sources, &opts)?;
    if let Some(dir) = &o.attention_plots {
        if model.config().attention == AttentionKind::None {
            bail!("--attention-plots: this model has no attention (--attention none)");
        }
        std::fs::create_dir_all(dir)
            .with_context(|| format!("--attention-plots {}", dir.display()))?;
        for (i, (d, s)) in decoded.iter().zip(&sources).enumerate() {
            let mut outputs = model.target_vocab.decode(&d.ids);
            outputs.truncate(d.attention.len());
            if outputs.len() < d.attention.len() {
                outputs.push("</s>".into());
            }
            let path = dir.join(format!("{}.svg", i + 1));
            crate::plot::attention(&model.source_vocab.decode(s), &outputs, &d.attention, &path)?;
        }
    }
    let mut out = String::new();
    for d in decoded {
        out.push_str(&model.splits.1.join(&model.target_vocab.decode(&d.ids)));
        out.push('\n');
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
