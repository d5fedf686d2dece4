//! The CUDA kernel (`cuda/selective_scan.cu`, feature `cuda`): a safe launch wrapper over its C ABI.
//! Every GPU adapter (the ONNX Runtime CUDA op, benchmarks) launches through [`launch`].
//!
//! Also the two host ↔ device copies a host holding device buffers needs ([`copy_to_device`],
//! [`copy_to_host`]: gm-run's I/O binding), through the CUDA runtime this crate links anyway; it
//! shares each GPU's primary context with any other runtime in the process (ONNX Runtime's).

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

extern "C" {
    fn cudaSetDevice(device: i32) -> i32;
    fn cudaMemcpy(dst: *mut c_void, src: *const c_void, bytes: usize, kind: i32) -> i32;
    fn cudaDeviceSynchronize() -> i32;
    fn cudaGetErrorString(error: i32) -> *const std::ffi::c_char;
}

/// `cudaMemcpyDefault`: the direction follows from the pointers (unified addressing).
const MEMCPY_DEFAULT: i32 = 4;

/// Copies `src` to device memory at `dst` on GPU `device` and returns once it is there (also
/// for other streams: a pageable copy may return before its DMA has landed, so the device is
/// synchronised).
///
/// # Safety
/// `dst` must be a device pointer of GPU `device` to at least `src.len()` writable bytes that no
/// kernel uses meanwhile.
pub unsafe fn copy_to_device(device: i32, dst: *mut c_void, src: &[u8]) -> Result<(), CudaError> {
    check("cudaSetDevice", cudaSetDevice(device))?;
    check(
        "cudaMemcpy (host to device)",
        cudaMemcpy(dst, src.as_ptr().cast(), src.len(), MEMCPY_DEFAULT),
    )?;
    check("cudaDeviceSynchronize", cudaDeviceSynchronize())
}

/// Copies `dst.len()` bytes of device memory at `src` on GPU `device` to `dst`, after the work
/// already queued on the device (any stream) has finished.
///
/// # Safety
/// `src` must be a device pointer of GPU `device` to at least `dst.len()` readable bytes.
pub unsafe fn copy_to_host(
    device: i32,
    dst: &mut [u8],
    src: *const c_void,
) -> Result<(), CudaError> {
    check("cudaSetDevice", cudaSetDevice(device))?;
    check("cudaDeviceSynchronize", cudaDeviceSynchronize())?;
    check(
        "cudaMemcpy (device to host)",
        cudaMemcpy(dst.as_mut_ptr().cast(), src, dst.len(), MEMCPY_DEFAULT),
    )
}

fn check(call: &'static str, code: i32) -> Result<(), CudaError> {
    if code == 0 {
        return Ok(());
    }
    // SAFETY: cudaGetErrorString returns a static NUL-terminated string for any code.
    let message = unsafe { std::ffi::CStr::from_ptr(cudaGetErrorString(code)) }
        .to_string_lossy()
        .into_owned();
    Err(CudaError {
        call,
        code,
        message,
    })
}

/// A CUDA runtime call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{call} failed: {message} (cudaError {code})")]
pub struct CudaError {
    pub call: &'static str,
    pub code: i32,
    pub message: String,
}

/// Why a launch did not happen: bad shapes/directions, or a CUDA error.
#[derive(Debug, thiserror::Error)]
pub enum CudaScanError {
    #[error(transparent)]
    Shape(#[from] ScanError),
    #[error("SelectiveScan CUDA kernel launch failed: cudaError {0}")]
    Launch(i32),
}
