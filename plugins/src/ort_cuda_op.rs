//! `ai.groupmamba::SelectiveScan` for ONNX Runtime's CUDA execution provider (features `ort` and
//! `cuda`).
//!
//! [`SelectiveScanCudaOperator`] declares `execution_provider_type = "CUDAExecutionProvider"`, so
//! ONNX Runtime hands its kernel device pointers (inputs and output stay in GPU memory, no copies to
//! the host) and the provider's compute stream ([`ComputeContext::stream`]); the kernel enqueues
//! [`crate::cuda::launch`] on that stream and returns without synchronising, like the provider's
//! own kernels. The output is allocated by ONNX Runtime (`ctx.output(0, shape)`, from the CUDA
//! EP's arena).
//!
//! An `ort` operator declares one element type per input, so there is one operator per type T
//! ([`SelectiveScanCudaOperator::ALL`]: float32, float16, bfloat16), all named `SelectiveScan` in the
//! `ai.groupmamba` domain next to the CPU operator (ONNX Runtime merges same-name operators into
//! one schema and picks the kernel by provider and input types). `A`, `D` and `delta_bias` are
//! float32 for every T (SPEC.md §2). [`add_to`] adds them to a domain; `ort_op::domain()` does so
//! when the `cuda` feature is on.
//!
//! The kernel is linked statically with its own copy of the CUDA runtime (build.rs); it runs on the
//! device that is current on ONNX Runtime's calling thread (the CUDA EP sets it) and on the stream
//! ONNX Runtime gives it, so it works with any `device_id` and inside ONNX Runtime's CUDA graphs
//! (it allocates nothing and never synchronises).

use std::ffi::c_void;
use std::ops::RangeInclusive;

use ort::memory::AllocationDevice;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{DynTensorValueType, TensorElementType};

use crate::cuda::{self, DeviceDtype, DevicePointers};
use crate::ort_op::{fail, infer_shape, parse_node};
use crate::spec::{Direction, ScanError, ScanInput, ScanShape, OPSET_VERSION, OP_TYPE};

/// ONNX Runtime's name for the CUDA execution provider.
pub const CUDA_EXECUTION_PROVIDER: &str = "CUDAExecutionProvider";

/// `ai.groupmamba::SelectiveScan` version 1 on the CUDA execution provider, for one element type T
/// of `u`, `delta`, `B`, `C` and `y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectiveScanCudaOperator {
    dtype: DeviceDtype,
}

impl SelectiveScanCudaOperator {
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

    fn element_type(&self) -> TensorElementType {
        element_type(self.dtype)
    }
}

/// ONNX Runtime's element type for T (shared with `ort_cuda_norm_op` and `ort_cuda_dwconv_op`).
pub(crate) fn element_type(dtype: DeviceDtype) -> TensorElementType {
    match dtype {
        DeviceDtype::F32 => TensorElementType::Float32,
        DeviceDtype::F16 => TensorElementType::Float16,
        DeviceDtype::Bf16 => TensorElementType::Bfloat16,
    }
}

/// T's name in messages (shared with `ort_cuda_norm_op` and `ort_cuda_dwconv_op`).
pub(crate) fn type_name(dtype: DeviceDtype) -> &'static str {
    match dtype {
        DeviceDtype::F32 => "float32",
        DeviceDtype::F16 => "float16",
        DeviceDtype::Bf16 => "bfloat16",
    }
}

/// Adds the CUDA operators (every T in [`SelectiveScanCudaOperator::ALL`]) to `domain`.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    SelectiveScanCudaOperator::ALL
        .into_iter()
        .try_fold(domain, |domain, op| domain.add(op))
}

impl Operator for SelectiveScanCudaOperator {
    type Kernel<'attr> = SelectiveScanCudaKernel;

    fn name(&self) -> &str {
        OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some(CUDA_EXECUTION_PROVIDER)
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let t = self.element_type();
        ScanInput::ALL.map(|input| {
            OperatorInput::required(if input.is_type_t() {
                t
            } else {
                TensorElementType::Float32
            })
        })
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.element_type())]
    }

    fn create_kernel<'attr>(
        &self,
        ctx: &KernelContext<'attr>,
    ) -> ort::Result<SelectiveScanCudaKernel> {
        let (node, directions) = parse_node(ctx)?;
        Ok(SelectiveScanCudaKernel {
            node,
            directions,
            dtype: self.dtype,
        })
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        infer_shape(ctx)
    }
}

/// The CUDA kernel of one node: its name (for messages), its groups' directions and T.
#[derive(Debug, Clone)]
pub struct SelectiveScanCudaKernel {
    node: String,
    directions: Vec<Direction>,
    dtype: DeviceDtype,
}

impl SelectiveScanCudaKernel {
    /// The groups' directions, from the node's `directions` attribute.
    pub fn directions(&self) -> &[Direction] {
        &self.directions
    }
}

impl Kernel for SelectiveScanCudaKernel {
    fn compute(&mut self, ctx: &ComputeContext) -> ort::Result<()> {
        let node = self.node.as_str();
        let count = ctx.num_inputs()?;
        if count != ScanInput::ALL.len() {
            return Err(fail(node, format!("needs exactly 7 inputs, got {count}")));
        }
        let mut shapes: Vec<Vec<usize>> = Vec::with_capacity(count);
        let mut pointers = [std::ptr::null::<c_void>(); 7];
        for input in ScanInput::ALL {
            let value = ctx.input(input.index())?.ok_or_else(|| {
                fail(
                    node,
                    format!("input `{input}` is missing (all 7 inputs are required)"),
                )
            })?;
            let (expected, accepted) = if input.is_type_t() {
                (element_type(self.dtype), type_name(self.dtype))
            } else {
                (TensorElementType::Float32, "float32")
            };
            let unsupported = |found: String| {
                fail(
                    node,
                    ScanError::UnsupportedType {
                        input,
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
            shapes.push(tensor.shape().iter().map(|&d| d.max(0) as usize).collect());
            pointers[input.index()] = tensor.data_ptr();
        }
        let views: [&[usize]; 7] = std::array::from_fn(|i| shapes[i].as_slice());
        let shape = ScanShape::from_input_shapes(views).map_err(|e| fail(node, e))?;
        shape
            .check_directions(&self.directions)
            .map_err(|e| fail(node, e))?;
        let out_shape: Vec<i64> = shape
            .expected_shape(ScanInput::U)
            .iter()
            .map(|&d| d as i64)
            .collect();
        let output = ctx
            .output(0, out_shape)?
            .ok_or_else(|| fail(node, "ONNX Runtime gave no buffer for output `y`"))?;
        let output = output
            .downcast::<DynTensorValueType>()
            .map_err(|e| fail(node, format!("output `y` is not a tensor: {e}")))?;
        if shape.batch == 0 || shape.seq_len() == 0 || shape.channels == 0 {
            return Ok(());
        }
        // `GetTensorMutableData` of ONNX Runtime's output buffer (ValueRefMut has no `data_ptr_mut`).
        let y = output.data_ptr().cast_mut();
        let stream = ctx
            .stream()?
            .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast::<c_void>());
        let ptrs = DevicePointers {
            u: pointers[ScanInput::U.index()],
            delta: pointers[ScanInput::Delta.index()],
            a: pointers[ScanInput::A.index()].cast::<f32>(),
            b: pointers[ScanInput::B.index()],
            c: pointers[ScanInput::C.index()],
            d: pointers[ScanInput::D.index()].cast::<f32>(),
            delta_bias: pointers[ScanInput::DeltaBias.index()].cast::<f32>(),
            y,
        };
        // SAFETY: every pointer is ONNX Runtime's GPU buffer for that input (checked above to be
        // device memory, of the type and shape checked above) or its freshly allocated output of
        // `u`'s shape and type, which no input aliases; ONNX Runtime keeps them alive until the
        // work on its compute stream is done.
        unsafe { cuda::launch(self.dtype, &shape, &self.directions, ptrs, stream) }
            .map_err(|e| fail(node, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operator_per_type_with_float32_parameters() {
        for op in SelectiveScanCudaOperator::ALL {
            assert_eq!(op.execution_provider_type(), Some(CUDA_EXECUTION_PROVIDER));
            assert_eq!(op.name(), OP_TYPE);
            let inputs: Vec<OperatorInput> = op.inputs().into_iter().collect();
            assert_eq!(inputs.len(), 7);
        }
        let types: Vec<TensorElementType> = SelectiveScanCudaOperator::ALL
            .iter()
            .map(|op| op.element_type())
            .collect();
        assert_eq!(
            types,
            [
                TensorElementType::Float32,
                TensorElementType::Float16,
                TensorElementType::Bfloat16
            ]
        );
    }
}
