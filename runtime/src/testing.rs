//! Helpers for this workspace's own tests (the runtime's integration tests and the `gm-tests`
//! crate), kept here so that both use one copy.

use gm_ops::DOMAIN;
use tract_onnx::pb;
use tract_onnx::pb::tensor_proto::DataType;

use crate::backend::ort::{self as ort_backend, OrtRuntime};

/// The process's ONNX Runtime, or `None` (with a notice) when there is none, unless
/// `GM_REQUIRE_ORT=1` (scripts/test.sh sets it), which makes a missing ONNX Runtime a failure.
pub fn ort_or_skip(test: &str) -> Option<&'static OrtRuntime> {
    match ort_backend::runtime() {
        Ok(rt) => {
            println!("{test}: {}", rt.describe());
            Some(rt)
        }
        Err(e) if std::env::var("GM_REQUIRE_ORT").as_deref() == Ok("1") => {
            panic!("{test}: GM_REQUIRE_ORT=1 but ONNX Runtime is not available: {e}")
        }
        Err(e) => {
            println!("{test}: SKIPPED (set GM_REQUIRE_ORT=1 to make this a failure): {e}");
            None
        }
    }
}

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A stream for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in [lo, hi), 24 random bits.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        lo + (hi - lo) * (bits as f32 / (1u64 << 24) as f32)
    }

    /// `len` uniform values in [lo, hi).
    pub fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `n` uniform values in [lo, hi) from a fresh stream for `seed`.
pub fn random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    Rng::new(seed).vec(n, lo, hi)
}

/// Name of the node of [`ScanModel`].
pub const SCAN_NODE: &str = "block1.0.scan";
const FLOAT: i32 = DataType::Float as i32;

/// One dimension of a [`value_info`]: symbolic (`dim_param`) or fixed.
#[derive(Clone, Copy)]
pub enum Dim {
    Sym(&'static str),
    Val(i64),
}

/// A tensor graph input or output `name` of ONNX element type `elem_type` and shape `dims`.
pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> pb::ValueInfoProto {
    use pb::tensor_shape_proto::dimension::Value;
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            value: Some(match *d {
                Dim::Sym(s) => Value::DimParam(s.into()),
                Dim::Val(v) => Value::DimValue(v),
            }),
            ..Default::default()
        })
        .collect();
    pb::ValueInfoProto {
        name: name.into(),
        r#type: Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A one-node ONNX model `y = ai.groupmamba::SelectiveScan(u, delta, A, B, C, D, delta_bias)`
/// with a symbolic batch `N`: its sizes and attribute, and the things error tests spoil.
#[derive(Clone)]
pub struct ScanModel {
    pub channels: i64,
    pub groups: i64,
    pub height: i64,
    pub width: i64,
    pub directions: Option<Vec<i64>>,
    pub domain: &'static str,
    pub import: Option<i64>,
    pub elem_type: i32,
}

impl ScanModel {
    /// Float32 tensors, `ai.groupmamba` imported at version 1, node name [`SCAN_NODE`].
    pub fn new(channels: i64, height: i64, width: i64, directions: &[i64]) -> Self {
        Self {
            channels,
            groups: directions.len() as i64,
            height,
            width,
            directions: Some(directions.to_vec()),
            domain: DOMAIN,
            import: Some(1),
            elem_type: FLOAT,
        }
    }

    pub fn model(&self) -> pb::ModelProto {
        let n = Dim::Sym("N");
        let (c, g, h, w) = (
            Dim::Val(self.channels),
            Dim::Val(self.groups),
            Dim::Val(self.height),
            Dim::Val(self.width),
        );
        let t = self.elem_type;
        let inputs = vec![
            value_info("u", t, &[n, c, h, w]),
            value_info("delta", t, &[n, c, h, w]),
            value_info("A", FLOAT, &[c]),
            value_info("B", t, &[n, g, h, w]),
            value_info("C", t, &[n, g, h, w]),
            value_info("D", FLOAT, &[c]),
            value_info("delta_bias", FLOAT, &[c]),
        ];
        let attribute = self
            .directions
            .iter()
            .map(|dirs| pb::AttributeProto {
                name: "directions".into(),
                r#type: pb::attribute_proto::AttributeType::Ints as i32,
                ints: dirs.clone(),
                ..Default::default()
            })
            .collect();
        let node = pb::NodeProto {
            name: SCAN_NODE.into(),
            op_type: "SelectiveScan".into(),
            domain: self.domain.into(),
            input: inputs.iter().map(|i| i.name.clone()).collect(),
            output: vec!["y".into()],
            attribute,
            ..Default::default()
        };
        let mut opset_import = vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: 17,
        }];
        if let Some(version) = self.import {
            opset_import.push(pb::OperatorSetIdProto {
                domain: DOMAIN.into(),
                version,
            });
        }
        pb::ModelProto {
            ir_version: 8,
            opset_import,
            producer_name: "gm-runtime test".into(),
            graph: Some(pb::GraphProto {
                name: "selective_scan".into(),
                node: vec![node],
                input: inputs,
                output: vec![value_info("y", t, &[n, c, h, w])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }
}
