//! `gm-ops`: the GroupMamba selective-scan operator, `ai.groupmamba::SelectiveScan` (v1).
//!
//! One ONNX node runs the selective scans of all G groups of a GroupMamba layer: the
//! feature map stays `[N, C, H, W]` in row-major spatial order, and each group of
//! `C/G` channels is scanned in its own direction (→, ↓, ←, ↑). The normative
//! description is `plugins/SPEC.md`; this crate holds
//!
//! - [`spec`]: the names (domain, op type, version, attribute), [`Direction`] and its
//!   step → row-major offset mapping, [`ScanShape`] and the shared [`ScanError`];
//! - [`cpu`]: the reference float32 kernel ([`selective_scan`]) every CPU adapter calls;
//! - `tract_op` (feature `tract`, on by default): the op for tract-onnx 0.23.9,
//!   installed with `gm_ops::tract_op::register(&mut onnx)`;
//! - `ort_op` (feature `ort`): the op for ONNX Runtime through the `ort` crate (CPU EP),
//!   registered with `SessionBuilder::with_operators(gm_ops::ort_op::domain()?)`; the same op
//!   ships as a custom-op library for any ONNX Runtime user (`plugins/ort-library`);
//! - [`norm`], `tract_norm_op`, `ort_norm_op`: the second op, `ai.groupmamba::GroupedLayerNorm`
//!   (SPEC.md §8): its contract and float32 reference kernel, and its tract and ONNX Runtime CPU
//!   adapters, installed by the same `tract_op::register` and `ort_op::domain()`;
//! - [`dwconv`], `tract_dwconv_op`, `ort_dwconv_op`: the third op, `ai.groupmamba::DepthwiseConv`
//!   (SPEC.md §9: depthwise K×K conv + bias, optional input bias, SiLU/GELU): its contract and
//!   float32 reference kernel, and its tract and ONNX Runtime CPU adapters, installed by the same
//!   two registration points;
//! - `cuda` (feature `cuda`): the CUDA kernels (`cuda/selective_scan.cu`, `cuda/layer_norm.cu`,
//!   `cuda/depthwise_conv.cu`, built by build.rs with nvcc and linked statically) behind safe
//!   launch wrappers;
//! - `ort_cuda_op`, `ort_cuda_norm_op`, `ort_cuda_dwconv_op` (features `ort` + `cuda`): the ops for
//!   ONNX Runtime's CUDA execution provider (float32, float16 and bfloat16 inputs, device
//!   pointers, the provider's compute stream), added to `ort_op::domain()` next to the CPU ops.
//!
//! Not covered yet: d_state N > 1 (GroupMamba uses N = 1), returning the last state,
//! z-gating inside the op, float16/bfloat16 in the float32 CPU kernel (the tract adapter
//! accepts float16 by converting at its boundary).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod dwconv;
pub mod fastmath;
pub mod norm;
#[cfg(all(feature = "ort", feature = "cuda"))]
pub mod ort_cuda_dwconv_op;
#[cfg(all(feature = "ort", feature = "cuda"))]
pub mod ort_cuda_norm_op;
#[cfg(all(feature = "ort", feature = "cuda"))]
pub mod ort_cuda_op;
#[cfg(feature = "ort")]
pub mod ort_dwconv_op;
#[cfg(feature = "ort")]
pub mod ort_norm_op;
#[cfg(feature = "ort")]
pub mod ort_op;
pub mod spec;
#[cfg(feature = "tract")]
pub mod tract_dwconv_op;
#[cfg(feature = "tract")]
pub mod tract_norm_op;
#[cfg(feature = "tract")]
pub mod tract_op;

pub use cpu::{selective_scan, selective_scan_to_vec, softplus, ScanInputs};
pub use spec::{
    Direction, ScanError, ScanInput, ScanShape, ATTR_DIRECTIONS, DOMAIN, OPSET_VERSION, OP_TYPE,
    SOFTPLUS_THRESHOLD,
};
