//! `ai.groupmamba::SelectiveScan` for tract-onnx 0.23.9.
//!
//! [`register`] adds a builder for the `SelectiveScan` op type to an [`Onnx`] framework (and
//! the ones for `GroupedLayerNorm`, [`crate::tract_norm_op`], and `DepthwiseConv`,
//! [`crate::tract_dwconv_op`], so that one call installs the whole `ai.groupmamba` operator
//! set). tract's registry is keyed by op type only, so the builder checks the node's domain
//! (`ai.groupmamba`) and the model's import of that operator set (version 1) itself.
//! The node becomes an [`Expansion`] (inference rules: y has u's type and shape, the
//! other inputs are tied to u's and B's dimensions) that wires one core op,
//! [`SelectiveScanOp`]: stateless, typed (`output_facts` keeps u's shape, so a symbolic
//! batch survives `into_optimized()`), evaluated by [`crate::cpu::selective_scan`].
//!
//! Types: T = float32 runs the kernel directly; T = float16 is converted to float32 at the
//! op's boundary (the kernel's state is float32 either way, as the specification asks)
//! and the output rounded back to float16. tract has no bfloat16, so a bfloat16 model does
//! not load.

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_itertools::Itertools;
use tract_onnx::tract_hir::internal::*;

use crate::cpu::{selective_scan, ScanInputs};
use crate::spec::{
    Direction, ScanInput, ScanShape, ATTR_DIRECTIONS, DOMAIN, OPSET_VERSION, OP_TYPE,
};

/// Installs the builders of every `ai.groupmamba` op in `onnx`'s op registry: `SelectiveScan`,
/// `GroupedLayerNorm` ([`crate::tract_norm_op`]) and `DepthwiseConv` ([`crate::tract_dwconv_op`]).
/// The one call a tract user makes, so that a model using any of them loads wherever the others
/// do.
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(OP_TYPE, build);
    crate::tract_norm_op::register(onnx);
    crate::tract_dwconv_op::register(onnx);
}

/// Checks the input types of a node whose kernel runs in float32 (shared by the three ops): T, the
/// type of `inputs[0]`, must be float32 or float16; every input of type T (`is_type_t`) must have
/// it, every other input must be float32 (`t_inputs` and `float32_inputs` name them in the
/// message). `types` holds one type per entry of `inputs` (the caller checks the count, in its
/// own wording). Returns T.
pub(crate) fn check_float_types<I: Copy + std::fmt::Display>(
    op_type: &str,
    types: &[DatumType],
    inputs: &[I],
    is_type_t: impl Fn(I) -> bool,
    (t_inputs, float32_inputs): (&str, &str),
) -> TractResult<DatumType> {
    let t = types[0];
    ensure!(
        t == DatumType::F32 || t == DatumType::F16,
        "{op_type}: input `{}` is {t:?}; T must be float32 or float16 here (bfloat16 is allowed by the specification but tract has no bfloat16)",
        inputs[0]
    );
    for (&input, &found) in inputs.iter().zip(types) {
        let expected = if is_type_t(input) { t } else { DatumType::F32 };
        ensure!(
            found == expected,
            "{op_type}: input `{input}` is {found:?}, expected {expected:?} ({})",
            if is_type_t(input) {
                t_inputs
            } else {
                float32_inputs
            }
        );
    }
    Ok(t)
}

/// Runs a float32 kernel on inputs of type T (float32 or float16, checked by
/// [`check_float_types`]): float16 inputs are widened (float32 ones are borrowed as they are),
/// `kernel` gets one slice per input and the zeroed float32 output of `out_shape`, and the output
/// is narrowed back to T. tract has one CPU kernel per op, in float32; this keeps the float16
/// boundary in one place.
pub(crate) fn eval_in_float32(
    inputs: &[TValue],
    t: DatumType,
    out_shape: &[usize],
    kernel: impl FnOnce(&[&[f32]], &mut [f32]) -> TractResult<()>,
) -> TractResult<TVec<TValue>> {
    let tensors = inputs
        .iter()
        .map(|t| t.cast_to::<f32>())
        .collect::<TractResult<Vec<_>>>()?;
    let views = tensors
        .iter()
        .map(|t| t.try_as_plain_ram())
        .collect::<TractResult<Vec<_>>>()?;
    let slices = views
        .iter()
        .map(|v| v.as_slice::<f32>())
        .collect::<TractResult<Vec<&[f32]>>>()?;
    let mut y = Tensor::zero::<f32>(out_shape)?;
    {
        let mut view = y.try_as_plain_ram_mut()?;
        kernel(&slices, view.as_slice_mut::<f32>()?)?;
    }
    if t != DatumType::F32 {
        y = y.cast_to_dt(t)?.into_owned();
    }
    Ok(tvec!(y.into_tvalue()))
}

/// Describes a node for error messages: `node "name" (ai.groupmamba::SelectiveScan)` (any op
/// type: shared with `tract_norm_op` and `tract_dwconv_op`).
pub(crate) fn node_label(node: &NodeProto) -> String {
    let name = if node.name.is_empty() {
        node.output
            .first()
            .map(String::as_str)
            .unwrap_or("<unnamed>")
    } else {
        node.name.as_str()
    };
    let domain = if node.domain.is_empty() {
        "ai.onnx"
    } else {
        node.domain.as_str()
    };
    format!("node \"{name}\" ({domain}::{})", node.op_type)
}

fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let label = node_label(node);
    check_domain_and_opset(ctx, node, &label)?;
    let raw: Vec<i64> = node
        .get_attr_opt_vec(ATTR_DIRECTIONS)
        .with_context(|| format!("{label}: reading attribute `{ATTR_DIRECTIONS}`"))?
        .with_context(|| {
            format!(
                "{label}: required attribute `{ATTR_DIRECTIONS}` (ints, one per group) is missing"
            )
        })?;
    let directions = Direction::parse_list(&raw).map_err(|e| format_err!("{label}: {e}"))?;
    let given = node.input.iter().filter(|name| !name.is_empty()).count();
    if node.input.len() != ScanInput::ALL.len() || given != ScanInput::ALL.len() {
        bail!(
            "{label}: needs exactly {} inputs (u, delta, A, B, C, D, delta_bias, all required), got {:?}",
            ScanInput::ALL.len(),
            node.input
        );
    }
    if node.output.len() != 1 || node.output[0].is_empty() {
        bail!("{label}: has exactly one output (y), got {:?}", node.output);
    }
    Ok((expand(SelectiveScan { directions }), vec![]))
}

/// Checks what tract's registry, keyed by op type only, cannot: the node's domain is
/// `ai.groupmamba` and the model imports that operator set at the version implemented here.
/// Shared by the builders of all `ai.groupmamba` ops.
pub(crate) fn check_domain_and_opset(
    ctx: &ParsingContext,
    node: &NodeProto,
    label: &str,
) -> TractResult<()> {
    if node.domain != DOMAIN {
        bail!(
            "{label}: {} is only defined in domain \"{DOMAIN}\", this node's domain is \"{}\"",
            node.op_type,
            node.domain
        );
    }
    match ctx.model.opset_import.iter().find(|op| op.domain == DOMAIN) {
        Some(import) if import.version == OPSET_VERSION => Ok(()),
        Some(import) => bail!(
            "{label}: the model imports operator set \"{DOMAIN}\" version {}, this runtime implements version {OPSET_VERSION}",
            import.version
        ),
        None => bail!(
            "{label}: the model does not import operator set \"{DOMAIN}\" (expected version {OPSET_VERSION} in opset_import)"
        ),
    }
}

/// The inference-level op: shape/type rules, then wires a [`SelectiveScanOp`].
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SelectiveScan {
    pub directions: Vec<Direction>,
}

impl Expansion for SelectiveScan {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![directions_info(&self.directions)])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 7)?;
        check_output_arity(outputs, 1)?;
        let [u, delta, a, b, c, d, bias] = [0, 1, 2, 3, 4, 5, 6].map(|ix| &inputs[ix]);
        let y = &outputs[0];
        s.equals_all(tract_onnx::tract_hir::wrap!(
            &y.datum_type,
            &u.datum_type,
            &delta.datum_type,
            &b.datum_type,
            &c.datum_type
        ))?;
        s.equals(&u.rank, 4)?;
        s.equals(&b.rank, 4)?;
        s.equals(&delta.shape, &u.shape)?;
        s.equals(&y.shape, &u.shape)?;
        s.equals(&c.shape, &b.shape)?;
        s.equals(&b.shape[0], &u.shape[0])?;
        // One group per direction; checked with a message rather than unified, so that the
        // error says which attribute disagrees with which input.
        let groups = self.directions.len();
        s.given(&b.shape[1], move |_, found| {
            if let Ok(found) = found.to_usize() {
                ensure!(
                    found == groups,
                    "{OP_TYPE}: input `B` has {found} groups (dim 1 of [N, G, H, W]) but attribute `{ATTR_DIRECTIONS}` has {groups} entries"
                );
            }
            Ok(())
        })?;
        s.given(&u.shape[1], move |_, channels| {
            if let Ok(channels) = channels.to_usize() {
                ensure!(
                    channels.is_multiple_of(groups),
                    "{OP_TYPE}: C = {channels} channels (dim 1 of u) are not divisible by G = {groups} groups"
                );
            }
            Ok(())
        })?;
        s.equals(&b.shape[2], &u.shape[2])?;
        s.equals(&b.shape[3], &u.shape[3])?;
        for param in [a, d, bias] {
            s.equals(&param.datum_type, f32::datum_type())?;
            s.equals(&param.rank, 1)?;
            s.equals(&param.shape[0], &u.shape[1])?;
        }
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            SelectiveScanOp::new(self.directions.clone())?,
            inputs,
        )
    }
}

fn directions_info(directions: &[Direction]) -> String {
    format!(
        "directions: [{}]",
        directions.iter().map(|d| d.to_string()).join(", ")
    )
}

/// The typed (core) op: evaluates with the CPU kernel.
#[derive(Debug, Clone, Hash, PartialEq, Eq)]
pub struct SelectiveScanOp {
    directions: Vec<Direction>,
}

impl SelectiveScanOp {
    /// An op with one direction per group (at least one).
    pub fn new(directions: Vec<Direction>) -> TractResult<SelectiveScanOp> {
        ensure!(
            !directions.is_empty(),
            "{OP_TYPE}: attribute `{ATTR_DIRECTIONS}` must not be empty"
        );
        Ok(SelectiveScanOp { directions })
    }

    /// The groups' directions.
    pub fn directions(&self) -> &[Direction] {
        &self.directions
    }

    fn check_types(&self, types: &[DatumType]) -> TractResult<()> {
        ensure!(
            types.len() == ScanInput::ALL.len(),
            "{OP_TYPE} takes 7 inputs (u, delta, A, B, C, D, delta_bias), got {}",
            types.len()
        );
        check_float_types(
            OP_TYPE,
            types,
            &ScanInput::ALL,
            ScanInput::is_type_t,
            (
                "u, delta, B and C share the type T",
                "A, D and delta_bias are always float32",
            ),
        )?;
        Ok(())
    }
}

impl Op for SelectiveScanOp {
    fn name(&self) -> StaticName {
        OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![directions_info(&self.directions)])
    }

    fn validation(&self) -> Validation {
        // exp/log1p and the sequential sum round differently from other implementations.
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for SelectiveScanOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let types = inputs.iter().map(|t| t.datum_type()).collect_vec();
        self.check_types(&types)?;
        let t = types[0];
        let shapes: [&[usize]; 7] = std::array::from_fn(|ix| inputs[ix].shape());
        let shape =
            ScanShape::from_input_shapes(shapes).map_err(|e| format_err!("{OP_TYPE}: {e}"))?;
        shape
            .check_directions(&self.directions)
            .map_err(|e| format_err!("{OP_TYPE}: {e}"))?;
        let out_shape = shape.expected_shape(ScanInput::U);
        eval_in_float32(&inputs, t, &out_shape, |slices, y| {
            let scan_inputs = ScanInputs {
                u: slices[0],
                delta: slices[1],
                a: slices[2],
                b: slices[3],
                c: slices[4],
                d: slices[5],
                delta_bias: slices[6],
            };
            selective_scan(&shape, &self.directions, scan_inputs, y)
                .map_err(|e| format_err!("{OP_TYPE}: {e}"))
        })
    }
}

impl TypedOp for SelectiveScanOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let types = inputs.iter().map(|f| f.datum_type).collect_vec();
        self.check_types(&types)?;
        for input in ScanInput::ALL {
            let expected = if matches!(
                input,
                ScanInput::U | ScanInput::Delta | ScanInput::B | ScanInput::C
            ) {
                4
            } else {
                1
            };
            let fact = inputs[input.index()];
            ensure!(
                fact.rank() == expected,
                "{OP_TYPE}: input `{input}` must have rank {expected} {}, got {:?}",
                input.shape_doc(),
                fact.shape
            );
        }
        let u = &inputs[ScanInput::U.index()].shape;
        let b = &inputs[ScanInput::B.index()].shape;
        let groups = self.directions.len().to_dim();
        ensure!(
            b[1] == groups,
            "{OP_TYPE}: input `B` has shape {b:?}, its group dimension must equal the {} entries of `directions`",
            self.directions.len()
        );
        if let Ok(channels) = u[1].to_usize() {
            ensure!(
                channels.is_multiple_of(self.directions.len()),
                "{OP_TYPE}: C = {channels} channels (dim 1 of u {u:?}) are not divisible by G = {} groups",
                self.directions.len()
            );
        }
        for input in ScanInput::ALL {
            let found = &inputs[input.index()].shape;
            let expected: TVec<TDim> = match input {
                ScanInput::U | ScanInput::Delta => u.iter().cloned().collect(),
                ScanInput::B | ScanInput::C => {
                    tvec![u[0].clone(), groups.clone(), u[2].clone(), u[3].clone()]
                }
                _ => tvec![u[1].clone()],
            };
            // Dimensions must agree where both are known; a symbol may stand for a number
            // elsewhere, which eval checks on the real shapes.
            let clash = found.iter().zip(&expected).any(|(f, e)| {
                f != e && matches!((f.to_i64(), e.to_i64()), (Ok(x), Ok(y)) if x != y)
            });
            ensure!(
                !clash,
                "{OP_TYPE}: input `{input}` has shape {found:?}, expected {expected:?} = {} (from u {u:?} and G = {})",
                input.shape_doc(),
                self.directions.len()
            );
        }
        let u_fact = inputs[ScanInput::U.index()];
        Ok(tvec!(u_fact.datum_type.fact(u_fact.shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // Per element: softplus (exp + log1p), exp(Δ·A) and four multiply-adds.
        let count = inputs[0].shape.volume();
        Ok(tvec!(
            (Cost::FMA(DatumType::F32), count.clone() * 4),
            (Cost::Custom(true, "Exp".into()), count * 3)
        ))
    }

    as_op!();
}
