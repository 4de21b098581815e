//! `rnnkit export`: any rnnkit checkpoint → ONNX (standard operators), written atomically.

use anyhow::{bail, Context};
use clap::Args;
use rnnkit::checkpoint::{write_atomic, TensorFile};
use rnnkit::export::{self, Exported, Options, DEFAULT_OPSET, OPSETS};
use rnnkit::model::CharLm;
use rnnkit::seq2seq::Seq2seq;
use rnnkit::task::{classifier::Classifier, ctc::CtcModel, tagger::Tagger, META_TASK};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Flags of `rnnkit export`.
#[derive(Args)]
pub struct ExportOpts {
    /// Checkpoint of a char LM, classifier, tagger, encoder–decoder or CTC model.
    #[arg(long)]
    checkpoint: PathBuf,
    /// ONNX file to write. An encoder–decoder writes two graphs beside it:
    /// `<stem>.encoder.onnx` and `<stem>.decoder.onnx` (one decoder step).
    #[arg(long)]
    out: PathBuf,
    /// ONNX operator set version.
    #[arg(long, default_value_t = DEFAULT_OPSET, value_parser = clap::value_parser!(i64).range(*OPSETS.start()..=*OPSETS.end()))]
    opset: i64,
}

/// Where a graph of `role` goes, given `--out`.
fn destination(out: &Path, role: &str) -> PathBuf {
    if role == "model" {
        return out.to_path_buf();
    }
    let stem = out
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    out.with_file_name(format!("{stem}.{role}.onnx"))
}

/// The graphs of the checkpoint's model and what kind of model it is.
fn export_file(file: TensorFile, o: &Options) -> anyhow::Result<(Vec<Exported>, String)> {
    let task = file.metadata().get(META_TASK).cloned();
    Ok(match task.as_deref() {
        None => {
            let (m, _) = CharLm::load(file)?;
            let c = m.rnn.config();
            let what = format!("char LM, {} {}×{}", c.cell, c.num_layers, c.hidden_size);
            (vec![export::char_lm(&m, o)?], what)
        }
        Some("classify") => {
            let (m, _) = Classifier::load(file)?;
            let c = m.rnn.config();
            let what = format!("classifier, {} {}×{}", c.cell, c.num_layers, c.hidden_size);
            (vec![export::classifier(&m, o)?], what)
        }
        Some("tag") => {
            let (m, _) = Tagger::load(file)?;
            let c = m.rnn.config();
            let what = format!("tagger, {} {}×{}", c.cell, c.num_layers, c.hidden_size);
            (vec![export::tagger(&m, o)?], what)
        }
        Some("seq2seq") => {
            let (m, _) = Seq2seq::<f32>::load(file)?;
            let c = m.config();
            let what = format!(
                "encoder–decoder, {} {}×{}, {} attention",
                c.cell,
                c.num_layers,
                c.hidden_size,
                c.attention.name()
            );
            (export::seq2seq(&m, o)?.to_vec(), what)
        }
        Some("ctc") => {
            let (m, _) = CtcModel::load(file)?;
            let c = m.rnn.config();
            let what = format!("CTC model, {} {}×{}", c.cell, c.num_layers, c.hidden_size);
            (vec![export::ctc(&m, o)?], what)
        }
        Some(hmm @ ("classify-hmm" | "tag-hmm")) => bail!(
            "this is a hidden Markov model ({hmm}): ONNX has no operator for its forward or Viterbi recursions, so only recurrent networks are exported"
        ),
        Some(other) => bail!(
            "metadata `{META_TASK}` is {other:?}, not a model kind rnnkit exports (char LM, classify, tag, seq2seq, ctc)"
        ),
    })
}

pub fn run(o: ExportOpts) -> anyhow::Result<ExitCode> {
    let file = TensorFile::open(&o.checkpoint)?;
    let options = Options {
        opset: o.opset,
        source: o.checkpoint.display().to_string(),
    };
    let (graphs, what) = export_file(file, &options)
        .with_context(|| format!("--checkpoint {}", o.checkpoint.display()))?;
    for g in &graphs {
        let path = destination(&o.out, g.role);
        let bytes = g.checked_bytes()?;
        write_atomic(&path, &bytes).with_context(|| format!("--out {}", o.out.display()))?;
        eprintln!(
            "wrote {} ({what}{}, opset {}, {:.1} KiB)",
            path.display(),
            if g.role == "model" {
                String::new()
            } else {
                format!(", {}", g.role)
            },
            o.opset,
            bytes.len() as f64 / 1024.0
        );
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoder_and_decoder_go_beside_out() {
        let out = Path::new("dir/g2p.onnx");
        assert_eq!(destination(out, "model"), PathBuf::from("dir/g2p.onnx"));
        assert_eq!(
            destination(out, "encoder"),
            PathBuf::from("dir/g2p.encoder.onnx")
        );
        assert_eq!(
            destination(out, "decoder"),
            PathBuf::from("dir/g2p.decoder.onnx")
        );
    }
}
