//! `ai.groupmamba::GroupedLayerNorm` for ONNX Runtime's CPU execution provider, on the `ort`
//! crate's custom-operator API.
//!
//! [`GroupedLayerNormOperator`] is added to [`crate::ort_op::domain`] next to `SelectiveScan`, so
//! every session (and the custom-op library, `plugins/ort-library`) that registers the
//! `ai.groupmamba` domain gets both. Operator-set version 1 (ONNX Runtime does not enforce a
//! custom op's version range: see `ort_op`'s notes).
//!
//! Inputs `X`, `Scale`, `Bias` (float32, required) and `Gate` (float32, optional: absent, or an
//! empty name on the node); output `Y` (float32). An empty Gate name needs ONNX Runtime ≥ 1.24:
//! 1.19.2 to 1.23.2 crash (SIGSEGV) creating the session, inside ONNX Runtime before this op is
//! asked anything, on any custom-op node with an empty optional input; 1.24.1 and later run it.
//! Writers should leave the input out (gm-export does). The attributes are checked when the kernel is
//! created, so a bad node fails at session creation naming the node; shape inference gives `Y`
//! `X`'s type and shape and checks what is known of the others (ONNX Runtime only logs a custom
//! op's shape-inference errors, so the kernel checks the real shapes again, through
//! [`NormShape::from_input_shapes`]). Evaluated by [`crate::norm::grouped_layer_norm`] (the one
//! implementation of the math), split over ONNX Runtime's intra-op thread pool by blocks of rows.
//!
//! Types: T = float32 only (the CPU kernel is float32; ONNX Runtime refuses a float16 or bfloat16
//! node at session creation, since the op declares float32 inputs). The CUDA execution provider's
//! kernel, with all three types, is `ort_cuda_norm_op` (features `ort` + `cuda`).

use std::ops::{Range, RangeInclusive};
use std::sync::Mutex;

use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{TensorElementType, ValueType};

use crate::norm::{
    grouped_layer_norm, NormAttributes, NormError, NormInput, NormInputs, NormShape, ATTR_EPSILON,
    ATTR_GATE_SILU, ATTR_GROUPS, MAX_GROUP_WIDTH, NORM_OP_TYPE,
};
use crate::ort_op::{fail_op, float32_inputs, present_inputs, read_float32_inputs, OrtInput};
use crate::spec::OPSET_VERSION;

/// Work items smaller than this many output elements are not split further (as for the scan:
/// below it, handing rows to another thread costs more than normalising them).
const MIN_TASK_ELEMENTS: usize = 1 << 15;

/// [`fail_op`] for `GroupedLayerNorm`.
pub(crate) fn fail(node: &str, message: impl std::fmt::Display) -> ort::Error {
    fail_op(NORM_OP_TYPE, node, message)
}

impl OrtInput for NormInput {
    const OP_TYPE: &'static str = NORM_OP_TYPE;
    const NODE_INPUTS: &'static [Self] = &NormInput::ALL;
    const OPTIONAL: Option<Self> = Some(NormInput::Gate);
    const COUNT: &'static str = "takes 3 or 4 inputs (X, Scale, Bias, optional Gate)";
    const REQUIRED: &'static str = "X, Scale and Bias are required";

    fn position(self) -> usize {
        self.index()
    }

    fn has_type_t(self) -> bool {
        self.is_type_t()
    }

    fn unsupported(self, found: String, accepted: &'static str) -> String {
        NormError::UnsupportedType {
            input: self,
            found,
            accepted,
        }
        .to_string()
    }
}

/// `ai.groupmamba::GroupedLayerNorm` version 1 (float32, CPU).
#[derive(Debug, Clone, Copy, Default)]
pub struct GroupedLayerNormOperator;

impl Operator for GroupedLayerNormOperator {
    type Kernel<'attr> = GroupedLayerNormKernel;

    fn name(&self) -> &str {
        NORM_OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        float32_inputs::<NormInput>()
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(TensorElementType::Float32)]
    }

    fn create_kernel<'attr>(
        &self,
        ctx: &KernelContext<'attr>,
    ) -> ort::Result<GroupedLayerNormKernel> {
        let (node, attrs) = parse_node(ctx)?;
        Ok(GroupedLayerNormKernel { node, attrs })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_shape(ctx)
    }
}

/// One attribute of type `T`: `None` when absent. `KernelContext::get` answers `None` both for an
/// absent attribute and for one of another type; the second is told apart (by reading it as the
/// other attribute types) so that `groups = 4.0` is refused instead of read as the default.
/// Shared with `ort_dwconv_op`: the error is the bare message, each op's `fail` names the node.
pub(crate) fn attribute<'a, T>(
    ctx: &KernelContext<'a>,
    name: &str,
    kind: &str,
) -> Result<Option<T>, String>
where
    T: ort::operator::FromKernelContext<'a>,
{
    if let Some(value) = ctx.get::<T>(name) {
        return Ok(Some(value));
    }
    let present = ctx.get::<i64>(name).is_some()
        || ctx.get::<f32>(name).is_some()
        || ctx.get::<String>(name).is_some()
        || ctx.get::<Vec<i64>>(name).is_some()
        || ctx.get::<Vec<f32>>(name).is_some();
    if present {
        return Err(format!(
            "attribute `{name}` has the wrong type: must be {kind}"
        ));
    }
    Ok(None)
}

/// Checks a node when its kernel is created (3 or 4 inputs, 1 output, the attributes) and returns
/// its name and attributes. Shared by the CPU and CUDA kernels.
pub(crate) fn parse_node(ctx: &KernelContext<'_>) -> ort::Result<(String, NormAttributes)> {
    let node = ctx.node_name().unwrap_or_default();
    // ONNX Runtime checks the inputs against the op's schema (3 required, 1 optional) before
    // creating the kernel. Not `ctx.inputs()` here: it asks every input's type, and an empty
    // (absent) Gate has none (ONNX Runtime 1.32: "input does not have a type").
    let outputs = ctx.outputs()?;
    if outputs.len() != 1 {
        return Err(fail(
            &node,
            format!("has exactly one output (Y), got {}", outputs.len()),
        ));
    }
    let read = |e: String| fail(&node, e);
    let groups = attribute::<i64>(ctx, ATTR_GROUPS, "an int").map_err(read)?;
    let epsilon = attribute::<f32>(ctx, ATTR_EPSILON, "a float").map_err(read)?;
    let gate_silu = attribute::<i64>(ctx, ATTR_GATE_SILU, "an int (0 or 1)").map_err(read)?;
    let attrs = NormAttributes::new(groups, epsilon, gate_silu).map_err(|e| fail(&node, e))?;
    Ok((node, attrs))
}

/// Shape inference shared by the CPU and CUDA operators: `Y` gets `X`'s type and shape.
pub(crate) fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
    let inputs = ctx.inputs();
    if !(3..=4).contains(&inputs.len()) {
        return Err(fail(
            "",
            format!(
                "takes 3 or 4 inputs (X, Scale, Bias, optional Gate), got {}",
                inputs.len()
            ),
        ));
    }
    let mut shapes: Vec<Vec<i64>> = Vec::with_capacity(inputs.len());
    for (input, value) in NormInput::ALL.iter().zip(&inputs) {
        let Some(shape) = value.tensor_shape() else {
            return Err(fail("", format!("input `{input}` must be a tensor")));
        };
        shapes.push(shape.to_vec());
    }
    // An unreadable `groups` is reported by the kernel; here it only skips the group checks.
    let groups = ctx.attr::<i64>(ATTR_GROUPS).unwrap_or(1);
    check_known_shapes(&shapes, groups).map_err(|e| fail("", e))?;
    let x: &ValueType = &inputs[NormInput::X.index()];
    ctx.set_output(0, x)
}

/// Checks the input shapes known at graph-build time (`-1` = unknown dimension; an empty shape
/// = unknown rank, or a scalar: the kernel tells them apart): `Scale`/`Bias` `[C]`, `Gate` of
/// `X`'s shape, `C` divisible by `groups` and the groups not too wide, wherever the dimensions
/// involved are known.
fn check_known_shapes(shapes: &[Vec<i64>], groups: i64) -> Result<(), String> {
    let show = |dims: &[i64]| {
        let parts: Vec<String> = dims
            .iter()
            .map(|&d| if d >= 0 { d.to_string() } else { "?".into() })
            .collect();
        format!("[{}]", parts.join(", "))
    };
    let clash = |a: i64, b: i64| a >= 0 && b >= 0 && a != b;
    let x = &shapes[NormInput::X.index()];
    let channels = x.last().copied().filter(|&c| c >= 0);
    for input in [NormInput::Scale, NormInput::Bias] {
        let found = &shapes[input.index()];
        if found.is_empty() {
            continue;
        }
        if found.len() != 1 || channels.is_some_and(|c| clash(found[0], c)) {
            return Err(format!(
                "input `{input}` has shape {}, expected [C] = [{}] (last axis of X {})",
                show(found),
                channels.map_or("?".into(), |c| c.to_string()),
                show(x)
            ));
        }
    }
    if let Some(gate) = shapes.get(NormInput::Gate.index()) {
        let mismatch = !gate.is_empty()
            && !x.is_empty()
            && (gate.len() != x.len() || gate.iter().zip(x).any(|(&g, &d)| clash(g, d)));
        if mismatch {
            return Err(format!(
                "input `Gate` has shape {}, expected X's shape {}",
                show(gate),
                show(x)
            ));
        }
    }
    // A known C (from X or either parameter) against `groups`.
    let channels = channels.or_else(|| {
        [NormInput::Scale, NormInput::Bias]
            .iter()
            .find_map(|p| shapes[p.index()].first().copied().filter(|&c| c >= 0))
    });
    if let (Some(channels), Ok(groups)) = (channels, usize::try_from(groups)) {
        let channels = channels as usize;
        if groups == 0 {
            return Err(NormError::BadGroups(0).to_string());
        }
        if !channels.is_multiple_of(groups) {
            return Err(format!(
                "input `X` has C = {channels} channels (last axis of {}), not divisible by attribute `{ATTR_GROUPS}` = {groups}",
                show(x)
            ));
        }
        if channels / groups > MAX_GROUP_WIDTH {
            return Err(NormError::GroupTooWide {
                width: channels / groups,
                channels,
                groups,
            }
            .to_string());
        }
    }
    Ok(())
}

/// The kernel of one node: its name (for messages) and its attributes.
#[derive(Debug, Clone)]
pub struct GroupedLayerNormKernel {
    node: String,
    attrs: NormAttributes,
}

impl GroupedLayerNormKernel {
    /// The node's attributes.
    pub fn attrs(&self) -> &NormAttributes {
        &self.attrs
    }
}

/// Splits the rows of `shape` into blocks of at least [`MIN_TASK_ELEMENTS`] output elements (the
/// last block may be smaller), in memory order of `Y`.
fn tasks(shape: &NormShape) -> Vec<Range<usize>> {
    let per_task = MIN_TASK_ELEMENTS.div_ceil(shape.channels.max(1)).max(1);
    (0..shape.rows)
        .step_by(per_task)
        .map(|start| start..(start + per_task).min(shape.rows))
        .collect()
}

/// Runs the rows `rows` with the CPU kernel on the matching sub-slices of `X` and `Gate` (rows are
/// contiguous in the row-major inputs and output); `y` holds exactly those rows.
fn run_task(
    shape: &NormShape,
    attrs: &NormAttributes,
    inputs: &NormInputs<'_>,
    rows: &Range<usize>,
    y: &mut [f32],
) -> Result<(), NormError> {
    let elements = rows.start * shape.channels..rows.end * shape.channels;
    let sub = NormShape {
        rows: rows.len(),
        ..*shape
    };
    let sub_inputs = NormInputs {
        x: &inputs.x[elements.clone()],
        gate: inputs.gate.map(|g| &g[elements]),
        ..*inputs
    };
    grouped_layer_norm(&sub, attrs, sub_inputs, y)
}

impl Kernel for GroupedLayerNormKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let values = present_inputs::<NormInput>(ctx, node)?;
        let (shapes, data) = read_float32_inputs::<NormInput>(node, &values)?;
        let gate_shape = shapes.get(NormInput::Gate.index()).map(Vec::as_slice);
        let shape = NormShape::from_input_shapes(
            &shapes[NormInput::X.index()],
            &shapes[NormInput::Scale.index()],
            &shapes[NormInput::Bias.index()],
            gate_shape,
            self.attrs.groups,
        )
        .map_err(|e| fail(node, e))?;
        let inputs = NormInputs {
            x: data[NormInput::X.index()],
            scale: data[NormInput::Scale.index()],
            bias: data[NormInput::Bias.index()],
            gate: data.get(NormInput::Gate.index()).copied(),
        };
        let out_shape: Vec<i64> = shapes[NormInput::X.index()]
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

        // Cut Y into the tasks' disjoint slices (tasks are in memory order).
        let work = tasks(&shape);
        let mut rest: &mut [f32] = y;
        let mut slots = Vec::with_capacity(work.len());
        for rows in &work {
            let (head, tail) = rest.split_at_mut(rows.len() * shape.channels);
            slots.push(Mutex::new(head));
            rest = tail;
        }
        let error: Mutex<Option<NormError>> = Mutex::new(None);
        let attrs = &self.attrs;
        let run = |ix: usize| {
            let mut slot = slots[ix].lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = run_task(&shape, attrs, &inputs, &work[ix], &mut slot) {
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
    fn tasks_cover_the_rows_in_order() {
        let shape = NormShape {
            rows: 1000,
            channels: 96,
            groups: 4,
        };
        let work = tasks(&shape);
        // 2^15 / 96 → 342 rows a task: 342, 342, 316.
        assert_eq!(work, vec![0..342, 342..684, 684..1000]);
        let small = NormShape { rows: 3, ..shape };
        assert_eq!(tasks(&small), vec![0..3]);
        let none = NormShape { rows: 0, ..shape };
        assert!(tasks(&none).is_empty());
        // Rows wider than a task: one row each.
        let wide = NormShape {
            rows: 3,
            channels: 1 << 16,
            groups: 64,
        };
        assert_eq!(tasks(&wide).len(), 3);
    }

    #[test]
    fn split_run_matches_one_call() {
        let shape = NormShape {
            rows: 700,
            channels: 96,
            groups: 4,
        };
        let fill = |n: usize, k: f32| -> Vec<f32> {
            (0..n).map(|i| (i as f32 * 0.37 + k).sin() * 2.0).collect()
        };
        let x = fill(shape.len(), 0.1);
        let gate = fill(shape.len(), 0.2);
        let scale = fill(96, 0.3);
        let bias = fill(96, 0.4);
        for (gated, gate_silu) in [(false, false), (true, false), (true, true)] {
            let attrs = NormAttributes {
                gate_silu,
                ..NormAttributes::new(Some(4), None, None).unwrap()
            };
            let inputs = NormInputs {
                x: &x,
                scale: &scale,
                bias: &bias,
                gate: gated.then_some(gate.as_slice()),
            };
            let mut expected = vec![0f32; shape.len()];
            grouped_layer_norm(&shape, &attrs, inputs, &mut expected).unwrap();
            let mut y = vec![0f32; shape.len()];
            let mut rest: &mut [f32] = &mut y;
            let work = tasks(&shape);
            assert!(work.len() > 1);
            for rows in &work {
                let (head, tail) = rest.split_at_mut(rows.len() * shape.channels);
                run_task(&shape, &attrs, &inputs, rows, head).unwrap();
                rest = tail;
            }
            assert_eq!(y, expected);
        }
    }

    #[test]
    fn known_shapes_are_checked_naming_the_input() {
        let check = |shapes: &[&[i64]], groups: i64| {
            let shapes: Vec<Vec<i64>> = shapes.iter().map(|s| s.to_vec()).collect();
            check_known_shapes(&shapes, groups)
        };
        // Symbolic batch, optional Gate absent or present.
        assert!(check(&[&[-1, 49, 96], &[96], &[96]], 4).is_ok());
        assert!(check(&[&[-1, 49, 96], &[96], &[96], &[-1, 49, 96]], 4).is_ok());
        // Unknown ranks pass.
        assert!(check(&[&[], &[], &[]], 4).is_ok());
        let e = check(&[&[-1, 49, 96], &[95], &[96]], 4).unwrap_err();
        assert!(
            e.contains("input `Scale` has shape [95], expected [C] = [96]"),
            "{e}"
        );
        let e = check(&[&[-1, 49, 96], &[96], &[96, 1]], 4).unwrap_err();
        assert!(e.contains("input `Bias` has shape [96, 1]"), "{e}");
        let e = check(&[&[-1, 49, 96], &[96], &[96], &[-1, 48, 96]], 4).unwrap_err();
        assert!(e.contains("input `Gate` has shape [?, 48, 96]"), "{e}");
        let e = check(&[&[-1, 49, 96], &[96], &[96]], 5).unwrap_err();
        assert!(e.contains("not divisible by attribute `groups` = 5"), "{e}");
        // C known from Scale only.
        let e = check(&[&[-1, 49, -1], &[96], &[-1]], 5).unwrap_err();
        assert!(e.contains("C = 96"), "{e}");
        let e = check(&[&[2, 4096], &[4096], &[4096]], 2).unwrap_err();
        assert!(e.contains("wider than"), "{e}");
    }
}
