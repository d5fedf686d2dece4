//! The emission context: the graph builder, the weights, and the module path that both are
//! addressed with, plus the handful of layer patterns (LayerNorm, Linear, Conv, activations)
//! that every module is written in.

use std::collections::BTreeMap;

use gm_ops::dwconv::{Activation, Layout, ATTR_ACTIVATION, ATTR_CHANNELS_LAST, DWCONV_OP_TYPE};

use crate::onnx::proto::DataType;
use crate::onnx::{Attr, Dim, FloatType, GraphBuilder, OpSink, Value};
use crate::tensor::Tensor;

/// Name of the dynamic batch dimension in the exported graph.
pub const BATCH: &str = "batch";

/// A named intermediate tensor exposed as an extra graph output (`--debug-outputs`).
#[derive(Debug, Clone)]
pub struct DebugOutput {
    pub name: String,
    /// Shape without the batch dimension.
    pub dims: Vec<usize>,
}

/// How the selective scan is expressed in the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanMode {
    /// One `ai.groupmamba::SelectiveScan` node per layer (needs the op in the runtime).
    CustomOp,
    /// Standard ONNX operators only: the exact chunked closed form with chunks of `chunk` steps.
    Portable { chunk: usize },
    /// The graph of `CustomOp`, plus a model-local function `ai.groupmamba::SelectiveScan` whose
    /// body (standard operators, generic over shapes and directions, chunks of `chunk` steps) a
    /// runtime without the op inlines.
    Function { chunk: usize },
}

pub struct Emitter<'w> {
    pub g: GraphBuilder,
    weights: &'w BTreeMap<String, Tensor>,
    prefix: Vec<String>,
    /// Element type of weights and activations (LayerNorm statistics and the scan state are
    /// always computed in f32 by the ops themselves).
    pub float: FloatType,
    debug: bool,
    pub debug_outputs: Vec<DebugOutput>,
    pub scan: ScanMode,
    /// Fused `ai.groupmamba` operators instead of standard ones: every LayerNorm as one
    /// `GroupedLayerNorm` (SS2D's `out_norm` with its affine and SiLU gate included), every
    /// depthwise convolution with its biases and activation as one `DepthwiseConv`.
    pub fused_ops: bool,
}

impl<'w> Emitter<'w> {
    pub fn new(
        g: GraphBuilder,
        weights: &'w BTreeMap<String, Tensor>,
        float: FloatType,
        debug: bool,
    ) -> Self {
        Self {
            g,
            weights,
            prefix: Vec::new(),
            float,
            debug,
            debug_outputs: Vec::new(),
            scan: ScanMode::CustomOp,
            fused_ops: false,
        }
    }

    /// `x` (in the model's element type) as float32: a `Cast` in an FP16 model, `x` itself in
    /// FP32. For what stays float32 whatever the model (graph outputs, the portable scan).
    pub fn widen(&mut self, x: &Value) -> Value {
        self.cast_from_to(x, self.float, FloatType::F32)
    }

    /// Float32 `x` in the model's element type (graph inputs, the portable scan's y).
    pub fn narrow(&mut self, x: &Value) -> Value {
        self.cast_from_to(x, FloatType::F32, self.float)
    }

    fn cast_from_to(&mut self, x: &Value, from: FloatType, to: FloatType) -> Value {
        if from == to {
            return x.clone();
        }
        let to = Attr::Int(to.data_type() as i64);
        self.g.op("Cast", &[x], &[("to", to)])
    }

    /// Runs `f` with constants and scalars emitted as `float` (e.g. the float32 arithmetic of
    /// the portable scan inside an FP16 model).
    pub fn with_float<T>(&mut self, float: FloatType, f: impl FnOnce(&mut Self) -> T) -> T {
        let model = std::mem::replace(&mut self.float, float);
        let out = f(self);
        self.float = model;
        out
    }

    /// Runs `f` inside the official module `name` (weights and graph names both get the path).
    pub fn scoped<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> T) -> T {
        self.prefix.push(name.to_string());
        self.g.set_scope(self.path());
        let out = f(self);
        self.prefix.pop();
        self.g.set_scope(self.path());
        out
    }

    pub fn path(&self) -> String {
        self.prefix.join(".")
    }

    /// The checkpoint tensor `name` of the current module.
    pub fn tensor(&self, name: &str) -> &'w Tensor {
        let key = if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.path())
        };
        self.weights
            .get(&key)
            .unwrap_or_else(|| panic!("weight {key} missing after validation"))
    }

    /// Adds a (possibly derived) weight tensor as an initializer.
    pub fn constant(&mut self, hint: &str, tensor: &Tensor) -> Value {
        self.g.initializer(hint, tensor, self.float)
    }

    /// Adds the checkpoint tensor `name` of the current module as it is.
    pub fn weight(&mut self, name: &str) -> Value {
        let t = self.tensor(name);
        self.constant(name, t)
    }

    pub fn scalar(&mut self, v: f32) -> Value {
        self.g.scalar(v, self.float)
    }

    /// Exposes `value` as a graph output named `name` when debug outputs were requested.
    pub fn debug_output(&mut self, value: &Value, name: &str, dims: &[usize]) -> Value {
        if !self.debug {
            return value.clone();
        }
        let mut shape = vec![Dim::Symbolic(BATCH)];
        shape.extend(dims.iter().map(|&d| Dim::Fixed(d)));
        self.debug_outputs.push(DebugOutput {
            name: name.to_string(),
            dims: dims.to_vec(),
        });
        match self.float {
            // The value becomes the output (renamed): later nodes read it under its new name.
            FloatType::F32 => self.g.output(value, name, DataType::Float, &shape),
            FloatType::F16 => {
                // Graph I/O stays FP32 (as `logits` does): a Cast (exact) feeds the output, and
                // the FP16 value goes on into the network unchanged.
                let y = self.widen(value);
                self.g.output(&y, name, DataType::Float, &shape);
                value.clone()
            }
        }
    }

    pub fn debug_enabled(&self) -> bool {
        self.debug
    }

    // ---- layer patterns -------------------------------------------------------------------

    pub fn reshape(&mut self, x: &Value, shape: &[i64]) -> Value {
        let s = self.g.ints(shape);
        self.g.op("Reshape", &[x, &s], &[])
    }

    pub fn transpose(&mut self, x: &Value, perm: &[i64]) -> Value {
        self.g
            .op("Transpose", &[x], &[("perm", Attr::Ints(perm.to_vec()))])
    }

    pub fn mul(&mut self, a: &Value, b: &Value) -> Value {
        self.g.op("Mul", &[a, b], &[])
    }

    pub fn add(&mut self, a: &Value, b: &Value) -> Value {
        self.g.op("Add", &[a, b], &[])
    }

    /// `nn.LayerNorm` over the last axis, with the module's `weight`/`bias`.
    pub fn layer_norm(&mut self, x: &Value, module: &str, eps: f32) -> Value {
        self.scoped(module, |e| {
            if e.fused_ops {
                let scale = e.tensor("weight");
                let bias = e.tensor("bias");
                return e.grouped_layer_norm(x, scale, bias, 1, eps, None);
            }
            let w = e.weight("weight");
            let b = e.weight("bias");
            e.g.op(
                "LayerNormalization",
                &[x, &w, &b],
                &[("axis", Attr::Int(-1)), ("epsilon", Attr::Float(eps))],
            )
        })
    }

    /// One `ai.groupmamba::GroupedLayerNorm` node: LayerNorm over each of `groups` equal groups of
    /// the last axis, the per-channel affine (`scale`, `bias`: float32 whatever the model's type,
    /// as the op asks) and, with `silu_gate`, the product with SiLU of that tensor.
    pub fn grouped_layer_norm(
        &mut self,
        x: &Value,
        scale: &Tensor,
        bias: &Tensor,
        groups: usize,
        eps: f32,
        silu_gate: Option<&Value>,
    ) -> Value {
        use gm_ops::norm::{ATTR_EPSILON, ATTR_GATE_SILU, ATTR_GROUPS, NORM_OP_TYPE};
        let scale = self
            .g
            .initializer("scale", &scale.flattened(), FloatType::F32);
        let bias = self
            .g
            .initializer("bias", &bias.flattened(), FloatType::F32);
        let mut inputs = vec![x, &scale, &bias];
        let mut attrs = vec![
            (ATTR_GROUPS, Attr::Int(groups as i64)),
            (ATTR_EPSILON, Attr::Float(eps)),
        ];
        if let Some(gate) = silu_gate {
            inputs.push(gate);
            attrs.push((ATTR_GATE_SILU, Attr::Int(1)));
        }
        self.g
            .node(gm_ops::spec::DOMAIN, NORM_OP_TYPE, &inputs, 1, &attrs)
            .remove(0)
    }

    /// `nn.Linear` on the last axis: `x @ Wᵀ + b` (W transposed once, at export).
    pub fn linear(&mut self, x: &Value, module: &str) -> Value {
        let y = self.linear_without_bias(x, module);
        self.scoped(module, |e| {
            if e.has("bias") {
                let b = e.weight("bias");
                e.add(&y, &b)
            } else {
                y
            }
        })
    }

    /// `x @ Wᵀ` of `nn.Linear` `module`, its bias left to the caller (fused into a later op).
    pub fn linear_without_bias(&mut self, x: &Value, module: &str) -> Value {
        self.scoped(module, |e| {
            let w = e.tensor("weight");
            let wt = e.constant("weight_t", &transpose2(w));
            e.g.op("MatMul", &[x, &wt], &[])
        })
    }

    /// Whether the current module has a tensor `name` (optional biases).
    pub fn has(&self, name: &str) -> bool {
        self.weights
            .contains_key(&format!("{}.{name}", self.path()))
    }

    /// `nn.Conv2d` (NCHW, square kernel, symmetric padding) with the module's weight and bias.
    pub fn conv2d(
        &mut self,
        x: &Value,
        module: &str,
        stride: usize,
        pad: usize,
        groups: usize,
    ) -> Value {
        self.scoped(module, |e| {
            let w = e.weight("weight");
            let b = e.has("bias").then(|| e.weight("bias"));
            let mut inputs = vec![x, &w];
            if let Some(b) = &b {
                inputs.push(b);
            }
            let k = e.tensor("weight").shape[2] as i64;
            e.g.op("Conv", &inputs, &conv_attrs(k, stride, pad, groups))
        })
    }

    /// One `ai.groupmamba::DepthwiseConv` node: the depthwise k×k convolution (stride 1, same
    /// padding) of `x` ((N, C, H, W), or (N, H, W, C) channels-last) with `weight` (C, 1, k, k)
    /// and `bias`, `input_bias` added to `x` inside the image first (a preceding Linear's bias,
    /// so that its Add disappears), then `activation`. Weights and biases are float32 whatever
    /// the model's type, as the op asks. A channels-first node carries no `channels_last`
    /// attribute (its default).
    pub fn depthwise_conv(
        &mut self,
        x: &Value,
        weight: &Tensor,
        bias: &Tensor,
        input_bias: Option<&Tensor>,
        activation: Activation,
        layout: Layout,
    ) -> Value {
        let w = self.g.initializer("weight", weight, FloatType::F32);
        let b = self
            .g
            .initializer("bias", &bias.flattened(), FloatType::F32);
        let input_bias = input_bias.map(|t| {
            self.g
                .initializer("input_bias", &t.flattened(), FloatType::F32)
        });
        let mut inputs = vec![x, &w, &b];
        inputs.extend(input_bias.as_ref());
        let mut attrs = vec![(ATTR_ACTIVATION, Attr::Str(activation.name().to_string()))];
        if layout != Layout::ChannelsFirst {
            attrs.push((ATTR_CHANNELS_LAST, Attr::Int(layout.as_attribute())));
        }
        self.g
            .node(gm_ops::spec::DOMAIN, DWCONV_OP_TYPE, &inputs, 1, &attrs)
            .remove(0)
    }

    /// A bias-free convolution followed by eval-mode BatchNorm, folded into one convolution.
    pub fn conv2d_bn(
        &mut self,
        x: &Value,
        conv: &str,
        bn: &str,
        stride: usize,
        pad: usize,
        eps: f64,
    ) -> Value {
        let w = self.scoped(conv, |e| e.tensor("weight"));
        let (gamma, beta, mean, var) = self.scoped(bn, |e| {
            (
                e.tensor("weight"),
                e.tensor("bias"),
                e.tensor("running_mean"),
                e.tensor("running_var"),
            )
        });
        let cout = w.shape[0];
        let per_out = w.numel() / cout;
        let mut wf = w.data.clone();
        let mut bf = vec![0f32; cout];
        for o in 0..cout {
            let scale = gamma.data[o] as f64 / (var.data[o] as f64 + eps).sqrt();
            for v in &mut wf[o * per_out..(o + 1) * per_out] {
                *v = (*v as f64 * scale) as f32;
            }
            bf[o] = (beta.data[o] as f64 - mean.data[o] as f64 * scale) as f32;
        }
        let k = w.shape[2] as i64;
        self.scoped(conv, |e| {
            let wv = e.constant("weight_bn_folded", &Tensor::new(w.shape.clone(), wf));
            let bv = e.constant("bias_bn_folded", &Tensor::new(vec![cout], bf));
            e.g.op("Conv", &[x, &wv, &bv], &conv_attrs(k, stride, pad, 1))
        })
    }

    pub fn relu(&mut self, x: &Value) -> Value {
        self.g.op("Relu", &[x], &[])
    }

    /// SiLU(x) = x·σ(x).
    pub fn silu(&mut self, x: &Value) -> Value {
        let s = self.g.op("Sigmoid", &[x], &[]);
        self.mul(x, &s)
    }

    /// Exact (erf) GELU, as `nn.GELU()`: x·½·(1 + erf(x/√2)). Written in the exact node pattern
    /// (Div by √2, Erf, Add 1, Mul by x·½) that ONNX Runtime fuses into one Gelu kernel and
    /// tract into GeluExact.
    pub fn gelu(&mut self, x: &Value) -> Value {
        let sqrt2 = self.scalar(std::f32::consts::SQRT_2);
        let half = self.scalar(0.5);
        let one = self.scalar(1.0);
        let t = self.g.op("Div", &[x, &sqrt2], &[]);
        let erf = self.g.op("Erf", &[&t], &[]);
        let p = self.add(&erf, &one);
        let xh = self.mul(x, &half);
        self.mul(&xh, &p)
    }

    pub fn elem_type(&self) -> DataType {
        self.float.data_type()
    }
}

/// The model graph as an op sink: constants become initializers in the activations' type.
impl OpSink for Emitter<'_> {
    fn node(
        &mut self,
        op_type: &str,
        inputs: &[&Value],
        outputs: usize,
        attrs: &[(&str, Attr)],
    ) -> Vec<Value> {
        self.g.node("", op_type, inputs, outputs, attrs)
    }

    fn ints(&mut self, values: &[i64]) -> Value {
        self.g.ints(values)
    }

    fn int_scalar(&mut self, value: i64) -> Value {
        self.g.int_scalar(value)
    }

    fn float_tensor(&mut self, hint: &str, tensor: &Tensor) -> Value {
        self.constant(hint, tensor)
    }

    fn float_scalar(&mut self, value: f32) -> Value {
        self.scalar(value)
    }
}

fn conv_attrs(k: i64, stride: usize, pad: usize, groups: usize) -> Vec<(&'static str, Attr)> {
    let (s, p) = (stride as i64, pad as i64);
    vec![
        ("kernel_shape", Attr::Ints(vec![k, k])),
        ("strides", Attr::Ints(vec![s, s])),
        ("pads", Attr::Ints(vec![p, p, p, p])),
        ("group", Attr::Int(groups as i64)),
    ]
}

/// Transpose of a 2-D tensor.
pub fn transpose2(t: &Tensor) -> Tensor {
    let (r, c) = (t.shape[0], t.shape[1]);
    let mut out = vec![0f32; r * c];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = t.data[i * c + j];
        }
    }
    Tensor::new(vec![c, r], out)
}
