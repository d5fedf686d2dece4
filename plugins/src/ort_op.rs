//! `ai.groupmamba::SelectiveScan` for ONNX Runtime, on the `ort` crate's custom-operator API
//! (CPU execution provider; with the `cuda` feature [`domain`] also holds the CUDA execution
//! provider's kernels from `crate::ort_cuda_op`).
//!
//! [`domain`] builds the `ai.groupmamba` operator domain (this op, `GroupedLayerNorm` from
//! [`crate::ort_norm_op`] and `DepthwiseConv` from [`crate::ort_dwconv_op`]); register it on a
//! session with
//! `SessionBuilder::with_operators(gm_ops::ort_op::domain()?)`, or let the custom-op library
//! (`plugins/ort-library`, `libgroupmamba_ops.so`) do it for any ONNX Runtime user.
//!
//! The domain holds [`SelectiveScanOperator`], operator-set version 1: 7 float32 inputs, 1 float32
//! output, shape inference (`y` has `u`'s type and shape; ranks and known dimensions checked, but
//! ONNX Runtime only logs a custom op's shape-inference errors, so the kernel checks again), the
//! `directions` attribute checked when the kernel is created (so a bad node fails at session
//! creation, naming the node), evaluated by [`crate::cpu::selective_scan`] (the one implementation
//! of the math), split over ONNX Runtime's intra-op thread pool by (image, group, block of
//! channels).
//!
//! Operator-set version: the op declares versions 1..=1, but ONNX Runtime (seen in 1.19 to 1.32)
//! neither enforces a custom op's version range nor tells the op which `ai.groupmamba` version the
//! model imports, so a model importing version 2 would still be run as version 1. Callers that
//! can read the model check its `opset_import` first (gm-runtime's ORT backend does, and refuses
//! any version but 1).
//!
//! Types: T = float32 only (the CPU kernel is float32). ONNX Runtime itself refuses a float16 or
//! bfloat16 model at session creation, naming the input and its type, because the op declares
//! float32 inputs. The `ort` crate's API must be initialised before [`domain`] is called: by
//! `ort::init_from` / `ort::set_api` in an application, from the caller's `OrtApiBase` in the
//! custom-op library.

use std::fmt;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueRef, ValueType};

use crate::cpu::{selective_scan, ScanInputs};
use crate::spec::{
    Direction, ScanError, ScanInput, ScanShape, ATTR_DIRECTIONS, DOMAIN, OPSET_VERSION, OP_TYPE,
};

/// Work items smaller than this many output elements are not split further.
const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// The `ai.groupmamba` domain with the `SelectiveScan`, `GroupedLayerNorm` and `DepthwiseConv`
/// operators (version 1; the latter two from `crate::ort_norm_op` and `crate::ort_dwconv_op`).
/// ONNX Runtime keeps a pointer to the domain: it must outlive every session created with it
/// (`SessionBuilder::with_operators` keeps it alive for its sessions).
///
/// With the `cuda` feature the domain also holds the CUDA execution provider's kernels
/// (`ort_cuda_op`, `ort_cuda_norm_op`, `ort_cuda_dwconv_op`: float32, float16, bfloat16), so a
/// session with the CUDA EP runs all three ops on the GPU; sessions without it keep using the CPU
/// kernels.
pub fn domain() -> ort::Result<OperatorDomain> {
    let domain = OperatorDomain::new(DOMAIN)?
        .add(SelectiveScanOperator)?
        .add(crate::ort_norm_op::GroupedLayerNormOperator)?
        .add(crate::ort_dwconv_op::DepthwiseConvOperator)?;
    #[cfg(feature = "cuda")]
    let domain = crate::ort_cuda_dwconv_op::add_to(crate::ort_cuda_norm_op::add_to(
        crate::ort_cuda_op::add_to(domain)?,
    )?)?;
    Ok(domain)
}

/// The declared inputs of an operator of op `I`, each of type `type_of(input)`: all required but
/// `I::OPTIONAL`. Shared by the CPU operators (all float32) and the CUDA ones (T or float32).
pub(crate) fn declared_inputs<I: OrtInput>(
    type_of: impl Fn(I) -> TensorElementType,
) -> impl Iterator<Item = OperatorInput> {
    I::NODE_INPUTS.iter().map(move |&input| {
        if I::OPTIONAL == Some(input) {
            OperatorInput::optional(type_of(input))
        } else {
            OperatorInput::required(type_of(input))
        }
    })
}

/// The declared inputs of a CPU operator: all float32 (the CPU kernels are float32 only).
pub(crate) fn float32_inputs<I: OrtInput>() -> impl Iterator<Item = OperatorInput> {
    declared_inputs::<I>(|_| TensorElementType::Float32)
}

fn float32_output() -> [OperatorOutput; 1] {
    [OperatorOutput::required(TensorElementType::Float32)]
}

/// An error of op `op_type`'s node `node` (`ai.groupmamba::<op> node "name": message`; without
/// the node part when the name is empty, as in shape inference). Every ONNX Runtime adapter words
/// its errors this way, so that a message names the op and the node whichever kernel failed.
pub(crate) fn fail_op(op_type: &str, node: &str, message: impl fmt::Display) -> ort::Error {
    if node.is_empty() {
        ort::Error::new(format!("{DOMAIN}::{op_type}: {message}"))
    } else {
        ort::Error::new(format!("{DOMAIN}::{op_type} node \"{node}\": {message}"))
    }
}

/// [`fail_op`] for `SelectiveScan`.
pub(crate) fn fail(node: &str, message: impl fmt::Display) -> ort::Error {
    fail_op(OP_TYPE, node, message)
}

/// An op's input names, with what the ONNX Runtime kernels (CPU and CUDA) need to fetch and check
/// a node's inputs: all three ops read them the same way (every input present but the optional
/// one, each of its declared element type), only these facts and the messages' wording differ.
pub trait OrtInput: Copy + PartialEq + fmt::Display + 'static {
    /// The node's `op_type`.
    const OP_TYPE: &'static str;
    /// The op's inputs, in node order.
    const NODE_INPUTS: &'static [Self];
    /// The one input that may be left out (always the last), if any.
    const OPTIONAL: Option<Self>;
    /// Which inputs are required, as the "is missing" message says it.
    const REQUIRED: &'static str;
    /// How many inputs the op takes, as the wrong-count message says it.
    const COUNT: &'static str;

    /// The input's position on the node.
    fn position(self) -> usize;
    /// Whether the input has the op's type T (else it is float32 for every T).
    fn has_type_t(self) -> bool;
    /// The op's own "unsupported element type" message (its error type's wording).
    fn unsupported(self, found: String, accepted: &'static str) -> String;

    /// An error naming this op and `node` (`ai.groupmamba::<op> node "name": message`).
    fn fail(node: &str, message: impl fmt::Display) -> ort::Error {
        fail_op(Self::OP_TYPE, node, message)
    }
}

impl OrtInput for ScanInput {
    const OP_TYPE: &'static str = OP_TYPE;
    const NODE_INPUTS: &'static [Self] = &ScanInput::ALL;
    const OPTIONAL: Option<Self> = None;
    const REQUIRED: &'static str = "all 7 inputs are required";
    const COUNT: &'static str = "needs exactly 7 inputs";

    fn position(self) -> usize {
        self.index()
    }

    fn has_type_t(self) -> bool {
        self.is_type_t()
    }

    fn unsupported(self, found: String, accepted: &'static str) -> String {
        ScanError::UnsupportedType {
            input: self,
            found,
            accepted,
        }
        .to_string()
    }
}

/// The number of a node's inputs at compute time: all of the op's inputs, or all but a trailing
/// `I::OPTIONAL`; another count is refused in the op's wording. Shared by the CPU and CUDA kernels.
pub(crate) fn input_count<I: OrtInput>(ctx: &ComputeContext, node: &str) -> ort::Result<usize> {
    let count = ctx.num_inputs()?;
    let all = I::NODE_INPUTS.len();
    if !(all - usize::from(I::OPTIONAL.is_some())..=all).contains(&count) {
        return Err(I::fail(node, format!("{}, got {count}", I::COUNT)));
    }
    Ok(count)
}

/// The inputs of a node (their count checked by [`input_count`]): every one present but
/// `I::OPTIONAL` (ONNX Runtime gives an optional input left out, or named with an empty name, as
/// no value).
pub(crate) fn present_inputs<'c, I: OrtInput>(
    ctx: &'c ComputeContext,
    node: &str,
) -> ort::Result<Vec<Option<ValueRef<'c>>>> {
    let count = input_count::<I>(ctx, node)?;
    let mut values = Vec::with_capacity(count);
    for &input in &I::NODE_INPUTS[..count] {
        let value = ctx.input(input.position())?;
        if value.is_none() && I::OPTIONAL != Some(input) {
            return Err(I::fail(
                node,
                format!("input `{input}` is missing ({})", I::REQUIRED),
            ));
        }
        values.push(value);
    }
    Ok(values)
}

/// The shapes and the data of a CPU kernel's present inputs, in node order.
pub(crate) type Float32Inputs<'v> = (Vec<Vec<usize>>, Vec<&'v [f32]>);

/// The shapes and float32 data of the present inputs among `values` (from [`present_inputs`]), in
/// node order; an input of another type is refused with the op's message. The CPU kernels are
/// float32 only.
pub(crate) fn read_float32_inputs<'v, I: OrtInput>(
    node: &str,
    values: &'v [Option<ValueRef<'_>>],
) -> ort::Result<Float32Inputs<'v>> {
    let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(values.len());
    let mut data: Vec<&[f32]> = Vec::with_capacity(values.len());
    for (&input, value) in I::NODE_INPUTS.iter().zip(values) {
        let Some(value) = value else { continue };
        let (shape, slice) = value.try_extract_tensor::<f32>().map_err(|_| {
            I::fail(
                node,
                input.unsupported(format!("{:?}", value.dtype()), "float32"),
            )
        })?;
        shapes.push(shape.iter().map(|&d| d.max(0) as usize).collect());
        data.push(slice);
    }
    Ok((shapes, data))
}

/// `ai.groupmamba::SelectiveScan` version 1 (float32).
#[derive(Debug, Clone, Copy, Default)]
pub struct SelectiveScanOperator;

impl Operator for SelectiveScanOperator {
    type Kernel<'attr> = SelectiveScanKernel;

    fn name(&self) -> &str {
        OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        float32_inputs::<ScanInput>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        float32_output()
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<SelectiveScanKernel> {
        let (node, directions) = parse_node(ctx)?;
        Ok(SelectiveScanKernel { node, directions })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_shape(ctx)
    }
}

/// Checks a node when its kernel is created (7 named inputs, 1 output, `directions`) and returns
/// its name and directions. Shared by the CPU and CUDA kernels.
pub(crate) fn parse_node(ctx: &KernelContext<'_>) -> ort::Result<(String, Vec<Direction>)> {
    let node = ctx.node_name().unwrap_or_default();
    let inputs = ctx.inputs()?;
    if inputs.len() != ScanInput::ALL.len() || inputs.iter().any(|i| i.name().is_empty()) {
        let names: Vec<&str> = inputs.iter().map(|i| i.name()).collect();
        return Err(fail(
                &node,
                format!(
                    "needs exactly 7 inputs (u, delta, A, B, C, D, delta_bias, all required), got {names:?}"
                ),
            ));
    }
    let outputs = ctx.outputs()?;
    if outputs.len() != 1 {
        return Err(fail(
            &node,
            format!("has exactly one output (y), got {}", outputs.len()),
        ));
    }
    let raw: Vec<i64> = ctx.get(ATTR_DIRECTIONS).ok_or_else(|| {
            fail(
                &node,
                format!(
                    "required attribute `{ATTR_DIRECTIONS}` (ints, one direction 0..=3 per group) is missing or not a list of ints"
                ),
            )
        })?;
    let directions = Direction::parse_list(&raw).map_err(|e| fail(&node, e))?;
    Ok((node, directions))
}

/// Shape inference shared by the CPU and CUDA operators: `y` gets `u`'s type and shape.
pub(crate) fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
    let inputs = ctx.inputs();
    if inputs.len() != ScanInput::ALL.len() {
        return Err(fail(
            "",
            format!(
                "needs exactly 7 inputs (u, delta, A, B, C, D, delta_bias), got {}",
                inputs.len()
            ),
        ));
    }
    // Check what is known now (ranks, fixed dimensions); the kernel checks the rest.
    let mut shapes: Vec<Vec<i64>> = Vec::with_capacity(7);
    for input in ScanInput::ALL {
        let Some(shape) = inputs[input.index()].tensor_shape() else {
            return Err(fail("", format!("input `{input}` must be a tensor")));
        };
        shapes.push(shape.to_vec());
    }
    check_known_shapes(&shapes).map_err(|e| fail("", e))?;
    let u: &ValueType = &inputs[ScanInput::U.index()];
    ctx.set_output(0, u)
}

/// Checks the input shapes known at graph-build time (`-1` = unknown dimension; an empty
/// shape = unknown rank): ranks, `C` divisible by `G`, and every known dimension against the
/// known dimensions of `u` and `B`. Fully known shapes get [`ScanShape::from_input_shapes`].
fn check_known_shapes(shapes: &[Vec<i64>]) -> Result<(), String> {
    if shapes
        .iter()
        .all(|s| !s.is_empty() && s.iter().all(|&d| d >= 0))
    {
        let dims: Vec<Vec<usize>> = shapes
            .iter()
            .map(|s| s.iter().map(|&d| d as usize).collect())
            .collect();
        let views: [&[usize]; 7] = std::array::from_fn(|i| dims[i].as_slice());
        return ScanShape::from_input_shapes(views)
            .map(|_| ())
            .map_err(|e| e.to_string());
    }
    for input in ScanInput::ALL {
        let expected = if input.is_type_t() { 4 } else { 1 };
        let found = &shapes[input.index()];
        if !found.is_empty() && found.len() != expected {
            return Err(ScanError::Rank {
                input,
                expected,
                found: found.iter().map(|&d| d.max(0) as usize).collect(),
            }
            .to_string());
        }
    }
    // One known value per symbolic dimension, from whichever input knows it.
    let known = |candidates: &[(ScanInput, usize)]| {
        candidates
            .iter()
            .find_map(|&(input, axis)| shapes[input.index()].get(axis).copied().filter(|&d| d >= 0))
    };
    use ScanInput::{DeltaBias, A, B, C, D, U};
    let n = known(&[(U, 0), (ScanInput::Delta, 0), (B, 0), (C, 0)]);
    let c = known(&[
        (U, 1),
        (ScanInput::Delta, 1),
        (A, 0),
        (D, 0),
        (DeltaBias, 0),
    ]);
    let g = known(&[(B, 1), (C, 1)]);
    let h = known(&[(U, 2), (ScanInput::Delta, 2), (B, 2), (C, 2)]);
    let w = known(&[(U, 3), (ScanInput::Delta, 3), (B, 3), (C, 3)]);
    if let (Some(channels), Some(groups)) = (c, g) {
        if groups == 0 {
            return Err(ScanError::NoGroups.to_string());
        }
        if channels % groups != 0 {
            return Err(ScanError::GroupsDoNotDivide {
                channels: channels as usize,
                groups: groups as usize,
            }
            .to_string());
        }
    }
    let show = |dims: &[Option<i64>]| {
        let parts: Vec<String> = dims
            .iter()
            .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
            .collect();
        format!("[{}]", parts.join(", "))
    };
    for input in ScanInput::ALL {
        let expected: Vec<Option<i64>> = match input {
            U | ScanInput::Delta => vec![n, c, h, w],
            B | C => vec![n, g, h, w],
            A | D | DeltaBias => vec![c],
        };
        let found = &shapes[input.index()];
        let clash = found
            .iter()
            .zip(&expected)
            .any(|(&f, e)| f >= 0 && e.is_some_and(|e| e != f));
        if clash {
            let found: Vec<Option<i64>> = found.iter().map(|&d| (d >= 0).then_some(d)).collect();
            return Err(format!(
                "input `{input}` has shape {}, expected {} = {}",
                show(&found),
                show(&expected),
                input.shape_doc()
            ));
        }
    }
    Ok(())
}

/// The kernel of one node: its name (for messages) and its groups' directions.
#[derive(Debug, Clone)]
pub struct SelectiveScanKernel {
    node: String,
    directions: Vec<Direction>,
}

impl SelectiveScanKernel {
    /// The groups' directions, from the node's `directions` attribute.
    pub fn directions(&self) -> &[Direction] {
        &self.directions
    }
}

/// One work item: image `n`, group `g`, channels `channels` (inside the group).
#[derive(Debug, Clone)]
struct Task {
    n: usize,
    g: usize,
    channels: std::ops::Range<usize>,
}

/// Splits `[N, C, H, W]` into (image, group, block of channels) items, in memory order of `y`.
fn tasks(shape: &ScanShape) -> Vec<Task> {
    let len = shape.seq_len();
    let group_width = shape.group_width();
    let per_task = MIN_TASK_ELEMENTS
        .div_ceil(len.max(1))
        .clamp(1, group_width.max(1));
    let mut out = Vec::new();
    for n in 0..shape.batch {
        for g in 0..shape.groups {
            let first = g * group_width;
            let mut start = first;
            while start < first + group_width {
                let end = (start + per_task).min(first + group_width);
                out.push(Task {
                    n,
                    g,
                    channels: start..end,
                });
                start = end;
            }
        }
    }
    out
}

/// Runs one work item with the CPU kernel on the item's sub-tensors (one image, one group,
/// some channels: all contiguous in the row-major inputs and output).
fn run_task(
    shape: &ScanShape,
    directions: &[Direction],
    inputs: &ScanInputs<'_>,
    task: &Task,
    y: &mut [f32],
) -> Result<(), ScanError> {
    let len = shape.seq_len();
    let rows = (task.n * shape.channels + task.channels.start) * len
        ..(task.n * shape.channels + task.channels.end) * len;
    let bc = (task.n * shape.groups + task.g) * len..(task.n * shape.groups + task.g + 1) * len;
    let sub = ScanShape {
        batch: 1,
        channels: task.channels.len(),
        groups: 1,
        height: shape.height,
        width: shape.width,
    };
    let sub_inputs = ScanInputs {
        u: &inputs.u[rows.clone()],
        delta: &inputs.delta[rows],
        a: &inputs.a[task.channels.clone()],
        b: &inputs.b[bc.clone()],
        c: &inputs.c[bc],
        d: &inputs.d[task.channels.clone()],
        delta_bias: &inputs.delta_bias[task.channels.clone()],
    };
    selective_scan(&sub, &directions[task.g..=task.g], sub_inputs, y)
}

impl Kernel for SelectiveScanKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let values = present_inputs::<ScanInput>(ctx, node)?;
        let (shapes, data) = read_float32_inputs::<ScanInput>(node, &values)?;
        let views: [&[usize]; 7] = std::array::from_fn(|i| shapes[i].as_slice());
        let shape = ScanShape::from_input_shapes(views).map_err(|e| fail(node, e))?;
        shape
            .check_directions(&self.directions)
            .map_err(|e| fail(node, e))?;
        let inputs = ScanInputs {
            u: data[0],
            delta: data[1],
            a: data[2],
            b: data[3],
            c: data[4],
            d: data[5],
            delta_bias: data[6],
        };
        let out_shape: Vec<i64> = shape
            .expected_shape(ScanInput::U)
            .iter()
            .map(|&d| d as i64)
            .collect();
        let mut output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| fail(node, "ONNX Runtime gave no buffer for output `y`"))?;
        let (_, y) = output.try_extract_tensor_mut::<f32>()?;
        if shape.seq_len() == 0 || y.is_empty() {
            return Ok(());
        }

        // Cut y into the tasks' disjoint slices (tasks are in memory order).
        let work = tasks(&shape);
        let len = shape.seq_len();
        let mut rest: &mut [f32] = y;
        let mut slots = Vec::with_capacity(work.len());
        for task in &work {
            let (head, tail) = rest.split_at_mut(task.channels.len() * len);
            slots.push(Mutex::new(head));
            rest = tail;
        }
        let error: Mutex<Option<ScanError>> = Mutex::new(None);
        let directions = &self.directions;
        let run = |ix: usize| {
            let mut slot = slots[ix].lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = run_task(&shape, directions, &inputs, &work[ix], &mut slot) {
                *error.lock().unwrap_or_else(|e| e.into_inner()) = Some(e);
            }
        };
        if work.len() == 1 {
            run(0);
        } else {
            ctx.par_for(work.len(), 0, run)?;
        }
        match error.into_inner().unwrap_or_else(|e| e.into_inner()) {
            Some(e) => Err(fail(node, e)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_cover_the_output_in_order() {
        let shape = ScanShape {
            batch: 2,
            channels: 12,
            groups: 4,
            height: 3,
            width: 5,
        };
        let work = tasks(&shape);
        let mut next = (0usize, 0usize);
        for task in &work {
            assert_eq!(task.g, task.channels.start / shape.group_width());
            assert_eq!((task.n, task.channels.start), next);
            next = if task.channels.end == shape.channels {
                (task.n + 1, 0)
            } else {
                (task.n, task.channels.end)
            };
        }
        assert_eq!(next, (2, 0));

        // Large maps: one channel per task.
        let big = ScanShape {
            height: 200,
            width: 200,
            ..shape
        };
        assert_eq!(tasks(&big).len(), 2 * 12);
    }

    #[test]
    fn split_run_matches_one_call() {
        let shape = ScanShape {
            batch: 2,
            channels: 8,
            groups: 4,
            height: 3,
            width: 4,
        };
        let fill = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + k).sin()).collect()
        };
        let u = fill(2 * 8 * 12, 0.1);
        let delta = fill(2 * 8 * 12, 0.2);
        let a: Vec<f32> = fill(8, 0.3).iter().map(|x| -x.abs() - 0.1).collect();
        let b = fill(2 * 4 * 12, 0.4);
        let c = fill(2 * 4 * 12, 0.5);
        let d = fill(8, 0.6);
        let bias = fill(8, 0.7);
        let inputs = ScanInputs {
            u: &u,
            delta: &delta,
            a: &a,
            b: &b,
            c: &c,
            d: &d,
            delta_bias: &bias,
        };
        let expected = crate::cpu::selective_scan_to_vec(&shape, &Direction::ALL, inputs).unwrap();
        let mut y = vec![0f32; expected.len()];
        let mut rest: &mut [f32] = &mut y;
        for task in tasks(&shape) {
            let (head, tail) = rest.split_at_mut(task.channels.len() * 12);
            run_task(&shape, &Direction::ALL, &inputs, &task, head).unwrap();
            rest = tail;
        }
        assert_eq!(y, expected);
    }
}
