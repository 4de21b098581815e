//! A sequence classifier trained through the library alone: the bundled JapaneseVowels
//! (9 speakers, 12 LPC channels), a bidirectional LSTM with max pooling, the one trainer.
//!
//! `cargo run --release -p rnnkit --example classify`

use rnnkit::data::{read_ts, Series};
use rnnkit::layer::PoolKind;
use rnnkit::task::classifier::{
    evaluate, stratified_split, Classifier, ClassifierConfig, ClassifyTask, Standardizer,
};
use rnnkit::train::{self, LogEntry, Observer, Recipe, Schedule, TrainConfig, TrainSettings};
use rnnkit::train::{StartInfo, TrainState};
use rnnkit::{CellKind, Rng};
use std::path::Path;

/// Prints the run's description and every validation.
struct Print;

impl Observer for Print {
    fn on_start(&mut self, info: &StartInfo) {
        println!("{} ({} parameters)", info.description, info.parameters);
    }

    fn on_log(&mut self, history: &[LogEntry]) {
        let e = history.last().expect("called after a line is written");
        if let Some(v) = &e.val {
            println!(
                "step {:4}  epoch {:5.1}  train loss {:.4}  val loss {:.4}  val accuracy {:.4}",
                e.step, e.epoch, e.train_loss, v.loss, v.scores["accuracy"]
            );
        }
    }
}

fn main() -> rnnkit::Result<()> {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/uea/JapaneseVowels");
    let data = read_ts(&data_dir.join("JapaneseVowels_TRAIN.ts"))?;
    let test = read_ts(&data_dir.join("JapaneseVowels_TEST.ts"))?;
    assert_eq!(
        test.labels, data.labels,
        "both files declare the same classes"
    );

    let recipe = Recipe {
        task: ClassifierConfig {
            cell: CellKind::Lstm,
            hidden_size: 64,
            num_layers: 1,
            bidirectional: true,
            dropout: 0.2,
            pool: PoolKind::Max,
        },
        train: TrainSettings {
            batch: 16,
            lr: 3e-3,
            lr_decay: 0.95,
            decay_after: 10,
            ..TrainSettings::default()
        },
    };
    let schedule = Schedule {
        epochs: Some(25.0),
        eval_every: 50,
        checkpoint_every: 1000,
        ..Schedule::default()
    };

    // Hold out a stratified tenth for validation; standardise with the rest only.
    let (train_idx, val_idx) = stratified_split(&data, recipe.train.val_frac, recipe.train.seed);
    let fit: Vec<&Series> = train_idx.iter().map(|&i| &data.cases[i]).collect();
    let norm = Standardizer::fit(&fit, data.channels);
    let mut rng = Rng::new(recipe.train.seed);
    let model = Classifier::new(
        &recipe.task,
        data.channels,
        data.labels.clone(),
        norm,
        &mut rng,
    )?;
    let mut task = ClassifyTask::new(
        model,
        &data,
        (&train_idx, &val_idx),
        recipe.train.batch,
        recipe.train.seed,
    )?;

    // Nothing resumes this run, so the data needs no fingerprint (0).
    let config = TrainConfig {
        recipe,
        schedule,
        out_dir: std::env::temp_dir().join("rnnkit-examples/classify"),
        data_fingerprint: 0,
        data_path: None,
    };
    let summary = train::run(&config, &mut task, TrainState::fresh(rng, 0), &mut Print)?;

    // Score the test file once, with the checkpoint that validated best.
    let best = summary.best_checkpoint.unwrap_or(summary.checkpoint);
    let (mut model, _) = Classifier::load(&best)?;
    let cases: Vec<&Series> = test.cases.iter().collect();
    let (loss, scores) = evaluate(&mut model, &cases, 64)?;
    println!(
        "test: {} cases, accuracy {:.4}, macro-F1 {:.4}, loss {loss:.4} ({})",
        scores.cases,
        scores.accuracy,
        scores.macro_f1,
        best.display()
    );
    Ok(())
}
