//! `--model hmm` of `rnnkit classify` and `rnnkit tag`: the hidden-Markov-model
//! baselines, trained by their own estimators (EM, counting) instead of the trainer,
//! and their checkpoints in `eval` and `predict`.
//!
//! Flag rule: under `--model hmm` the data flags (`--train`, `--dev`, `--test`,
//! `--column`), `--out`, `--seed`, `--force`, `--threads` and `--json` apply, with the
//! HMM's own flags (`--states`, `--em-iters` for classify; `--order` for tag); every
//! other flag configures the recurrent network or its trainer and is refused, as the
//! HMM flags are under `--model rnn`.

use crate::run_lock::RunLock;
use crate::trainer::TrainerOpts;
use anyhow::{bail, Context};
use clap::ValueEnum;
use rnnkit::checkpoint::TensorFile;
use rnnkit::data::{read_conllu, read_ts, Sentence, Series, TagColumn, TsDataset};
use rnnkit::hmm::{HmmClassifier, HmmClassifierConfig, HmmTagger, HmmTaggerConfig};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// `--model` values of `classify train` and `tag train`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub(crate) enum ModelKind {
    /// The recurrent network, trained by the shared trainer.
    #[default]
    Rnn,
    /// The hidden-Markov-model baseline.
    Hmm,
}

/// The checkpoint file name an HMM run writes in its `--out` folder.
pub(crate) const CHECKPOINT: &str = "hmm.safetensors";

/// The trainer flags given on the command line, by name.
fn trainer_flags_set(c: &TrainerOpts) -> Vec<&'static str> {
    let set = [
        ("--batch", c.batch.is_some()),
        ("--lr", c.lr.is_some()),
        ("--lr-decay", c.lr_decay.is_some()),
        ("--decay-after", c.decay_after.is_some()),
        ("--grad-clip", c.grad_clip.is_some()),
        ("--clip-value", c.clip_value.is_some()),
        ("--optimizer", c.optimizer.is_some()),
        ("--momentum", c.momentum.is_some()),
        ("--weight-decay", c.weight_decay.is_some()),
        ("--average", c.average.is_some()),
        ("--steps", c.steps.is_some()),
        ("--epochs", c.epochs.is_some()),
        ("--time-limit", c.time_limit.is_some()),
        ("--patience", c.patience.is_some()),
        ("--val-frac", c.val_frac.is_some()),
        ("--eval-every", c.eval_every.is_some()),
        ("--checkpoint-every", c.checkpoint_every.is_some()),
        (
            "--checkpoint-every-epochs",
            c.checkpoint_every_epochs.is_some(),
        ),
        ("--log-every", c.log_every.is_some()),
        ("--resume", c.resume.is_some()),
        ("--init", c.init.is_some()),
        ("--bf16", c.bf16),
        ("--f32", c.f32),
        ("--log-scale", c.log_scale),
    ];
    set.iter().filter(|(_, on)| *on).map(|(n, _)| *n).collect()
}

/// Refuses recurrent-network flags under `--model hmm` (`task_flags`: the task's own
/// network flags that were given); `allowed` lists what the HMM takes.
pub(crate) fn refuse_rnn_flags(
    c: &TrainerOpts,
    task_flags: &[&'static str],
    allowed: &str,
) -> anyhow::Result<()> {
    let mut given: Vec<&str> = task_flags.to_vec();
    given.extend(trainer_flags_set(c));
    if let Some(first) = given.first() {
        bail!(
            "{first} applies to --model rnn only; --model hmm takes {allowed}, --out, --seed, --force, --threads and --json"
        );
    }
    Ok(())
}

/// Refuses HMM flags under `--model rnn`.
pub(crate) fn refuse_hmm_flags(given: &[(&str, bool)]) -> anyhow::Result<()> {
    if let Some((flag, _)) = given.iter().find(|(_, on)| *on) {
        bail!("{flag} applies to --model hmm only (add --model hmm)");
    }
    Ok(())
}

/// Opens a checkpoint for `eval`/`predict`, which dispatch on its `rnnkit.task`.
pub(crate) fn open(path: &Path) -> anyhow::Result<TensorFile> {
    TensorFile::open(path).with_context(|| format!("--checkpoint {}", path.display()))
}

/// Where the run writes, `OUT/hmm.safetensors` (refused when it exists without
/// --force), and the run's lock on OUT, held until the run ends.
fn out_path(c: &TrainerOpts, default_out: &str) -> anyhow::Result<(PathBuf, RunLock)> {
    let dir = c.out.clone().unwrap_or_else(|| PathBuf::from(default_out));
    let path = dir.join(CHECKPOINT);
    let command: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let lock = crate::run_lock::acquire(&dir, &command.join(" "))?;
    if path.exists() && !c.force {
        bail!(
            "{} already exists; pass --force to replace it or --out to write elsewhere",
            path.display()
        );
    }
    Ok((path, lock))
}

/// What `tag train --model hmm` was given.
pub(crate) struct TagTrain<'a> {
    pub train: PathBuf,
    pub dev: Option<PathBuf>,
    pub test: Option<PathBuf>,
    pub column: TagColumn,
    pub order: Option<u32>,
    pub common: &'a TrainerOpts,
}

fn read_treebank(path: &Path, what: &str) -> anyhow::Result<Vec<Sentence>> {
    read_conllu(path).with_context(|| format!("{what} {}", path.display()))
}

/// The scores of a tagger on `sents` as the eval line and the JSON fields.
fn tag_scores_line(what: &str, s: &rnnkit::task::tagger::TagScores) -> String {
    format!(
        "{what} ({} words): accuracy {:.4}, on {} unknown words {:.4}",
        s.tokens,
        s.accuracy(),
        s.oov_tokens,
        s.oov_accuracy()
    )
}

/// `rnnkit tag train --model hmm`.
pub(crate) fn tag_train(a: TagTrain) -> anyhow::Result<ExitCode> {
    let c = a.common;
    crate::set_threads(c.threads.map(usize::from))?;
    let (out, _lock) = out_path(c, "runs/tag-hmm")?;
    let train = read_treebank(&a.train, "--train")?;
    let dev = a
        .dev
        .as_ref()
        .map(|p| read_treebank(p, "--dev"))
        .transpose()?;
    let test = a
        .test
        .as_ref()
        .map(|p| read_treebank(p, "--test"))
        .transpose()?;
    let config = HmmTaggerConfig {
        order: a.order.map_or(3, |o| o as usize),
        column: a.column,
        ..Default::default()
    };
    let words: usize = train.iter().map(Sentence::len).sum();
    eprintln!(
        "rnnkit tag train --model hmm: {} sentences, {words} words of {} ({} column), {}-gram tag transitions",
        train.len(),
        a.train.display(),
        config.column.name(),
        config.order
    );
    let t0 = Instant::now();
    let model = HmmTagger::train(&train, &config).context("training the HMM tagger")?;
    let secs = t0.elapsed().as_secs_f64();
    let l = model.config.lambdas;
    eprintln!(
        "estimated in {secs:.2} s: {} tags, interpolation λ = ({:.3}, {:.3}, {:.3}), suffix θ = {:.4}",
        model.tags.len(),
        l[0],
        l[1],
        l[2],
        model.config.theta
    );
    model.save(&out)?;
    eprintln!("wrote {}", out.display());
    let mut json = serde_json::json!({
        "model": "hmm", "train_seconds": secs, "train_words": words, "checkpoint": out,
    });
    for (name, sents) in [("dev", &dev), ("test", &test)] {
        if let Some(sents) = sents {
            let t0 = Instant::now();
            let s = model.evaluate(sents);
            eprintln!(
                "{} in {:.2} s",
                tag_scores_line(name, &s),
                t0.elapsed().as_secs_f64()
            );
            json[format!("{name}_accuracy")] = s.accuracy().into();
            json[format!("{name}_oov_accuracy")] = s.oov_accuracy().into();
        }
    }
    if test.is_some() {
        json["test_checkpoint"] = serde_json::json!(out);
    }
    if c.json {
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `rnnkit tag eval` of an HMM checkpoint.
pub(crate) fn tag_eval(file: TensorFile, data: &Path, json: bool) -> anyhow::Result<ExitCode> {
    let model = HmmTagger::load(file)?;
    let s = model.evaluate(&read_treebank(data, "--data")?);
    if json {
        println!(
            "{}",
            serde_json::json!({
                "tokens": s.tokens, "accuracy": s.accuracy(), "oov_tokens": s.oov_tokens,
                "oov_accuracy": s.oov_accuracy(), "loss": null, "column": model.column().name(),
                "model": "hmm",
            })
        );
    } else {
        println!("words:            {}", s.tokens);
        println!("accuracy:         {:.4}", s.accuracy());
        println!("unknown words:    {}", s.oov_tokens);
        println!("unknown accuracy: {:.4}", s.oov_accuracy());
    }
    Ok(ExitCode::SUCCESS)
}

/// `rnnkit tag predict` of an HMM checkpoint: tags `sents` in place, CoNLL-U out.
pub(crate) fn tag_predict(file: TensorFile, mut sents: Vec<Sentence>) -> anyhow::Result<ExitCode> {
    let model = HmmTagger::load(file)?;
    let mut out = String::new();
    for s in &mut sents {
        for (i, id) in model.predict(s).into_iter().enumerate() {
            s.set_tag(i, model.column(), &model.tags[id]);
        }
        out.push_str(&s.to_conllu());
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

/// What `classify train --model hmm` was given.
pub(crate) struct ClassifyTrain<'a> {
    pub train: PathBuf,
    pub test: Option<PathBuf>,
    pub states: Option<u32>,
    pub em_iters: Option<u32>,
    pub common: &'a TrainerOpts,
}

fn read_series(path: &Path, what: &str) -> anyhow::Result<TsDataset> {
    read_ts(path).with_context(|| format!("{what} {}", path.display()))
}

/// The cases of `data` with labels mapped to the model's class ids.
fn labelled(model: &HmmClassifier, data: &TsDataset) -> anyhow::Result<Vec<Series>> {
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

/// `rnnkit classify train --model hmm`.
pub(crate) fn classify_train(a: ClassifyTrain) -> anyhow::Result<ExitCode> {
    let c = a.common;
    crate::set_threads(c.threads.map(usize::from))?;
    let (out, _lock) = out_path(c, "runs/classify-hmm")?;
    let data = read_series(&a.train, "--train")?;
    let test = a
        .test
        .as_ref()
        .map(|p| read_series(p, "--test"))
        .transpose()?;
    let defaults = HmmClassifierConfig::default();
    let config = HmmClassifierConfig {
        states: a.states.map_or(defaults.states, |s| s as usize),
        em_iters: a.em_iters.map_or(defaults.em_iters, |s| s as usize),
        seed: c.seed.unwrap_or(defaults.seed),
        ..defaults
    };
    eprintln!(
        "rnnkit classify train --model hmm: {} cases of {} channels, {} classes, {} states per class, at most {} EM iterations",
        data.cases.len(),
        data.channels,
        data.labels.len(),
        config.states,
        config.em_iters
    );
    let t0 = Instant::now();
    let idx: Vec<usize> = (0..data.cases.len()).collect();
    let model = HmmClassifier::train(&data, &idx, &config, &mut |f| {
        eprintln!(
            "class {:>4}: {:>3} cases, {:>3} EM iterations, log-likelihood {:.2}",
            f.label, f.cases, f.iterations, f.log_likelihood
        );
    })
    .context("training the HMM classifier")?;
    let secs = t0.elapsed().as_secs_f64();
    model.save(&out)?;
    eprintln!("trained in {secs:.2} s; wrote {}", out.display());
    let train_refs: Vec<&Series> = data.cases.iter().collect();
    let (_, train_scores) = model.evaluate(&train_refs)?;
    let mut json = serde_json::json!({
        "model": "hmm", "train_seconds": secs, "train_accuracy": train_scores.accuracy,
        "checkpoint": out,
    });
    if let Some(test) = &test {
        let cases = labelled(&model, test).context("--test")?;
        let refs: Vec<&Series> = cases.iter().collect();
        let (loss, s) = model.evaluate(&refs).context("--test")?;
        eprintln!(
            "test ({} cases, {}): accuracy {:.4}, macro-F1 {:.4}, loss {loss:.4}",
            s.cases,
            out.display(),
            s.accuracy,
            s.macro_f1
        );
        json["test_accuracy"] = s.accuracy.into();
        json["test_macro_f1"] = s.macro_f1.into();
        json["test_checkpoint"] = serde_json::json!(out);
    }
    if c.json {
        println!("{json}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `rnnkit classify eval` of an HMM checkpoint: loss, scores and class names.
pub(crate) fn classify_eval(
    file: TensorFile,
    data: &Path,
) -> anyhow::Result<(f64, rnnkit::task::classifier::ClassScores, Vec<String>)> {
    let model = HmmClassifier::load(file)?;
    let cases = labelled(&model, &read_series(data, "--data")?).context("--data")?;
    let refs: Vec<&Series> = cases.iter().collect();
    let (loss, s) = model.evaluate(&refs).context("--data")?;
    Ok((loss, s, model.labels))
}

/// `rnnkit classify predict` of an HMM checkpoint.
pub(crate) fn classify_predict(
    file: TensorFile,
    data: &Path,
    proba: bool,
) -> anyhow::Result<ExitCode> {
    let model = HmmClassifier::load(file)?;
    let data = read_series(data, "--data")?;
    if data.channels != model.channels() {
        bail!(
            "--data has {} channels but the model reads {}",
            data.channels,
            model.channels()
        );
    }
    let mut out = String::new();
    for (n, s) in data.cases.iter().enumerate() {
        let (id, p) = model
            .predict(s)
            .with_context(|| format!("--data case {}", n + 1))?;
        out.push_str(&model.labels[id]);
        if proba {
            for v in p {
                out.push_str(&format!("\t{v:.6}"));
            }
        }
        out.push('\n');
    }
    crate::print_stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
