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

use std::ffi::c_void;
use std::ops::RangeInclusive;

use ort::memory::AllocationDevice;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{DynTensorValueType, TensorElementType};

use crate::cuda::{self, ConvDevicePointers, DeviceDtype};
use crate::dwconv::{ConvAttributes, ConvError, ConvInput, ConvShape, DWCONV_OP_TYPE};
use crate::ort_cuda_op::{element_type, type_name, CUDA_EXECUTION_PROVIDER};
use crate::ort_dwconv_op::{fail, infer_shape, parse_node};
use crate::spec::OPSET_VERSION;

/// `ai.groupmamba::DepthwiseConv` version 1 on the CUDA execution provider, for one element type T
/// of `X` and `Y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DepthwiseConvCudaOperator {
    dtype: DeviceDtype,
}

impl DepthwiseConvCudaOperator {
    pub const F32: Self = Self {
        dtype: DeviceDtype::F32,
    };
    pub const F16: Self = Self {
        dtype: DeviceDtype::F16,
    };
    pub const BF16: Self = Self {
        dtype: DeviceDtype::Bf16,
    };
    /// One operator per supported T.
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::BF16];

    /// T of this operator.
    pub fn dtype(&self) -> DeviceDtype {
        self.dtype
    }
}

/// Adds the CUDA operators (every T in [`DepthwiseConvCudaOperator::ALL`]) to `domain`.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    DepthwiseConvCudaOperator::ALL
        .into_iter()
        .try_fold(domain, |domain, op| domain.add(op))
}

/// The declared type of an input for T: T for `X`, float32 for `W`, `B` and `InputBias`.
fn input_type(input: ConvInput, dtype: DeviceDtype) -> TensorElementType {
    if input.is_type_t() {
        element_type(dtype)
    } else {
        TensorElementType::Float32
    }
}

impl Operator for DepthwiseConvCudaOperator {
    type Kernel<'attr> = DepthwiseConvCudaKernel;

    fn name(&self) -> &str {
        DWCONV_OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some(CUDA_EXECUTION_PROVIDER)
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        ConvInput::ALL.map(|input| {
            let t = input_type(input, self.dtype);
            match input {
                ConvInput::InputBias => OperatorInput::optional(t),
                _ => OperatorInput::required(t),
            }
        })
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(element_type(self.dtype))]
    }

    fn create_kernel<'attr>(
        &self,
        ctx: &KernelContext<'attr>,
    ) -> ort::Result<DepthwiseConvCudaKernel> {
        let (node, attrs) = parse_node(ctx)?;
        Ok(DepthwiseConvCudaKernel {
            node,
            attrs,
            dtype: self.dtype,
        })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
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
        let count = ctx.num_inputs()?;
        if !(3..=4).contains(&count) {
            return Err(fail(
                node,
                format!("takes 3 or 4 inputs (X, W, B, optional InputBias), got {count}"),
            ));
        }
        let mut shapes: [Vec<usize>; 4] = Default::default();
        let mut pointers = [std::ptr::null::<c_void>(); 4];
        let mut has_input_bias = false;
        for input in &ConvInput::ALL[..count] {
            // An InputBias left out, or given as an empty name, comes back from ONNX Runtime as no
            // value.
            let Some(value) = ctx.input(input.index())? else {
                if *input == ConvInput::InputBias {
                    continue;
                }
                return Err(fail(
                    node,
                    format!("input `{input}` is missing (X, W and B are required)"),
                ));
            };
            let (expected, accepted) = if input.is_type_t() {
                (element_type(self.dtype), type_name(self.dtype))
            } else {
                (TensorElementType::Float32, "float32")
            };
            let unsupported = |found: String| {
                fail(
                    node,
                    ConvError::UnsupportedType {
                        input: *input,
                        found,
                        accepted,
                    },
                )
            };
            let tensor = value
                .downcast::<DynTensorValueType>()
                .map_err(|_| unsupported("a non-tensor value".into()))?;
            if *tensor.data_type() != expected {
                return Err(unsupported(format!("{:?}", tensor.data_type())));
            }
            let device = tensor.memory_info().allocation_device();
            if device != AllocationDevice::CUDA && device != AllocationDevice::CUDA_PINNED {
                return Err(fail(
                    node,
                    format!(
                        "input `{input}` is in {device:?} memory; the CUDA kernel needs it in GPU memory"
                    ),
                ));
            }
            shapes[input.index()] = tensor.shape().iter().map(|&d| d.max(0) as usize).collect();
            pointers[input.index()] = tensor.data_ptr();
            has_input_bias |= *input == ConvInput::InputBias;
        }
        let shape = ConvShape::from_input_shapes(
            &shapes[ConvInput::X.index()],
            &shapes[ConvInput::W.index()],
            &shapes[ConvInput::B.index()],
            has_input_bias.then_some(shapes[ConvInput::InputBias.index()].as_slice()),
        )
        .map_err(|e| fail(node, e))?;
        let out_shape: Vec<i64> = shapes[ConvInput::X.index()]
            .iter()
            .map(|&d| d as i64)
            .collect();
        let output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| fail(node, "ONNX Runtime gave no buffer for output `Y`"))?;
        let output = output
            .downcast::<DynTensorValueType>()
            .map_err(|e| fail(node, format!("output `Y` is not a tensor: {e}")))?;
        if shape.is_empty() {
            return Ok(());
        }
        // `GetTensorMutableData` of ONNX Runtime's output buffer (ValueRefMut has no `data_ptr_mut`).
        let y = output.data_ptr().cast_mut();
        let stream = ctx
            .stream()?
            .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast::<c_void>());
        let ptrs = ConvDevicePointers {
            x: pointers[ConvInput::X.index()],
            w: pointers[ConvInput::W.index()].cast::<f32>(),
            b: pointers[ConvInput::B.index()].cast::<f32>(),
            input_bias: pointers[ConvInput::InputBias.index()].cast::<f32>(),
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
    use super::*;

    #[test]
    fn one_operator_per_type_with_float32_parameters() {
        for op in DepthwiseConvCudaOperator::ALL {
            assert_eq!(op.execution_provider_type(), Some(CUDA_EXECUTION_PROVIDER));
            assert_eq!(op.name(), DWCONV_OP_TYPE);
            assert_eq!(op.versions(), 1..=1);
            let inputs: Vec<OperatorInput> = op.inputs().into_iter().collect();
            assert_eq!(inputs.len(), ConvInput::ALL.len());
            let types: Vec<TensorElementType> = ConvInput::ALL
                .iter()
                .map(|&input| input_type(input, op.dtype()))
                .collect();
            let t = element_type(op.dtype());
            let f32 = TensorElementType::Float32;
            assert_eq!(types, [t, f32, f32, f32]);
        }
        let types: Vec<DeviceDtype> = DepthwiseConvCudaOperator::ALL
            .iter()
            .map(|op| op.dtype())
            .collect();
        assert_eq!(
            types,
            [DeviceDtype::F32, DeviceDtype::F16, DeviceDtype::Bf16]
        );
    }
}
