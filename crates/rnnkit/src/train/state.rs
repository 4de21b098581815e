//! Training state inside a checkpoint: everything needed to continue a run
//! exactly as if it had never stopped, under `train.`-prefixed names.

use super::{EvalReport, Recipe};
use crate::checkpoint::TensorFile;
use crate::error::{Error, Result};
use crate::model::CharLm;
use crate::optim::Optimizer;
use crate::rng::Rng;
use crate::tensor::Tensor;
use crate::RecurrentState;
use std::collections::HashMap;
use std::path::Path;

const RECIPE: &str = "train.recipe";
const STEP: &str = "train.step";
const RNG: &str = "train.rng";
const LOSS_SUM: &str = "train.loss_sum_bits";
const LOSS_COUNT: &str = "train.loss_count";
const BEST_VAL: &str = "train.best_val_bits";
const HISTORY: &str = "train.history";
const DATA: &str = "train.data_fingerprint";
const OPT_STEPS: &str = "train.optimizer_steps";
const OPT_PREFIX: &str = "train.optimizer.";
const CARRY_H: &str = "train.carry.h";
const CARRY_C: &str = "train.carry.c";

/// Where a run stands, besides the model and the optimiser moments.
#[derive(Debug)]
pub struct TrainState {
    /// What defines the run.
    pub recipe: Recipe,
    /// Optimizer steps done.
    pub step: u64,
    /// Dropout randomness, continued exactly.
    pub rng: Rng,
    /// The hidden state carried into the next batch.
    pub carry: Option<RecurrentState<f32>>,
    /// Training-loss sum since the last validation.
    pub loss_sum: f64,
    /// Steps in that sum.
    pub loss_count: u64,
    /// Lowest validation loss so far.
    pub best_val: Option<f64>,
    /// Every validation so far.
    pub history: Vec<EvalReport>,
    /// Fingerprint of the training text.
    pub data_fingerprint: u64,
    optimizer_steps: u64,
    file: Option<TensorFile>,
}

impl TrainState {
    pub(super) fn fresh(recipe: Recipe, rng: Rng, data_fingerprint: u64) -> Self {
        TrainState {
            recipe,
            step: 0,
            rng,
            carry: None,
            loss_sum: 0.0,
            loss_count: 0,
            best_val: None,
            history: Vec::new(),
            data_fingerprint,
            optimizer_steps: 0,
            file: None,
        }
    }

    /// Reads a checkpoint written during training: the model and where the run stands.
    pub fn load(path: &Path) -> Result<(CharLm, TrainState)> {
        let (mut model, file) = CharLm::load(path)?;
        let recipe = read_recipe(&file)?;
        model.set_dropout(recipe.model.dropout)?;
        let m = |k: &str| meta(&file, k);
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
        let best_bits = m(BEST_VAL)?;
        let cfg = model.rnn.config().clone();
        let carry = match file.shape(CARRY_H) {
            Some(shape)
                if shape.len() == 3
                    && shape[0] == cfg.num_layers * cfg.directions()
                    && shape[2] == cfg.hidden_size =>
            {
                let batch = [shape[0], recipe.batch, shape[2]];
                let h = file.get(CARRY_H, Some(&batch))?;
                let c = if cfg.cell.has_cell_state() {
                    Some(file.get(CARRY_C, Some(&batch))?)
                } else {
                    None
                };
                Some(RecurrentState { h, c })
            }
            Some(shape) => {
                return Err(file.error(format!(
                    "`{CARRY_H}` has shape {shape:?}, which does not fit the model"
                )))
            }
            None => None,
        };
        let st = TrainState {
            step: parse(&file, STEP)?,
            rng: Rng::from_state(rng_state),
            carry,
            loss_sum: f64::from_bits(parse(&file, LOSS_SUM)?),
            loss_count: parse(&file, LOSS_COUNT)?,
            best_val: if best_bits == "none" {
                None
            } else {
                Some(f64::from_bits(parse(&file, BEST_VAL)?))
            },
            history: serde_json::from_str(&m(HISTORY)?)
                .map_err(|e| file.error(format!("metadata `{HISTORY}`: {e}")))?,
            data_fingerprint: u64::from_str_radix(&m(DATA)?, 16)
                .map_err(|e| file.error(format!("metadata `{DATA}`: {e}")))?,
            optimizer_steps: parse(&file, OPT_STEPS)?,
            recipe,
            file: Some(file),
        };
        Ok((model, st))
    }

    /// Puts the stored optimiser moments (if any) into `optimizer`.
    pub(super) fn restore_optimizer(
        &mut self,
        optimizer: &mut Optimizer,
        model: &CharLm,
    ) -> Result<()> {
        let Some(file) = self.file.take() else {
            return Ok(());
        };
        optimizer.restore(
            model,
            self.optimizer_steps,
            &mut |name, shape| file.get(name, Some(shape)),
            OPT_PREFIX,
        )
    }

    /// Writes the model with this state, atomically.
    pub(super) fn save(&self, model: &CharLm, optimizer: &Optimizer, path: &Path) -> Result<()> {
        let mut meta = HashMap::new();
        meta.insert(
            RECIPE.into(),
            serde_json::to_string(&self.recipe).expect("serialisable"),
        );
        meta.insert(STEP.into(), self.step.to_string());
        let words: Vec<String> = self.rng.state().iter().map(u64::to_string).collect();
        meta.insert(
            RNG.into(),
            serde_json::to_string(&words).expect("serialisable"),
        );
        meta.insert(LOSS_SUM.into(), self.loss_sum.to_bits().to_string());
        meta.insert(LOSS_COUNT.into(), self.loss_count.to_string());
        meta.insert(
            BEST_VAL.into(),
            self.best_val
                .map_or("none".into(), |b| b.to_bits().to_string()),
        );
        meta.insert(
            HISTORY.into(),
            serde_json::to_string(&self.history).expect("serialisable"),
        );
        meta.insert(DATA.into(), format!("{:016x}", self.data_fingerprint));
        meta.insert(OPT_STEPS.into(), optimizer.steps().to_string());
        let mut extra: Vec<(String, Tensor<f32>)> = optimizer.state_tensors(model, OPT_PREFIX);
        if let Some(c) = &self.carry {
            extra.push((CARRY_H.into(), c.h.clone()));
            if let Some(cc) = &c.c {
                extra.push((CARRY_C.into(), cc.clone()));
            }
        }
        model.save(path, &extra, meta)
    }
}

/// The recipe a checkpoint was trained with, so a resumed run can default to it.
pub fn stored_recipe(path: &Path) -> Result<Recipe> {
    read_recipe(&TensorFile::open(path)?)
}

fn read_recipe(file: &TensorFile) -> Result<Recipe> {
    let s = file.metadata().get(RECIPE).ok_or_else(|| {
        file.error(format!("metadata `{RECIPE}` is missing: this checkpoint holds a model but no training state, so it can be sampled and evaluated but not resumed"))
    })?;
    serde_json::from_str(s).map_err(|e| file.error(format!("metadata `{RECIPE}`: {e}")))
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
