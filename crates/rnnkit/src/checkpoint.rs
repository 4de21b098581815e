//! Safetensors files: reading with every name, dtype and shape checked, and
//! atomic writing (temporary file in the same folder, fsync, rename).

use crate::cell::{CellKind, CellParams};
use crate::error::{Error, Result};
use crate::layer::{Parameters, Recurrent, RecurrentConfig};
use crate::tensor::{Real, Tensor};
use safetensors::tensor::{Dtype, SafeTensors, TensorInfo};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A safetensors file read into memory and validated (header, offsets, sizes).
#[derive(Debug)]
pub struct TensorFile {
    path: PathBuf,
    bytes: Vec<u8>,
    /// Where the tensor data starts: after the 8-byte length and the header.
    data_start: usize,
    /// Every tensor's dtype, shape and byte range, parsed once.
    index: HashMap<String, TensorInfo>,
    metadata: HashMap<String, String>,
}

impl TensorFile {
    /// Reads and validates `path`; a truncated or hostile file is an error, never a panic.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let bytes = std::fs::read(&path).map_err(|source| Error::Io {
            path: path.clone(),
            source,
        })?;
        Self::from_bytes(path, bytes)
    }

    /// Validates an in-memory file; `path` is only used in messages.
    pub fn from_bytes(path: PathBuf, bytes: Vec<u8>) -> Result<Self> {
        let (header_len, meta) = SafeTensors::read_metadata(&bytes).map_err(|e| {
            let msg = if is_torch_pickle(&bytes) {
                TORCH_PICKLE.to_string()
            } else {
                format!("not a valid safetensors file ({e}); was it written completely?")
            };
            Error::Checkpoint {
                path: path.clone(),
                msg,
            }
        })?;
        // read_metadata checks the header; deserialize also checks every tensor's offsets and size.
        SafeTensors::deserialize(&bytes).map_err(|e| Error::Checkpoint {
            path: path.clone(),
            msg: format!("not a valid safetensors file ({e})"),
        })?;
        let metadata = meta.metadata().clone().unwrap_or_default();
        let index = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| (name, info.clone()))
            .collect();
        Ok(TensorFile {
            path,
            bytes,
            data_start: 8 + header_len,
            index,
            metadata,
        })
    }

    /// The file this was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The string → string metadata of the header.
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = self.index.keys().cloned().collect();
        v.sort();
        v
    }

    /// The shape of tensor `name`, if present.
    pub fn shape(&self, name: &str) -> Option<Vec<usize>> {
        self.index.get(name).map(|t| t.shape.clone())
    }

    /// The tensors of this file for a message: `N tensors: name [shape], …`, the first
    /// [`LISTED_NAMES`] in name order.
    pub fn describe_tensors(&self) -> String {
        let names = self.names();
        let shown: Vec<String> = names
            .iter()
            .take(LISTED_NAMES)
            .map(|n| format!("{n} {:?}", self.index[n].shape))
            .collect();
        let more = match names.len().saturating_sub(LISTED_NAMES) {
            0 => String::new(),
            k => format!(", … and {k} more"),
        };
        format!("{} tensors: {}{more}", names.len(), shown.join(", "))
    }

    /// An error about this file.
    pub fn error(&self, msg: impl Into<String>) -> Error {
        Error::Checkpoint {
            path: self.path.clone(),
            msg: msg.into(),
        }
    }

    /// The header entry of tensor `name`.
    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.index.get(name).ok_or_else(|| {
            self.error(format!(
                "tensor `{name}` is missing; the file has {}",
                self.describe_tensors()
            ))
        })
    }

    /// The entry of tensor `name` and its bytes (in bounds: checked when the file was opened).
    fn raw(&self, name: &str) -> Result<(&TensorInfo, &[u8])> {
        let info = self.info(name)?;
        let (start, end) = info.data_offsets;
        Ok((
            info,
            &self.bytes[self.data_start + start..self.data_start + end],
        ))
    }

    /// Checks from the header alone, reading and allocating nothing, that tensor
    /// `name` is present, stored as a float type [`TensorFile::get`] reads, and shaped
    /// exactly `shape`. Loaders check every tensor this way before they allocate, so
    /// what they allocate is bounded by what the file holds.
    pub fn expect_float(&self, name: &str, shape: &[usize]) -> Result<()> {
        let info = self.info(name)?;
        self.expect_info(name, info, Some(shape))
    }

    fn expect_info(&self, name: &str, info: &TensorInfo, shape: Option<&[usize]>) -> Result<()> {
        if let Some(want) = shape {
            if info.shape != want {
                return Err(self.error(format!(
                    "tensor `{name}` has shape {:?}, expected {want:?}",
                    info.shape
                )));
            }
        }
        match info.dtype {
            Dtype::F32 | Dtype::F64 | Dtype::F16 | Dtype::BF16 => Ok(()),
            other => Err(self.error(format!(
                "tensor `{name}` has dtype {other:?}; rnnkit reads F32, F64, F16 or BF16"
            ))),
        }
    }

    /// Reads tensor `name` (stored as F32, F64, F16 or BF16) as `T`; when `shape` is
    /// given it must match exactly. The one place where stored floats are converted.
    pub fn get<T: Real>(&self, name: &str, shape: Option<&[usize]>) -> Result<Tensor<T>> {
        let (info, bytes) = self.raw(name)?;
        self.expect_info(name, info, shape)?;
        let data: Vec<T> = match info.dtype {
            Dtype::F32 => bytes
                .chunks_exact(4)
                .map(|b| T::of(f32::from_le_bytes(b.try_into().expect("4 bytes")) as f64))
                .collect(),
            Dtype::F64 => bytes
                .chunks_exact(8)
                .map(|b| T::of(f64::from_le_bytes(b.try_into().expect("8 bytes"))))
                .collect(),
            Dtype::F16 => bytes
                .chunks_exact(2)
                .map(|b| T::of(f16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64))
                .collect(),
            Dtype::BF16 => bytes
                .chunks_exact(2)
                .map(|b| T::of(bf16_to_f32(u16::from_le_bytes([b[0], b[1]])) as f64))
                .collect(),
            _ => unreachable!("expect_info accepts float dtypes only"),
        };
        Tensor::from_vec(&info.shape, data).map_err(|e| self.error(format!("tensor `{name}`: {e}")))
    }

    /// Reads an integer tensor `name` (I64 or I32), e.g. sequence lengths.
    pub fn get_ints(&self, name: &str) -> Result<Vec<i64>> {
        let (info, bytes) = self.raw(name)?;
        match info.dtype {
            Dtype::I64 => Ok(bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")))
                .collect()),
            Dtype::I32 => Ok(bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes(b.try_into().expect("4 bytes")) as i64)
                .collect()),
            other => Err(self.error(format!(
                "tensor `{name}` has dtype {other:?}; expected I64 or I32"
            ))),
        }
    }
}

/// How many tensor names an error message lists at most.
pub const LISTED_NAMES: usize = 20;

/// Where a model's `load` reads its checkpoint from: a path, or a [`TensorFile`]
/// already in memory (from [`TensorFile::from_bytes`], as the fuzz targets give it).
pub trait CheckpointSource {
    /// Reads and validates the file.
    fn open(self) -> Result<TensorFile>;
}

impl CheckpointSource for &Path {
    fn open(self) -> Result<TensorFile> {
        TensorFile::open(self)
    }
}

impl CheckpointSource for &PathBuf {
    fn open(self) -> Result<TensorFile> {
        TensorFile::open(self)
    }
}

impl CheckpointSource for TensorFile {
    fn open(self) -> Result<TensorFile> {
        Ok(self)
    }
}

/// Bytes per parameter a loaded model holds: the f32 value, its gradient, and the
/// value being read while the model is built.
const LOAD_BYTES_PER_PARAM: u64 = 3 * 4;

/// Refuses to build a model of `params` parameters from `file` when this machine's
/// available memory cannot hold it with its gradients. Loaders call it after every
/// shape has been checked against the header and before they allocate.
pub fn check_model_memory(file: &TensorFile, params: u64) -> Result<()> {
    check_load_memory(file.path(), params)
}

/// [`check_model_memory`] for a model read from any file (`path` names it in the message).
pub fn check_load_memory(path: &Path, params: u64) -> Result<()> {
    let need = params.saturating_mul(LOAD_BYTES_PER_PARAM);
    match crate::train::available_memory() {
        Some(avail) if need > avail => Err(Error::Checkpoint {
            path: path.to_path_buf(),
            msg: format!(
                "the model has {params} parameters; loading it needs about {:.1} GiB (values and \
             gradients) but only {:.1} GiB of memory is available",
                need as f64 / (1u64 << 30) as f64,
                avail as f64 / (1u64 << 30) as f64
            ),
        }),
        _ => Ok(()),
    }
}

/// What to say about a file written by `torch.save` (a zip archive or a bare pickle).
const TORCH_PICKLE: &str = "this is a PyTorch pickle file (torch.save), not safetensors; \
save the state dict as safetensors instead: python -c \"import torch, safetensors.torch as st; \
sd = torch.load('model.pt', map_location='cpu'); \
st.save_file({k: v.contiguous() for k, v in sd.items()}, 'model.safetensors')\" \
(for a whole pickled module, use its .state_dict())";

/// Whether `bytes` start like a `torch.save` file: a zip archive (`PK\x03\x04`, the
/// format since PyTorch 1.6) or a pickle (protocol byte 0x80).
fn is_torch_pickle(bytes: &[u8]) -> bool {
    bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
}

/// IEEE half precision to f32 (exact: every f16 is an f32).
fn f16_to_f32(h: u16) -> f32 {
    let sign = u32::from(h >> 15) << 31;
    let exp = u32::from((h >> 10) & 0x1f);
    let man = u32::from(h & 0x3ff);
    match exp {
        // Zero and subnormals: man · 2⁻²⁴, exact in f32.
        0 => {
            let v = man as f32 * (1.0 / 16_777_216.0);
            if sign != 0 {
                -v
            } else {
                v
            }
        }
        // Infinities and NaNs (the payload kept in the high mantissa bits).
        0x1f => f32::from_bits(sign | 0x7f80_0000 | (man << 13)),
        // Normal numbers: rebias the exponent from 15 to 127.
        _ => f32::from_bits(sign | ((exp + 112) << 23) | (man << 13)),
    }
}

/// bfloat16 to f32: the top half of an f32.
fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits(u32::from(h) << 16)
}

/// Writes a model's `named` tensors followed by the `extra` ones (training state) with
/// `metadata`, atomically: what every task's `save` ends with.
pub fn save_named(
    path: &Path,
    named: &[(String, Tensor<f32>)],
    extra: &[(String, Tensor<f32>)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let refs: Vec<(String, &Tensor<f32>)> = named
        .iter()
        .chain(extra)
        .map(|(n, t)| (n.clone(), t))
        .collect();
    save(path, &refs, metadata)
}

/// Writes `tensors` (name, tensor) and `metadata` to `path` atomically: a reader sees
/// the old file or the complete new one, never a partial file.
pub fn save<T: Real>(
    path: impl AsRef<Path>,
    tensors: &[(String, &Tensor<T>)],
    metadata: &HashMap<String, String>,
) -> Result<()> {
    let path = path.as_ref();
    let dtype = if T::DTYPE == "F64" {
        Dtype::F64
    } else {
        Dtype::F32
    };
    let bufs: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t)| {
            let bytes = t
                .data()
                .iter()
                .flat_map(|&v| {
                    if dtype == Dtype::F64 {
                        v.f64().to_le_bytes().to_vec()
                    } else {
                        (v.f64() as f32).to_le_bytes().to_vec()
                    }
                })
                .collect();
            (n.clone(), bytes, t.shape().to_vec())
        })
        .collect();
    let views = bufs
        .iter()
        .map(|(n, b, s)| {
            Ok((
                n.as_str(),
                safetensors::tensor::TensorView::new(dtype, s.clone(), b)
                    .map_err(|e| Error::Shape(format!("{n}: {e}")))?,
            ))
        })
        .collect::<Result<Vec<_>>>()?;
    let bytes =
        safetensors::serialize(views, Some(metadata.clone())).map_err(|e| Error::Checkpoint {
            path: path.to_path_buf(),
            msg: e.to_string(),
        })?;
    write_atomic(path, &bytes)
}

/// Writes `bytes` to `path` through a temporary file in the same folder, fsync and rename.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let io = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"),
    })?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Ok(d) = std::fs::File::open(&dir) {
            let _ = d.sync_all(); // best effort: not every filesystem syncs directories
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io)
}

/// Loads every parameter of `model` from `file`, each named `{prefix}{name}`
/// (e.g. `rnn.weight_ih_l0`). Every name, dtype and shape is checked before
/// anything is replaced, so the model is unchanged on error.
pub fn load_params<T: Real>(
    model: &mut dyn Parameters<T>,
    file: &TensorFile,
    prefix: &str,
) -> Result<()> {
    let mut loaded = Vec::new();
    let mut err = None;
    model.visit_params(&mut |name, t| {
        if err.is_none() {
            match file.get::<T>(&format!("{prefix}{name}"), Some(t.shape())) {
                Ok(v) => loaded.push(v),
                Err(e) => err = Some(e),
            }
        }
    });
    if let Some(e) = err {
        return Err(e);
    }
    let mut it = loaded.into_iter();
    model.visit_params_mut(&mut |_, t, _| *t = it.next().expect("one per parameter"));
    Ok(())
}

/// Every parameter of `model` as (`{prefix}{name}`, value), in visiting order.
pub fn named_params<T: Real>(model: &dyn Parameters<T>, prefix: &str) -> Vec<(String, Tensor<T>)> {
    let mut named = Vec::new();
    model.visit_params(&mut |n, t| named.push((format!("{prefix}{n}"), t.clone())));
    named
}

/// Checks from the header alone that `file` holds every tensor of a recurrent stack
/// shaped as `config` says, under `prefix` (`{prefix}weight_ih_l0`, …, torch's
/// names); returns the number of parameters. Stops at the first tensor missing, so
/// the work is bounded by the file's tensor count whatever `config` claims, and every
/// size it multiplies is overflow-checked.
pub fn check_recurrent(file: &TensorFile, prefix: &str, config: &RecurrentConfig) -> Result<u64> {
    config
        .validate()
        .map_err(|e| file.error(format!("`{prefix}*`: {e}")))?;
    // validate() bounds the hidden size, so G·H and the output width cannot overflow.
    let (gh, h, out) = (
        config.cell.gates() * config.hidden_size,
        config.hidden_size,
        config.output_size(),
    );
    let mut params = 0u64;
    for l in 0..config.num_layers {
        let input = if l == 0 { config.input_size } else { out };
        for d in 0..config.directions() {
            let sfx = format!("_l{l}{}", if d == 1 { "_reverse" } else { "" });
            let mut shapes = vec![
                ("weight_ih", vec![gh, input]),
                ("weight_hh", vec![gh, h]),
                ("bias_ih", vec![gh]),
            ];
            if config.cell.has_bias_hh() {
                shapes.push(("bias_hh", vec![gh]));
            }
            for (name, shape) in shapes {
                file.expect_float(&format!("{prefix}{name}{sfx}"), &shape)?;
                // The tensor is in the file, so its element count fits in a usize.
                params += shape.iter().product::<usize>() as u64;
            }
        }
    }
    Ok(params)
}

/// Reads a recurrent stack's configuration from the tensor shapes under `prefix`
/// (sizes from `{prefix}weight_ih_l0`, the layer count, a `_reverse` direction) and
/// checks every one of its tensors with [`check_recurrent`], reading no tensor and
/// allocating nothing; returns it with its parameter count.
pub fn recurrent_config(
    file: &TensorFile,
    prefix: &str,
    cell: CellKind,
) -> Result<(RecurrentConfig, u64)> {
    let first = format!("{prefix}weight_ih_l0");
    let shape = file.shape(&first).ok_or_else(|| {
        file.error(format!(
            "tensor `{first}` is missing: not a {cell} state dict with prefix `{prefix}`"
        ))
    })?;
    let [gh, input_size] = shape[..] else {
        return Err(file.error(format!("tensor `{first}` must be 2-D, got {shape:?}")));
    };
    if gh == 0 || gh % cell.gates() != 0 {
        return Err(file.error(format!(
            "tensor `{first}` has {gh} rows, not a multiple of {} as a {cell} needs",
            cell.gates()
        )));
    }
    let hidden_size = gh / cell.gates();
    let mut num_layers = 0;
    while file
        .shape(&format!("{prefix}weight_ih_l{num_layers}"))
        .is_some()
    {
        num_layers += 1;
    }
    let bidirectional = file
        .shape(&format!("{prefix}weight_ih_l0_reverse"))
        .is_some();
    let config = RecurrentConfig::new(cell, input_size, hidden_size)
        .with_layers(num_layers)
        .with_bidirectional(bidirectional);
    let params = check_recurrent(file, prefix, &config)?;
    Ok((config, params))
}

impl<T: Real> Recurrent<T> {
    /// Builds a layer from a torch state dict saved as safetensors, inferring sizes,
    /// layer count and directions from the tensors named `{prefix}weight_ih_l0` etc.
    /// The cell kind cannot be told from shapes alone (tanh vs relu), so it is given.
    /// Every tensor's presence, dtype and shape is checked from the header (see
    /// [`recurrent_config`]) before anything is allocated.
    pub fn from_state_dict(file: &TensorFile, prefix: &str, cell: CellKind) -> Result<Self> {
        let (config, _) = recurrent_config(file, prefix, cell)?;
        let hidden_size = config.hidden_size;
        let params = (0..config.num_layers * config.directions())
            .map(|idx| {
                CellParams::zeros(
                    cell,
                    config.layer_input_size(idx / config.directions()),
                    hidden_size,
                )
            })
            .collect();
        let mut layer = Recurrent::from_params(config, params)?;
        load_params(&mut layer, file, prefix)?;
        Ok(layer)
    }

    /// Saves this layer's parameters under torch's names (with `prefix`) to `path`, atomically.
    pub fn save_params(
        &self,
        path: impl AsRef<Path>,
        prefix: &str,
        metadata: &HashMap<String, String>,
    ) -> Result<()> {
        let named = named_params(self, prefix);
        let refs: Vec<(String, &Tensor<T>)> = named.iter().map(|(n, t)| (n.clone(), t)).collect();
        save(path, &refs, metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_f16_converts_as_its_formula_says() {
        for h in 0..=u16::MAX {
            let (s, e, m) = (h >> 15, i32::from((h >> 10) & 0x1f), f64::from(h & 0x3ff));
            let sign = if s == 1 { -1.0 } else { 1.0 };
            let got = f16_to_f32(h);
            match e {
                0x1f if m == 0.0 => assert_eq!(got, sign as f32 * f32::INFINITY, "{h:#06x}"),
                0x1f => assert!(got.is_nan(), "{h:#06x}"),
                0 => assert_eq!(got as f64, sign * m / 1024.0 * 2f64.powi(-14), "{h:#06x}"),
                _ => assert_eq!(
                    got as f64,
                    sign * (1.0 + m / 1024.0) * 2f64.powi(e - 15),
                    "{h:#06x}"
                ),
            }
            assert_eq!(got.is_sign_negative(), s == 1, "{h:#06x} sign");
        }
        assert_eq!(bf16_to_f32(0x3f80), 1.0);
        assert_eq!(bf16_to_f32(0xc040), -3.0);
    }
}
