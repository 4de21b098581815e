//! A recurrent stack as ONNX `LSTM` / `GRU` / `RNN` operators, one per layer.
//!
//! ONNX orders the gate blocks differently from torch (and so rnnkit): LSTM is
//! `i, o, f, c` where torch is `i, f, g, o`; GRU is `z, r, h` where torch is `r, z, n`.
//! The bias is `[Wb; Rb]` in one vector. torch's GRU (reset after the recurrent
//! product, with its bias) is `linear_before_reset = 1`; the Keras form
//! `gru_reset_before` is `linear_before_reset = 0` with a zero `Rb`.

use super::graph::{Attr, Graph};
use crate::cell::{CellKind, CellParams};
use crate::layer::{Merge, Recurrent};

/// Torch gate block `k` goes to ONNX position `ORDER[k]`… read as: ONNX block `j`
/// is torch block `order[j]`.
fn onnx_order(cell: CellKind) -> &'static [usize] {
    match cell {
        CellKind::RnnTanh | CellKind::RnnRelu => &[0],
        CellKind::Lstm => &[0, 3, 1, 2],
        CellKind::Gru | CellKind::GruResetBefore => &[1, 0, 2],
    }
}

/// Rows `[G·H, cols]` with the gate blocks reordered for ONNX, appended to `out`.
fn reorder_rows(data: &[f32], h: usize, cols: usize, order: &[usize], out: &mut Vec<f32>) {
    for &k in order {
        out.extend_from_slice(&data[k * h * cols..][..h * cols]);
    }
}

/// What a stack left in the graph.
pub struct Stack {
    /// The last layer's outputs `[T, B, W]` (merged directions).
    pub y: String,
    /// Every layer's final hidden state `[D, B, H]`.
    pub h: Vec<String>,
    /// Every layer's final cell state `[D, B, H]` (LSTM only).
    pub c: Vec<String>,
}

/// Initial state of every layer, `[D, B, H]` each (`c` for LSTM).
pub struct Initial<'a> {
    /// Hidden states.
    pub h: &'a [String],
    /// Cell states (LSTM only).
    pub c: &'a [String],
}

/// Emits `rnn` over `x [T, B, I]` (time-major). `lengths` is an i32 `[B]` value (ONNX's
/// `sequence_lens`), `None` when every sequence fills `T`. Parameters are named
/// `{prefix}.weight_ih_l{l}` etc. after rnnkit's names, in ONNX's layout.
pub fn stack(
    g: &mut Graph,
    rnn: &Recurrent<f32>,
    prefix: &str,
    x: &str,
    lengths: Option<&str>,
    initial: Option<Initial>,
) -> Stack {
    let cfg = rnn.config();
    let (dirs, hs) = (cfg.directions(), cfg.hidden_size);
    let order = onnx_order(cfg.cell);
    let gh = cfg.cell.gates() * hs;
    let mut input = x.to_string();
    let mut out = Stack {
        y: String::new(),
        h: Vec::new(),
        c: Vec::new(),
    };
    for l in 0..cfg.num_layers {
        g.set_scope(&format!("{prefix}.l{l}"));
        let cells: &[CellParams<f32>] = &rnn.cells()[l * dirs..(l + 1) * dirs];
        let in_w = cfg.layer_input_size(l);
        let (mut w, mut r, mut b) = (Vec::new(), Vec::new(), Vec::new());
        for p in cells {
            reorder_rows(p.w_ih.data(), hs, in_w, order, &mut w);
            reorder_rows(p.w_hh.data(), hs, hs, order, &mut r);
            reorder_rows(p.b_ih.data(), hs, 1, order, &mut b);
            match &p.b_hh {
                Some(bh) => reorder_rows(bh.data(), hs, 1, order, &mut b),
                None => b.extend(std::iter::repeat_n(0.0, gh)),
            }
        }
        let suffix = format!("l{l}");
        let w = g.tensor(&format!("{prefix}.W_{suffix}"), &[dirs, gh, in_w], &w);
        let r = g.tensor(&format!("{prefix}.R_{suffix}"), &[dirs, gh, hs], &r);
        let b = g.tensor(&format!("{prefix}.B_{suffix}"), &[dirs, 2 * gh], &b);
        let direction = if dirs == 2 {
            "bidirectional"
        } else {
            "forward"
        };
        let (h0, c0) = match &initial {
            Some(i) => (
                i.h[l].as_str(),
                i.c.get(l).map(String::as_str).unwrap_or(""),
            ),
            None => ("", ""),
        };
        let lens = lengths.unwrap_or("");
        let hidden = hs as i64;
        let (op, outputs) = match cfg.cell {
            CellKind::Lstm => ("LSTM", 3),
            CellKind::Gru | CellKind::GruResetBefore => ("GRU", 2),
            CellKind::RnnTanh | CellKind::RnnRelu => ("RNN", 2),
        };
        let mut inputs = vec![input.as_str(), &w, &r, &b, lens, h0];
        if cfg.cell == CellKind::Lstm {
            inputs.push(c0);
        }
        // Trailing empty optional inputs are left out, as the spec allows.
        while inputs.last() == Some(&"") {
            inputs.pop();
        }
        let act = match cfg.cell {
            CellKind::RnnRelu => "Relu",
            _ => "Tanh",
        };
        let acts = vec![act; dirs];
        let mut attrs = vec![
            Attr::Int("hidden_size", hidden),
            Attr::Str("direction", direction),
        ];
        match cfg.cell {
            CellKind::RnnTanh | CellKind::RnnRelu => attrs.push(Attr::Strs("activations", &acts)),
            CellKind::Gru => attrs.push(Attr::Int("linear_before_reset", 1)),
            CellKind::GruResetBefore => attrs.push(Attr::Int("linear_before_reset", 0)),
            CellKind::Lstm => {}
        }
        let outs = g.op_n(op, &inputs, outputs, &attrs);
        out.h.push(outs[1].clone());
        if cfg.cell == CellKind::Lstm {
            out.c.push(outs[2].clone());
        }
        input = merge(g, &outs[0], dirs, cfg.merge);
    }
    g.set_scope("");
    out.y = input;
    out
}

/// `Y [T, D, B, H]` → `[T, B, W]` by the layer's merge of the two directions.
fn merge(g: &mut Graph, y: &str, dirs: usize, how: Merge) -> String {
    if dirs == 1 {
        return g.squeeze(y, &[1]);
    }
    if how == Merge::Concat {
        let t = g.transpose(y, &[0, 2, 1, 3]);
        return g.reshape(&t, &[0, 0, -1]);
    }
    let fwd = g.slice(y, 1, 0, 1);
    let bwd = g.slice(y, 1, 1, 2);
    let m = match how {
        Merge::Mul => g.op("Mul", &[&fwd, &bwd], &[]),
        _ => g.op("Add", &[&fwd, &bwd], &[]),
    };
    let m = if how == Merge::Average {
        let half = g.float_scalar(0.5);
        g.op("Mul", &[&m, &half], &[])
    } else {
        m
    };
    g.squeeze(&m, &[1])
}

/// A layer's final state `[D, B, H]` → `[B, D·H]`, directions side by side.
pub fn directions_side_by_side(g: &mut Graph, state: &str) -> String {
    let t = g.transpose(state, &[1, 0, 2]);
    g.reshape(&t, &[0, -1])
}
