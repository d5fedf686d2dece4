//! `ai.groupmamba::DepthwiseConv` for ONNX Runtime's CPU execution provider, on the `ort` crate's
//! custom-operator API.
//!
//! [`DepthwiseConvOperator`] is added to [`crate::ort_op::domain`] next to the other
//! `ai.groupmamba` ops, so every session (and the custom-op library, `plugins/ort-library`) that
//! registers the domain gets all of them. Operator-set version 1 (ONNX Runtime does not enforce a
//! custom op's version range: see `ort_op`'s notes).
//!
//! Inputs `X`, `W`, `B` (float32, required) and `InputBias` (float32, optional: absent, or an
//! empty name on the node, which needs ONNX Runtime ≥ 1.24 as for `GroupedLayerNorm`'s `Gate`:
//! see `ort_norm_op`); output `Y` (float32). The attribute is checked when the kernel is created,
//! so a bad node fails at session creation naming the node; shape inference gives `Y` `X`'s type
//! and shape and checks what is known of the others (ONNX Runtime only logs a custom op's
//! shape-inference errors, so the kernel checks the real shapes again, through
//! [`ConvShape::from_input_shapes`]). Evaluated by [`crate::dwconv::depthwise_conv_planes`] (the
//! one implementation of the math), split over ONNX Runtime's intra-op thread pool by blocks of
//! `(n, c)` planes; a channels-last node is run on a channels-first copy
//! ([`crate::dwconv::in_channels_first`]).
//!
//! Types: T = float32 only (the CPU kernel is float32; ONNX Runtime refuses a float16 or bfloat16
//! node at session creation, since the op declares float32 inputs). The CUDA execution provider's
//! kernel, with all three types, is `ort_cuda_dwconv_op` (features `ort` + `cuda`); it shares
//! `parse_node` and `infer_shape` with this one.

use std::ops::{Range, RangeInclusive};
use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueType};

use crate::dwconv::{
    check_kernel, depthwise_conv_planes, in_channels_first, ConvAttributes, ConvError, ConvInput,
    ConvInputs, ConvShape, Layout, ATTR_ACTIVATION, ATTR_CHANNELS_LAST, DWCONV_OP_TYPE,
};
use crate::ort_norm_op::attribute;
use crate::ort_op::{fail_op, float32_inputs, present_inputs, read_float32_inputs, OrtInput};
use crate::spec::OPSET_VERSION;

/// Work items smaller than this many output elements are not split further (as for the other
/// ops: below it, handing planes to another thread costs more than convolving them).
const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// [`fail_op`] for `DepthwiseConv`.
pub(crate) fn fail(node: &str, message: impl std::fmt::Display) -> ort::Error {
    fail_op(DWCONV_OP_TYPE, node, message)
}

impl OrtInput for ConvInput {
    const OP_TYPE: &'static str = DWCONV_OP_TYPE;
    const NODE_INPUTS: &'static [Self] = &ConvInput::ALL;
    const OPTIONAL: Option<Self> = Some(ConvInput::InputBias);
    const COUNT: &'static str = "takes 3 or 4 inputs (X, W, B, optional InputBias)";
    const REQUIRED: &'static str = "X, W and B are required";

    fn position(self) -> usize {
        self.index()
    }

    fn has_type_t(self) -> bool {
        self.is_type_t()
    }

    fn unsupported(self, found: String, accepted: &'static str) -> String {
        ConvError::UnsupportedType {
            input: self,
            found,
            accepted,
        }
        .to_string()
    }
}

/// `ai.groupmamba::DepthwiseConv` version 1 (float32, CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct DepthwiseConvOperator;

impl Operator for DepthwiseConvOperator {
    type Kernel<'attr> = DepthwiseConvKernel;

    fn name(&self) -> &str {
        DWCONV_OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        float32_inputs::<ConvInput>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<DepthwiseConvKernel> {
        let (node, attrs) = parse_node(ctx)?;
        Ok(DepthwiseConvKernel { node, attrs })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_shape(ctx)
    }
}

/// Checks a node when its kernel is created (1 output, the attribute) and returns its name and
/// attributes. Shared by the CPU and CUDA kernels.
pub(crate) fn parse_node(ctx: &KernelContext<'_>) -> ort::Result<(String, ConvAttributes)> {
    let node = ctx.node_name().unwrap_or_default();
    // ONNX Runtime checks the inputs against the op's schema (3 required, 1 optional) before
    // creating the kernel; not `ctx.inputs()` here, which fails on an empty (absent) InputBias.
    let outputs = ctx.outputs()?;
    if outputs.len() != 1 {
        return Err(fail(
            &node,
            format!("has exactly one output (Y), got {}", outputs.len()),
        ));
    }
    let activation = attribute::<String>(
        ctx,
        ATTR_ACTIVATION,
        "a string (\"none\", \"silu\" or \"gelu\")",
    )
    .map_err(|e| fail(&node, e))?;
    let channels_last =
        attribute::<i64>(ctx, ATTR_CHANNELS_LAST, "an int (0 or 1)").map_err(|e| fail(&node, e))?;
    let attrs =
        ConvAttributes::new(activation.as_deref(), channels_last).map_err(|e| fail(&node, e))?;
    Ok((node, attrs))
}

/// Shape inference shared by the CPU and CUDA operators: `Y` gets `X`'s type and shape.
pub(crate) fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
    let inputs = ctx.inputs();
    if !(3..=4).contains(&inputs.len()) {
        return Err(fail(
            "",
            format!(
                "takes 3 or 4 inputs (X, W, B, optional InputBias), got {}",
                inputs.len()
            ),
        ));
    }
    let mut shapes: Vec<Vec<i64>> = Vec::with_capacity(inputs.len());
    for (input, value) in ConvInput::ALL.iter().zip(&inputs) {
        let Some(shape) = value.tensor_shape() else {
            return Err(fail("", format!("input `{input}` must be a tensor")));
        };
        shapes.push(shape.to_vec());
    }
    // A bad value is refused when the kernel is created, naming the node.
    let layout = ctx
        .attr::<i64>(ATTR_CHANNELS_LAST)
        .ok()
        .and_then(|v| Layout::from_attribute(v).ok())
        .unwrap_or_default();
    check_known_shapes(&shapes, layout).map_err(|e| fail("", e))?;
    let x: &ValueType = &inputs[ConvInput::X.index()];
    ctx.set_output(0, x)
}

/// Checks the input shapes known at graph-build time (`-1` = unknown dimension; an empty shape
/// = unknown rank, or a scalar: the kernel tells them apart): `X` of rank 4, `W` `[C, 1, K, K]`
/// with a valid K, `B`/`InputBias` `[C]`, wherever the dimensions involved are known.
fn check_known_shapes(shapes: &[Vec<i64>], layout: Layout) -> Result<(), String> {
    let show = |dims: &[i64]| {
        let parts: Vec<String> = dims
            .iter()
            .map(|&d| if d >= 0 { d.to_string() } else { "?".into() })
            .collect();
        format!("[{}]", parts.join(", "))
    };
    let clash = |a: i64, b: i64| a >= 0 && b >= 0 && a != b;
    let x = &shapes[ConvInput::X.index()];
    if !x.is_empty() && x.len() != 4 {
        return Err(format!(
            "input `X` has shape {}: needs rank 4 {}",
            show(x),
            layout.dims()
        ));
    }
    // C from X, else from W or a bias.
    let channels = x
        .get(layout.channel_axis())
        .copied()
        .filter(|&c| c >= 0)
        .or_else(|| {
            [ConvInput::W, ConvInput::B, ConvInput::InputBias]
                .iter()
                .find_map(|i| shapes.get(i.index())?.first().copied())
                .filter(|&c| c >= 0)
        })
        .unwrap_or(-1);
    let c = if channels >= 0 {
        channels.to_string()
    } else {
        "?".into()
    };
    let w = &shapes[ConvInput::W.index()];
    if !w.is_empty() {
        let bad = w.len() != 4 || clash(w[0], channels) || clash(w[1], 1) || clash(w[2], w[3]);
        if bad {
            return Err(format!(
                "input `W` has shape {}, expected [C, 1, K, K] with C = {c} (from X {})",
                show(w),
                show(x)
            ));
        }
        if let Some(&k) = w[2..].iter().find(|&&k| k >= 0) {
            check_kernel(k as usize).map_err(|e| e.to_string())?;
        }
    }
    for input in [ConvInput::B, ConvInput::InputBias] {
        let Some(found) = shapes.get(input.index()) else {
            continue;
        };
        if found.is_empty() {
            continue;
        }
        if found.len() != 1 || clash(found[0], channels) {
            return Err(format!(
                "input `{input}` has shape {}, expected [C] = [{c}] (from X {})",
                show(found),
                show(x)
            ));
        }
    }
    Ok(())
}

/// The kernel of one node: its name (for messages) and its attributes.
#[derive(Debug, Clone)]
pub struct DepthwiseConvKernel {
    node: String,
    attrs: ConvAttributes,
}

impl DepthwiseConvKernel {
    /// The node's attributes.
    pub fn attrs(&self) -> &ConvAttributes {
        &self.attrs
    }
}

/// Splits the `N · C` planes of `shape` into blocks of at least [`MIN_TASK_ELEMENTS`] output
/// elements (the last block may be smaller), in memory order of `Y`.
fn tasks(shape: &ConvShape) -> Vec<Range<usize>> {
    let planes = shape.planes();
    let per_task = MIN_TASK_ELEMENTS.div_ceil(shape.plane_len().max(1)).max(1);
    (0..planes)
        .step_by(per_task)
        .map(|start| start..(start + per_task).min(planes))
        .collect()
}

impl Kernel for DepthwiseConvKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let values = present_inputs::<ConvInput>(ctx, node)?;
        let (shapes, data) = read_float32_inputs::<ConvInput>(node, &values)?;
        let shape = ConvShape::from_input_shapes(
            &shapes[ConvInput::X.index()],
            &shapes[ConvInput::W.index()],
            &shapes[ConvInput::B.index()],
            shapes.get(ConvInput::InputBias.index()).map(Vec::as_slice),
            self.attrs.layout,
        )
        .map_err(|e| fail(node, e))?;
        let inputs = ConvInputs {
            x: data[ConvInput::X.index()],
            w: data[ConvInput::W.index()],
            b: data[ConvInput::B.index()],
            input_bias: data.get(ConvInput::InputBias.index()).copied(),
        };
        let out_shape: Vec<i64> = shapes[ConvInput::X.index()]
            .iter()
            .map(|&d| d as i64)
            .collect();
        let mut output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| fail(node, "ONNX Runtime gave no buffer for output `Y`"))?;
        let (_, y) = output.try_extract_tensor_mut::<f32>()?;
        if shape.is_empty() || y.is_empty() {
            return Ok(());
        }

        let attrs = &self.attrs;
        let result = in_channels_first(&shape, inputs, y, |shape, inputs, y| {
            convolve_in_parallel(ctx, shape, attrs, inputs, y)
        });
        result.map_err(|e| fail(node, e))
    }
}

/// Runs the reference kernel of a channels-first call over ONNX Runtime's thread pool, in
/// blocks of planes ([`tasks`]).
fn convolve_in_parallel(
    ctx: &ComputeContext,
    shape: &ConvShape,
    attrs: &ConvAttributes,
    inputs: ConvInputs<'_>,
    y: &mut [f32],
) -> Result<(), ConvError> {
    // Cut Y into the tasks' disjoint slices (tasks are in memory order).
    let work = tasks(shape);
    let mut rest: &mut [f32] = y;
    let mut slots = Vec::with_capacity(work.len());
    for planes in &work {
        let (head, tail) = rest.split_at_mut(planes.len() * shape.plane_len());
        slots.push(Mutex::new(head));
        rest = tail;
    }
    let error: Mutex<Option<ConvError>> = Mutex::new(None);
    let run = |ix: usize| {
        let mut slot = slots[ix].lock().unwrap_or_else(|e| e.into_inner());
        let planes = work[ix].clone();
        if let Err(e) = depthwise_conv_planes(shape, attrs, inputs, planes, &mut slot) {
            *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
        }
    };
    if work.len() == 1 {
        run(0);
    } else if let Err(e) = ctx.par_for(work.len(), 0, run) {
        return Err(ConvError::ThreadPool(e.to_string()));
    }
    match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dwconv::{depthwise_conv, Activation};

    fn shape(batch: usize, channels: usize, side: usize, kernel: usize) -> ConvShape {
        ConvShape {
            batch,
            channels,
            height: side,
            width: side,
            kernel,
            layout: Layout::ChannelsFirst,
        }
    }

    #[test]
    fn tasks_cover_the_planes_in_order() {
        // 56×56 planes: 2^15 / 3136 → 11 planes a task; 2 × 16 = 32 planes: 11, 11, 10.
        assert_eq!(tasks(&shape(2, 16, 56, 3)), vec![0..11, 11..22, 22..32]);
        assert_eq!(tasks(&shape(1, 3, 4, 3)), vec![0..3]);
        assert!(tasks(&shape(0, 3, 4, 3)).is_empty());
        // Planes larger than a task: one plane each.
        assert_eq!(tasks(&shape(1, 3, 256, 3)).len(), 3);
    }

    #[test]
    fn split_run_matches_one_call() {
        let shape = shape(3, 24, 28, 3);
        let fill = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + k).sin() * 2.0).collect()
        };
        let x = fill(shape.len(), 0.1);
        let w = fill(shape.weight_len(), 0.2);
        let b = fill(24, 0.3);
        let ib = fill(24, 0.4);
        for (activation, with_ib) in [
            (Activation::None, false),
            (Activation::Silu, true),
            (Activation::Gelu, true),
        ] {
            let attrs = ConvAttributes {
                activation,
                ..ConvAttributes::default()
            };
            let inputs = ConvInputs {
                x: &x,
                w: &w,
                b: &b,
                input_bias: with_ib.then_some(ib.as_slice()),
            };
            let mut expected = vec![0f32; shape.len()];
            depthwise_conv(&shape, &attrs, inputs, &mut expected).unwrap();
            let mut y = vec![0f32; shape.len()];
            let mut rest: &mut [f32] = &mut y;
            let work = tasks(&shape);
            assert!(work.len() > 1);
            for planes in &work {
                let (head, tail) = rest.split_at_mut(planes.len() * shape.plane_len());
                depthwise_conv_planes(&shape, &attrs, inputs, planes.clone(), head).unwrap();
                rest = tail;
            }
            assert_eq!(y, expected);
        }
    }

    #[test]
    fn known_shapes_are_checked_naming_the_input() {
        let check = |shapes: &[&[i64]]| {
            let shapes: Vec<Vec<i64>> = shapes.iter().map(|s| s.to_vec()).collect();
            check_known_shapes(&shapes, Layout::ChannelsFirst)
        };
        // Symbolic batch, optional InputBias absent or present.
        assert!(check(&[&[-1, 96, 56, 56], &[96, 1, 3, 3], &[96]]).is_ok());
        assert!(check(&[&[-1, 96, -1, -1], &[96, 1, 3, 3], &[96], &[96]]).is_ok());
        // Unknown ranks pass.
        assert!(check(&[&[], &[], &[]]).is_ok());
        let e = check(&[&[96, 56, 56], &[96, 1, 3, 3], &[96]]).unwrap_err();
        assert!(
            e.contains("input `X` has shape [96, 56, 56]: needs rank 4"),
            "{e}"
        );
        let e = check(&[&[-1, 96, 56, 56], &[95, 1, 3, 3], &[96]]).unwrap_err();
        assert!(
            e.contains("input `W` has shape [95, 1, 3, 3], expected [C, 1, K, K] with C = 96"),
            "{e}"
        );
        let e = check(&[&[-1, 96, 56, 56], &[96, 3, 3], &[96]]).unwrap_err();
        assert!(e.contains("input `W` has shape [96, 3, 3]"), "{e}");
        let e = check(&[&[-1, 96, 56, 56], &[96, 1, 3, 5], &[96]]).unwrap_err();
        assert!(e.contains("input `W` has shape [96, 1, 3, 5]"), "{e}");
        let e = check(&[&[-1, 96, 56, 56], &[96, 1, 2, 2], &[96]]).unwrap_err();
        assert!(e.contains("2×2 kernel: K must be odd"), "{e}");
        let e = check(&[&[-1, 96, 56, 56], &[96, 1, 9, -1], &[96]]).unwrap_err();
        assert!(e.contains("larger than the 7×7"), "{e}");
        let e = check(&[&[-1, 96, 56, 56], &[96, 1, 3, 3], &[96, 1]]).unwrap_err();
        assert!(
            e.contains("input `B` has shape [96, 1], expected [C] = [96]"),
            "{e}"
        );
        let e = check(&[&[-1, 96, 56, 56], &[96, 1, 3, 3], &[96], &[48]]).unwrap_err();
        assert!(e.contains("input `InputBias` has shape [48]"), "{e}");
        // C known from W only.
        let e = check(&[&[-1, -1, 56, 56], &[96, 1, 3, 3], &[48]]).unwrap_err();
        assert!(e.contains("expected [C] = [96]"), "{e}");

        // Channels-last: C is X's last axis.
        let last = |shapes: &[&[i64]]| {
            let shapes: Vec<Vec<i64>> = shapes.iter().map(|s| s.to_vec()).collect();
            check_known_shapes(&shapes, Layout::ChannelsLast)
        };
        assert!(last(&[&[-1, 56, 56, 96], &[96, 1, 3, 3], &[96], &[96]]).is_ok());
        let e = last(&[&[-1, 96, 56, 56], &[96, 1, 3, 3], &[96]]).unwrap_err();
        assert!(e.contains("with C = 56"), "{e}");
        let e = last(&[&[56, 56, 96], &[96, 1, 3, 3], &[96]]).unwrap_err();
        assert!(e.contains("needs rank 4 [N, H, W, C]"), "{e}");
    }
}
