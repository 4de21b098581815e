//! A small builder of ONNX graphs: named values, constant tensors, nodes and their
//! attributes, and the model around them.

use super::proto::type_proto;
use super::proto::{
    attribute_type as at, data_type as dt, AttributeProto, DimValue, Dimension, GraphProto,
    ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

/// ONNX IR version written: 8 is what opsets 14–18 pair with, and every later
/// runtime reads it.
const IR_VERSION: i64 = 8;

/// One dimension of a graph input or output.
#[derive(Clone, Copy, Debug)]
pub enum Dim {
    /// A fixed size.
    Fixed(usize),
    /// A dynamic size, named (`batch`, `time`, …).
    Dynamic(&'static str),
}

/// Element type of a graph input or output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elem {
    /// f32.
    F32,
    /// i64.
    I64,
}

impl Elem {
    fn code(self) -> i32 {
        match self {
            Elem::F32 => dt::FLOAT,
            Elem::I64 => dt::INT64,
        }
    }
}

/// An attribute of a node.
pub enum Attr<'a> {
    /// One integer.
    Int(&'a str, i64),
    /// A list of integers.
    Ints(&'a str, &'a [i64]),
    /// One string.
    Str(&'a str, &'a str),
    /// A list of strings.
    Strs(&'a str, &'a [&'a str]),
}

impl Attr<'_> {
    fn proto(&self) -> AttributeProto {
        let mut a = AttributeProto::default();
        let name = match *self {
            Attr::Int(n, v) => {
                a.r#type = Some(at::INT);
                a.i = Some(v);
                n
            }
            Attr::Ints(n, v) => {
                a.r#type = Some(at::INTS);
                a.ints = v.to_vec();
                n
            }
            Attr::Str(n, v) => {
                a.r#type = Some(at::STRING);
                a.s = Some(v.as_bytes().to_vec());
                n
            }
            Attr::Strs(n, v) => {
                a.r#type = Some(at::STRINGS);
                a.strings = v.iter().map(|s| s.as_bytes().to_vec()).collect();
                n
            }
        };
        a.name = Some(name.to_string());
        a
    }
}

/// A graph under construction. Value names are unique: every node output is
/// `scope/Op_n` unless named.
pub struct Graph {
    opset: i64,
    name: String,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    inputs: Vec<ValueInfoProto>,
    outputs: Vec<ValueInfoProto>,
    scope: String,
    counter: usize,
}

fn value_info(name: &str, elem: Elem, dims: &[Dim], doc: &str) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match *d {
                Dim::Fixed(n) => DimValue::DimValue(n as i64),
                Dim::Dynamic(s) => DimValue::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: Some(name.to_string()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(elem.code()),
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: (!doc.is_empty()).then(|| doc.to_string()),
    }
}

impl Graph {
    /// An empty graph for operator set `opset`.
    pub fn new(name: &str, opset: i64) -> Self {
        Graph {
            opset,
            name: name.to_string(),
            nodes: Vec::new(),
            initializers: Vec::new(),
            inputs: Vec::new(),
            outputs: Vec::new(),
            scope: String::new(),
            counter: 0,
        }
    }

    /// Names the nodes added from now on `scope/…` (the rnnkit parameter prefix).
    pub fn set_scope(&mut self, scope: &str) {
        self.scope = scope.to_string();
    }

    fn fresh(&mut self, what: &str) -> String {
        self.counter += 1;
        if self.scope.is_empty() {
            format!("{what}_{}", self.counter)
        } else {
            format!("{}/{what}_{}", self.scope, self.counter)
        }
    }

    /// Declares a graph input; returns its name.
    pub fn input(&mut self, name: &str, elem: Elem, dims: &[Dim], doc: &str) -> String {
        self.inputs.push(value_info(name, elem, dims, doc));
        name.to_string()
    }

    /// Declares `value` as the graph output `name` (through an Identity node when the
    /// names differ).
    pub fn output(&mut self, value: &str, name: &str, elem: Elem, dims: &[Dim], doc: &str) {
        if value != name {
            self.nodes.push(NodeProto {
                input: vec![value.to_string()],
                output: vec![name.to_string()],
                name: Some(format!("{name}/Identity")),
                op_type: Some("Identity".into()),
                ..NodeProto::default()
            });
        }
        self.outputs.push(value_info(name, elem, dims, doc));
    }

    fn constant(&mut self, name: &str, dims: &[usize], data_type: i32, raw: Vec<u8>) -> String {
        let name = if self
            .initializers
            .iter()
            .any(|t| t.name.as_deref() == Some(name))
        {
            self.fresh(name)
        } else {
            name.to_string()
        };
        self.initializers.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(data_type),
            name: Some(name.clone()),
            doc_string: None,
            raw_data: Some(raw),
        });
        name
    }

    /// An f32 constant (a weight) of shape `dims`.
    pub fn tensor(&mut self, name: &str, dims: &[usize], data: &[f32]) -> String {
        debug_assert_eq!(dims.iter().product::<usize>(), data.len());
        let raw = data.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(name, dims, dt::FLOAT, raw)
    }

    /// A 1-D i64 constant (shapes, axes, indices).
    pub fn ints(&mut self, values: &[i64]) -> String {
        let name = self.fresh("const");
        let raw = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.constant(&name, &[values.len()], dt::INT64, raw)
    }

    /// A scalar i64 constant.
    pub fn int_scalar(&mut self, value: i64) -> String {
        let name = self.fresh("const");
        self.constant(&name, &[], dt::INT64, value.to_le_bytes().to_vec())
    }

    /// A scalar f32 constant.
    pub fn float_scalar(&mut self, value: f32) -> String {
        let name = self.fresh("const");
        self.constant(&name, &[], dt::FLOAT, value.to_le_bytes().to_vec())
    }

    /// A node with one output; returns the output's name.
    pub fn op(&mut self, op: &str, inputs: &[&str], attrs: &[Attr]) -> String {
        self.op_n(op, inputs, 1, attrs).remove(0)
    }

    /// A node with `outputs` outputs; returns their names.
    pub fn op_n(
        &mut self,
        op: &str,
        inputs: &[&str],
        outputs: usize,
        attrs: &[Attr],
    ) -> Vec<String> {
        let name = self.fresh(op);
        let outs: Vec<String> = (0..outputs).map(|i| format!("{name}:{i}")).collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outs.clone(),
            name: Some(name),
            op_type: Some(op.to_string()),
            attribute: attrs.iter().map(Attr::proto).collect(),
            doc_string: None,
        });
        outs
    }

    /// The model: this graph, its opset, a description and metadata properties.
    pub fn model(self, doc: &str, metadata: &[(String, String)]) -> ModelProto {
        ModelProto {
            ir_version: Some(IR_VERSION),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            producer_name: Some("rnnkit".into()),
            producer_version: Some(env!("CARGO_PKG_VERSION").into()),
            domain: None,
            model_version: Some(1),
            doc_string: Some(doc.to_string()),
            graph: Some(GraphProto {
                node: self.nodes,
                name: Some(self.name),
                initializer: self.initializers,
                doc_string: Some(doc.to_string()),
                input: self.inputs,
                output: self.outputs,
            }),
            metadata_props: metadata
                .iter()
                .map(|(k, v)| StringStringEntryProto {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
        }
    }
}

/// Shape-manipulation helpers built from standard operators.
impl Graph {
    /// `Transpose(x, perm)`.
    pub fn transpose(&mut self, x: &str, perm: &[i64]) -> String {
        self.op("Transpose", &[x], &[Attr::Ints("perm", perm)])
    }

    /// `Reshape(x, shape)` (0 copies the input's dimension, −1 is inferred).
    pub fn reshape(&mut self, x: &str, shape: &[i64]) -> String {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], &[])
    }

    /// `Unsqueeze(x, axes)` (axes as an input, opset ≥ 13).
    pub fn unsqueeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.ints(axes);
        self.op("Unsqueeze", &[x, &a], &[])
    }

    /// `Squeeze(x, axes)` (axes as an input, opset ≥ 13).
    pub fn squeeze(&mut self, x: &str, axes: &[i64]) -> String {
        let a = self.ints(axes);
        self.op("Squeeze", &[x, &a], &[])
    }

    /// `Slice(x, [start], [end], [axis])`.
    pub fn slice(&mut self, x: &str, axis: i64, start: i64, end: i64) -> String {
        let (s, e, a) = (self.ints(&[start]), self.ints(&[end]), self.ints(&[axis]));
        self.op("Slice", &[x, &s, &e, &a], &[])
    }

    /// `Concat(xs, axis)`.
    pub fn concat(&mut self, xs: &[&str], axis: i64) -> String {
        self.op("Concat", xs, &[Attr::Int("axis", axis)])
    }

    /// `Gather(table, ids)` along axis 0: an embedding lookup.
    pub fn gather(&mut self, table: &str, ids: &str) -> String {
        self.op("Gather", &[table, ids], &[Attr::Int("axis", 0)])
    }

    /// `Cast(x, to)`.
    pub fn cast(&mut self, x: &str, to: i32) -> String {
        self.op("Cast", &[x], &[Attr::Int("to", to as i64)])
    }

    /// `Shape(x)[axis]` as a 1-element i64 tensor.
    pub fn dim(&mut self, x: &str, axis: i64) -> String {
        let s = self.op("Shape", &[x], &[]);
        let i = self.ints(&[axis]);
        self.op("Gather", &[&s, &i], &[Attr::Int("axis", 0)])
    }

    /// `ReduceSum`/`ReduceMax`/`ReduceMean` over `axes`, kept or dropped, in the form
    /// the opset wants (axes an input from 13 for ReduceSum, from 18 for the others).
    pub fn reduce(&mut self, op: &str, x: &str, axes: &[i64], keepdims: bool) -> String {
        let keep = Attr::Int("keepdims", keepdims as i64);
        let axes_as_input = if op == "ReduceSum" {
            self.opset >= 13
        } else {
            self.opset >= 18
        };
        if axes_as_input {
            let a = self.ints(axes);
            self.op(op, &[x, &a], &[keep])
        } else {
            self.op(op, &[x], &[Attr::Ints("axes", axes), keep])
        }
    }

    /// `x · Wᵀ (+ b)` over the last axis of `x` (any rank): `MatMul` then `Add`.
    pub fn linear(
        &mut self,
        x: &str,
        name: &str,
        weight: &crate::Tensor<f32>,
        bias: Option<&crate::Tensor<f32>>,
    ) -> String {
        let (o, i) = (weight.shape()[0], weight.shape()[1]);
        let mut wt = vec![0f32; i * o];
        for r in 0..o {
            for c in 0..i {
                wt[c * o + r] = weight.data()[r * i + c];
            }
        }
        let w = self.tensor(&format!("{name}.weight"), &[i, o], &wt);
        let y = self.op("MatMul", &[x, &w], &[]);
        match bias {
            Some(bias) => {
                let b = self.tensor(&format!("{name}.bias"), &[o], bias.data());
                self.op("Add", &[&y, &b], &[])
            }
            None => y,
        }
    }

    /// `[T, B]` mask of valid steps, 1.0 where `t < lengths[b]` (`lengths` i64 `[B]`,
    /// `steps` a 1-element i64 tensor), as f32 `[T, B, 1]`.
    pub fn step_mask(&mut self, steps: &str, lengths: &str) -> String {
        // Counted in f32 (exact to 2^24 steps): runtimes that track sizes symbolically
        // (tract) keep integer shape arithmetic apart from integer tensors.
        let zero = self.float_scalar(0.0);
        let one = self.float_scalar(1.0);
        let t = self.squeeze(steps, &[0]);
        let t = self.cast(&t, dt::FLOAT);
        let range = self.op("Range", &[&zero, &t, &one], &[]);
        let col = self.unsqueeze(&range, &[1]);
        let lengths = self.cast(lengths, dt::FLOAT);
        let row = self.unsqueeze(&lengths, &[0]);
        let less = self.op("Less", &[&col, &row], &[]);
        let f = self.cast(&less, dt::FLOAT);
        self.unsqueeze(&f, &[2])
    }
}
