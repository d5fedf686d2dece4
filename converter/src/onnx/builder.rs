//! A small graph builder over the ONNX protos: values, initializers, nodes and graph I/O.
//!
//! Model code talks in terms of operators and values; this is the only place that knows how
//! nodes, attributes and tensors are laid out in protobuf. Value and node names are derived
//! from a scope stack (`block1.0.attn/...`) so that a node in the exported file points back to
//! the official module it implements.

use std::collections::{HashMap, HashSet};

use super::proto::{
    type_proto, AttributeProto, AttributeType, DataType, Dimension, DimensionValue, GraphProto,
    NodeProto, TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use crate::tensor::Tensor;

/// A named value (tensor) of the graph under construction.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Value(String);

impl Value {
    pub fn name(&self) -> &str {
        &self.0
    }

    /// A value known by name (a function body's formal inputs and outputs).
    pub(crate) fn named(name: &str) -> Self {
        Self(name.to_string())
    }
}

/// One dimension of a graph input/output: fixed, or symbolic (the dynamic batch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dim {
    Fixed(usize),
    Symbolic(&'static str),
}

/// An attribute of a node, converted to its protobuf form on insertion.
#[derive(Debug, Clone)]
pub enum Attr {
    Int(i64),
    Ints(Vec<i64>),
    Float(f32),
    Str(String),
    /// A float32 tensor (`Constant`'s `value` inside function bodies, which have no initializers).
    Tensor(Tensor),
    /// A 1-D int64 tensor (`Constant`'s `value` inside function bodies).
    IntTensor(Vec<i64>),
    /// In a function body: an `ints` attribute whose value is the calling node's attribute of this
    /// name (`ref_attr_name`).
    IntsRef(String),
}

/// Element type of the floating-point values that weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FloatType {
    F32,
    F16,
}

impl FloatType {
    pub fn data_type(self) -> DataType {
        match self {
            FloatType::F32 => DataType::Float,
            FloatType::F16 => DataType::Float16,
        }
    }
}

#[derive(Default)]
pub struct GraphBuilder {
    graph: GraphProto,
    used_names: HashSet<String>,
    scope: String,
    int_constants: HashMap<Vec<i64>, Value>,
    index_constants: HashMap<Vec<i32>, Value>,
    float_constants: HashMap<(u32, FloatType), Value>,
    node_count: usize,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        let mut builder = Self::default();
        builder.graph.name = name.to_string();
        builder
    }

    /// Sets the naming scope (the official module path, e.g. `block1.0.attn`) for what follows.
    pub fn set_scope(&mut self, scope: String) {
        self.scope = scope;
    }

    fn unique(&mut self, hint: &str) -> String {
        let base = if self.scope.is_empty() {
            hint.to_string()
        } else {
            format!("{}/{hint}", self.scope)
        };
        let mut name = base.clone();
        let mut k = 1;
        while !self.used_names.insert(name.clone()) {
            name = format!("{base}_{k}");
            k += 1;
        }
        name
    }

    /// Declares a graph input.
    pub fn input(&mut self, name: &str, elem: DataType, dims: &[Dim]) -> Value {
        assert!(
            self.used_names.insert(name.to_string()),
            "duplicate name {name}"
        );
        self.graph.input.push(value_info(name, elem, dims));
        Value(name.to_string())
    }

    /// Declares `value` as a graph output called `name`, renaming the value everywhere so that
    /// the output carries exactly that name.
    pub fn output(&mut self, value: &Value, name: &str, elem: DataType, dims: &[Dim]) -> Value {
        if value.0 != name {
            assert!(
                self.used_names.insert(name.to_string()),
                "duplicate name {name}"
            );
            for node in &mut self.graph.node {
                for v in node.input.iter_mut().chain(node.output.iter_mut()) {
                    if *v == value.0 {
                        *v = name.to_string();
                    }
                }
            }
            for out in &mut self.graph.output {
                if out.name == value.0 {
                    out.name = name.to_string();
                }
            }
        }
        self.graph.output.push(value_info(name, elem, dims));
        Value(name.to_string())
    }

    /// Adds a weight tensor, stored as `ty`.
    pub fn initializer(&mut self, hint: &str, tensor: &Tensor, ty: FloatType) -> Value {
        let name = self.unique(hint);
        self.push_initializer(name, tensor, ty)
    }

    fn push_initializer(&mut self, name: String, tensor: &Tensor, ty: FloatType) -> Value {
        let raw_data = match ty {
            FloatType::F32 => tensor.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            FloatType::F16 => tensor
                .data
                .iter()
                .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                .collect(),
        };
        self.graph.initializer.push(TensorProto {
            dims: tensor.shape.iter().map(|&d| d as i64).collect(),
            data_type: ty.data_type() as i32,
            name: name.clone(),
            raw_data,
        });
        Value(name)
    }

    /// A 1-D int64 constant (shapes, axes, split sizes); identical constants are shared.
    pub fn ints(&mut self, values: &[i64]) -> Value {
        if let Some(v) = self.int_constants.get(values) {
            return v.clone();
        }
        // Short ones are named by their values, long ones by their length only (a name should
        // not carry a whole tensor).
        let hint = if values.len() <= 8 {
            let listed: Vec<String> = values.iter().map(i64::to_string).collect();
            format!("const_i64[{}]", listed.join(","))
        } else {
            format!("const_i64_x{}", values.len())
        };
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = self.int_initializer(&hint, &[values.len()], DataType::Int64, bytes);
        self.int_constants.insert(values.to_vec(), v.clone());
        v
    }

    /// A 1-D int32 index tensor (`Gather` indices: half the bytes of int64); identical ones are
    /// shared.
    pub fn indices(&mut self, values: &[i32]) -> Value {
        if let Some(v) = self.index_constants.get(values) {
            return v.clone();
        }
        let hint = format!("indices_x{}", values.len());
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        let v = self.int_initializer(&hint, &[values.len()], DataType::Int32, bytes);
        self.index_constants.insert(values.to_vec(), v.clone());
        v
    }

    /// A 0-D int64 constant (e.g. CumSum's axis).
    pub fn int_scalar(&mut self, value: i64) -> Value {
        let hint = format!("const_i64_scalar_{value}");
        self.int_initializer(&hint, &[], DataType::Int64, value.to_le_bytes().to_vec())
    }

    /// Adds an integer initializer of shape `dims` from little-endian `raw_data`, named (outside
    /// any scope) after `hint`.
    fn int_initializer(
        &mut self,
        hint: &str,
        dims: &[usize],
        data_type: DataType,
        raw_data: Vec<u8>,
    ) -> Value {
        let name = self.unique_global(hint);
        self.graph.initializer.push(TensorProto {
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: data_type as i32,
            name: name.clone(),
            raw_data,
        });
        Value(name)
    }

    /// A scalar float constant (shape []); identical constants are shared.
    pub fn scalar(&mut self, value: f32, ty: FloatType) -> Value {
        if let Some(v) = self.float_constants.get(&(value.to_bits(), ty)) {
            return v.clone();
        }
        let name = self.unique_global(&format!("const_{value:e}"));
        let v = self.push_initializer(name, &Tensor::new(vec![], vec![value]), ty);
        self.float_constants
            .insert((value.to_bits(), ty), v.clone());
        v
    }

    fn unique_global(&mut self, hint: &str) -> String {
        let saved = std::mem::take(&mut self.scope);
        let name = self.unique(hint);
        self.scope = saved;
        name
    }

    /// Adds a standard-domain node with one output.
    pub fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        self.node("", op_type, inputs, 1, attrs).remove(0)
    }

    /// Adds a node of any domain with `outputs` outputs.
    pub fn node(
        &mut self,
        domain: &str,
        op_type: &str,
        inputs: &[&Value],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<Value> {
        self.node_count += 1;
        let node_name = self.unique(&format!("{op_type}_{}", self.node_count));
        let outs: Vec<String> = (0..outputs)
            .map(|k| {
                if outputs == 1 {
                    self.unique(op_type)
                } else {
                    self.unique(&format!("{op_type}:{k}"))
                }
            })
            .collect();
        self.graph.node.push(NodeProto {
            input: inputs.iter().map(|v| v.0.clone()).collect(),
            output: outs.clone(),
            name: node_name,
            op_type: op_type.to_string(),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            doc_string: String::new(),
            domain: domain.to_string(),
        });
        outs.into_iter().map(Value).collect()
    }

    pub fn node_count(&self) -> usize {
        self.graph.node.len()
    }

    pub fn finish(self) -> GraphProto {
        self.graph
    }
}

pub(crate) fn attribute(name: &str, attr: &Attr) -> AttributeProto {
    let mut proto = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match attr {
        Attr::Int(i) => {
            proto.i = Some(*i);
            proto.r#type = AttributeType::Int as i32;
        }
        Attr::Ints(v) => {
            proto.ints = v.clone();
            proto.r#type = AttributeType::Ints as i32;
        }
        Attr::Float(f) => {
            proto.f = Some(*f);
            proto.r#type = AttributeType::Float as i32;
        }
        Attr::Str(s) => {
            proto.s = s.as_bytes().to_vec();
            proto.r#type = AttributeType::String as i32;
        }
        Attr::Tensor(t) => {
            proto.t = Some(TensorProto {
                dims: t.shape.iter().map(|&d| d as i64).collect(),
                data_type: DataType::Float as i32,
                name: String::new(),
                raw_data: t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
            proto.r#type = AttributeType::Tensor as i32;
        }
        Attr::IntTensor(values) => {
            proto.t = Some(TensorProto {
                dims: vec![values.len() as i64],
                data_type: DataType::Int64 as i32,
                name: String::new(),
                raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
            });
            proto.r#type = AttributeType::Tensor as i32;
        }
        Attr::IntsRef(referenced) => {
            proto.ref_attr_name = referenced.clone();
            proto.r#type = AttributeType::Ints as i32;
        }
    }
    proto
}

fn value_info(name: &str, elem: DataType, dims: &[Dim]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| Dimension {
            value: Some(match d {
                Dim::Fixed(n) => DimensionValue::DimValue(*n as i64),
                Dim::Symbolic(s) => DimensionValue::DimParam(s.to_string()),
            }),
        })
        .collect();
    ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: elem as i32,
                shape: Some(TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}
