//! `ai.groupmamba::DepthwiseConv` for ONNX Runtime's CUDA execution provider (features `ort` and
//! `cuda`).
//!
//! [`DepthwiseConvCudaOperator`] declares `execution_provider_type = "CUDAExecutionProvider"`, so
//! ONNX Runtime hands its kernel device pointers and the provider's compute stream; the kernel
//! enqueues [`crate::cuda::launch_depthwise_conv`] (`cuda/depthwise_conv.cu`) on that stream and
//! returns without synchronising, like the provider's own kernels. The output is allocated by ONNX
//! Runtime (`ctx.output(0, shape)`, from the CUDA EP's arena); the kernel allocates nothing and
//! makes no CUDA call but the launch, so it also runs inside ONNX Runtime's CUDA graphs.
//!
//! As for `SelectiveScan` (`ort_cuda_op`) and `GroupedLayerNorm` (`ort_cuda_norm_op`), there is one
//! operator per type T of `X` and `Y` ([`DepthwiseConvCudaOperator::ALL`]: float32, float16,
//! bfloat16), all named `DepthwiseConv` next to the CPU operator (`ort_dwconv_op`); ONNX Runtime
//! picks the kernel by provider and input types. `W`, `B` and `InputBias` are float32 for every T
//! (SPEC.md §9); `InputBias` is optional (left out, or an empty name on the node). The node is
//! parsed (the `activation` attribute checked, naming the node) and shapes are inferred by the same
//! code as the CPU operator's (`ort_dwconv_op::parse_node`, `infer_shape`), so both providers
//! accept and refuse the same nodes. [`add_to`] adds the operators to a domain; `ort_op::domain()`
//! does so when the `cuda` feature is on.

use ort::operator::{ComputeContext, Kernel, KernelContext, OperatorDomain, ShapeInferenceContext};

use crate::cuda::{self, ConvDevicePointers, DeviceDtype};
use crate::dwconv::{ConvAttributes, ConvInput, ConvShape};
use crate::ort_cuda_op::{compute_stream, device_output, CudaOp, CudaOperator, DeviceInputs};
use crate::ort_dwconv_op::{fail, infer_shape, parse_node};

/// `ai.groupmamba::DepthwiseConv` version 1 on the CUDA execution provider, for one element type T
/// of `X` and `Y`.
pub type DepthwiseConvCudaOperator = CudaOperator<DepthwiseConvCudaKernel>;

/// Adds the CUDA operators (every T in [`DepthwiseConvCudaOperator::ALL`]) to `domain`.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    DepthwiseConvCudaOperator::add_all(domain)
}

impl CudaOp for DepthwiseConvCudaKernel {
    type Input = ConvInput;

    fn create_kernel(ctx: &KernelContext<'_>, dtype: DeviceDtype) -> ort::Result<Self> {
        let (node, attrs) = parse_node(ctx)?;
        Ok(Self { node, attrs, dtype })
    }

    fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_shape(ctx)
    }
}

/// The CUDA kernel of one node: its name (for messages), its attributes and T.
#[derive(Debug, Clone)]
pub struct DepthwiseConvCudaKernel {
    node: String,
    attrs: ConvAttributes,
    dtype: DeviceDtype,
}

impl DepthwiseConvCudaKernel {
    /// The node's attributes.
    pub fn attrs(&self) -> &ConvAttributes {
        &self.attrs
    }
}

impl Kernel for DepthwiseConvCudaKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let inputs = DeviceInputs::read::<Self>(ctx, node, self.dtype)?;
        let shape = ConvShape::from_input_shapes(
            inputs.shape(ConvInput::X.index()),
            inputs.shape(ConvInput::W.index()),
            inputs.shape(ConvInput::B.index()),
            inputs
                .is_present(ConvInput::InputBias.index())
                .then_some(inputs.shape(ConvInput::InputBias.index())),
            self.attrs.layout,
        )
        .map_err(|e| fail(node, e))?;
        let out_shape: Vec<i64> = inputs
            .shape(ConvInput::X.index())
            .iter()
            .map(|&d| d as i64)
            .collect();
        let y = device_output::<Self>(ctx, node, "Y", out_shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        let stream = compute_stream(ctx)?;
        let ptrs = ConvDevicePointers {
            x: inputs.pointer(ConvInput::X.index()),
            w: inputs.pointer(ConvInput::W.index()).cast::<f32>(),
            b: inputs.pointer(ConvInput::B.index()).cast::<f32>(),
            input_bias: inputs.pointer(ConvInput::InputBias.index()).cast::<f32>(),
            y,
        };
        // SAFETY: every pointer is ONNX Runtime's GPU buffer for that input (checked above to be
        // device memory, of the type and shape checked above; `input_bias` stays null without an
        // InputBias) or its freshly allocated output of `X`'s shape and type, which no input
        // aliases (the op declares no in-place pairs); ONNX Runtime keeps them alive until the work
        // on its compute stream is done.
        unsafe { cuda::launch_depthwise_conv(self.dtype, &shape, &self.attrs, ptrs, stream) }
            .map_err(|e| fail(node, e))
    }
}

#[cfg(test)]
mod tests {
    use ort::value::TensorElementType;

    use super::*;
    use crate::ort_cuda_op::assert_operators;

    #[test]
    fn one_operator_per_type_with_float32_parameters() {
        assert_operators::<DepthwiseConvCudaKernel>(|t| {
            let f32 = TensorElementType::Float32;
            vec![t, f32, f32, f32]
        });
    }
}
