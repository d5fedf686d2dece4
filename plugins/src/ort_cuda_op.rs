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
use std::fmt;
use std::marker::PhantomData;
use std::ops::RangeInclusive;

use ort::memory::AllocationDevice;
use ort::operator::{
    ComputeContext, Kernel, KernelContext, Operator, OperatorDomain, OperatorInput, OperatorOutput,
    ShapeInferenceContext,
};
use ort::value::{DynTensorValueType, TensorElementType};

use crate::cuda::{self, DeviceDtype, DevicePointers};
use crate::ort_op::{declared_inputs, fail, infer_shape, input_count, parse_node, OrtInput};
use crate::spec::{Direction, ScanInput, ScanShape, OPSET_VERSION};

/// ONNX Runtime's name for the CUDA execution provider.
pub const CUDA_EXECUTION_PROVIDER: &str = "CUDAExecutionProvider";

/// What one op's CUDA kernel tells [`CudaOperator`] besides its inputs ([`OrtInput`]): how a node
/// is parsed and its shapes inferred. The three ops register, type-check and read their device
/// inputs the same way; only these facts differ, so one operator type serves them all.
pub trait CudaOp: Kernel + Sized + 'static {
    /// The op's input names.
    type Input: OrtInput;

    /// Parses the node (shared with the CPU operator, so both providers refuse the same nodes).
    fn create_kernel(ctx: &KernelContext<'_>, dtype: DeviceDtype) -> ort::Result<Self>;
    /// Shape inference (shared with the CPU operator).
    fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()>;
}

/// The ONNX Runtime CUDA-EP operator of op `K` for one element type T: an `ort` operator declares
/// one element type per input, so each op registers one operator per T ([`Self::ALL`]), all with
/// the op's name, next to its CPU operator; ONNX Runtime picks the kernel by provider and input
/// types.
pub struct CudaOperator<K> {
    dtype: DeviceDtype,
    // `fn() -> K`: the operator holds no kernel, so it is `Send`, `Sync` and `Copy` whatever K is.
    kernel: PhantomData<fn() -> K>,
}

impl<K> Clone for CudaOperator<K> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K> Copy for CudaOperator<K> {}

impl<K> PartialEq for CudaOperator<K> {
    fn eq(&self, other: &Self) -> bool {
        self.dtype == other.dtype
    }
}

impl<K> Eq for CudaOperator<K> {}

impl<K> fmt::Debug for CudaOperator<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CudaOperator")
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl<K: CudaOp> CudaOperator<K> {
    pub const F32: Self = Self::new(DeviceDtype::F32);
    pub const F16: Self = Self::new(DeviceDtype::F16);
    pub const BF16: Self = Self::new(DeviceDtype::Bf16);
    /// One operator per supported T.
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::BF16];

    const fn new(dtype: DeviceDtype) -> Self {
        Self {
            dtype,
            kernel: PhantomData,
        }
    }

    /// T of this operator.
    pub fn dtype(&self) -> DeviceDtype {
        self.dtype
    }

    fn element_type(&self) -> TensorElementType {
        element_type(self.dtype)
    }

    /// Adds the operators (every T in [`Self::ALL`]) to `domain`.
    pub fn add_all(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
        Self::ALL
            .into_iter()
            .try_fold(domain, |domain, op| domain.add(op))
    }
}

/// The declared type of an input for T: T for the op's T inputs, float32 for its parameters.
pub(crate) fn input_type<I: OrtInput>(input: I, dtype: DeviceDtype) -> TensorElementType {
    if input.has_type_t() {
        element_type(dtype)
    } else {
        TensorElementType::Float32
    }
}

impl<K: CudaOp> Operator for CudaOperator<K> {
    type Kernel<'attr> = K;

    fn name(&self) -> &str {
        K::Input::OP_TYPE
    }

    fn versions(&self) -> RangeInclusive<u32> {
        OPSET_VERSION as u32..=OPSET_VERSION as u32
    }

    fn execution_provider_type(&self) -> Option<&str> {
        Some(CUDA_EXECUTION_PROVIDER)
    }

    fn inputs(&self) -> impl IntoIterator<Item = OperatorInput> {
        let dtype = self.dtype;
        declared_inputs::<K::Input>(move |input| input_type(input, dtype))
    }

    fn outputs(&self) -> impl IntoIterator<Item = OperatorOutput> {
        [OperatorOutput::required(self.element_type())]
    }

    fn create_kernel<'attr>(&self, ctx: &KernelContext<'attr>) -> ort::Result<K> {
        K::create_kernel(ctx, self.dtype)
    }

    fn infer_shape(&self, ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
        K::infer_shape(ctx)
    }
}

/// ONNX Runtime's element type for T.
pub(crate) fn element_type(dtype: DeviceDtype) -> TensorElementType {
    match dtype {
        DeviceDtype::F32 => TensorElementType::Float32,
        DeviceDtype::F16 => TensorElementType::Float16,
        DeviceDtype::Bf16 => TensorElementType::Bfloat16,
    }
}

/// T's name in messages.
pub(crate) fn type_name(dtype: DeviceDtype) -> &'static str {
    match dtype {
        DeviceDtype::F32 => "float32",
        DeviceDtype::F16 => "float16",
        DeviceDtype::Bf16 => "bfloat16",
    }
}

/// A node's inputs as the CUDA kernels get them: each one's shape and device
/// pointer, indexed by input position (an absent optional input: empty shape, null pointer).
pub(crate) struct DeviceInputs {
    shapes: Vec<Vec<usize>>,
    pointers: Vec<*const c_void>,
    present: Vec<bool>,
}

impl DeviceInputs {
    /// Reads and checks the first `count` inputs: each present (but for `K::Input::OPTIONAL`), a tensor of
    /// its declared type (T or float32) and in GPU memory. ONNX Runtime matches inputs to the
    /// declared types when it picks the kernel, so these are the checks of a caller that bypassed
    /// that (and they keep the messages of every op in one wording).
    pub(crate) fn read<K: CudaOp>(
        ctx: &ComputeContext,
        node: &str,
        dtype: DeviceDtype,
    ) -> ort::Result<Self> {
        let count = input_count::<K::Input>(ctx, node)?;
        let len = K::Input::NODE_INPUTS.len();
        let mut inputs = Self {
            shapes: vec![Vec::new(); len],
            pointers: vec![std::ptr::null(); len],
            present: vec![false; len],
        };
        for &input in &K::Input::NODE_INPUTS[..count] {
            // An optional input left out, or given as an empty name, comes back from ONNX Runtime
            // as no value.
            let Some(value) = ctx.input(input.position())? else {
                if K::Input::OPTIONAL == Some(input) {
                    continue;
                }
                return Err(K::Input::fail(
                    node,
                    format!("input `{input}` is missing ({})", K::Input::REQUIRED),
                ));
            };
            let (expected, accepted) = if input.has_type_t() {
                (element_type(dtype), type_name(dtype))
            } else {
                (TensorElementType::Float32, "float32")
            };
            let unsupported =
                |found: String| K::Input::fail(node, input.unsupported(found, accepted));
            let tensor = value
                .downcast::<DynTensorValueType>()
                .map_err(|_| unsupported("a non-tensor value".into()))?;
            if *tensor.data_type() != expected {
                return Err(unsupported(format!("{:?}", tensor.data_type())));
            }
            let device = tensor.memory_info().allocation_device();
            if device != AllocationDevice::CUDA && device != AllocationDevice::CUDA_PINNED {
                return Err(K::Input::fail(
                    node,
                    format!(
                        "input `{input}` is in {device:?} memory; the CUDA kernel needs it in GPU memory"
                    ),
                ));
            }
            let index = input.position();
            inputs.shapes[index] = tensor.shape().iter().map(|&d| d.max(0) as usize).collect();
            inputs.pointers[index] = tensor.data_ptr();
            inputs.present[index] = true;
        }
        Ok(inputs)
    }

    /// The input's shape (empty when absent).
    pub(crate) fn shape(&self, index: usize) -> &[usize] {
        &self.shapes[index]
    }

    /// The input's device pointer (null when absent).
    pub(crate) fn pointer(&self, index: usize) -> *const c_void {
        self.pointers[index]
    }

    /// Whether the input was given.
    pub(crate) fn is_present(&self, index: usize) -> bool {
        self.present[index]
    }
}

/// Allocates output 0 (`name`) of `shape` from ONNX Runtime (the CUDA EP's arena) and returns its
/// device pointer.
pub(crate) fn device_output<K: CudaOp>(
    ctx: &ComputeContext,
    node: &str,
    name: &str,
    shape: Vec<i64>,
) -> ort::Result<*mut c_void> {
    let output = ctx.output(0, shape)?.ok_or_else(|| {
        K::Input::fail(
            node,
            format!("ONNX Runtime gave no buffer for output `{name}`"),
        )
    })?;
    let output = output
        .downcast::<DynTensorValueType>()
        .map_err(|e| K::Input::fail(node, format!("output `{name}` is not a tensor: {e}")))?;
    // `GetTensorMutableData` of ONNX Runtime's output buffer (ValueRefMut has no `data_ptr_mut`).
    Ok(output.data_ptr().cast_mut())
}

/// The provider's compute stream the kernels enqueue on (null: the default stream).
pub(crate) fn compute_stream(ctx: &ComputeContext) -> ort::Result<*mut c_void> {
    Ok(ctx
        .stream()?
        .map_or(std::ptr::null_mut(), |s| s.as_ptr().cast::<c_void>()))
}

/// `ai.groupmamba::SelectiveScan` version 1 on the CUDA execution provider, for one element type T
/// of `u`, `delta`, `B`, `C` and `y`.
pub type SelectiveScanCudaOperator = CudaOperator<SelectiveScanCudaKernel>;

/// Adds the CUDA operators (every T in [`SelectiveScanCudaOperator::ALL`]) to `domain`.
pub fn add_to(domain: OperatorDomain) -> ort::Result<OperatorDomain> {
    SelectiveScanCudaOperator::add_all(domain)
}

impl CudaOp for SelectiveScanCudaKernel {
    type Input = ScanInput;

    fn create_kernel(ctx: &KernelContext<'_>, dtype: DeviceDtype) -> ort::Result<Self> {
        let (node, directions) = parse_node(ctx)?;
        Ok(Self {
            node,
            directions,
            dtype,
        })
    }

    fn infer_shape(ctx: &mut ShapeInferenceContext) -> ort::Result<()> {
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
        let inputs = DeviceInputs::read::<Self>(ctx, node, self.dtype)?;
        let views: [&[usize]; 7] = std::array::from_fn(|i| inputs.shape(i));
        let shape = ScanShape::from_input_shapes(views).map_err(|e| fail(node, e))?;
        shape
            .check_directions(&self.directions)
            .map_err(|e| fail(node, e))?;
        let out_shape: Vec<i64> = shape
            .expected_shape(ScanInput::U)
            .iter()
            .map(|&d| d as i64)
            .collect();
        let y = device_output::<Self>(ctx, node, "y", out_shape)?;
        if shape.batch == 0 || shape.seq_len() == 0 || shape.channels == 0 {
            return Ok(());
        }
        let stream = compute_stream(ctx)?;
        let ptrs = DevicePointers {
            u: inputs.pointer(ScanInput::U.index()),
            delta: inputs.pointer(ScanInput::Delta.index()),
            a: inputs.pointer(ScanInput::A.index()).cast::<f32>(),
            b: inputs.pointer(ScanInput::B.index()),
            c: inputs.pointer(ScanInput::C.index()),
            d: inputs.pointer(ScanInput::D.index()).cast::<f32>(),
            delta_bias: inputs.pointer(ScanInput::DeltaBias.index()).cast::<f32>(),
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

/// Checks the operators of op `K` (shared by the three ops' tests): one per T in F32, F16, BF16
/// order, each on the CUDA EP with the op's name and version, declaring `types(T)` for its inputs.
#[cfg(test)]
pub(crate) fn assert_operators<K: CudaOp>(
    types: impl Fn(TensorElementType) -> Vec<TensorElementType>,
) {
    for op in CudaOperator::<K>::ALL {
        assert_eq!(op.execution_provider_type(), Some(CUDA_EXECUTION_PROVIDER));
        assert_eq!(op.name(), K::Input::OP_TYPE);
        assert_eq!(op.versions(), 1..=1);
        let inputs: Vec<OperatorInput> = op.inputs().into_iter().collect();
        assert_eq!(inputs.len(), K::Input::NODE_INPUTS.len());
        let declared: Vec<TensorElementType> = K::Input::NODE_INPUTS
            .iter()
            .map(|&input| input_type(input, op.dtype()))
            .collect();
        assert_eq!(declared, types(op.element_type()));
    }
    let dtypes: Vec<DeviceDtype> = CudaOperator::<K>::ALL.iter().map(|op| op.dtype()).collect();
    assert_eq!(
        dtypes,
        [DeviceDtype::F32, DeviceDtype::F16, DeviceDtype::Bf16]
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_operator_per_type_with_float32_parameters() {
        assert_operators::<SelectiveScanCudaKernel>(|t| {
            let f32 = TensorElementType::Float32;
            vec![t, t, f32, t, t, f32, f32]
        });
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
