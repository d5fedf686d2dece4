//! Where operator-level building blocks (the scan's closed form) write their nodes: the model
//! graph (nodes and initializers, [`crate::model::emit::Emitter`]) or a function body (nodes and
//! `Constant` nodes: a `FunctionProto` has no initializers, [`FunctionBuilder`]).

use std::collections::HashMap;

use super::builder::attribute;
use super::proto::{FunctionProto, NodeProto, OperatorSetIdProto};
use super::{Attr, Value};
use crate::tensor::Tensor;

/// Writes standard-domain (`ai.onnx`) operators and constants.
pub trait OpSink {
    /// A standard-domain node with `outputs` outputs.
    fn node(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<Value>;

    /// A 1-D int64 constant (shapes, axes, pads, indices).
    fn ints(&mut self, values: &[i64]) -> Value;

    /// A 0-D int64 constant.
    fn int_scalar(&mut self, value: i64) -> Value;

    /// A float constant, in the element type the sink computes in.
    fn float_tensor(&mut self, hint: &str, tensor: &Tensor) -> Value;

    /// A 0-D float constant, in the element type the sink computes in.
    fn float_scalar(&mut self, value: f32) -> Value {
        self.float_tensor("scalar", &Tensor::new(vec![], vec![value]))
    }

    /// A standard-domain node with one output.
    fn op(&mut self, op_type: &str, inputs: &[&Value], attrs: &[(&str, Attr)]) -> Value {
        self.node(op_type, inputs, 1, attrs).remove(0)
    }

    fn reshape_to(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.ints(shape);
        self.op("Reshape", &[x, &s], &[])
    }
}

/// Builds the body of a model-local function: nodes in order, constants as `Constant` nodes.
/// Value names are local to the function (`Mul_12`); the formal inputs keep their names.
#[derive(Default)]
pub struct FunctionBuilder {
    nodes: Vec<NodeProto>,
    count: usize,
    int_constants: HashMap<Vec<i64>, Value>,
}

impl FunctionBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// A formal input of the function.
    pub fn input(&self, name: &str) -> Value {
        Value::named(name)
    }

    /// Renames `value` to the formal output `name` wherever it occurs.
    pub fn output(&mut self, value: &Value, name: &str) {
        for node in &mut self.nodes {
            for v in node.input.iter_mut().chain(node.output.iter_mut()) {
                if v == value.name() {
                    *v = name.to_string();
                }
            }
        }
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The function `domain::name` with this body; it imports only the standard opset
    /// `onnx_opset`.
    #[allow(clippy::too_many_arguments)]
    pub fn finish(
        self,
        domain: &str,
        name: &str,
        inputs: &[&str],
        outputs: &[&str],
        attributes: &[&str],
        onnx_opset: i64,
        doc_string: String,
    ) -> FunctionProto {
        let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
        FunctionProto {
            name: name.to_string(),
            input: strings(inputs),
            output: strings(outputs),
            attribute: strings(attributes),
            node: self.nodes,
            doc_string,
            opset_import: vec![OperatorSetIdProto {
                domain: String::new(),
                version: onnx_opset,
            }],
            domain: domain.to_string(),
        }
    }
}

impl OpSink for FunctionBuilder {
    fn node(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<Value> {
        self.count += 1;
        let k = self.count;
        let outs: Vec<String> = (0..outputs)
            .map(|i| {
                if outputs == 1 {
                    format!("{op_type}_{k}")
                } else {
                    format!("{op_type}_{k}:{i}")
                }
            })
            .collect();
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|v| v.name().to_string()).collect(),
            output: outs.clone(),
            name: format!("{op_type}_node_{k}"),
            op_type: op_type.to_string(),
            attribute: attrs.iter().map(|(n, a)| attribute(n, a)).collect(),
            doc_string: String::new(),
            domain: String::new(),
        });
        outs.iter().map(|n| Value::named(n)).collect()
    }

    fn ints(&mut self, values: &[i64]) -> Value {
        if let Some(v) = self.int_constants.get(values) {
            return v.clone();
        }
        // `value` with an explicit 1-D int64 tensor rather than `value_ints`: the shape inference
        // of onnx 1.16 (bundled in ONNX Runtime 1.19) gives `value_ints` constants inside
        // function bodies no dims, and Pad's inference then rejects them as `pads`.
        let v = self.op(
            "Constant",
            &[],
            &[("value", Attr::IntTensor(values.to_vec()))],
        );
        self.int_constants.insert(values.to_vec(), v.clone());
        v
    }

    fn int_scalar(&mut self, value: i64) -> Value {
        self.op("Constant", &[], &[("value_int", Attr::Int(value))])
    }

    fn float_tensor(&mut self, _hint: &str, tensor: &Tensor) -> Value {
        if tensor.shape.is_empty() {
            return self.op(
                "Constant",
                &[],
                &[("value_float", Attr::Float(tensor.data[0]))],
            );
        }
        self.op("Constant", &[], &[("value", Attr::Tensor(tensor.clone()))])
    }
}
