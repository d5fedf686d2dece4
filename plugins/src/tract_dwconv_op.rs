//! `ai.groupmamba::DepthwiseConv` for tract-onnx 0.23.9.
//!
//! [`register`] adds a builder for the `DepthwiseConv` op type to an [`Onnx`] framework;
//! [`crate::tract_op::register`] calls it, so the one registration point of the crate installs
//! every `ai.groupmamba` op. As for the other ops, tract's registry is keyed by op type only: the
//! builder checks the node's domain and the model's import of the operator set (version 1)
//! itself, then the attributes (through [`ConvAttributes::new`], the contract's own check) and the
//! inputs: `X`, `W`, `B`, and the optional `InputBias`, absent or given as an empty name.
//!
//! The node becomes an [`Expansion`] (rules: `Y` has `X`'s type and shape, `X` has rank 4, `W` is
//! float32 `[C, 1, K, K]` with K odd and ≤ 7, `B` and `InputBias` are float32 `[C]`, C being
//! axis 1 of `X`, or axis 3 when `channels_last` = 1) that wires one core op, [`DepthwiseConvOp`]: stateless, typed (`output_facts`
//! keeps `X`'s shape, so a symbolic batch survives `into_optimized()`), evaluated by
//! [`crate::dwconv::depthwise_conv`], the one implementation of the math. tract's own `Conv`
//! never sees the node, so its optimiser cannot split the fused bias and activation apart again.
//!
//! Types: T = float32 runs the kernel directly; T = float16 is widened to float32 at the op's
//! boundary and `Y` rounded back to float16 once, which is what the specification asks of any
//! type (sum and activation in float32). tract has no bfloat16.

use tract_onnx::model::{Onnx, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::prelude::tract_itertools::Itertools;
use tract_onnx::tract_hir::internal::*;

use crate::dwconv::{
    check_kernel, depthwise_conv, Activation, ConvAttributes, ConvInput, ConvInputs, ConvShape,
    ATTR_ACTIVATION, ATTR_CHANNELS_LAST, DWCONV_OP_TYPE,
};
use crate::tract_norm_op::{dims_clash, show};
use crate::tract_op::{check_domain_and_opset, check_float_types, eval_in_float32, node_label};

/// Installs the `DepthwiseConv` builder in `onnx`'s op registry (also done by
/// [`crate::tract_op::register`], which installs every `ai.groupmamba` op).
pub fn register(onnx: &mut Onnx) {
    onnx.op_register.insert(DWCONV_OP_TYPE, build);
}

fn build(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let label = node_label(node);
    check_domain_and_opset(ctx, node, &label)?;
    let activation: Option<String> = node
        .get_attr_opt(ATTR_ACTIVATION)
        .with_context(|| format!("{label}: reading attribute `{ATTR_ACTIVATION}`"))?;
    let channels_last: Option<i64> = node
        .get_attr_opt(ATTR_CHANNELS_LAST)
        .with_context(|| format!("{label}: reading attribute `{ATTR_CHANNELS_LAST}`"))?;
    let attrs = ConvAttributes::new(activation.as_deref(), channels_last)
        .map_err(|e| format_err!("{label}: {e}"))?;
    // tract drops empty input names when it wires the node, so an empty InputBias is an absent
    // one; an empty X, W or B would silently shift the others into their places.
    let required = &node.input[..node.input.len().min(3)];
    if !(3..=4).contains(&node.input.len()) || required.iter().any(String::is_empty) {
        bail!(
            "{label}: takes inputs X, W, B (required) and InputBias (optional, may be absent or empty), got {:?}",
            node.input
        );
    }
    let has_input_bias = node
        .input
        .get(ConvInput::InputBias.index())
        .is_some_and(|name| !name.is_empty());
    if node.output.len() != 1 || node.output[0].is_empty() {
        bail!("{label}: has exactly one output (Y), got {:?}", node.output);
    }
    Ok((
        expand(DepthwiseConv {
            attrs,
            has_input_bias,
        }),
        vec![],
    ))
}

/// `activation: gelu, input bias: yes, X: [N, H, W, C]` for tract's model dumps.
fn attrs_info(attrs: &ConvAttributes, has_input_bias: bool) -> String {
    let input_bias = if has_input_bias { "yes" } else { "no" };
    format!(
        "activation: {}, input bias: {input_bias}, X: {}",
        attrs.activation,
        attrs.layout.dims()
    )
}

/// Checks a known K×K kernel (odd, at most [`crate::dwconv::MAX_KERNEL`]) and a square one,
/// wherever the two sides are numbers.
fn check_kernel_dims(kh: &TDim, kw: &TDim) -> TractResult<()> {
    ensure!(
        !dims_clash(kh, kw),
        "{DWCONV_OP_TYPE}: input `W` has a {kh}×{kw} kernel, expected [C, 1, K, K] (a square kernel)"
    );
    if let Ok(k) = kh.to_usize().or_else(|_| kw.to_usize()) {
        check_kernel(k).map_err(|e| format_err!("{DWCONV_OP_TYPE}: {e}"))?;
    }
    Ok(())
}

/// The inference-level op: shape/type rules, then wires a [`DepthwiseConvOp`].
#[derive(Debug, Clone, PartialEq)]
pub struct DepthwiseConv {
    pub attrs: ConvAttributes,
    /// Whether the node has an `InputBias` input (its 4th, not empty).
    pub has_input_bias: bool,
}

impl Expansion for DepthwiseConv {
    fn name(&self) -> StaticName {
        DWCONV_OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![attrs_info(&self.attrs, self.has_input_bias)])
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 3 + self.has_input_bias as usize)?;
        check_output_arity(outputs, 1)?;
        let (x, w, y) = (
            &inputs[ConvInput::X.index()],
            &inputs[ConvInput::W.index()],
            &outputs[0],
        );
        let (axis, dims) = (self.attrs.layout.channel_axis(), self.attrs.layout.dims());
        s.equals(&y.datum_type, &x.datum_type)?;
        s.equals(&y.shape, &x.shape)?;
        // Each check gives a message naming the input first, then the unification.
        s.given(&x.rank, move |_, rank| {
            ensure!(
                rank == 4,
                "{DWCONV_OP_TYPE}: input `X` has rank {rank}, expected 4 ({dims})"
            );
            Ok(())
        })?;
        s.equals(&x.rank, 4)?;
        s.equals(&w.datum_type, f32::datum_type())?;
        s.given(&w.rank, move |_, rank| {
            ensure!(
                rank == 4,
                "{DWCONV_OP_TYPE}: input `W` has rank {rank}, expected 4 ([C, 1, K, K])"
            );
            Ok(())
        })?;
        s.equals(&w.rank, 4)?;
        s.given_2(&x.shape[axis], &w.shape[0], move |_, channels, found| {
            ensure!(
                !dims_clash(&channels, &found),
                "{DWCONV_OP_TYPE}: input `W` has {found} filters, expected [C, 1, K, K] with C = {channels} (axis {axis} of X)"
            );
            Ok(())
        })?;
        s.equals(&w.shape[0], &x.shape[axis])?;
        s.given(&w.shape[1], move |_, one| {
            ensure!(
                !dims_clash(&one, &1.to_dim()),
                "{DWCONV_OP_TYPE}: input `W` has {one} input channels per filter, expected [C, 1, K, K] (depthwise: one)"
            );
            Ok(())
        })?;
        s.equals(&w.shape[1], 1.to_dim())?;
        s.given_2(&w.shape[2], &w.shape[3], move |_, kh, kw| {
            check_kernel_dims(&kh, &kw)
        })?;
        s.equals(&w.shape[2], &w.shape[3])?;
        let biases = [ConvInput::B, ConvInput::InputBias];
        for input in &biases[..1 + self.has_input_bias as usize] {
            let (input, bias) = (*input, &inputs[input.index()]);
            s.equals(&bias.datum_type, f32::datum_type())?;
            s.given(&bias.rank, move |_, rank| {
                ensure!(
                    rank == 1,
                    "{DWCONV_OP_TYPE}: input `{input}` has rank {rank}, expected 1 ([C], C = axis {axis} of X)"
                );
                Ok(())
            })?;
            s.equals(&bias.rank, 1)?;
            s.given_2(&x.shape[axis], &bias.shape[0], move |_, channels, found| {
                ensure!(
                    !dims_clash(&channels, &found),
                    "{DWCONV_OP_TYPE}: input `{input}` has shape [{found}], expected [C] = [{channels}] (axis {axis} of X)"
                );
                Ok(())
            })?;
            s.equals(&bias.shape[0], &x.shape[axis])?;
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
            DepthwiseConvOp::new(self.attrs, self.has_input_bias),
            inputs,
        )
    }
}

/// The typed (core) op: evaluates with the CPU reference kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DepthwiseConvOp {
    attrs: ConvAttributes,
    has_input_bias: bool,
}

impl DepthwiseConvOp {
    /// An op with `attrs`, taking 4 inputs (`X`, `W`, `B`, `InputBias`) if `has_input_bias`,
    /// else 3.
    pub fn new(attrs: ConvAttributes, has_input_bias: bool) -> DepthwiseConvOp {
        DepthwiseConvOp {
            attrs,
            has_input_bias,
        }
    }

    /// The node's attributes.
    pub fn attrs(&self) -> &ConvAttributes {
        &self.attrs
    }

    /// Whether the op takes an `InputBias` input.
    pub fn has_input_bias(&self) -> bool {
        self.has_input_bias
    }

    /// The op's inputs, in order.
    fn inputs(&self) -> &'static [ConvInput] {
        &ConvInput::ALL[..3 + self.has_input_bias as usize]
    }

    fn check_types(&self, types: &[DatumType]) -> TractResult<()> {
        let inputs = self.inputs();
        ensure!(
            types.len() == inputs.len(),
            "{DWCONV_OP_TYPE} takes {} inputs ({}), got {}",
            inputs.len(),
            inputs.iter().join(", "),
            types.len()
        );
        check_float_types(
            DWCONV_OP_TYPE,
            types,
            inputs,
            ConvInput::is_type_t,
            // X is the only input of type T and defines it, so the first message never shows.
            ("", "W, B and InputBias are always float32"),
        )?;
        Ok(())
    }
}

impl Op for DepthwiseConvOp {
    fn name(&self) -> StaticName {
        DWCONV_OP_TYPE.into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![attrs_info(&self.attrs, self.has_input_bias)])
    }

    fn validation(&self) -> Validation {
        // The sum's order and erf differ from tract's own Conv + Erf graph by a few ulps.
        Validation::Rounding
    }

    op_as_typed_op!();
}

impl EvalOp for DepthwiseConvOp {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let types = inputs.iter().map(|t| t.datum_type()).collect_vec();
        self.check_types(&types)?;
        let t = types[ConvInput::X.index()];
        let x_shape = inputs[ConvInput::X.index()].shape();
        let shape = ConvShape::from_input_shapes(
            x_shape,
            inputs[ConvInput::W.index()].shape(),
            inputs[ConvInput::B.index()].shape(),
            inputs.get(ConvInput::InputBias.index()).map(|b| b.shape()),
            self.attrs.layout,
        )
        .map_err(|e| format_err!("{DWCONV_OP_TYPE}: {e}"))?;
        eval_in_float32(&inputs, t, x_shape, |slices, y| {
            let conv_inputs = ConvInputs {
                x: slices[ConvInput::X.index()],
                w: slices[ConvInput::W.index()],
                b: slices[ConvInput::B.index()],
                input_bias: slices.get(ConvInput::InputBias.index()).copied(),
            };
            depthwise_conv(&shape, &self.attrs, conv_inputs, y)
                .map_err(|e| format_err!("{DWCONV_OP_TYPE}: {e}"))
        })
    }
}

impl TypedOp for DepthwiseConvOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let types = inputs.iter().map(|f| f.datum_type).collect_vec();
        self.check_types(&types)?;
        let x = inputs[ConvInput::X.index()];
        let layout = self.attrs.layout;
        ensure!(
            x.rank() == 4,
            "{DWCONV_OP_TYPE}: input `X` has shape {}: needs rank 4 {}",
            show(x.shape.iter()),
            layout.dims()
        );
        let channels = &x.shape[layout.channel_axis()];
        let w = &inputs[ConvInput::W.index()].shape;
        let w_ok = w.rank() == 4 && !dims_clash(&w[0], channels) && !dims_clash(&w[1], &1.to_dim());
        ensure!(
            w_ok,
            "{DWCONV_OP_TYPE}: input `W` has shape {}, expected [C, 1, K, K] with C = {channels} (from X {})",
            show(w.iter()),
            show(x.shape.iter())
        );
        check_kernel_dims(&w[2], &w[3])?;
        for &input in &self.inputs()[2..] {
            let found = &inputs[input.index()].shape;
            ensure!(
                found.rank() == 1 && !dims_clash(&found[0], channels),
                "{DWCONV_OP_TYPE}: input `{input}` has shape {}, expected [C] = [{channels}] (from X {})",
                show(found.iter()),
                show(x.shape.iter())
            );
        }
        Ok(tvec!(x.datum_type.fact(x.shape.clone())))
    }

    fn cost(&self, inputs: &[&TypedFact]) -> TractResult<TVec<(Cost, TDim)>> {
        // Per output element: K² multiply-adds (border pixels have fewer: an upper bound), and
        // an exp (SiLU) or an erf's exp (GELU).
        let count = inputs[ConvInput::X.index()].shape.volume();
        let w = &inputs[ConvInput::W.index()].shape;
        let taps = w[2].clone() * w[3].clone();
        let mut cost = tvec!((Cost::FMA(DatumType::F32), count.clone() * taps));
        if self.attrs.activation != Activation::None {
            cost.push((Cost::Custom(true, "Exp".into()), count));
        }
        Ok(cost)
    }

    as_op!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dwconv::Layout;

    fn values(len: usize, k: f32) -> Vec<f32> {
        (0..len)
            .map(|i| (i as f32 * 0.71 + k).sin() * 2.0)
            .collect()
    }

    const C: usize = 6;
    const H: usize = 5;
    const W: usize = 7;

    /// `X`'s shape `[n, C, H, W]` or `[n, H, W, C]`, as the op's layout has it.
    fn x_dims<D: Clone>(op: &DepthwiseConvOp, n: D, c: D, h: D, w: D) -> TVec<D> {
        match op.attrs().layout {
            Layout::ChannelsFirst => tvec![n, c, h, w],
            Layout::ChannelsLast => tvec![n, h, w, c],
        }
    }

    /// A model `Y = DepthwiseConvOp(X, W, B[, InputBias])` with X `[N, C, H, W]` (or
    /// channels-last), N symbolic.
    fn model(op: DepthwiseConvOp, t: DatumType, k: usize) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let n = model.symbols.sym("N");
        let x_shape = x_dims(&op, n.to_dim(), C.to_dim(), H.to_dim(), W.to_dim());
        let mut wires = tvec![
            model.add_source("X", t.fact(x_shape))?,
            model.add_source("W", f32::fact([C, 1, k, k]))?,
            model.add_source("B", f32::fact([C]))?,
        ];
        if op.has_input_bias() {
            wires.push(model.add_source("InputBias", f32::fact([C]))?);
        }
        let y = model.wire_node("dwconv", op, &wires)?;
        model.select_output_outlets(&y)?;
        Ok(model)
    }

    #[test]
    fn evaluates_with_the_reference_kernel_and_keeps_a_symbolic_batch() -> TractResult<()> {
        let n = 2;
        let cases = [
            (3, Activation::Silu, false, Layout::ChannelsFirst),
            (5, Activation::Gelu, true, Layout::ChannelsFirst),
            (1, Activation::None, true, Layout::ChannelsFirst),
            (3, Activation::Gelu, true, Layout::ChannelsLast),
            (5, Activation::Silu, false, Layout::ChannelsLast),
        ];
        for (k, activation, has_ib, layout) in cases {
            let op = DepthwiseConvOp::new(ConvAttributes { activation, layout }, has_ib);
            let model = model(op.clone(), DatumType::F32, k)?.into_optimized()?;
            let out = model.output_fact(0)?;
            assert_eq!(format!("{}", out.shape[0]), "N", "{:?}", out.shape);
            assert!(model.nodes().iter().any(|n| n.op_is::<DepthwiseConvOp>()));

            let x = values(n * C * H * W, 0.3);
            let w = values(C * k * k, 1.1);
            let b = values(C, 2.9);
            let ib = values(C, 0.7);
            let x_shape = x_dims(&op, n, C, H, W);
            let mut inputs = tvec![
                Tensor::from_shape(&x_shape, &x)?.into_tvalue(),
                Tensor::from_shape(&[C, 1, k, k], &w)?.into_tvalue(),
                Tensor::from_shape(&[C], &b)?.into_tvalue(),
            ];
            if has_ib {
                inputs.push(Tensor::from_shape(&[C], &ib)?.into_tvalue());
            }
            let y = model.into_runnable()?.run(inputs)?.remove(0);
            assert_eq!(y.shape(), &x_shape[..]);

            let shape = ConvShape {
                batch: n,
                channels: C,
                height: H,
                width: W,
                kernel: k,
                layout,
            };
            let mut expected = vec![0f32; shape.len()];
            let conv_inputs = ConvInputs {
                x: &x,
                w: &w,
                b: &b,
                input_bias: has_ib.then_some(ib.as_slice()),
            };
            depthwise_conv(&shape, op.attrs(), conv_inputs, &mut expected)?;
            let view = y.try_as_plain_ram()?;
            assert_eq!(view.as_slice::<f32>()?, expected.as_slice());
        }
        Ok(())
    }

    #[test]
    fn float16_is_widened_and_the_result_rounded_once() -> TractResult<()> {
        let k = 3;
        let op = DepthwiseConvOp::new(
            ConvAttributes {
                activation: Activation::Gelu,
                ..ConvAttributes::default()
            },
            true,
        );
        let model = model(op.clone(), DatumType::F16, k)?;
        assert_eq!(model.output_fact(0)?.datum_type, DatumType::F16);
        let x = Tensor::from_shape(&[1, C, H, W], &values(C * H * W, 0.1))?
            .cast_to::<f16>()?
            .into_owned();
        let w = values(C * k * k, 1.3);
        let b = values(C, 0.2);
        let ib = values(C, 0.9);
        let inputs = tvec![
            x.clone().into_tvalue(),
            Tensor::from_shape(&[C, 1, k, k], &w)?.into_tvalue(),
            Tensor::from_shape(&[C], &b)?.into_tvalue(),
            Tensor::from_shape(&[C], &ib)?.into_tvalue(),
        ];
        let y = model.into_runnable()?.run(inputs)?.remove(0);
        assert_eq!(y.datum_type(), DatumType::F16);

        // The reference sees exactly the float16 values, widened.
        let xw = x.cast_to::<f32>()?;
        let xw = xw.try_as_plain_ram()?;
        let shape = ConvShape {
            batch: 1,
            channels: C,
            height: H,
            width: W,
            kernel: k,
            layout: Layout::ChannelsFirst,
        };
        let mut expected = vec![0f32; shape.len()];
        let conv_inputs = ConvInputs {
            x: xw.as_slice::<f32>()?,
            w: &w,
            b: &b,
            input_bias: Some(&ib),
        };
        depthwise_conv(&shape, op.attrs(), conv_inputs, &mut expected)?;
        let expected = Tensor::from_shape(&[1, C, H, W], &expected)?
            .cast_to::<f16>()?
            .into_owned();
        assert_eq!(*y, expected);
        Ok(())
    }

    #[test]
    fn output_facts_refuse_bad_shapes_and_types_naming_the_input() {
        let fact = |t: DatumType, shape: &[usize]| t.fact(shape);
        let op = DepthwiseConvOp::new(ConvAttributes::default(), true);
        let x = fact(DatumType::F32, &[2, 8, 5, 5]);
        let w = fact(DatumType::F32, &[8, 1, 3, 3]);
        let b = fact(DatumType::F32, &[8]);
        let error = |inputs: &[&TypedFact]| {
            op.output_facts(inputs)
                .map(|_| ())
                .expect_err("must be refused")
                .to_string()
        };
        assert!(op.output_facts(&[&x, &w, &b, &b]).is_ok());
        let e = error(&[&x, &w, &b]);
        assert!(e.contains("takes 4 inputs (X, W, B, InputBias)"), "{e}");
        let e = error(&[&fact(DatumType::F32, &[8, 5, 5]), &w, &b, &b]);
        assert!(
            e.contains("input `X` has shape [8, 5, 5]: needs rank 4"),
            "{e}"
        );
        let e = error(&[&x, &fact(DatumType::F32, &[6, 1, 3, 3]), &b, &b]);
        assert!(
            e.contains("input `W` has shape [6, 1, 3, 3], expected [C, 1, K, K] with C = 8"),
            "{e}"
        );
        let e = error(&[&x, &fact(DatumType::F32, &[8, 2, 3, 3]), &b, &b]);
        assert!(e.contains("input `W` has shape [8, 2, 3, 3]"), "{e}");
        let e = error(&[&x, &fact(DatumType::F32, &[8, 1, 3, 5]), &b, &b]);
        assert!(e.contains("3×5 kernel"), "{e}");
        let e = error(&[&x, &fact(DatumType::F32, &[8, 1, 4, 4]), &b, &b]);
        assert!(e.contains("4×4 kernel: K must be odd"), "{e}");
        let e = error(&[&x, &fact(DatumType::F32, &[8, 1, 9, 9]), &b, &b]);
        assert!(e.contains("larger than the 7×7"), "{e}");
        let e = error(&[&x, &w, &fact(DatumType::F32, &[7]), &b]);
        assert!(
            e.contains("input `B` has shape [7], expected [C] = [8]"),
            "{e}"
        );
        let e = error(&[&x, &w, &b, &fact(DatumType::F32, &[1, 8])]);
        assert!(e.contains("input `InputBias` has shape [1, 8]"), "{e}");
        let e = error(&[&x, &fact(DatumType::F16, &[8, 1, 3, 3]), &b, &b]);
        assert!(e.contains("input `W` is F16"), "{e}");
        let e = error(&[&fact(DatumType::I32, &[2, 8, 5, 5]), &w, &b, &b]);
        assert!(e.contains("T must be float32 or float16"), "{e}");

        // Channels-last: C is X's last axis.
        let op = DepthwiseConvOp::new(
            ConvAttributes {
                layout: Layout::ChannelsLast,
                ..ConvAttributes::default()
            },
            false,
        );
        let x_last = fact(DatumType::F32, &[2, 5, 4, 8]);
        assert!(op.output_facts(&[&x_last, &w, &b]).is_ok());
        let e = op
            .output_facts(&[&x, &w, &b])
            .expect_err("C = 5 in [N, H, W, C]")
            .to_string();
        assert!(e.contains("with C = 5 (from X [2, 8, 5, 5])"), "{e}");
        let e = op
            .output_facts(&[&fact(DatumType::F32, &[8, 5, 5]), &w, &b])
            .expect_err("rank 3")
            .to_string();
        assert!(e.contains("needs rank 4 [N, H, W, C]"), "{e}");
    }
}
