//! Keras weights files (HDF5, through the system library) as the layers that
//! `rnnkit::model::keras` converts: Keras 3's `model.save_weights("x.weights.h5")`
//! and Keras 2's `save_weights("x.h5")` (also the weights inside `model.save("x.h5")`).

use anyhow::{bail, Context};
use hdf5::types::{FixedAscii, FixedUnicode, TypeDescriptor, VarLenAscii, VarLenUnicode};
use hdf5::{Dataset, File, Group, Location};
use rnnkit::model::keras::{KerasLayer, KerasWeight};
use std::io::Read;
use std::path::{Path, PathBuf};

/// The first bytes of every HDF5 file (without a user block, as Keras writes them).
const HDF5_SIGNATURE: &[u8; 8] = b"\x89HDF\r\n\x1a\n";
/// Most layers or variables a name list may hold: far beyond any char model.
const MAX_NAMES: usize = 100_000;
/// Longest name read from a Keras 2 name list (fixed-length strings).
const NAME_BYTES: usize = 1024;

/// An open Keras weights file: its layers (names and shapes) and their datasets.
pub struct KerasFile {
    /// The layers with weights or a class, in the model's order when `ordered`.
    pub layers: Vec<KerasLayer>,
    /// Whether `layers` come in the model's order (Keras 2 keeps it; Keras 3 keeps
    /// its layers in groups named after their classes, which HDF5 lists by name).
    pub ordered: bool,
    datasets: Vec<Vec<Dataset>>,
    path: PathBuf,
    _file: File,
}

/// Opens `path` and describes its layers, reading no weight yet.
pub fn open(path: &Path) -> anyhow::Result<KerasFile> {
    check_signature(path)?;
    let file = File::open(path).map_err(|e| {
        anyhow::anyhow!(
            "{}: cannot be read as HDF5 ({e}); was it written completely?",
            path.display()
        )
    })?;
    let at = |msg: String| anyhow::anyhow!("{}: {msg}", path.display());
    let (layers, datasets, ordered) = if let Some(root) = keras2_root(&file) {
        let (l, d) = keras2_layers(&root).map_err(|e| at(format!("{e:#}")))?;
        (l, d, true)
    } else if is_keras3(&file) {
        let (l, d) = keras3_layers(&file).map_err(|e| at(format!("{e:#}")))?;
        (l, d, false)
    } else {
        let top = file.member_names().unwrap_or_default();
        return Err(at(format!(
            "not a Keras weights file: it has neither Keras 3's `layers` group nor Keras 2's \
             `layer_names` attribute (top level: {}); save the model with \
             model.save_weights(\"model.weights.h5\")",
            if top.is_empty() {
                "empty".to_string()
            } else {
                top.join(", ")
            }
        )));
    };
    Ok(KerasFile {
        layers,
        ordered,
        datasets,
        path: path.to_path_buf(),
        _file: file,
    })
}

impl KerasFile {
    /// The values of variable `weight` of layer `layer`, row-major, as f32; refuses a
    /// dataset that is not float32/float64 or whose bytes are not all in the file.
    pub fn read(&self, layer: usize, weight: usize) -> rnnkit::Result<Vec<f32>> {
        let ds = &self.datasets[layer][weight];
        let err = |msg: String| rnnkit::Error::Checkpoint {
            path: self.path.clone(),
            msg: format!("dataset `{}`: {msg}", ds.name()),
        };
        let dtype = ds.dtype().map_err(|e| err(e.to_string()))?;
        let elements: usize = self.layers[layer].weights[weight].shape.iter().product();
        // What is read must be backed by bytes of the file: a shape alone (a dataset
        // never written, or one compressed from nothing) allocates nothing here.
        let need = (elements as u64).saturating_mul(dtype.size() as u64);
        if ds.storage_size() < need {
            return Err(err(format!(
                "{} bytes stored for {elements} values of {} bytes: truncated, compressed \
                 or never written (Keras writes every weight in full)",
                ds.storage_size(),
                dtype.size()
            )));
        }
        let values = ds.read_raw::<f32>().map_err(|e| err(e.to_string()))?;
        if values.len() != elements {
            return Err(err(format!(
                "{} values read, {elements} expected",
                values.len()
            )));
        }
        Ok(values)
    }
}

/// Refuses a file that is not HDF5, naming what it looks like instead.
fn check_signature(path: &Path) -> anyhow::Result<()> {
    let mut head = [0u8; 8];
    let mut f = std::fs::File::open(path).with_context(|| format!("--keras {}", path.display()))?;
    let n = f
        .read(&mut head)
        .with_context(|| format!("--keras {}", path.display()))?;
    if head[..n] == HDF5_SIGNATURE[..] {
        return Ok(());
    }
    let hint = if head.starts_with(b"PK\x03\x04") {
        "it is a zip archive: a `.keras` file keeps the weights in model.weights.h5 inside \
         it; unzip it and pass that file"
    } else if n == 8 && head[..8] != [0; 8] && u64::from_le_bytes(head) < (1 << 32) {
        "it looks like safetensors: import it with --state-dict"
    } else {
        "expected a Keras weights file written by model.save_weights(\"model.weights.h5\")"
    };
    bail!("{}: not an HDF5 file; {hint}", path.display())
}

/// The group holding Keras 2's `layer_names`: the root of `save_weights("x.h5")` or
/// `model_weights` of `model.save("x.h5")`.
fn keras2_root(file: &File) -> Option<Group> {
    let root: &Group = file;
    if root.attr("layer_names").is_ok() {
        return Some(root.clone());
    }
    file.group("model_weights")
        .ok()
        .filter(|g| g.attr("layer_names").is_ok())
}

/// Whether the file has Keras 3's layout: layers as groups with `vars`.
fn is_keras3(file: &File) -> bool {
    file.link_exists("layers") || file.link_exists("vars")
}

/// Keras 2: `layer_names` in order, each layer's `weight_names` in order, each a
/// dataset path inside the layer's group.
fn keras2_layers(root: &Group) -> anyhow::Result<(Vec<KerasLayer>, Vec<Vec<Dataset>>)> {
    let names = string_list(root, "layer_names")?;
    let mut layers = Vec::with_capacity(names.len());
    let mut datasets = Vec::with_capacity(names.len());
    for name in names {
        let group = root
            .group(&name)
            .map_err(|_| anyhow::anyhow!("layer `{name}` is listed but its group is missing"))?;
        let weight_names =
            string_list(&group, "weight_names").with_context(|| format!("layer `{name}`"))?;
        let mut weights = Vec::with_capacity(weight_names.len());
        let mut sets = Vec::with_capacity(weight_names.len());
        for w in weight_names {
            let ds = group.dataset(&w).map_err(|_| {
                anyhow::anyhow!("layer `{name}`: weight `{w}` is listed but its dataset is missing")
            })?;
            weights.push(weight(&ds, Some(w))?);
            sets.push(ds);
        }
        layers.push(KerasLayer {
            path: name.clone(),
            name,
            class: None,
            weights,
        });
        datasets.push(sets);
    }
    Ok((layers, datasets))
}

/// Keras 3: `layers/<class>[_N]/vars/<i>` (recurrent layers: `…/cell/vars/<i>`); a
/// subclassed model keeps its layers under their attribute names at the top instead.
fn keras3_layers(file: &File) -> anyhow::Result<(Vec<KerasLayer>, Vec<Vec<Dataset>>)> {
    if let Ok(vars) = file.group("vars") {
        if !vars.member_names()?.is_empty() {
            bail!(
                "the model itself holds variables (`vars`), outside any layer; rnnkit \
                 imports the variables of Embedding, SimpleRNN/LSTM/GRU and Dense layers only"
            );
        }
    }
    let mut found: Vec<(String, Group)> = Vec::new();
    for key in file.member_names()? {
        // The optimizer's and the model's own variables are not layers.
        if matches!(key.as_str(), "layers" | "vars" | "optimizer" | "metrics") {
            continue;
        }
        if let Ok(g) = file.group(&key) {
            if g.link_exists("vars") || g.link_exists("cell") {
                found.push((key, g));
            }
        }
    }
    if let Ok(layers) = file.group("layers") {
        for key in layers.member_names()? {
            if let Ok(g) = layers.group(&key) {
                found.push((format!("layers/{key}"), g));
            }
        }
    }
    let mut layers = Vec::with_capacity(found.len());
    let mut datasets = Vec::with_capacity(found.len());
    for (path, group) in found {
        let key = path.rsplit('/').next().unwrap_or(&path);
        let class = match key.rsplit_once('_') {
            Some((base, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => base,
            _ => key,
        }
        .to_string();
        let name = group
            .group("vars")
            .ok()
            .and_then(|v| string_attr(&v, "name"))
            .unwrap_or_else(|| key.to_string());
        let own = numbered(&group, "vars").with_context(|| format!("layer `{path}`"))?;
        let cell = numbered(&group, "cell/vars").with_context(|| format!("layer `{path}`"))?;
        let sets = match (own.is_empty(), cell.is_empty()) {
            (_, true) => own,
            (true, false) => cell,
            (false, false) => bail!(
                "layer `{path}` holds variables both in `vars` and in `cell/vars`, unlike any \
                 Keras recurrent layer"
            ),
        };
        // Layers inside a layer (Bidirectional's two directions, a nested model)
        // are described by its class; keep their class and let the checks refuse it.
        let weights = sets
            .iter()
            .map(|ds| weight(ds, None))
            .collect::<anyhow::Result<Vec<_>>>()
            .with_context(|| format!("layer `{path}`"))?;
        layers.push(KerasLayer {
            path,
            name,
            class: Some(class),
            weights,
        });
        datasets.push(sets);
    }
    Ok((layers, datasets))
}

/// The datasets `0`, `1`, … of the group at `path` under `group`, in that order (none
/// if there is no such group).
fn numbered(group: &Group, path: &str) -> anyhow::Result<Vec<Dataset>> {
    let Ok(vars) = group.group(path) else {
        return Ok(Vec::new());
    };
    let names = vars.member_names()?;
    if names.len() > MAX_NAMES {
        bail!("`{path}` has {} members", names.len());
    }
    (0..names.len())
        .map(|i| {
            vars.dataset(&i.to_string()).map_err(|_| {
                anyhow::anyhow!(
                    "`{path}` should hold datasets 0 to {}, as Keras numbers a layer's \
                     variables; it has {}",
                    names.len() - 1,
                    names.join(", ")
                )
            })
        })
        .collect()
}

/// A dataset's shape, checked to be a float type rnnkit reads.
fn weight(ds: &Dataset, name: Option<String>) -> anyhow::Result<KerasWeight> {
    let what = name.clone().unwrap_or_else(|| ds.name());
    let dtype = ds.dtype()?;
    match dtype.to_descriptor() {
        Ok(TypeDescriptor::Float(_)) => {}
        Ok(d) => bail!("`{what}` is stored as {d}, not float32 or float64"),
        Err(_) => bail!(
            "`{what}` is stored as a {}-byte type that is not float32 or float64",
            dtype.size()
        ),
    }
    Ok(KerasWeight {
        name,
        shape: ds.shape(),
    })
}

/// A list of strings in attribute `name` (Keras 2 writes fixed-length byte strings,
/// Keras 3's legacy writer variable-length ones).
fn string_list(obj: &Location, name: &str) -> anyhow::Result<Vec<String>> {
    let attr = obj
        .attr(name)
        .map_err(|_| anyhow::anyhow!("attribute `{name}` is missing"))?;
    let count = attr.size();
    if count > MAX_NAMES || attr.ndim() > 1 {
        bail!("attribute `{name}` is not a list of names");
    }
    // An empty list is stored as an empty float array by h5py.
    if count == 0 {
        return Ok(Vec::new());
    }
    let bad = |e: hdf5::Error| anyhow::anyhow!("attribute `{name}` is not a list of names ({e})");
    let strings = match attr.dtype()?.to_descriptor() {
        Ok(TypeDescriptor::VarLenUnicode) => attr
            .read_raw::<VarLenUnicode>()
            .map_err(bad)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        Ok(TypeDescriptor::VarLenAscii) => attr
            .read_raw::<VarLenAscii>()
            .map_err(bad)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        Ok(TypeDescriptor::FixedAscii(n)) if n <= NAME_BYTES => attr
            .read_raw::<FixedAscii<NAME_BYTES>>()
            .map_err(bad)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        Ok(TypeDescriptor::FixedUnicode(n)) if n <= NAME_BYTES => attr
            .read_raw::<FixedUnicode<NAME_BYTES>>()
            .map_err(bad)?
            .iter()
            .map(|s| s.as_str().to_string())
            .collect(),
        _ => bail!("attribute `{name}` is not a list of names"),
    };
    Ok(strings)
}

/// A string attribute, if it is one.
fn string_attr(obj: &Location, name: &str) -> Option<String> {
    let attr = obj.attr(name).ok()?;
    match attr.dtype().ok()?.to_descriptor().ok()? {
        TypeDescriptor::VarLenUnicode => attr
            .read_scalar::<VarLenUnicode>()
            .ok()
            .map(|s| s.as_str().to_string()),
        TypeDescriptor::VarLenAscii => attr
            .read_scalar::<VarLenAscii>()
            .ok()
            .map(|s| s.as_str().to_string()),
        _ => None,
    }
}
