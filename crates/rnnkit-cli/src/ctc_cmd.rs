//! `rnnkit ctc train|eval|transcribe`: speech to text with CTC (spoken digit strings
//! by default) — log-mel features of WAV files, a recurrent stack, the shared trainer,
//! best-path or prefix-beam decoding with an optional character language model.

use crate::train_cmd::Cell;
use crate::trainer::{self, set, Ready, Resolved, Start, TrainerOpts};
use anyhow::{bail, Context};
use clap::{Args, Subcommand};
use rnnkit::audio::{features_of_files, FeatureConfig, Features};
use rnnkit::data::{read_manifest, Utterance as ManifestLine};
use rnnkit::decode::ctc::{BeamOptions, CharLmScorer};
use rnnkit::limits::{flag_range, MAX_LAYERS, MAX_WIDTH};
use rnnkit::model::{CharLm, Precision};
use rnnkit::optim::OptimizerKind;
use rnnkit::task::ctc::{
    transcribe, CtcConfig, CtcModel, CtcScores, CtcTask, Decoder, NoLm, Utterance,
};
use rnnkit::task::seq2seq::{META_DEV_PATH, META_TEST_PATH};
use rnnkit::train::{Recipe, Schedule, Settings, TrainSettings};
use rnnkit::{CellKind, Rng};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// The spoken-digit dataset `tools/make_digits.py` writes, used when `--data` is not given.
const DEFAULT_DIR: &str = "data/digits";
/// Checkpoint metadata: the feature settings (JSON).
const META_FEATURES: &str = "rnnkit.features";

/// Subcommands of `rnnkit ctc`.
#[derive(Subcommand)]
pub enum CtcCmd {
    /// Train a CTC recogniser on a `path<TAB>transcript` manifest of WAV files [default: data/digits].
    Train(Box<CtcTrainOpts>),
    /// Character error rate and whole-string accuracy of a checkpoint on a manifest.
    Eval(CtcEvalOpts),
    /// Transcribe WAV files, one line each on stdout.
    Transcribe(CtcTranscribeOpts),
}

/// How outputs are decoded, shared by train (its test scoring), eval and transcribe.
#[derive(Args, Clone)]
struct DecodeFlags {
    /// Prefixes kept by the beam search (1: best path, the likeliest class per frame).
    #[arg(long, default_value_t = 1)]
    beam: usize,
    /// A character language model checkpoint (`rnnkit train`) scoring the beam's prefixes.
    #[arg(long)]
    lm: Option<PathBuf>,
    /// Weight α of the language model's log-probability.
    #[arg(long, default_value_t = 0.5)]
    lm_weight: f32,
    /// Bonus β added per emitted character (balances the language model's cost).
    #[arg(long, default_value_t = 0.0)]
    lm_bonus: f32,
}

impl DecodeFlags {
    fn options(&self) -> anyhow::Result<BeamOptions> {
        if self.beam == 0 {
            bail!("--beam 0: the beam must keep at least 1 prefix (1 is best-path decoding)");
        }
        if self.lm.is_some() && self.beam == 1 {
            bail!("--lm needs a beam search: give --beam 2 or more (8 is a good start)");
        }
        if !(self.lm_weight.is_finite() && self.lm_bonus.is_finite() && self.lm_weight >= 0.0) {
            bail!("--lm-weight must be a finite number ≥ 0 and --lm-bonus a finite number");
        }
        Ok(BeamOptions {
            beam: self.beam,
            lm_weight: if self.lm.is_some() {
                self.lm_weight
            } else {
                0.0
            },
            insertion_bonus: if self.lm.is_some() {
                self.lm_bonus
            } else {
                0.0
            },
            prune: None,
        })
    }

    fn name(&self) -> String {
        match (&self.lm, self.beam) {
            (_, 1) => "best path".into(),
            (None, k) => format!("beam {k}"),
            (Some(p), k) => format!("beam {k} + LM {}", p.display()),
        }
    }
}

/// Flags of `rnnkit ctc train`.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct CtcTrainOpts {
    /// Training manifest, one `path<TAB>transcript` per line [default: data/digits/train.tsv].
    #[arg(long)]
    data: Option<PathBuf>,
    /// Validation manifest: best checkpoint and early stopping [default: dev.tsv beside --data, else --val-frac of --data].
    #[arg(long)]
    dev: Option<PathBuf>,
    /// Test manifest, scored once at the end with the best checkpoint [default: test.tsv beside --data].
    #[arg(long)]
    test: Option<PathBuf>,
    /// Mel bands of the features (40 to 80).
    #[arg(long, value_parser = clap::value_parser!(u32).range(40..=80))]
    bands: Option<u32>,
    /// Recurrent cell.
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Hidden units per direction.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: Option<u32>,
    /// Stacked recurrent layers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: Option<u32>,
    /// Read each utterance in both directions.
    #[arg(long)]
    bidirectional: Option<bool>,
    /// Consecutive 10 ms frames joined into one step (1 to 16).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=16))]
    stack: Option<u32>,
    /// Dropout between recurrent layers and before the output layer, in [0, 1).
    #[arg(long)]
    dropout: Option<f32>,
    /// Perturb every training utterance: time stretch ±10 %, band-axis warp ±10 %, two
    /// frequency masks of up to 6 bands and two time masks of up to 10 frames (SpecAugment).
    #[arg(long)]
    augment: Option<bool>,
    #[command(flatten)]
    decode: DecodeFlags,
    #[command(flatten)]
    common: TrainerOpts,
}

/// The default recipe of `rnnkit ctc train`.
pub(crate) fn default_recipe() -> Recipe<CtcConfig> {
    Recipe {
        task: CtcConfig {
            cell: CellKind::Lstm,
            hidden_size: 128,
            num_layers: 2,
            bidirectional: true,
            dropout: 0.1,
            stack: 3,
            augment: true,
        },
        train: TrainSettings {
            batch: 32,
            lr: 2e-3,
            lr_decay: 0.85,
            decay_after: 4,
            grad_clip: Some(5.0),
            clip_value: None,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            val_frac: 0.05,
            seed: 1,
            precision: Precision::F32,
            average: None,
        },
    }
}

/// The default bounds and cadences of `rnnkit ctc train`: 18 minutes of training.
pub(crate) fn default_schedule() -> Schedule {
    Schedule {
        steps: None,
        epochs: Some(30.0),
        time_limit: Some(1080.0),
        eval_every: 250,
        checkpoint_every: 250,
        checkpoint_every_epochs: None,
        log_every: 10,
        patience: Some(8),
    }
}

/// Every default `--help` shows for `rnnkit ctc train`.
pub(crate) fn shown_defaults() -> Vec<rnnkit::train::Setting> {
    let mut s = default_recipe().settings();
    s.extend(default_schedule().settings());
    s
}

/// Flags of `rnnkit ctc eval`.
#[derive(Args)]
pub struct CtcEvalOpts {
    /// Checkpoint of `rnnkit ctc train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Manifest to score, `path<TAB>transcript[<TAB>speaker]` [default: data/digits/test.tsv].
    #[arg(long)]
    data: Option<PathBuf>,
    #[command(flatten)]
    decode: DecodeFlags,
    /// Also score each speaker (the manifest's third column) apart.
    #[arg(long)]
    by_speaker: bool,
    /// Print one JSON object: cer, string_accuracy, utterances, decoder, seconds (and speakers).
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Flags of `rnnkit ctc transcribe`.
#[derive(Args)]
pub struct CtcTranscribeOpts {
    /// Checkpoint of `rnnkit ctc train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// WAV files (PCM or float, any common sample rate).
    #[arg(required = true)]
    files: Vec<PathBuf>,
    #[command(flatten)]
    decode: DecodeFlags,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

pub fn run(cmd: CtcCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        CtcCmd::Train(o) => train(*o),
        CtcCmd::Eval(o) => eval(o),
        CtcCmd::Transcribe(o) => transcribe_files(o),
    }
}

impl CtcTrainOpts {
    fn overlay(&self, m: &mut CtcConfig) -> anyhow::Result<()> {
        if let Some(c) = self.cell {
            m.cell = c.kind();
        }
        set(&mut m.hidden_size, self.hidden.map(|v| v as usize));
        set(&mut m.num_layers, self.layers.map(|v| v as usize));
        set(&mut m.bidirectional, self.bidirectional);
        set(&mut m.stack, self.stack.map(|v| v as usize));
        set(&mut m.dropout, self.dropout);
        set(&mut m.augment, self.augment);
        if !(0.0..1.0).contains(&m.dropout) {
            bail!("--dropout {} must be in [0, 1)", m.dropout);
        }
        Ok(())
    }
}

/// The flags resolved against the defaults (or the resumed checkpoint).
fn settings(o: &CtcTrainOpts) -> anyhow::Result<Resolved<CtcConfig>> {
    if o.common.init.is_some() {
        bail!("--init is not supported by ctc train yet; use --resume to continue a run");
    }
    if o.common.resume.is_some() && o.bands.is_some() {
        bail!("--bands is fixed by the checkpoint being resumed (its features are stored in it); leave it out");
    }
    o.decode.options()?;
    trainer::resolve(
        &o.common,
        default_recipe(),
        default_schedule(),
        "runs/ctc",
        |m| o.overlay(m),
    )
}

/// Checks the flags of `ctc train` as a run would, opening no file.
pub(crate) fn check(o: &CtcTrainOpts) -> anyhow::Result<()> {
    trainer::check(o.common.resume.is_none().then(|| settings(o)))
}

/// The default manifest `name` (train.tsv, dev.tsv, test.tsv), or an error saying how to make it.
fn default_manifest(name: &str) -> anyhow::Result<PathBuf> {
    let path = crate::classify_cmd::bundled(DEFAULT_DIR).join(name);
    if !path.exists() {
        bail!(
            "no --data given and {} does not exist: make the spoken-digit dataset first with \
             `python3 tools/make_digits.py --out {DEFAULT_DIR}` (needs espeak-ng), or give --data MANIFEST",
            path.display()
        );
    }
    Ok(path)
}

/// Reads a manifest and the features of every file in it (in parallel), encoding the
/// transcripts with `model`'s labels when given.
struct Loaded {
    lines: Vec<ManifestLine>,
    features: Vec<Features>,
}

fn load_manifest(path: &Path, what: &str, cfg: &FeatureConfig) -> anyhow::Result<Loaded> {
    let lines = read_manifest(path).with_context(|| format!("{what} {}", path.display()))?;
    if lines.is_empty() {
        bail!("{what} {}: no utterances", path.display());
    }
    let paths: Vec<PathBuf> = lines.iter().map(|l| l.path.clone()).collect();
    let mut features = Vec::with_capacity(lines.len());
    for (line, f) in lines.iter().zip(features_of_files(&paths, cfg)) {
        features.push(f.with_context(|| format!("{what} {} line {}", path.display(), line.line))?);
    }
    Ok(Loaded { lines, features })
}

impl Loaded {
    /// Utterances with label ids of `model`; a character outside its labels names the line.
    fn utterances(
        self,
        model: &CtcModel,
        what: &str,
        path: &Path,
    ) -> anyhow::Result<Vec<Utterance>> {
        self.lines
            .into_iter()
            .zip(self.features)
            .map(|(l, f)| {
                let target = model.encode(
                    &l.transcript,
                    &format!("{what} {} line {}", path.display(), l.line),
                )?;
                Ok(Utterance {
                    frames: f.frames,
                    values: f.values,
                    target,
                })
            })
            .collect()
    }
}

/// The labels of a dataset: every character of its transcripts, sorted.
fn labels_of(lines: &[ManifestLine]) -> Vec<char> {
    let mut set: Vec<char> = lines.iter().flat_map(|l| l.transcript.chars()).collect();
    set.sort_unstable();
    set.dedup();
    set
}

fn feature_config(file: &rnnkit::checkpoint::TensorFile) -> anyhow::Result<FeatureConfig> {
    let s = file.metadata().get(META_FEATURES).with_context(|| {
        format!("metadata `{META_FEATURES}` is missing: not an audio CTC checkpoint")
    })?;
    let cfg: FeatureConfig =
        serde_json::from_str(s).with_context(|| format!("metadata `{META_FEATURES}`"))?;
    cfg.validate()?;
    Ok(cfg)
}

fn train(o: CtcTrainOpts) -> anyhow::Result<ExitCode> {
    let c = &o.common;
    let resolved = settings(&o)?;
    let decode = o.decode.options()?;
    crate::set_threads(c.threads.map(usize::from))?;
    let r = &resolved.recipe;
    let data_path = match resolved.data_path(&o.data) {
        Some(p) => p,
        None => default_manifest("train.tsv")?,
    };
    let beside = |name: &str| {
        let p = data_path.parent().unwrap_or(Path::new(".")).join(name);
        p.exists().then_some(p)
    };
    let dev_path = resolved
        .recorded_path(&o.dev, META_DEV_PATH)
        .or_else(|| beside("dev.tsv"));
    let test_path = resolved
        .recorded_path(&o.test, META_TEST_PATH)
        .or_else(|| beside("test.tsv"));
    let resumed = match &resolved.resume {
        Some((p, _)) => {
            Some(CtcModel::load(p).with_context(|| format!("--resume {}", p.display()))?)
        }
        None => None,
    };
    let features = match &resumed {
        Some((_, file)) => feature_config(file)?,
        None => FeatureConfig {
            bands: o
                .bands
                .map_or(FeatureConfig::default().bands, |b| b as usize),
            ..FeatureConfig::default()
        },
    };
    let t0 = Instant::now();
    let loaded = load_manifest(&data_path, "--data", &features)?;
    let (model, start) = match resumed {
        Some((mut model, file)) => {
            model.set_dropout(r.task.dropout)?;
            model.set_augment(r.task.augment);
            (model, Start::Resumed(file))
        }
        None => {
            let mut rng = Rng::new(r.train.seed);
            let model = CtcModel::new(&r.task, features.bands, labels_of(&loaded.lines), &mut rng)?;
            (model, Start::Fresh(rng))
        }
    };
    let mut train_utts = loaded.utterances(&model, "--data", &data_path)?;
    let dev_utts = match &dev_path {
        Some(p) => load_manifest(p, "--dev", &features)?.utterances(&model, "--dev", p)?,
        None => {
            let mut rng = Rng::new(r.train.seed ^ 0x5eed_da7a);
            rng.shuffle(&mut train_utts);
            let n = (train_utts.len() as f64 * r.train.val_frac).round() as usize;
            let n = n.min(train_utts.len().saturating_sub(1));
            train_utts.split_off(train_utts.len() - n)
        }
    };
    eprintln!(
        "features: {} training and {} validation utterances in {:.1} s ({} mel bands, 25 ms windows every 10 ms)",
        train_utts.len(),
        dev_utts.len(),
        t0.elapsed().as_secs_f64(),
        features.bands
    );
    let mut metadata = HashMap::new();
    metadata.insert(META_FEATURES.to_string(), serde_json::to_string(&features)?);
    for (key, p) in [(META_DEV_PATH, &dev_path), (META_TEST_PATH, &test_path)] {
        if let Some(p) = p {
            let abs = std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
            metadata.insert(key.to_string(), abs.display().to_string());
        }
    }
    let bytes =
        std::fs::read(&data_path).with_context(|| format!("--data {}", data_path.display()))?;
    let data_fingerprint = rnnkit::data::fingerprint(&String::from_utf8_lossy(&bytes));
    let task = CtcTask::new(
        model,
        train_utts,
        dev_utts,
        r.train.batch,
        r.train.seed,
        metadata,
    )?;
    let ready = Ready {
        resolved,
        task,
        start,
        data_fingerprint,
        data_path: Some(data_path.clone()),
    };
    let finished = trainer::train(c, ready, "rnnkit ctc train")?;
    if !finished.lead {
        return Ok(finished.code);
    }
    let s = &finished.summary;
    let mut json = trainer::summary_json(s);
    if let (Some(test_path), false) = (&test_path, s.interrupted) {
        let chosen = s.chosen_checkpoint();
        let (mut model, file) = CtcModel::load(chosen)?;
        let features = feature_config(&file)?;
        let lines = load_manifest(test_path, "--test", &features)?;
        let speakers: Vec<Option<String>> = lines.lines.iter().map(|l| l.speaker.clone()).collect();
        let utts = lines.utterances(&model, "--test", test_path)?;
        let mut modes = vec![DecodeFlags {
            beam: 1,
            lm: None,
            ..o.decode.clone()
        }];
        if decode.beam > 1 {
            modes.push(o.decode.clone());
        }
        for mode in modes {
            let t0 = Instant::now();
            let (scores, _) = score(&mut model, &utts, &speakers, &mode)?;
            eprintln!(
                "test, {} ({} utterances of {}, {}, {:.1} s): CER {:.2} %, string accuracy {:.2} %",
                mode.name(),
                scores.utterances,
                test_path.display(),
                chosen.display(),
                t0.elapsed().as_secs_f64(),
                100.0 * scores.cer(),
                100.0 * scores.string_accuracy()
            );
            let key = if mode.beam == 1 { "greedy" } else { "beam" };
            json[format!("test_cer_{key}")] = scores.cer().into();
            json[format!("test_string_accuracy_{key}")] = scores.string_accuracy().into();
        }
        json["test_utterances"] = utts.len().into();
        json["test_checkpoint"] = serde_json::json!(chosen);
    }
    if c.json {
        println!("{json}");
    }
    Ok(finished.code)
}

/// Decodes `utts` as `flags` ask and scores them, overall and per speaker.
fn score(
    model: &mut CtcModel,
    utts: &[Utterance],
    speakers: &[Option<String>],
    flags: &DecodeFlags,
) -> anyhow::Result<(CtcScores, BTreeMap<String, CtcScores>)> {
    let refs: Vec<&Utterance> = utts.iter().collect();
    let outputs = decode_all(model, &refs, flags)?;
    let targets: Vec<&[usize]> = utts.iter().map(|u| u.target.as_slice()).collect();
    let overall = CtcScores::new(&outputs, &targets);
    // Indices of each speaker's utterances, then their scores.
    let mut groups: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, s) in speakers.iter().enumerate() {
        if let Some(s) = s {
            groups.entry(s.clone()).or_default().push(i);
        }
    }
    let per = groups
        .into_iter()
        .map(|(k, idx)| {
            let o: Vec<Vec<usize>> = idx.iter().map(|&i| outputs[i].clone()).collect();
            let t: Vec<&[usize]> = idx.iter().map(|&i| targets[i]).collect();
            (k, CtcScores::new(&o, &t))
        })
        .collect();
    Ok((overall, per))
}

/// Class ids of every utterance, decoded as `flags` ask.
fn decode_all(
    model: &mut CtcModel,
    utts: &[&Utterance],
    flags: &DecodeFlags,
) -> anyhow::Result<Vec<Vec<usize>>> {
    let opts = flags.options()?;
    let outputs = match (&flags.lm, opts.beam) {
        (_, 1) => transcribe::<NoLm>(model, utts, 64, &mut Decoder::Greedy, false)?.0,
        (None, _) => {
            transcribe::<NoLm>(
                model,
                utts,
                64,
                &mut Decoder::Beam { opts, lm: None },
                false,
            )?
            .0
        }
        (Some(p), _) => {
            let (lm, _) =
                CharLm::load(p.as_path()).with_context(|| format!("--lm {}", p.display()))?;
            // Transcripts are scored as lines: a string ends with the LM's newline.
            let mut scorer = CharLmScorer::new(&lm, &model.labels)
                .and_then(|s| s.with_end('\n'))
                .with_context(|| format!("--lm {}", p.display()))?;
            transcribe(
                model,
                utts,
                64,
                &mut Decoder::Beam {
                    opts,
                    lm: Some(&mut scorer),
                },
                false,
            )?
            .0
        }
    };
    Ok(outputs)
}

fn load(path: &Path) -> anyhow::Result<(CtcModel, FeatureConfig)> {
    let (model, file) =
        CtcModel::load(path).with_context(|| format!("--checkpoint {}", path.display()))?;
    let features =
        feature_config(&file).with_context(|| format!("--checkpoint {}", path.display()))?;
    Ok((model, features))
}

fn eval(o: CtcEvalOpts) -> anyhow::Result<ExitCode> {
    o.decode.options()?;
    crate::set_threads(o.threads.map(usize::from))?;
    let (mut model, features) = load(&o.checkpoint)?;
    let path = match &o.data {
        Some(p) => p.clone(),
        None => default_manifest("test.tsv")?,
    };
    let loaded = load_manifest(&path, "--data", &features)?;
    let speakers: Vec<Option<String>> = loaded.lines.iter().map(|l| l.speaker.clone()).collect();
    if o.by_speaker && speakers.iter().any(Option::is_none) {
        bail!(
            "--by-speaker: {} has lines without a third (speaker) column",
            path.display()
        );
    }
    let utts = loaded.utterances(&model, "--data", &path)?;
    let t0 = Instant::now();
    let (s, per) = score(&mut model, &utts, &speakers, &o.decode)?;
    let secs = t0.elapsed().as_secs_f64();
    if o.json {
        let mut j = serde_json::json!({
            "cer": s.cer(), "string_accuracy": s.string_accuracy(), "utterances": s.utterances,
            "decoder": o.decode.name(), "beam": o.decode.beam, "seconds": secs,
        });
        if o.by_speaker {
            j["speakers"] = per
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        serde_json::json!({"cer": v.cer(), "string_accuracy": v.string_accuracy(), "utterances": v.utterances}),
                    )
                })
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        println!("{j}");
    } else {
        println!("utterances:      {}", s.utterances);
        println!("CER:             {:.2} %", 100.0 * s.cer());
        println!("string accuracy: {:.2} %", 100.0 * s.string_accuracy());
        println!("decoding:        {}, {secs:.1} s", o.decode.name());
        if o.by_speaker {
            println!(
                "{:<28} {:>6} {:>8} {:>8}",
                "speaker", "utts", "CER %", "string %"
            );
            for (k, v) in &per {
                println!(
                    "{k:<28} {:>6} {:>8.2} {:>8.2}",
                    v.utterances,
                    100.0 * v.cer(),
                    100.0 * v.string_accuracy()
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn transcribe_files(o: CtcTranscribeOpts) -> anyhow::Result<ExitCode> {
    o.decode.options()?;
    crate::set_threads(o.threads.map(usize::from))?;
    let (mut model, features) = load(&o.checkpoint)?;
    let mut utts = Vec::with_capacity(o.files.len());
    for (p, f) in o.files.iter().zip(features_of_files(&o.files, &features)) {
        let f = f.with_context(|| format!("{}", p.display()))?;
        utts.push(Utterance {
            frames: f.frames,
            values: f.values,
            target: Vec::new(),
        });
    }
    let refs: Vec<&Utterance> = utts.iter().collect();
    let outputs = decode_all(&mut model, &refs, &o.decode)?;
    let mut out = String::new();
    for ids in outputs {
        out.push_str(&model.text(&ids));
        out.push('\n');
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
