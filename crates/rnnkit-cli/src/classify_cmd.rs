//! `rnnkit classify train|eval|predict`: many-to-one classification of UEA/UCR `.ts`
//! time series with the shared trainer.

use crate::hmm_cmd::{self, ModelKind};
use crate::train_cmd::Cell;
use crate::trainer::{self, set, Ready, Resolved, Start, TrainerOpts};
use anyhow::{bail, Context};
use clap::{Args, Subcommand, ValueEnum};
use rnnkit::data::{read_ts, Series, TsDataset};
use rnnkit::hmm::HmmClassifier;
use rnnkit::layer::PoolKind;
use rnnkit::limits::{flag_range, MAX_LAYERS, MAX_WIDTH};
use rnnkit::model::Precision;
use rnnkit::optim::OptimizerKind;
use rnnkit::task::classifier::{
    evaluate, stratified_split, ClassScores, Classifier, ClassifierConfig, ClassifyTask,
    Standardizer,
};
use rnnkit::train::{Recipe, Schedule, Settings, TrainSettings};
use rnnkit::{CellKind, Rng};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// The bundled training file used when `--train` is not given (see data/README).
const DEFAULT_TRAIN: &str = "data/uea/JapaneseVowels/JapaneseVowels_TRAIN.ts";
/// Its test file.
const DEFAULT_TEST: &str = "data/uea/JapaneseVowels/JapaneseVowels_TEST.ts";

/// Subcommands of `rnnkit classify`.
#[derive(Subcommand)]
pub enum ClassifyCmd {
    /// Train a sequence classifier on a `.ts` file [default: the bundled JapaneseVowels].
    Train(Box<ClassifyTrainOpts>),
    /// Accuracy, macro-F1 and the confusion matrix of a checkpoint on a `.ts` file.
    Eval(ClassifyEvalOpts),
    /// One predicted label per case of a `.ts` file, on stdout.
    Predict(ClassifyPredictOpts),
}

/// `--pool` values.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum Pool {
    Last,
    Mean,
    Max,
}

impl Pool {
    /// The library's pooling.
    pub(crate) fn kind(self) -> PoolKind {
        match self {
            Pool::Last => PoolKind::Last,
            Pool::Mean => PoolKind::Mean,
            Pool::Max => PoolKind::Max,
        }
    }
}

/// Flags of `rnnkit classify train`.
#[derive(Args)]
#[command(allow_negative_numbers = true)]
pub struct ClassifyTrainOpts {
    /// Training cases (UEA/UCR `.ts`); the validation split is taken from it (--val-frac).
    #[arg(long)]
    train: Option<PathBuf>,
    /// Test cases, scored once at the end with the best checkpoint (never used to choose it).
    #[arg(long)]
    test: Option<PathBuf>,
    /// Recurrent cell.
    #[arg(long, value_enum)]
    cell: Option<Cell>,
    /// Stacked recurrent layers.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_LAYERS)))]
    layers: Option<u32>,
    /// Hidden units per direction.
    #[arg(long, value_parser = clap::value_parser!(u32).range(flag_range(1, MAX_WIDTH)))]
    hidden: Option<u32>,
    /// Read each series in both directions.
    #[arg(long)]
    bidirectional: Option<bool>,
    /// How outputs over time become one vector: last valid state, mean or max over valid steps.
    #[arg(long, value_enum)]
    pool: Option<Pool>,
    /// Dropout between layers and before the output layer, in [0, 1).
    #[arg(long)]
    dropout: Option<f32>,
    /// The recurrent classifier (rnn) or one Gaussian HMM per class (hmm), which takes
    /// only --train, --test, --states, --em-iters, --out, --seed, --force, --threads and --json.
    #[arg(long, value_enum, default_value_t)]
    model: ModelKind,
    /// Hidden states of each class's HMM [default: 5]; --model hmm only.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=256))]
    states: Option<u32>,
    /// Most Baum–Welch iterations per class [default: 100]; --model hmm only.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    em_iters: Option<u32>,
    #[command(flatten)]
    common: TrainerOpts,
}

/// The default recipe of `rnnkit classify train`.
pub(crate) fn default_recipe() -> Recipe<ClassifierConfig> {
    Recipe {
        task: ClassifierConfig {
            cell: CellKind::Gru,
            hidden_size: 256,
            num_layers: 2,
            bidirectional: true,
            dropout: 0.4,
            pool: PoolKind::Max,
        },
        train: TrainSettings {
            batch: 16,
            lr: 3e-3,
            lr_decay: 0.95,
            decay_after: 10,
            grad_clip: Some(5.0),
            clip_value: None,
            optimizer: OptimizerKind::Adam,
            momentum: 0.9,
            weight_decay: 0.0,
            val_frac: 0.0,
            seed: 1,
            precision: Precision::F32,
            average: None,
        },
    }
}

/// The default bounds and cadences of `rnnkit classify train`.
pub(crate) fn default_schedule() -> Schedule {
    Schedule {
        steps: None,
        epochs: Some(60.0),
        time_limit: None,
        eval_every: 20,
        checkpoint_every: 200,
        checkpoint_every_epochs: None,
        log_every: 5,
        patience: None,
    }
}

/// Every default `--help` shows for `rnnkit classify train`.
pub(crate) fn shown_defaults() -> Vec<rnnkit::train::Setting> {
    let mut s = default_recipe().settings();
    s.extend(default_schedule().settings());
    s
}

/// Flags of `rnnkit classify eval`.
#[derive(Args)]
pub struct ClassifyEvalOpts {
    /// Checkpoint of `rnnkit classify train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Cases to score (`.ts`, labelled with the checkpoint's class names).
    #[arg(long)]
    data: PathBuf,
    /// Also draw the confusion matrix to this SVG file.
    #[arg(long)]
    confusion_svg: Option<PathBuf>,
    /// Print one JSON object: cases, accuracy, macro_f1, loss, confusion.
    #[arg(long)]
    json: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

/// Flags of `rnnkit classify predict`.
#[derive(Args)]
pub struct ClassifyPredictOpts {
    /// Checkpoint of `rnnkit classify train`.
    #[arg(long)]
    checkpoint: PathBuf,
    /// Cases to label (`.ts`; their labels, if any, are ignored).
    #[arg(long)]
    data: PathBuf,
    /// Print every class's probability after the label (tab-separated, in class order).
    #[arg(long)]
    proba: bool,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..))]
    threads: Option<u16>,
}

pub fn run(cmd: ClassifyCmd) -> anyhow::Result<ExitCode> {
    match cmd {
        ClassifyCmd::Train(o) => train(*o),
        ClassifyCmd::Eval(o) => eval(o),
        ClassifyCmd::Predict(o) => predict(o),
    }
}

impl ClassifyTrainOpts {
    fn overlay(&self, m: &mut ClassifierConfig) -> anyhow::Result<()> {
        if let Some(c) = self.cell {
            m.cell = c.kind();
        }
        set(&mut m.num_layers, self.layers.map(|v| v as usize));
        set(&mut m.hidden_size, self.hidden.map(|v| v as usize));
        set(&mut m.bidirectional, self.bidirectional);
        if let Some(p) = self.pool {
            m.pool = p.kind();
        }
        if let Some(d) = self.dropout {
            if !(0.0..1.0).contains(&d) {
                bail!("--dropout must be in [0, 1), got {d}");
            }
            m.dropout = d;
        }
        Ok(())
    }
}

/// A bundled data file, found from the working directory or the repository.
pub(crate) fn bundled(rel: &str) -> PathBuf {
    let here = PathBuf::from(rel);
    if here.exists() {
        return here;
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(rel)
}

/// Whether `path` is the bundled file `rel` (a resumed default run keeps its
/// bundled validation and test files).
pub(crate) fn is_bundled(path: &Path, rel: &str) -> bool {
    let canon = |p: &Path| std::fs::canonicalize(p).ok();
    canon(path).is_some_and(|p| Some(p) == canon(&bundled(rel)))
}

fn read(path: &Path, what: &str) -> anyhow::Result<TsDataset> {
    read_ts(path).with_context(|| format!("{what} {}", path.display()))
}

/// The flags resolved against the defaults (or the resumed checkpoint).
fn settings(o: &ClassifyTrainOpts) -> anyhow::Result<Resolved<ClassifierConfig>> {
    if o.common.init.is_some() {
        bail!("--init is not supported by classify train yet; use --resume to continue a run");
    }
    trainer::resolve(
        &o.common,
        default_recipe(),
        default_schedule(),
        "runs/classify",
        |m| o.overlay(m),
    )
}

/// Checks the flags of `classify train` as a run would, opening no file.
pub(crate) fn check(o: &ClassifyTrainOpts) -> anyhow::Result<()> {
    match o.model {
        ModelKind::Hmm => o.check_hmm(),
        ModelKind::Rnn => {
            o.refuse_hmm_flags()?;
            trainer::check(o.common.resume.is_none().then(|| settings(o)))
        }
    }
}

impl ClassifyTrainOpts {
    /// Refuses the network's flags under `--model hmm`.
    fn check_hmm(&self) -> anyhow::Result<()> {
        let task = [
            ("--cell", self.cell.is_some()),
            ("--layers", self.layers.is_some()),
            ("--hidden", self.hidden.is_some()),
            ("--bidirectional", self.bidirectional.is_some()),
            ("--pool", self.pool.is_some()),
            ("--dropout", self.dropout.is_some()),
        ];
        let given: Vec<&'static str> = task.iter().filter(|(_, on)| *on).map(|(f, _)| *f).collect();
        hmm_cmd::refuse_rnn_flags(
            &self.common,
            &given,
            "--train, --test, --states, --em-iters",
        )
    }

    /// Refuses the HMM's flags under `--model rnn`.
    fn refuse_hmm_flags(&self) -> anyhow::Result<()> {
        hmm_cmd::refuse_hmm_flags(&[
            ("--states", self.states.is_some()),
            ("--em-iters", self.em_iters.is_some()),
        ])
    }
}

/// `classify train --model hmm`: the bundled JapaneseVowels unless --train is given.
fn train_hmm(o: &ClassifyTrainOpts) -> anyhow::Result<ExitCode> {
    o.check_hmm()?;
    hmm_cmd::classify_train(hmm_cmd::ClassifyTrain {
        train: o.train.clone().unwrap_or_else(|| bundled(DEFAULT_TRAIN)),
        test: match (&o.test, &o.train) {
            (Some(t), _) => Some(t.clone()),
            (None, None) => Some(bundled(DEFAULT_TEST)),
            _ => None,
        },
        states: o.states,
        em_iters: o.em_iters,
        common: &o.common,
    })
}

fn train(o: ClassifyTrainOpts) -> anyhow::Result<ExitCode> {
    if o.model == ModelKind::Hmm {
        return train_hmm(&o);
    }
    o.refuse_hmm_flags()?;
    let c = &o.common;
    let resolved = settings(&o)?;
    crate::set_threads(c.threads.map(usize::from))?;
    let train_path = resolved
        .data_path(&o.train)
        .unwrap_or_else(|| bundled(DEFAULT_TRAIN));
    let test_path = match (&o.test, &o.train) {
        (Some(t), _) => Some(t.clone()),
        (None, None) if is_bundled(&train_path, DEFAULT_TRAIN) => Some(bundled(DEFAULT_TEST)),
        _ => None,
    };
    let data = read(&train_path, "--train")?;
    let test = test_path.as_ref().map(|p| read(p, "--test")).transpose()?;
    let bytes =
        std::fs::read(&train_path).with_context(|| format!("--train {}", train_path.display()))?;
    let data_fingerprint = rnnkit::data::fingerprint(&String::from_utf8_lossy(&bytes));
    let r = &resolved.recipe;
    let (train_idx, val_idx) = stratified_split(&data, r.train.val_frac, r.train.seed);
    let (model, start) = match &resolved.resume {
        Some((p, _)) => {
            let (mut model, file) =
                Classifier::load(p).with_context(|| format!("--resume {}", p.display()))?;
            if model.labels != data.labels {
                bail!(
                    "cannot resume {}: its classes {:?} differ from those of --train ({:?})",
                    p.display(),
                    model.labels,
                    data.labels
                );
            }
            model.set_dropout(r.task.dropout)?;
            (model, Start::Resumed(file))
        }
        None => {
            let mut rng = Rng::new(r.train.seed);
            let fit: Vec<&Series> = train_idx.iter().map(|&i| &data.cases[i]).collect();
            let norm = Standardizer::fit(&fit, data.channels);
            let model =
                Classifier::new(&r.task, data.channels, data.labels.clone(), norm, &mut rng)?;
            (model, Start::Fresh(rng))
        }
    };
    let task = ClassifyTask::new(
        model,
        &data,
        (&train_idx, &val_idx),
        r.train.batch,
        r.train.seed,
    )?;
    let ready = Ready {
        resolved,
        task,
        start,
        data_fingerprint,
        data_path: Some(train_path),
    };
    let finished = trainer::train(c, ready, "rnnkit classify train")?;
    if !finished.lead {
        return Ok(finished.code);
    }
    let s = &finished.summary;
    let mut json = trainer::summary_json(s);
    if let (Some(test), false) = (&test, s.interrupted) {
        let chosen = s.chosen_checkpoint();
        let (mut model, _) = Classifier::load(chosen)?;
        let cases = test_cases(&model, test)?;
        let refs: Vec<&Series> = cases.iter().collect();
        let (loss, scores) = evaluate(&mut model, &refs, 64)?;
        eprintln!(
            "test ({} cases, {}): accuracy {:.4}, macro-F1 {:.4}, loss {loss:.4}",
            scores.cases,
            chosen.display(),
            scores.accuracy,
            scores.macro_f1
        );
        json["test_accuracy"] = scores.accuracy.into();
        json["test_macro_f1"] = scores.macro_f1.into();
        json["test_checkpoint"] = serde_json::json!(chosen);
    }
    if c.json {
        println!("{json}");
    }
    Ok(finished.code)
}

/// The cases of `data` with their labels mapped to the model's class ids.
fn test_cases(model: &Classifier, data: &TsDataset) -> anyhow::Result<Vec<Series>> {
    if data.channels != model.channels() {
        bail!(
            "the data has {} channels but the model reads {}",
            data.channels,
            model.channels()
        );
    }
    data.cases
        .iter()
        .map(|s| {
            let name = &data.labels[s.label];
            let label = model
                .labels
                .iter()
                .position(|l| l == name)
                .with_context(|| {
                    format!(
                        "class {name:?} of the data is not one of the model's classes {:?}",
                        model.labels
                    )
                })?;
            Ok(Series { label, ..s.clone() })
        })
        .collect()
}

fn eval(o: ClassifyEvalOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let file = hmm_cmd::open(&o.checkpoint)?;
    let (loss, s, labels) = if HmmClassifier::is_checkpoint(&file) {
        hmm_cmd::classify_eval(file, &o.data)
            .with_context(|| format!("--checkpoint {}", o.checkpoint.display()))?
    } else {
        let (mut model, _) = Classifier::load(file)
            .with_context(|| format!("--checkpoint {}", o.checkpoint.display()))?;
        let data = read(&o.data, "--data")?;
        let cases = test_cases(&model, &data)?;
        let refs: Vec<&Series> = cases.iter().collect();
        let (loss, s) = evaluate(&mut model, &refs, 64)?;
        (loss, s, model.labels)
    };
    if let Some(svg) = &o.confusion_svg {
        crate::plot::confusion(&s.confusion, &labels, svg)?;
    }
    if o.json {
        println!(
            "{}",
            serde_json::json!({
                "cases": s.cases, "accuracy": s.accuracy, "macro_f1": s.macro_f1,
                "loss": loss, "labels": labels, "confusion": s.confusion,
            })
        );
    } else {
        print!("{}", confusion_text(&s, &labels));
        println!("cases:    {}", s.cases);
        println!("accuracy: {:.4}", s.accuracy);
        println!("macro-F1: {:.4}", s.macro_f1);
        println!("loss:     {loss:.4}");
    }
    Ok(ExitCode::SUCCESS)
}

/// The confusion matrix as aligned text: rows are true classes, columns predictions.
fn confusion_text(s: &ClassScores, labels: &[String]) -> String {
    let w = labels
        .iter()
        .map(|l| l.chars().count())
        .max()
        .unwrap_or(1)
        .max(
            s.confusion
                .iter()
                .flatten()
                .max()
                .map_or(1, |m| m.to_string().len()),
        );
    let mut out = format!("{:>w$}  predicted →\n", "true ↓");
    out.push_str(&format!("{:>w$}", ""));
    for l in labels {
        out.push_str(&format!(" {l:>w$}"));
    }
    out.push('\n');
    for (l, row) in labels.iter().zip(&s.confusion) {
        out.push_str(&format!("{l:>w$}"));
        for v in row {
            out.push_str(&format!(" {v:>w$}"));
        }
        out.push('\n');
    }
    out
}

fn predict(o: ClassifyPredictOpts) -> anyhow::Result<ExitCode> {
    crate::set_threads(o.threads.map(usize::from))?;
    let file = hmm_cmd::open(&o.checkpoint)?;
    if HmmClassifier::is_checkpoint(&file) {
        return hmm_cmd::classify_predict(file, &o.data, o.proba)
            .with_context(|| format!("--checkpoint {}", o.checkpoint.display()));
    }
    let (mut model, _) = Classifier::load(file)
        .with_context(|| format!("--checkpoint {}", o.checkpoint.display()))?;
    let data = read(&o.data, "--data")?;
    if data.channels != model.channels() {
        bail!(
            "--data has {} channels but the model reads {}",
            data.channels,
            model.channels()
        );
    }
    let k = model.labels.len();
    let mut out = String::new();
    for chunk in data.cases.chunks(64) {
        let refs: Vec<&Series> = chunk.iter().collect();
        let b = model.batch(&refs)?;
        let (ids, proba) = model.predict(&b)?;
        for (j, &id) in ids.iter().enumerate() {
            out.push_str(&model.labels[id]);
            if o.proba {
                for p in &proba[j * k..(j + 1) * k] {
                    out.push_str(&format!("\t{p:.6}"));
                }
            }
            out.push('\n');
        }
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
