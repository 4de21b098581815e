//! The metrics log: one JSON line every `--log-every` steps with the mean training loss
//! since the previous line, plus the validation loss and scores where one was taken.

use crate::error::Result;
use crate::task::Metrics;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// File name of the metrics log in the output folder.
pub const METRICS: &str = "metrics.jsonl";

/// One line of the log.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LogEntry {
    /// Steps done.
    pub step: u64,
    /// Passes over the training data done.
    pub epoch: f64,
    /// Learning rate at this step.
    pub lr: f32,
    /// Mean training loss since the previous line (older checkpoints: since the previous validation).
    #[serde(alias = "train_nats_per_char")]
    pub train_loss: f64,
    /// The validation taken at this step, if any.
    #[serde(default)]
    pub val: Option<Metrics>,
}

impl LogEntry {
    /// The line as written to `metrics.jsonl`: `train_{loss}`, `val_{loss}` and
    /// `val_{score}` keys, where `loss` names the task's unit (e.g. `nats_per_char`).
    pub fn to_json(&self, loss_name: &str) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("step".into(), self.step.into());
        m.insert("epoch".into(), self.epoch.into());
        // The f32 rate as its shortest decimal (0.003, not 0.003000000026077032).
        let lr: f64 = self.lr.to_string().parse().unwrap_or(self.lr as f64);
        m.insert("lr".into(), lr.into());
        m.insert(format!("train_{loss_name}"), self.train_loss.into());
        if let Some(v) = &self.val {
            m.insert(format!("val_{loss_name}"), v.loss.into());
            for (k, s) in &v.scores {
                m.insert(format!("val_{k}"), (*s).into());
            }
        }
        serde_json::Value::Object(m)
    }
}

/// Rewrites `DIR/metrics.jsonl` with `history`, atomically.
pub fn write_metrics(dir: &Path, history: &[LogEntry], loss_name: &str) -> Result<()> {
    let mut s = String::new();
    for e in history {
        s.push_str(&e.to_json(loss_name).to_string());
        s.push('\n');
    }
    crate::checkpoint::write_atomic(&dir.join(METRICS), s.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_history_entries_still_parse() {
        let old = r#"{"step":100,"epoch":0.3,"train_nats_per_char":2.5,"val_nats_per_char":2.4,"lr":0.003}"#;
        let e: LogEntry = serde_json::from_str(old).unwrap();
        assert_eq!((e.step, e.train_loss, e.val), (100, 2.5, None));
        let line = LogEntry {
            val: Some(Metrics {
                loss: 1.5,
                scores: [("accuracy".to_string(), 0.9)].into(),
            }),
            ..e
        }
        .to_json("loss")
        .to_string();
        assert!(
            line.contains(r#""val_accuracy":0.9"#) && line.contains(r#""train_loss":2.5"#),
            "{line}"
        );
    }
}
