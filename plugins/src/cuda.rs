//! The CUDA kernel (`cuda/selective_scan.cu`, feature `cuda`): a safe launch wrapper over its C ABI.
//! Every GPU adapter (the ONNX Runtime CUDA op, benchmarks) launches through [`launch`].

use std::ffi::c_void;

use crate::spec::{Direction, ScanError, ScanShape};

/// Element type of `u`, `delta`, `B`, `C` and `y` (state and arithmetic are FP32 regardless).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum DeviceDtype {
    F32 = 0,
    F16 = 1,
    Bf16 = 2,
}

/// Device pointers of one launch; `a`, `d`, `delta_bias` are FP32, the rest of type [`DeviceDtype`].
#[derive(Debug, Clone, Copy)]
pub struct DevicePointers {
    pub u: *const c_void,
    pub delta: *const c_void,
    pub a: *const f32,
    pub b: *const c_void,
    pub c: *const c_void,
    pub d: *const f32,
    pub delta_bias: *const f32,
    pub y: *mut c_void,
}

extern "C" {
    fn gm_selective_scan_cuda(
        dtype: i32,
        u: *const c_void,
        delta: *const c_void,
        a: *const f32,
        b: *const c_void,
        c: *const c_void,
        d: *const f32,
        delta_bias: *const f32,
        y: *mut c_void,
        batch: i64,
        channels: i64,
        groups: i64,
        height: i64,
        width: i64,
        directions: *const i64,
        stream: *mut c_void,
    ) -> i32;
}

/// Enqueues the scan on `stream` (a `cudaStream_t`; null = the default stream).
///
/// # Safety
/// Every pointer must be a device pointer to a buffer of the size `shape` implies for it (see
/// SPEC.md), valid until the work on `stream` completes; `y` must not alias an input.
pub unsafe fn launch(
    dtype: DeviceDtype,
    shape: &ScanShape,
    directions: &[Direction],
    ptrs: DevicePointers,
    stream: *mut c_void,
) -> Result<(), CudaScanError> {
    shape.validate()?;
    shape.check_directions(directions)?;
    let dirs: Vec<i64> = directions.iter().map(|d| d.as_i64()).collect();
    let rc = gm_selective_scan_cuda(
        dtype as i32,
        ptrs.u,
        ptrs.delta,
        ptrs.a,
        ptrs.b,
        ptrs.c,
        ptrs.d,
        ptrs.delta_bias,
        ptrs.y,
        shape.batch as i64,
        shape.channels as i64,
        shape.groups as i64,
        shape.height as i64,
        shape.width as i64,
        dirs.as_ptr(),
        stream,
    );
    if rc == 0 {
        Ok(())
    } else {
        Err(CudaScanError::Launch(rc))
    }
}

/// Why a launch did not happen: bad shapes/directions, or a CUDA error.
#[derive(Debug, thiserror::Error)]
pub enum CudaScanError {
    #[error(transparent)]
    Shape(#[from] ScanError),
    #[error("SelectiveScan CUDA kernel launch failed: cudaError {0}")]
    Launch(i32),
}
