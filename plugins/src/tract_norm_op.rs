//! `ai.groupmamba::GroupedLayerNorm` for tract-onnx 0.23.9.
//!
//! [`register`] adds a builder for the `GroupedLayerNorm` op type to an [`Onnx`] framework;
//! [`crate::tract_op::register`] calls it, so the one registration point of the crate installs
//! both `ai.groupmamba` ops. As for `SelectiveScan`, tract's registry is keyed by op type only:
//! the builder checks the node's domain and the model's import of the operator set (version 1)
//! itself, then the attributes (through [`NormAttributes::new`], the contract's own checks) and
//! the inputs: `X`, `Scale`, `Bias`, and the optional `Gate`, absent or given as an empty name.
//!
//! The node becomes an [`Expansion`] (rules: `Y` has `X`'s type and shape, `Scale` and `Bias` are
//! float32 of rank 1 and as long as `X`'s last axis, `Gate` is of `X`'s type and shape) that
//! wires one core op, [`GroupedLayerNormOp`]: stateless, typed (`output_facts` keeps `X`'s shape,
//! so a symbolic batch survives `into_optimized()`), evaluated by
//! [`crate::norm::grouped_layer_norm`], the one implementation of the math.
//!
//! Types: T = float32 runs the kernel directly; T = float16 is widened to float32 at the op's
//! boundary and `Y` rounded back to float16 once, which is what the specification asks of any
//! type (statistics, affine and gate in float32). tract has no bfloat16.

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_itertools::Itertools;
use tract_onnx::tract_hir::internal::*;

use crate::norm::{
    grouped_layer_norm, NormAttributes, NormInput, NormInputs, NormShape, ATTR_EPSILON,
    ATTR_GATE_SILU, ATTR_GROUPS, MAX_GROUP_WIDTH, NORM_OP_TYPE,
};
use crate::tract_op::{check_domain_and_opset, check_float_types, eval_in_float32, node_label};

/// Installs the `GroupedLayerNorm` builder in `onnx`'s op registry (also done by
/// [`crate::tract_op::register`], which installs every `ai.groupmamba` op).
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(NORM_OP_TYPE, build);
}

fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let label = node_label(node);
    check_domain_and_opset(ctx, node, &label)?;
    let reading = |name: &str| format!("{label}: reading attribute `{name}`");
    let groups: Option<i64> = node
        .get_attr_opt(ATTR_GROUPS)
        .with_context(|| reading(ATTR_GROUPS))?;
    let epsilon: Option<f32> = node
        .get_attr_opt(ATTR_EPSILON)
        .with_context(|| reading(ATTR_EPSILON))?;
    let gate_silu: Option<i64> = node
        .get_attr_opt(ATTR_GATE_SILU)
        .with_context(|| reading(ATTR_GATE_SILU))?;
    let attrs =
        NormAttributes::new(groups, epsilon, gate_silu).map_err(|e| format_err!("{label}: {e}"))?;
    // tract drops empty input names when it wires the node, so an empty Gate is an absent one;
    // an empty X, Scale or Bias would silently shift the others into their places.
    let required = &node.input[..node.input.len().min(3)];
    if !(3..=4).contains(&node.input.len()) || required.iter().any(String::is_empty) {
        bail!(
            "{label}: takes inputs X, Scale, Bias (required) and Gate (optional, may be absent or empty), got {:?}",
            node.input
        );
    }
    let has_gate = node
        .input
        .get(NormInput::Gate.index())
        .is_some_and(|name| !name.is_empty());
    if node.output.len() != 1 || node.output[0].is_empty() {
        bail!("{label}: has exactly one output (Y), got {:?}", node.output);
    }
    Ok((expand(GroupedLayerNorm { attrs, has_gate }), vec![]))
}

/// `groups: 4, epsilon: 1e-5, gate: SiLU(Gate)` for tract's model dumps.
fn attrs_info(attrs: &NormAttributes, has_gate: bool) -> String {
    let gate = match (has_gate, attrs.gate_silu) {
        (false, _) => "none",
        (true, false) => "Gate",
        (true, true) => "SiLU(Gate)",
    };
    format!(
        "groups: {}, epsilon: {:e}, gate: {gate}",
        attrs.groups, attrs.epsilon
    )
}

/// `[N, 3, 96]`: a shape for messages (tract's own Debug/Display drop the brackets). Shared with
/// `tract_dwconv_op`.
pub(crate) fn show<'a>(dims: impl IntoIterator<Item = &'a TDim>) -> String {
    format!("[{}]", dims.into_iter().join(", "))
}

/// Whether two dimensions are different numbers (a symbol may stand for any number: eval
/// checks the real shapes). Shared with `tract_dwconv_op`.
pub(crate) fn dims_clash(a: &TDim, b: &TDim) -> bool {
    matches!((a.to_i64(), b.to_i64()), (Ok(x), Ok(y)) if x != y)
}

/// C channels in `groups` groups: divisible, groups no wider than the kernels support.
fn check_channels(channels: usize, groups: usize) -> TractResult<()> {
    ensure!(
        channels.is_multiple_of(groups),
        "{NORM_OP_TYPE}: C = {channels} channels (last axis of X) are not divisible by attribute `{ATTR_GROUPS}` = {groups}"
    );
    ensure!(
        channels / groups <= MAX_GROUP_WIDTH,
        "{NORM_OP_TYPE}: groups of d = {} channels (C = {channels} / groups = {groups}) are wider than the {MAX_GROUP_WIDTH} channels this implementation supports",
        channels / groups
    );
    Ok(())
}

/// The inference-level op: shape/type rules, then wires a [`GroupedLayerNormOp`].
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedLayerNorm {
    pub attrs: NormAttributes,
    /// Whether the node has a `Gate` input (its 4th, not empty).
    pub has_gate: bool,
}

impl Expansion for GroupedLayerNorm {
    fn name(&self) -> StaticName {
        NORM_OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![attrs_info(&self.attrs, self.has_gate)])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3 + self.has_gate as usize)?;
        check_output_arity(outputs, 1)?;
        let (x, y) = (&inputs[NormInput::X.index()], &outputs[0]);
        s.equals(&y.datum_type, &x.datum_type)?;
        s.equals(&y.shape, &x.shape)?;
        let params = [NormInput::Scale, NormInput::Bias].map(|p| (p, &inputs[p.index()]));
        for (input, param) in params {
            s.equals(&param.datum_type, f32::datum_type())?;
            // As for the dimensions below: a message naming the input, then the unification.
            s.given(&param.rank, move |_, rank| {
                ensure!(
                    rank == 1,
                    "{NORM_OP_TYPE}: input `{input}` has rank {rank}, expected 1 ([C], C = last axis of X)"
                );
                Ok(())
            })?;
            s.equals(&param.rank, 1)?;
        }
        if self.has_gate {
            let gate = &inputs[NormInput::Gate.index()];
            s.equals(&gate.datum_type, &x.datum_type)?;
            // Checked with a message before unifying, so that the error names the input.
            s.given_2(&x.shape, &gate.shape, move |_, x_shape, gate_shape| {
                let clash = x_shape.len() != gate_shape.len()
                    || x_shape
                        .iter()
                        .zip(&gate_shape)
                        .any(|(a, b)| dims_clash(a, b));
                ensure!(
                    !clash,
                    "{NORM_OP_TYPE}: input `Gate` has shape {}, expected X's shape {}",
                    show(&gate_shape),
                    show(&x_shape)
                );
                Ok(())
            })?;
            s.equals(&gate.shape, &x.shape)?;
        }
        let groups = self.attrs.groups;
        s.given(&x.rank, move |s, rank| {
            ensure!(
                rank >= 1,
                "{NORM_OP_TYPE}: input `X` is a scalar: needs rank ≥ 1 (the last axis holds the channels)"
            );
            let last = (rank - 1) as usize;
            s.given(&x.shape[last], move |_, channels| {
                if let Ok(channels) = channels.to_usize() {
                    check_channels(channels, groups)?;
                }
                Ok(())
            })?;
            for (input, param) in params {
                s.given_2(&x.shape[last], &param.shape[0], move |_, channels, found| {
                    ensure!(
                        !dims_clash(&channels, &found),
                        "{NORM_OP_TYPE}: input `{input}` has shape [{found}], expected [C] = [{channels}] (last axis of X)"
                    );
                    Ok(())
                })?;
                s.equals(&param.shape[0], &x.shape[last])?;
            }
            Ok(())
        })
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        model.wire_node(
            prefix,
            GroupedLayerNormOp::new(self.attrs, self.has_gate),
            inputs,
        )
    }
}

/// The typed (core) op: evaluates with the CPU reference kernel.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupedLayerNormOp {
    attrs: NormAttributes,
    has_gate: bool,
}

/// tract compares ops with `Eq`; `epsilon` is finite (`NormAttributes::new` refuses NaN), so
/// the derived `==` is an equivalence.
impl Eq for GroupedLayerNormOp {}

impl GroupedLayerNormOp {
    /// An op with `attrs`, taking 4 inputs (`X`, `Scale`, `Bias`, `Gate`) if `has_gate`, else 3.
    pub fn new(attrs: NormAttributes, has_gate: bool) -> GroupedLayerNormOp {
        GroupedLayerNormOp { attrs, has_gate }
    }

    /// The node's attributes.
    pub fn attrs(&self) -> &NormAttributes {
        &self.attrs
    }

    /// Whether the op takes a `Gate` input.
    pub fn has_gate(&self) -> bool {
        self.has_gate
    }

    /// The op's inputs, in order.
    fn inputs(&self) -> &'static [NormInput] {
        &NormInput::ALL[..3 + self.has_gate as usize]
    }

    fn check_types(&self, types: &[DatumType]) -> TractResult<()> {
        let inputs = self.inputs();
        ensure!(
            types.len() == inputs.len(),
            "{NORM_OP_TYPE} takes {} inputs ({}), got {}",
            inputs.len(),
            inputs.iter().join(", "),
            types.len()
        );
        check_float_types(
            NORM_OP_TYPE,
            types,
            inputs,
            NormInput::is_type_t,
            (
                "X and Gate share the type T",
                "Scale and Bias are always float32",
            ),
        )?;
        Ok(())
    }
}

impl Op for GroupedLayerNormOp {
    fn name(&self) -> StaticName {
        NORM_OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![attrs_info(&self.attrs, self.has_gate)])
    }

    fn validation(&self) -> Validation {
        // The sums and sqrt round differently from tract's own LayerNormalization graph.
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for GroupedLayerNormOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let types = inputs.iter().map(|t| t.datum_type()).collect_vec();
        self.check_types(&types)?;
        let t = types[NormInput::X.index()];
        let x_shape = inputs[NormInput::X.index()].shape();
        let shape = NormShape::from_input_shapes(
            x_shape,
            inputs[NormInput::Scale.index()].shape(),
            inputs[NormInput::Bias.index()].shape(),
            inputs.get(NormInput::Gate.index()).map(|g| g.shape()),
            self.attrs.groups,
        )
        .map_err(|e| format_err!("{NORM_OP_TYPE}: {e}"))?;
        eval_in_float32(&inputs, t, x_shape, |slices, y| {
            let norm_inputs = NormInputs {
                x: slices[NormInput::X.index()],
                scale: slices[NormInput::Scale.index()],
                bias: slices[NormInput::Bias.index()],
                gate: slices.get(NormInput::Gate.index()).copied(),
            };
            grouped_layer_norm(&shape, &self.attrs, norm_inputs, y)
                .map_err(|e| format_err!("{NORM_OP_TYPE}: {e}"))
        })
    }
}

impl TypedOp for GroupedLayerNormOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let types = inputs.iter().map(|f| f.datum_type).collect_vec();
        self.check_types(&types)?;
        let x = inputs[NormInput::X.index()];
        ensure!(
            x.rank() >= 1,
            "{NORM_OP_TYPE}: input `X` is a scalar: needs rank ≥ 1 (the last axis holds the channels)"
        );
        let channels = &x.shape[x.rank() - 1];
        if let Ok(channels) = channels.to_usize() {
            check_channels(channels, self.attrs.groups)?;
        }
        for input in [NormInput::Scale, NormInput::Bias] {
            let found = &inputs[input.index()].shape;
            ensure!(
                found.rank() == 1 && !dims_clash(&found[0], channels),
                "{NORM_OP_TYPE}: input `{input}` has shape {}, expected [C] = [{channels}] (last axis of X {})",
                show(found.iter()),
                show(x.shape.iter())
            );
        }
        if self.has_gate {
            let gate = &inputs[NormInput::Gate.index()].shape;
            let clash = gate.rank() != x.rank()
                || gate
                    .iter()
                    .zip(x.shape.iter())
                    .any(|(a, b)| dims_clash(a, b));
            ensure!(
                !clash,
                "{NORM_OP_TYPE}: input `Gate` has shape {}, expected X's shape {}",
                show(gate.iter()),
                show(x.shape.iter())
            );
        }
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // Per element: the two sums, the normalisation and the affine (about four
        // multiply-adds), one more multiply with a gate, an exp for SiLU(Gate).
        let count = inputs[NormInput::X.index()].shape.volume();
        let fmas = 4 + self.has_gate as i64;
        let mut cost = tvec!((Cost::FMA(DatumType::F32), count.clone() * fmas));
        if self.has_gate && self.attrs.gate_silu {
            cost.push((Cost::Custom(true, "Exp".into()), count));
        }
        Ok(cost)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(groups: usize, gate_silu: bool) -> NormAttributes {
        NormAttributes {
            groups,
            epsilon: 1e-5,
            gate_silu,
        }
    }

    fn values(len: usize, k: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (i as f32 * 0.71 + k).sin() * 2.0)
            .collect()
    }

    /// A model `Y = GroupedLayerNormOp(X, Scale, Bias[, Gate])` with X `[N, 3, C]`, N symbolic.
    fn model(op: GroupedLayerNormOp, t: DatumType, channels: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let n = model.symbols.sym("N");
        let x_shape = tvec![n.to_dim(), 3.to_dim(), channels.to_dim()];
        let mut wires = tvec![model.add_source("X", t.fact(x_shape.clone()))?];
        for name in ["Scale", "Bias"] {
            wires.push(model.add_source(name, f32::fact([channels]))?);
        }
        if op.has_gate() {
            wires.push(model.add_source("Gate", t.fact(x_shape))?);
        }
        let y = model.wire_node("norm", op, &wires)?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    #[test]
    fn evaluates_with_the_reference_kernel_and_keeps_a_symbolic_batch() -> TractResult<()> {
        let (n, c) = (2usize, 8usize);
        for (groups, gate, silu) in [(1, false, false), (4, true, false), (2, true, true)] {
            let op = GroupedLayerNormOp::new(attrs(groups, silu), gate);
            let model = model(op.clone(), DatumType::F32, c)?.into_optimized()?;
            let out = model.output_fact(0)?;
            assert_eq!(format!("{}", out.shape[0]), "N", "{:?}", out.shape);
            assert!(model
                .nodes()
                .iter()
                .any(|n| n.op_is::<GroupedLayerNormOp>()));

            let x = values(n * 3 * c, 0.3);
            let scale = values(c, 1.1);
            let bias = values(c, 2.9);
            let g = values(n * 3 * c, 0.7);
            let mut inputs = tvec![
                Tensor::from_shape(&[n, 3, c], &x)?.into_tvalue(),
                Tensor::from_shape(&[c], &scale)?.into_tvalue(),
                Tensor::from_shape(&[c], &bias)?.into_tvalue(),
            ];
            if gate {
                inputs.push(Tensor::from_shape(&[n, 3, c], &g)?.into_tvalue());
            }
            let y = model.into_runnable()?.run(inputs)?.remove(0);
            assert_eq!(y.shape(), [n, 3, c]);

            let shape = NormShape {
                rows: n * 3,
                channels: c,
                groups,
            };
            let mut expected = vec![0f32; n * 3 * c];
            let norm_inputs = NormInputs {
                x: &x,
                scale: &scale,
                bias: &bias,
                gate: gate.then_some(g.as_slice()),
            };
            grouped_layer_norm(&shape, op.attrs(), norm_inputs, &mut expected)?;
            let view = y.try_as_plain_ram()?;
            assert_eq!(view.as_slice::<f32>()?, expected.as_slice());
        }
        Ok(())
    }

    #[test]
    fn float16_is_widened_and_the_result_rounded_once() -> TractResult<()> {
        let c = 8;
        let op = GroupedLayerNormOp::new(attrs(2, true), true);
        let model = model(op.clone(), DatumType::F16, c)?;
        assert_eq!(model.output_fact(0)?.datum_type, DatumType::F16);
        let to_f16 = |v: &[f32], shape: &[usize]| -> TractResult<Tensor> {
            Ok(Tensor::from_shape(shape, v)?.cast_to::<f16>()?.into_owned())
        };
        let x = to_f16(&values(3 * c, 0.1), &[1, 3, c])?;
        let g = to_f16(&values(3 * c, 0.5), &[1, 3, c])?;
        let scale = values(c, 1.3);
        let bias = values(c, 0.2);
        let inputs = tvec![
            x.clone().into_tvalue(),
            Tensor::from_shape(&[c], &scale)?.into_tvalue(),
            Tensor::from_shape(&[c], &bias)?.into_tvalue(),
            g.clone().into_tvalue(),
        ];
        let y = model.into_runnable()?.run(inputs)?.remove(0);
        assert_eq!(y.datum_type(), DatumType::F16);

        // The reference sees exactly the float16 values, widened.
        let widen = |t: &Tensor| -> TractResult<Vec<f32>> {
            let t = t.cast_to::<f32>()?;
            Ok(t.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())
        };
        let shape = NormShape {
            rows: 3,
            channels: c,
            groups: 2,
        };
        let mut expected = vec![0f32; 3 * c];
        let (xw, gw) = (widen(&x)?, widen(&g)?);
        let norm_inputs = NormInputs {
            x: &xw,
            scale: &scale,
            bias: &bias,
            gate: Some(&gw),
        };
        grouped_layer_norm(&shape, op.attrs(), norm_inputs, &mut expected)?;
        assert_eq!(*y, to_f16(&expected, &[1, 3, c])?);
        Ok(())
    }

    #[test]
    fn output_facts_refuse_bad_shapes_and_types_naming_the_input() {
        let fact = |t: DatumType, shape: &[usize]| t.fact(shape);
        let op = GroupedLayerNormOp::new(attrs(4, false), true);
        let x = fact(DatumType::F32, &[2, 3, 8]);
        let p = fact(DatumType::F32, &[8]);
        let error = |inputs: &[&TypedFact]| {
            op.output_facts(inputs)
                .map(|_| ())
                .expect_err("must be refused")
                .to_string()
        };
        assert!(op.output_facts(&[&x, &p, &p, &x]).is_ok());
        let e = error(&[&x, &p, &p]);
        assert!(e.contains("takes 4 inputs (X, Scale, Bias, Gate)"), "{e}");
        let e = error(&[&x, &fact(DatumType::F32, &[6]), &p, &x]);
        assert!(e.contains("input `Scale` has shape [6]"), "{e}");
        let e = error(&[&x, &p, &p, &fact(DatumType::F32, &[2, 3, 4])]);
        assert!(e.contains("input `Gate` has shape"), "{e}");
        let e = error(&[&x, &fact(DatumType::F16, &[8]), &p, &x]);
        assert!(e.contains("input `Scale` is F16"), "{e}");
        let wide = fact(DatumType::F32, &[2, 6]);
        let e = error(&[&wide, &fact(DatumType::F32, &[6]), &p, &wide]);
        assert!(
            e.contains("C = 6 channels") && e.contains("`groups` = 4"),
            "{e}"
        );
        let e = error(&[&fact(DatumType::I32, &[2, 8]), &p, &p, &x]);
        assert!(e.contains("T must be float32 or float16"), "{e}");
    }
}
