//! Training state inside a checkpoint: everything needed to continue a run exactly
//! as if it had never stopped, under `train.`-prefixed names beside the model.

use super::average::WeightAverage;
use super::{LogEntry, Recipe, Schedule};
use crate::checkpoint::TensorFile;
use crate::error::{Error, Result};
use crate::layer::Parameters;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::task::Task;
use crate::tensor::Tensor;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const RECIPE: &str = "train.recipe";
const SCHEDULE: &str = "train.schedule";
const STEP: &str = "train.step";
const RNG: &str = "train.rng";
const LOSS_SUM: &str = "train.loss_sum_bits";
const LOSS_COUNT: &str = "train.loss_count";
const BEST_VAL: &str = "train.best_val_bits";
const BEST_STEP: &str = "train.best_step";
const SINCE_BEST: &str = "train.evals_since_best";
const HISTORY: &str = "train.history";
const DATA: &str = "train.data_fingerprint";
const DATA_PATH: &str = "train.data_path";
const OPT_STEPS: &str = "train.optimizer_steps";
const OPT_PREFIX: &str = "train.optimizer.";
const AVERAGE_PREFIX: &str = "train.average.";
const AVERAGE_IN_MODEL: &str = "train.average_in_model";
const WORLD_SIZE: &str = "train.world_size";

/// Where a run stands, besides the model, the optimiser moments and the task's carried state.
#[derive(Debug)]
pub struct TrainState {
    /// The recipe as stored (JSON), rewritten by the trainer from its configuration.
    pub recipe: String,
    /// Bounds and cadences.
    pub schedule: Schedule,
    /// Optimizer steps done.
    pub step: u64,
    /// Dropout randomness, continued exactly.
    pub rng: Rng,
    /// Training-loss sum since the last log line.
    pub loss_sum: f64,
    /// Steps in that sum.
    pub loss_count: u64,
    /// The best validation so far: its selection value (lower is better) and step.
    pub best: Option<(f64, u64)>,
    /// Validations since the best one (for early stopping).
    pub evals_since_best: u64,
    /// The log so far.
    pub history: Vec<LogEntry>,
    /// Fingerprint of the training data.
    pub data_fingerprint: u64,
    /// Where the training data came from, if from a file.
    pub data_path: Option<PathBuf>,
    /// The step of the last checkpoint written or read.
    pub saved_step: u64,
    /// Processes of the data-parallel run that wrote the checkpoint (1: one process).
    pub world_size: u64,
    optimizer_steps: u64,
    file: Option<TensorFile>,
}

/// What a checkpoint says about the run that wrote it, for a resumed run to start from.
#[derive(Clone, Debug)]
pub struct StoredRun<M> {
    /// The recipe.
    pub recipe: Recipe<M>,
    /// Bounds and cadences (absent in checkpoints written before they were stored).
    pub schedule: Option<Schedule>,
    /// Where the training data came from.
    pub data_path: Option<PathBuf>,
    /// The step it stopped at.
    pub step: u64,
    /// Everything the checkpoint's metadata holds (a task's own records among it).
    pub metadata: HashMap<String, String>,
}

/// Reads what a checkpoint says about its run, without loading the model.
pub fn stored_run<M: Serialize + DeserializeOwned>(path: &Path) -> Result<StoredRun<M>> {
    let file = TensorFile::open(path)?;
    Ok(StoredRun {
        recipe: read_recipe(&file)?,
        schedule: match file.metadata().get(SCHEDULE) {
            Some(s) => Some(
                serde_json::from_str(s)
                    .map_err(|e| file.error(format!("metadata `{SCHEDULE}`: {e}")))?,
            ),
            None => None,
        },
        data_path: file.metadata().get(DATA_PATH).map(PathBuf::from),
        step: parse(&file, STEP)?,
        metadata: file.metadata().clone(),
    })
}

/// The step a training checkpoint was written at.
pub fn stored_step(path: &Path) -> Result<u64> {
    parse(&TensorFile::open(path)?, STEP)
}

impl TrainState {
    /// The state of a run that has not started; `rng` continues the stream that
    /// initialised the model (dropout draws from it).
    pub fn fresh(rng: Rng, data_fingerprint: u64) -> Self {
        TrainState {
            recipe: String::new(),
            schedule: Schedule {
                steps: None,
                epochs: None,
                time_limit: None,
                eval_every: 1,
                checkpoint_every: 1,
                checkpoint_every_epochs: None,
                log_every: 1,
                patience: None,
            },
            step: 0,
            rng,
            loss_sum: 0.0,
            loss_count: 0,
            best: None,
            evals_since_best: 0,
            history: Vec::new(),
            data_fingerprint,
            data_path: None,
            saved_step: 0,
            world_size: 1,
            optimizer_steps: 0,
            file: None,
        }
    }

    /// Reads the training state of a checkpoint whose model the task has already read;
    /// `data_fingerprint` is that of the data given now, which must match.
    pub fn load(file: TensorFile, data_fingerprint: u64) -> Result<Self> {
        let m = |k: &str| meta(&file, k);
        let stored_data = u64::from_str_radix(&m(DATA)?, 16)
            .map_err(|e| file.error(format!("metadata `{DATA}`: {e}")))?;
        if stored_data != data_fingerprint {
            let hint = match file.metadata().get(DATA_PATH) {
                Some(p) => format!("it was trained on {p}"),
                None => "give the same --data".into(),
            };
            return Err(file.error(format!(
                "cannot resume: the training data differs from the data it was trained on ({hint}); to train this model on other data, start a new run with --init {}",
                file.path().display()
            )));
        }
        let rng_words: Vec<String> = serde_json::from_str(&m(RNG)?)
            .map_err(|e| file.error(format!("metadata `{RNG}`: {e}")))?;
        let rng_state: Vec<u64> = rng_words
            .iter()
            .map(|w| w.parse::<u64>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|e| file.error(format!("metadata `{RNG}`: {e}")))?;
        let rng_state: [u64; 4] = rng_state
            .try_into()
            .map_err(|_| file.error(format!("metadata `{RNG}` must hold 4 numbers")))?;
        let best = match m(BEST_VAL)?.as_str() {
            "none" => None,
            _ => Some((
                f64::from_bits(parse(&file, BEST_VAL)?),
                opt_parse(&file, BEST_STEP)?.unwrap_or(0),
            )),
        };
        let step = parse(&file, STEP)?;
        Ok(TrainState {
            recipe: m(RECIPE)?,
            schedule: match file.metadata().get(SCHEDULE) {
                Some(s) => serde_json::from_str(s)
                    .map_err(|e| file.error(format!("metadata `{SCHEDULE}`: {e}")))?,
                None => TrainState::fresh(Rng::new(0), 0).schedule,
            },
            step,
            rng: Rng::from_state(rng_state),
            loss_sum: f64::from_bits(parse(&file, LOSS_SUM)?),
            loss_count: parse(&file, LOSS_COUNT)?,
            best,
            evals_since_best: opt_parse(&file, SINCE_BEST)?.unwrap_or(0),
            history: serde_json::from_str(&m(HISTORY)?)
                .map_err(|e| file.error(format!("metadata `{HISTORY}`: {e}")))?,
            data_fingerprint,
            data_path: file.metadata().get(DATA_PATH).map(PathBuf::from),
            saved_step: step,
            world_size: opt_parse(&file, WORLD_SIZE)?.unwrap_or(1),
            optimizer_steps: parse(&file, OPT_STEPS)?,
            file: Some(file),
        })
    }

    /// Puts the stored optimiser moments (if any) into `optimizer`, and the stored
    /// weight average into `average` (the model then holds the trained weights).
    pub(super) fn restore(
        &mut self,
        optimizer: &mut Optimizer,
        average: Option<&mut WeightAverage>,
        model: &mut dyn Parameters<f32>,
    ) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        optimizer.restore(
            model,
            self.optimizer_steps,
            &mut |name, shape| file.get(name, Some(shape)),
            OPT_PREFIX,
        )?;
        if let Some(a) = average {
            let in_model =
                file.metadata().get(AVERAGE_IN_MODEL).map(String::as_str) == Some("true");
            a.restore(
                model,
                &mut |name, shape| file.get(name, Some(shape)),
                AVERAGE_PREFIX,
                in_model,
            )?;
        }
        Ok(())
    }

    /// Writes the task's model with this state and the task's `carried` state, atomically.
    pub(super) fn save<T: Task>(
        &mut self,
        task: &T,
        optimizer: &Optimizer,
        average: Option<&WeightAverage>,
        carried: Vec<(String, Tensor<f32>)>,
        path: &Path,
    ) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert(RECIPE.into(), self.recipe.clone());
        meta.insert(SCHEDULE.into(), json(&self.schedule));
        meta.insert(STEP.into(), self.step.to_string());
        let words: Vec<String> = self.rng.state().iter().map(u64::to_string).collect();
        meta.insert(RNG.into(), json(&words));
        meta.insert(LOSS_SUM.into(), self.loss_sum.to_bits().to_string());
        meta.insert(LOSS_COUNT.into(), self.loss_count.to_string());
        meta.insert(
            BEST_VAL.into(),
            self.best
                .map_or("none".into(), |(b, _)| b.to_bits().to_string()),
        );
        if let Some((_, s)) = self.best {
            meta.insert(BEST_STEP.into(), s.to_string());
        }
        meta.insert(SINCE_BEST.into(), self.evals_since_best.to_string());
        meta.insert(HISTORY.into(), json(&self.history));
        meta.insert(DATA.into(), format!("{:016x}", self.data_fingerprint));
        if let Some(p) = &self.data_path {
            meta.insert(DATA_PATH.into(), p.display().to_string());
        }
        meta.insert(OPT_STEPS.into(), optimizer.steps().to_string());
        if self.world_size > 1 {
            meta.insert(WORLD_SIZE.into(), self.world_size.to_string());
        }
        let mut extra: Vec<(String, Tensor<f32>)> = optimizer.state_tensors(task, OPT_PREFIX);
        extra.extend(carried);
        if let Some(a) = average {
            meta.insert(AVERAGE_IN_MODEL.into(), a.in_model().to_string());
            extra.extend(a.state_tensors(task, AVERAGE_PREFIX));
        }
        task.save(path, &extra, meta)?;
        self.saved_step = self.step;
        Ok(())
    }
}

/// A metadata value: JSON text.
fn json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).expect("serialisable")
}

fn read_recipe<M: Serialize + DeserializeOwned>(file: &TensorFile) -> Result<Recipe<M>>
where
    Recipe<M>: DeserializeOwned,
{
    let s = file.metadata().get(RECIPE).ok_or_else(|| {
        file.error(format!("metadata `{RECIPE}` is missing: this checkpoint holds a model but no training state, so it can be used (and fine-tuned with --init) but not resumed"))
    })?;
    serde_json::from_str(s).map_err(|e| {
        file.error(format!(
            "metadata `{RECIPE}`: {e} (is it a checkpoint of another task?)"
        ))
    })
}

fn meta(file: &TensorFile, key: &str) -> Result<String> {
    file.metadata().get(key).cloned().ok_or_else(|| {
        file.error(format!(
            "metadata `{key}` is missing: the training state is incomplete"
        ))
    })
}

fn parse<T: std::str::FromStr>(file: &TensorFile, key: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    meta(file, key)?
        .parse()
        .map_err(|e: T::Err| Error::Checkpoint {
            path: file.path().to_path_buf(),
            msg: format!("metadata `{key}`: {e}"),
        })
}

fn opt_parse<T: std::str::FromStr>(file: &TensorFile, key: &str) -> Result<Option<T>>
where
    T::Err: std::fmt::Display,
{
    match file.metadata().contains_key(key) {
        true => parse(file, key).map(Some),
        false => Ok(None),
    }
}
