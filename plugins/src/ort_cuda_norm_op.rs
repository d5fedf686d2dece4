//! `ai.groupmamba::GroupedLayerNorm` for ONNX Runtime's CUDA execution provider (features `ort` and
//! `cuda`).
//!
//! [`GroupedLayerNormCudaOperator`] declares `execution_provider_type = "CUDAExecutionProvider"`,
//! so ONNX Runtime hands its kernel device pointers and the provider's compute stream; the kernel
//! enqueues [`crate::cuda::launch_grouped_layer_norm`] (`cuda/layer_norm.cu`) on that stream and
//! returns without synchronising, like the provider's own kernels. The output is allocated by ONNX
//! Runtime (`ctx.output(0, shape)`, from the CUDA EP's arena); the kernel allocates nothing and
//! makes no CUDA call but the launch, so it also runs inside ONNX Runtime's CUDA graphs.
//!
//! As for `SelectiveScan` (`ort_cuda_op`), there is one operator per type T of `X`, `Gate` and `Y`
//! ([`GroupedLayerNormCudaOperator::ALL`]: float32, float16, bfloat16), all named `GroupedLayerNorm`
//! next to the CPU operator (`ort_norm_op`); ONNX Runtime picks the kernel by provider and input
//! types. `Scale` and `Bias` are float32 for every T (SPEC.md §8); `Gate` is optional (left out, or
//! an empty name on the node). The node is parsed (attributes checked, naming the node) and shapes
//! are inferred by the same code as the CPU operator's (`ort_norm_op::parse_node`, `infer_shape`),
//! so both providers accept and refuse the same nodes. [`add_to`] adds the operators to a domain;
//! `ort_op::domain()` does so when the `cuda` feature is on.

use ort::operator::{ComputeContext, Kernel, KernelContext, OperatorDomain, ShapeInferenceContext};

use crate::cuda::{self, DeviceDtype, NormDevicePointers};
use crate::norm::{NormAttributes, NormInput, NormShape};
use crate::ort_cuda_op::{compute_stream, device_output, CudaOp, CudaOperator, DeviceInputs};
use crate::ort_norm_op::{fail, infer_shape, parse_node};

/// `ai.groupmamba::GroupedLayerNorm` version 1 on the CUDA execution provider, for one element type
/// T of `X`, `Gate` and `Y`.
pub type GroupedLayerNormCudaOperator = CudaOperator<GroupedLayerNormCudaKernel>;

/// Adds the CUDA operators (every T in [`GroupedLayerNormCudaOperator::ALL`]) to `domain`.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    GroupedLayerNormCudaOperator::add_all(domain)
}

impl CudaOp for GroupedLayerNormCudaKernel {
    type Input = NormInput;

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
pub struct GroupedLayerNormCudaKernel {
    node: String,
    attrs: NormAttributes,
    dtype: DeviceDtype,
}

impl GroupedLayerNormCudaKernel {
    /// The node's attributes.
    pub fn attrs(&self) -> &NormAttributes {
        &self.attrs
    }
}

impl Kernel for GroupedLayerNormCudaKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let inputs = DeviceInputs::read::<Self>(ctx, node, self.dtype)?;
        let shape = NormShape::from_input_shapes(
            inputs.shape(NormInput::X.index()),
            inputs.shape(NormInput::Scale.index()),
            inputs.shape(NormInput::Bias.index()),
            inputs
                .is_present(NormInput::Gate.index())
                .then_some(inputs.shape(NormInput::Gate.index())),
            self.attrs.groups,
        )
        .map_err(|e| fail(node, e))?;
        let out_shape: Vec<i64> = inputs
            .shape(NormInput::X.index())
            .iter()
            .map(|&d| d as i64)
            .collect();
        let y = device_output::<Self>(ctx, node, "Y", out_shape)?;
        if shape.is_empty() {
            return Ok(());
        }
        let stream = compute_stream(ctx)?;
        let ptrs = NormDevicePointers {
            x: inputs.pointer(NormInput::X.index()),
            scale: inputs.pointer(NormInput::Scale.index()).cast::<f32>(),
            bias: inputs.pointer(NormInput::Bias.index()).cast::<f32>(),
            gate: inputs.pointer(NormInput::Gate.index()),
            y,
        };
        // SAFETY: every pointer is ONNX Runtime's GPU buffer for that input (checked above to be
        // device memory, of the type and shape checked above; `gate` stays null without a Gate) or
        // its freshly allocated output of `X`'s shape and type, which no input aliases (the op
        // declares no in-place pairs); ONNX Runtime keeps them alive until the work on its compute
        // stream is done.
        unsafe { cuda::launch_grouped_layer_norm(self.dtype, &shape, &self.attrs, ptrs, stream) }
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
        assert_operators::<GroupedLayerNormCudaKernel>(|t| {
            let f32 = TensorElementType::Float32;
            vec![t, f32, f32, t]
        });
    }
}
