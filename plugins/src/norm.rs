//! `ai.groupmamba::GroupedLayerNorm` (version 1): the contract as code (names, attributes,
//! shapes, errors) and the float32 reference kernel every CPU adapter calls.
//!
//! What it computes (normative text: `plugins/SPEC.md` §8): for every row of `X` (all axes but
//! the last) and every one of `groups` equal groups of its last axis, LayerNorm over the
//! group's `d = C / groups` channels (biased variance, statistics in float32), the per-channel
//! affine `Scale`, `Bias`, and optionally a product with `Gate` (or with `SiLU(Gate)`):
//!
//! ```text
//! y[r, k·d + j] = ((x[r, k·d + j] − μ[r, k]) / √(σ²[r, k] + ε) · Scale[k·d + j] + Bias[k·d + j]) · g[r, k·d + j]
//! g = 1 (no Gate), Gate, or Gate · sigmoid(Gate) (`gate_silu` = 1)
//! ```
//!
//! Why an op of our own: it is one kernel where the standard graph needs up to six (SS2D's
//! `out_norm` per group, its affine, the SiLU of the gate and the product: `LayerNormalization`,
//! `Mul`, `Add`, `Sigmoid`, `Mul`, `Mul`), and ONNX Runtime's CUDA `LayerNormalization` gives
//! each row a 128-thread block, which leaves most of it idle on GroupMamba's rows of 16 to 448
//! channels (see `benchmarks/h100-ort-cuda.md`).

use std::fmt;

/// ONNX `op_type` of the operator (domain [`crate::spec::DOMAIN`], version
/// [`crate::spec::OPSET_VERSION`]).
pub const NORM_OP_TYPE: &str = "GroupedLayerNorm";
/// `int` attribute: number of equal channel groups of the last axis (default 1).
pub const ATTR_GROUPS: &str = "groups";
/// `float` attribute: ε added to the variance (default 1e-5, as `nn.LayerNorm`).
pub const ATTR_EPSILON: &str = "epsilon";
/// `int` attribute: 1 multiplies by `SiLU(Gate)` instead of `Gate` (default 0).
pub const ATTR_GATE_SILU: &str = "gate_silu";
/// Default of [`ATTR_EPSILON`].
pub const DEFAULT_EPSILON: f32 = 1e-5;
/// Largest group width `d` the adapters accept (the CUDA kernel keeps a group in registers).
pub const MAX_GROUP_WIDTH: usize = 1024;

/// The four inputs of the operator, in node-input order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NormInput {
    /// `X` `[..., C]`, type T.
    X,
    /// `Scale` `[C]`, float32.
    Scale,
    /// `Bias` `[C]`, float32.
    Bias,
    /// `Gate` (optional) of `X`'s shape, type T.
    Gate,
}

impl NormInput {
    /// All inputs in node-input order.
    pub const ALL: [NormInput; 4] = [
        NormInput::X,
        NormInput::Scale,
        NormInput::Bias,
        NormInput::Gate,
    ];

    /// Node-input position.
    pub fn index(self) -> usize {
        self as usize
    }

    /// The input's name in the specification.
    pub fn name(self) -> &'static str {
        match self {
            NormInput::X => "X",
            NormInput::Scale => "Scale",
            NormInput::Bias => "Bias",
            NormInput::Gate => "Gate",
        }
    }

    /// Whether the input has type T (else it is always float32).
    pub fn is_type_t(self) -> bool {
        matches!(self, NormInput::X | NormInput::Gate)
    }
}

impl fmt::Display for NormInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The node's attributes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NormAttributes {
    pub groups: usize,
    pub epsilon: f32,
    pub gate_silu: bool,
}

impl Default for NormAttributes {
    fn default() -> Self {
        Self {
            groups: 1,
            epsilon: DEFAULT_EPSILON,
            gate_silu: false,
        }
    }
}

impl NormAttributes {
    /// Checks raw attribute values (absent ones take their defaults).
    pub fn new(
        groups: Option<i64>,
        epsilon: Option<f32>,
        gate_silu: Option<i64>,
    ) -> Result<Self, NormError> {
        let groups = groups.unwrap_or(1);
        if groups < 1 {
            return Err(NormError::BadGroups(groups));
        }
        let epsilon = epsilon.unwrap_or(DEFAULT_EPSILON);
        if !(epsilon.is_finite() && epsilon >= 0.0) {
            return Err(NormError::BadEpsilon(epsilon));
        }
        let gate_silu = match gate_silu.unwrap_or(0) {
            0 => false,
            1 => true,
            v => return Err(NormError::BadGateSilu(v)),
        };
        Ok(Self {
            groups: groups as usize,
            epsilon,
            gate_silu,
        })
    }
}

/// Everything that can be wrong with a call of the operator.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum NormError {
    #[error("attribute `groups` = {0}: needs at least one group")]
    BadGroups(i64),
    #[error("attribute `epsilon` = {0}: must be finite and non-negative")]
    BadEpsilon(f32),
    #[error("attribute `gate_silu` = {0}: must be 0 (Gate) or 1 (SiLU(Gate))")]
    BadGateSilu(i64),
    #[error("input `X` has shape {0:?}: needs rank ≥ 1 (the last axis holds the channels)")]
    Scalar(Vec<usize>),
    #[error(
        "input `X` has C = {channels} channels (last axis of {x_shape:?}), not divisible by \
         attribute `groups` = {groups}"
    )]
    GroupsDoNotDivide {
        channels: usize,
        groups: usize,
        x_shape: Vec<usize>,
    },
    #[error(
        "groups of d = {width} channels (C = {channels} / groups = {groups}) are wider than the \
         {MAX_GROUP_WIDTH} channels this implementation supports"
    )]
    GroupTooWide {
        width: usize,
        channels: usize,
        groups: usize,
    },
    #[error("input `{input}` has shape {found:?}, expected {expected:?} (from X {x_shape:?})")]
    Shape {
        input: NormInput,
        expected: Vec<usize>,
        found: Vec<usize>,
        x_shape: Vec<usize>,
    },
    #[error("input `{input}` holds {found} values, expected {expected}")]
    Length {
        input: NormInput,
        expected: usize,
        found: usize,
    },
    #[error("output `Y` buffer holds {found} values, expected {expected}")]
    OutputLength { expected: usize, found: usize },
    #[error("input `{input}` has element type {found}, this implementation accepts {accepted}")]
    UnsupportedType {
        input: NormInput,
        found: String,
        accepted: &'static str,
    },
}

/// A call's geometry: `rows` rows of `channels` channels in `groups` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NormShape {
    pub rows: usize,
    pub channels: usize,
    pub groups: usize,
}

impl NormShape {
    /// Checks the shapes of `X`, `Scale`, `Bias` and the optional `Gate` against each other
    /// and `groups`.
    pub fn from_input_shapes(
        x: &[usize],
        scale: &[usize],
        bias: &[usize],
        gate: Option<&[usize]>,
        groups: usize,
    ) -> Result<Self, NormError> {
        let Some((&channels, outer)) = x.split_last() else {
            return Err(NormError::Scalar(x.to_vec()));
        };
        if groups == 0 {
            return Err(NormError::BadGroups(0));
        }
        if channels % groups != 0 {
            return Err(NormError::GroupsDoNotDivide {
                channels,
                groups,
                x_shape: x.to_vec(),
            });
        }
        if channels / groups > MAX_GROUP_WIDTH {
            return Err(NormError::GroupTooWide {
                width: channels / groups,
                channels,
                groups,
            });
        }
        let mismatch = |input: NormInput, expected: &[usize], found: &[usize]| {
            (expected != found).then(|| NormError::Shape {
                input,
                expected: expected.to_vec(),
                found: found.to_vec(),
                x_shape: x.to_vec(),
            })
        };
        let checks = [
            mismatch(NormInput::Scale, &[channels], scale),
            mismatch(NormInput::Bias, &[channels], bias),
            gate.and_then(|g| mismatch(NormInput::Gate, x, g)),
        ];
        if let Some(e) = checks.into_iter().flatten().next() {
            return Err(e);
        }
        Ok(Self {
            rows: outer.iter().product(),
            channels,
            groups,
        })
    }

    /// Channels per group.
    pub fn group_width(&self) -> usize {
        self.channels / self.groups
    }

    /// Elements of `X` (and of `Y`, and of `Gate` when given).
    pub fn len(&self) -> usize {
        self.rows * self.channels
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The operator's inputs as flat row-major float32 buffers.
#[derive(Debug, Clone, Copy)]
pub struct NormInputs<'a> {
    pub x: &'a [f32],
    pub scale: &'a [f32],
    pub bias: &'a [f32],
    pub gate: Option<&'a [f32]>,
}

/// `SiLU(v) = v · sigmoid(v)`, in float32.
pub fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

/// The reference kernel: writes `Y` (float32) for `inputs` of `shape`.
pub fn grouped_layer_norm(
    shape: &NormShape,
    attrs: &NormAttributes,
    inputs: NormInputs<'_>,
    y: &mut [f32],
) -> Result<(), NormError> {
    let len = shape.len();
    let check = |input: NormInput, expected: usize, found: usize| {
        (expected != found).then_some(NormError::Length {
            input,
            expected,
            found,
        })
    };
    let checks = [
        check(NormInput::X, len, inputs.x.len()),
        check(NormInput::Scale, shape.channels, inputs.scale.len()),
        check(NormInput::Bias, shape.channels, inputs.bias.len()),
        inputs
            .gate
            .and_then(|g| check(NormInput::Gate, len, g.len())),
    ];
    if let Some(e) = checks.into_iter().flatten().next() {
        return Err(e);
    }
    if y.len() != len {
        return Err(NormError::OutputLength {
            expected: len,
            found: y.len(),
        });
    }
    let d = shape.group_width();
    if d == 0 {
        return Ok(());
    }
    for (start, out) in (0..len).step_by(d).zip(y.chunks_exact_mut(d)) {
        let x = &inputs.x[start..start + d];
        let channel = start % shape.channels;
        let mean = x.iter().sum::<f32>() / d as f32;
        let var = x.iter().map(|&v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
        let rstd = 1.0 / (var + attrs.epsilon).sqrt();
        let scale = &inputs.scale[channel..channel + d];
        let bias = &inputs.bias[channel..channel + d];
        for j in 0..d {
            out[j] = (x[j] - mean) * rstd * scale[j] + bias[j];
        }
        if let Some(gate) = inputs.gate {
            for (o, &g) in out.iter_mut().zip(&gate[start..start + d]) {
                *o *= if attrs.gate_silu { silu(g) } else { g };
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(x: &[f32], groups: usize, gate: Option<&[f32]>, silu_gate: bool) -> Vec<f32> {
        let c = 4;
        let dims = [x.len() / c, c];
        let shape =
            NormShape::from_input_shapes(&dims, &[c], &[c], gate.map(|_| &dims[..]), groups)
                .unwrap();
        let attrs = NormAttributes {
            groups,
            epsilon: 0.0,
            gate_silu: silu_gate,
        };
        let scale = [1.0, 2.0, 1.0, 1.0];
        let bias = [0.0, 0.0, 0.5, 0.0];
        let mut y = vec![0.0; x.len()];
        let inputs = NormInputs {
            x,
            scale: &scale,
            bias: &bias,
            gate,
        };
        grouped_layer_norm(&shape, &attrs, inputs, &mut y).unwrap();
        y
    }

    #[test]
    fn normalises_each_group_with_its_channels_affine() {
        // Groups (1, 3) and (10, 20): each becomes (−1, 1) before the affine.
        let y = norm(&[1.0, 3.0, 10.0, 20.0], 2, None, false);
        assert_eq!(y, vec![-1.0, 2.0, -0.5, 1.0]);
        // One group of four: mean 8.5, population std √55.25.
        let y = norm(&[1.0, 3.0, 10.0, 20.0], 1, None, false);
        let s = 55.25f32.sqrt();
        let expected = [-7.5 / s, 2.0 * -5.5 / s, 1.5 / s + 0.5, 11.5 / s];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expected:?}");
        }
    }

    #[test]
    fn gates_with_the_gate_or_its_silu() {
        let gate = [2.0, -1.0, 0.0, 3.0];
        let y = norm(&[1.0, 3.0, 10.0, 20.0], 2, Some(&gate), false);
        assert_eq!(y, vec![-2.0, -2.0, 0.0, 3.0]);
        let y = norm(&[1.0, 3.0, 10.0, 20.0], 2, Some(&gate), true);
        let expected = [-silu(2.0), 2.0 * silu(-1.0), 0.0, silu(3.0)];
        for (a, b) in y.iter().zip(expected) {
            assert!((a - b).abs() < 1e-6, "{y:?} vs {expected:?}");
        }
    }

    #[test]
    fn rejects_bad_shapes_and_attributes_naming_them() {
        let e = NormShape::from_input_shapes(&[2, 6], &[6], &[6], None, 4).unwrap_err();
        assert!(
            e.to_string()
                .contains("not divisible by attribute `groups` = 4"),
            "{e}"
        );
        let e = NormShape::from_input_shapes(&[2, 6], &[5], &[6], None, 1).unwrap_err();
        assert!(e.to_string().contains("input `Scale` has shape [5]"), "{e}");
        let e = NormShape::from_input_shapes(&[2, 6], &[6], &[6], Some(&[2, 3]), 1).unwrap_err();
        assert!(
            e.to_string().contains("input `Gate` has shape [2, 3]"),
            "{e}"
        );
        let e = NormShape::from_input_shapes(&[], &[1], &[1], None, 1).unwrap_err();
        assert!(e.to_string().contains("rank ≥ 1"), "{e}");
        let e = NormShape::from_input_shapes(&[1, 2048], &[2048], &[2048], None, 1).unwrap_err();
        assert!(e.to_string().contains("wider than"), "{e}");
        assert!(NormAttributes::new(Some(0), None, None).is_err());
        assert!(NormAttributes::new(None, Some(-1.0), None).is_err());
        assert!(NormAttributes::new(None, None, Some(2)).is_err());
        assert_eq!(
            NormAttributes::new(None, None, None).unwrap(),
            NormAttributes::default()
        );
    }
}
