//! A part-of-speech tagger trained through the library alone: the first 2000 sentences
//! of the bundled UD English EWT, word embeddings plus a character BiLSTM under a
//! sentence BiLSTM, the one trainer; accuracy on the whole development set.
//!
//! `cargo run --release -p rnnkit --example tag`

use rnnkit::data::{read_conllu, Sentence, TagColumn};
use rnnkit::task::tagger::{TagTask, Tagger, TaggerConfig};
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
                "step {:4}  epoch {:4.1}  train loss {:.4}  dev accuracy {:.4}  unknown words {:.4}",
                e.step, e.epoch, e.train_loss, v.scores["accuracy"], v.scores["oov_accuracy"]
            );
        }
    }
}

fn main() -> rnnkit::Result<()> {
    let data_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/ud-english-ewt");
    let mut train = read_conllu(&data_dir.join("en_ewt-ud-train.conllu"))?;
    train.truncate(2000);
    let dev = read_conllu(&data_dir.join("en_ewt-ud-dev.conllu"))?;

    let recipe = Recipe {
        task: TaggerConfig {
            cell: CellKind::Lstm,
            word_embed: 64,
            char_embed: 24,
            char_hidden: 32,
            hidden_size: 64,
            num_layers: 1,
            dropout: 0.25,
            word_dropout: 0.1,
            min_freq: 1,
            column: TagColumn::Upos,
        },
        train: TrainSettings {
            lr: 3e-3,
            lr_decay: 0.9,
            decay_after: 3,
            val_frac: 0.0,
            ..TrainSettings::default()
        },
    };
    let schedule = Schedule {
        epochs: Some(8.0),
        time_limit: Some(60.0),
        eval_every: 63, // once an epoch: 2000 sentences / 32
        checkpoint_every: 1000,
        log_every: 20,
        ..Schedule::default()
    };

    let mut rng = Rng::new(recipe.train.seed);
    let model = Tagger::new(&recipe.task, &train, &mut rng)?;
    let mut task = TagTask::new(
        model,
        train,
        dev.clone(),
        recipe.train.batch,
        recipe.train.seed,
    )?;

    // Nothing resumes this run, so the data needs no fingerprint (0).
    let config = TrainConfig {
        recipe,
        schedule,
        out_dir: std::env::temp_dir().join("rnnkit-examples/tag"),
        data_fingerprint: 0,
        data_path: None,
    };
    let summary = train::run(&config, &mut task, TrainState::fresh(rng, 0), &mut Print)?;

    // Score the development set with the checkpoint that validated best.
    let best = summary.best_checkpoint.unwrap_or(summary.checkpoint);
    let (mut model, _) = Tagger::load(&best)?;
    let sentences: Vec<&Sentence> = dev.iter().collect();
    let s = model.evaluate(&sentences, 64)?;
    println!(
        "dev: {} words, accuracy {:.4}; {} unknown words, accuracy {:.4} ({})",
        s.tokens,
        s.accuracy(),
        s.oov_tokens,
        s.oov_accuracy(),
        best.display()
    );
    Ok(())
}
