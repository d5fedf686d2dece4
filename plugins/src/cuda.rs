//! The CUDA kernels (feature `cuda`): safe launch wrappers over their C ABI. Every GPU adapter (the
//! ONNX Runtime CUDA ops, benchmarks) launches through [`launch`] (`cuda/selective_scan.cu`,
//! `SelectiveScan`), [`launch_grouped_layer_norm`] (`cuda/layer_norm.cu`, `GroupedLayerNorm`) or
//! [`launch_depthwise_conv`] (`cuda/depthwise_conv.cu`, `DepthwiseConv`).
//!
//! Also the two host ↔ device copies a host holding device buffers needs ([`copy_to_device`],
//! [`copy_to_host`]: gm-run's I/O binding), through the CUDA runtime this crate links anyway; it
//! shares each GPU's primary context with any other runtime in the process (ONNX Runtime's).

use std::ffi::c_void;

use crate::dwconv::{check_kernel, ConvAttributes, ConvError, ConvShape};
use crate::norm::{NormAttributes, NormError, NormShape, MAX_GROUP_WIDTH};
use crate::spec::{Direction, ScanError, ScanShape};

/// Element type T of a kernel's tensors: `u`, `delta`, `B`, `C` and `y` of `SelectiveScan`, `X`,
/// `Gate` and `Y` of `GroupedLayerNorm`, `X` and `Y` of `DepthwiseConv` (state and arithmetic are
/// FP32 regardless). The discriminants are the kernels' C ABI codes.
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

/// Device pointers of one `GroupedLayerNorm` launch: `x`, `gate` and `y` of type [`DeviceDtype`],
/// `scale` and `bias` FP32. A null `gate` means the node has no `Gate` input.
#[derive(Debug, Clone, Copy)]
pub struct NormDevicePointers {
    pub x: *const c_void,
    pub scale: *const f32,
    pub bias: *const f32,
    pub gate: *const c_void,
    pub y: *mut c_void,
}

extern "C" {
    fn gm_grouped_layer_norm_cuda(
        dtype: i32,
        x: *const c_void,
        scale: *const f32,
        bias: *const f32,
        gate: *const c_void,
        y: *mut c_void,
        rows: i64,
        channels: i64,
        groups: i64,
        epsilon: f32,
        gate_silu: i32,
        stream: *mut c_void,
    ) -> i32;
}

/// Enqueues `GroupedLayerNorm` on `stream` (a `cudaStream_t`; null = the default stream). An empty
/// `shape` (no rows or no channels) enqueues nothing.
///
/// `shape` and `attrs` are checked again here (their fields are public, and the kernel keeps a
/// group in registers, so `d` ≤ [`MAX_GROUP_WIDTH`] is a hard limit), before any pointer is used:
/// what the C side would only report as `cudaErrorInvalidValue` gets its [`NormError`].
///
/// # Safety
/// `x`, `y` (and `gate` when not null) must be device pointers to `shape.len()` elements of
/// `dtype`, `scale` and `bias` to `shape.channels` FP32 values, all valid until the work on
/// `stream` completes; `y` must not alias an input.
pub unsafe fn launch_grouped_layer_norm(
    dtype: DeviceDtype,
    shape: &NormShape,
    attrs: &NormAttributes,
    ptrs: NormDevicePointers,
    stream: *mut c_void,
) -> Result<(), CudaNormError> {
    check_norm_launch(shape, attrs)?;
    if shape.is_empty() {
        return Ok(());
    }
    let missing = [
        ("X", ptrs.x.is_null()),
        ("Scale", ptrs.scale.is_null()),
        ("Bias", ptrs.bias.is_null()),
        ("Y", ptrs.y.is_null()),
    ];
    if let Some((name, _)) = missing.into_iter().find(|&(_, null)| null) {
        return Err(CudaNormError::NullPointer(name));
    }
    let rc = gm_grouped_layer_norm_cuda(
        dtype as i32,
        ptrs.x,
        ptrs.scale,
        ptrs.bias,
        ptrs.gate,
        ptrs.y,
        shape.rows as i64,
        shape.channels as i64,
        shape.groups as i64,
        attrs.epsilon,
        i32::from(attrs.gate_silu),
        stream,
    );
    if rc == 0 {
        Ok(())
    } else {
        Err(CudaNormError::Launch(rc))
    }
}

/// The checks of [`launch_grouped_layer_norm`] that need no pointer.
fn check_norm_launch(shape: &NormShape, attrs: &NormAttributes) -> Result<(), CudaNormError> {
    if shape.groups != attrs.groups {
        return Err(CudaNormError::GroupsMismatch {
            shape: shape.groups,
            attribute: attrs.groups,
        });
    }
    if shape.groups == 0 {
        return Err(NormError::BadGroups(0).into());
    }
    if !(attrs.epsilon.is_finite() && attrs.epsilon >= 0.0) {
        return Err(NormError::BadEpsilon(attrs.epsilon).into());
    }
    if !shape.channels.is_multiple_of(shape.groups) {
        return Err(NormError::GroupsDoNotDivide {
            channels: shape.channels,
            groups: shape.groups,
            x_shape: vec![shape.rows, shape.channels],
        }
        .into());
    }
    if shape.group_width() > MAX_GROUP_WIDTH {
        return Err(NormError::GroupTooWide {
            width: shape.group_width(),
            channels: shape.channels,
            groups: shape.groups,
        }
        .into());
    }
    let elements = shape.rows.checked_mul(shape.channels);
    if elements.is_none_or(|n| i64::try_from(n).is_err()) {
        return Err(CudaNormError::TooLarge {
            rows: shape.rows,
            channels: shape.channels,
        });
    }
    Ok(())
}

/// Device pointers of one `DepthwiseConv` launch: `x` and `y` of type [`DeviceDtype`], `w`, `b` and
/// `input_bias` FP32. A null `input_bias` means the node has no `InputBias` input.
#[derive(Debug, Clone, Copy)]
pub struct ConvDevicePointers {
    pub x: *const c_void,
    pub w: *const f32,
    pub b: *const f32,
    pub input_bias: *const f32,
    pub y: *mut c_void,
}

extern "C" {
    fn gm_depthwise_conv_cuda(
        dtype: i32,
        x: *const c_void,
        w: *const f32,
        b: *const f32,
        input_bias: *const f32,
        y: *mut c_void,
        n: i64,
        c: i64,
        h: i64,
        w_: i64,
        k: i64,
        activation: i32,
        channels_last: i32,
        stream: *mut c_void,
    ) -> i32;
}

/// Largest `C`, `H` and `W` the `DepthwiseConv` kernel takes (it keeps channels and tile
/// coordinates in 32-bit integers).
pub const MAX_CONV_DIM: usize = 1 << 30;

/// Enqueues `DepthwiseConv` on `stream` (a `cudaStream_t`; null = the default stream), `X` and
/// `Y` in `shape.layout` (`attrs.layout` is not read: the shape was made from it). An empty
/// `shape` (N, C, H or W = 0) enqueues nothing.
///
/// `shape` is checked again here (its fields are public, and the kernel unrolls the taps, so K odd
/// and ≤ [`crate::dwconv::MAX_KERNEL`] is a hard limit), before any pointer is used: what the C
/// side would only report as `cudaErrorInvalidValue` gets its [`ConvError`] or [`CudaConvError`].
///
/// # Safety
/// `x` and `y` must be device pointers to `shape.len()` elements of `dtype`, `w` to
/// `shape.weight_len()` FP32 values, `b` (and `input_bias` when not null) to `shape.channels` FP32
/// values, all valid until the work on `stream` completes; `y` must not alias an input.
pub unsafe fn launch_depthwise_conv(
    dtype: DeviceDtype,
    shape: &ConvShape,
    attrs: &ConvAttributes,
    ptrs: ConvDevicePointers,
    stream: *mut c_void,
) -> Result<(), CudaConvError> {
    check_conv_launch(shape)?;
    if conv_is_empty(shape) {
        return Ok(());
    }
    let missing = [
        ("X", ptrs.x.is_null()),
        ("W", ptrs.w.is_null()),
        ("B", ptrs.b.is_null()),
        ("Y", ptrs.y.is_null()),
    ];
    if let Some((name, _)) = missing.into_iter().find(|&(_, null)| null) {
        return Err(CudaConvError::NullPointer(name));
    }
    let rc = gm_depthwise_conv_cuda(
        dtype as i32,
        ptrs.x,
        ptrs.w,
        ptrs.b,
        ptrs.input_bias,
        ptrs.y,
        shape.batch as i64,
        shape.channels as i64,
        shape.height as i64,
        shape.width as i64,
        shape.kernel as i64,
        attrs.activation.as_code(),
        shape.layout.as_attribute() as i32,
        stream,
    );
    if rc == 0 {
        Ok(())
    } else {
        Err(CudaConvError::Launch(rc))
    }
}

/// Whether `X` has no element (without forming N·C·H·W, which may overflow for a refused shape).
fn conv_is_empty(shape: &ConvShape) -> bool {
    [shape.batch, shape.channels, shape.height, shape.width].contains(&0)
}

/// The checks of [`launch_depthwise_conv`] that need no pointer.
fn check_conv_launch(shape: &ConvShape) -> Result<(), CudaConvError> {
    check_kernel(shape.kernel)?;
    let too_large = || CudaConvError::TooLarge {
        shape: [shape.batch, shape.channels, shape.height, shape.width],
    };
    if conv_is_empty(shape) {
        return Ok(());
    }
    if [shape.channels, shape.height, shape.width]
        .iter()
        .any(|&d| d > MAX_CONV_DIM)
    {
        return Err(too_large());
    }
    let elements = [shape.channels, shape.height, shape.width]
        .iter()
        .try_fold(shape.batch, |acc, &d| acc.checked_mul(d));
    if elements.is_none_or(|n| i64::try_from(n).is_err()) {
        return Err(too_large());
    }
    Ok(())
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

/// Why a `GroupedLayerNorm` launch did not happen: bad shapes/attributes, or a CUDA error.
#[derive(Debug, thiserror::Error)]
pub enum CudaNormError {
    #[error(transparent)]
    Shape(#[from] NormError),
    #[error("shape has groups = {shape} but attribute `groups` = {attribute}")]
    GroupsMismatch { shape: usize, attribute: usize },
    #[error(
        "{rows} rows × {channels} channels is more elements than the kernel indexes (2^63 − 1)"
    )]
    TooLarge { rows: usize, channels: usize },
    #[error("device pointer of `{0}` is null")]
    NullPointer(&'static str),
    #[error("GroupedLayerNorm CUDA kernel launch failed: cudaError {0}")]
    Launch(i32),
}

/// Why a `DepthwiseConv` launch did not happen: bad shapes, or a CUDA error.
#[derive(Debug, thiserror::Error)]
pub enum CudaConvError {
    #[error(transparent)]
    Shape(#[from] ConvError),
    #[error(
        "X of shape {shape:?} is larger than the kernel indexes (C, H, W ≤ 2^30, N·C·H·W ≤ 2^63 − 1)"
    )]
    TooLarge { shape: [usize; 4] },
    #[error("device pointer of `{0}` is null")]
    NullPointer(&'static str),
    #[error("DepthwiseConv CUDA kernel launch failed: cudaError {0}")]
    Launch(i32),
}

/// Why a launch did not happen: bad shapes/directions, or a CUDA error.
#[derive(Debug, thiserror::Error)]
pub enum CudaScanError {
    #[error(transparent)]
    Shape(#[from] ScanError),
    #[error("SelectiveScan CUDA kernel launch failed: cudaError {0}")]
    Launch(i32),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(rows: usize, channels: usize, groups: usize) -> NormShape {
        NormShape {
            rows,
            channels,
            groups,
        }
    }

    fn attrs(groups: usize) -> NormAttributes {
        NormAttributes {
            groups,
            ..NormAttributes::default()
        }
    }

    #[test]
    fn norm_launch_checks_shape_and_attributes_before_any_pointer() {
        assert!(check_norm_launch(&shape(7, 348, 4), &attrs(4)).is_ok());
        assert!(check_norm_launch(&shape(0, 0, 1), &attrs(1)).is_ok());
        let e = check_norm_launch(&shape(7, 348, 4), &attrs(1)).unwrap_err();
        assert!(matches!(e, CudaNormError::GroupsMismatch { .. }), "{e}");
        let e = check_norm_launch(&shape(7, 348, 0), &attrs(0)).unwrap_err();
        assert!(
            matches!(e, CudaNormError::Shape(NormError::BadGroups(0))),
            "{e}"
        );
        let e = check_norm_launch(&shape(7, 6, 4), &attrs(4)).unwrap_err();
        assert!(e.to_string().contains("not divisible"), "{e}");
        let e = check_norm_launch(&shape(1, 2048, 1), &attrs(1)).unwrap_err();
        assert!(e.to_string().contains("wider than"), "{e}");
        let nan = NormAttributes {
            epsilon: f32::NAN,
            ..attrs(1)
        };
        let e = check_norm_launch(&shape(1, 8, 1), &nan).unwrap_err();
        assert!(
            matches!(e, CudaNormError::Shape(NormError::BadEpsilon(_))),
            "{e}"
        );
        let e = check_norm_launch(&shape(usize::MAX / 2, 4, 1), &attrs(1)).unwrap_err();
        assert!(matches!(e, CudaNormError::TooLarge { .. }), "{e}");
    }

    #[test]
    fn norm_launch_refuses_null_pointers_of_non_empty_tensors() {
        let null = NormDevicePointers {
            x: std::ptr::null(),
            scale: std::ptr::null(),
            bias: std::ptr::null(),
            gate: std::ptr::null(),
            y: std::ptr::null_mut(),
        };
        // SAFETY: refused before the kernel is reached (null X), or empty (nothing is touched).
        let e = unsafe {
            launch_grouped_layer_norm(
                DeviceDtype::F32,
                &shape(2, 8, 1),
                &attrs(1),
                null,
                std::ptr::null_mut(),
            )
        }
        .unwrap_err();
        assert!(matches!(e, CudaNormError::NullPointer("X")), "{e}");
        // SAFETY: as above.
        let empty = unsafe {
            launch_grouped_layer_norm(
                DeviceDtype::F16,
                &shape(0, 8, 1),
                &attrs(1),
                null,
                std::ptr::null_mut(),
            )
        };
        assert!(empty.is_ok());
    }

    fn conv(
        batch: usize,
        channels: usize,
        height: usize,
        width: usize,
        kernel: usize,
    ) -> ConvShape {
        ConvShape {
            batch,
            channels,
            height,
            width,
            kernel,
            layout: crate::dwconv::Layout::ChannelsFirst,
        }
    }

    #[test]
    fn conv_launch_checks_the_shape_before_any_pointer() {
        assert!(check_conv_launch(&conv(128, 64, 56, 56, 3)).is_ok());
        assert!(check_conv_launch(&conv(1, 3, 1, 1, 7)).is_ok());
        assert!(check_conv_launch(&conv(0, 3, 5, 5, 1)).is_ok());
        let e = check_conv_launch(&conv(1, 3, 5, 5, 4)).unwrap_err();
        assert!(
            matches!(e, CudaConvError::Shape(ConvError::EvenKernel(4))),
            "{e}"
        );
        let e = check_conv_launch(&conv(1, 3, 5, 5, 9)).unwrap_err();
        assert!(
            matches!(e, CudaConvError::Shape(ConvError::KernelTooLarge(9))),
            "{e}"
        );
        // An empty X still needs a valid K (the C side checks K first too).
        assert!(check_conv_launch(&conv(0, 3, 5, 5, 2)).is_err());
        let e = check_conv_launch(&conv(1, 1, MAX_CONV_DIM + 1, 1, 3)).unwrap_err();
        assert!(matches!(e, CudaConvError::TooLarge { .. }), "{e}");
        let e = check_conv_launch(&conv(usize::MAX / 4, 4, 4, 4, 3)).unwrap_err();
        assert!(matches!(e, CudaConvError::TooLarge { .. }), "{e}");
        // A zero dimension with huge others is empty, not an overflow.
        assert!(check_conv_launch(&conv(0, usize::MAX, usize::MAX, usize::MAX, 3)).is_ok());
    }

    #[test]
    fn conv_launch_refuses_null_pointers_of_non_empty_tensors() {
        let null = ConvDevicePointers {
            x: std::ptr::null(),
            w: std::ptr::null(),
            b: std::ptr::null(),
            input_bias: std::ptr::null(),
            y: std::ptr::null_mut(),
        };
        let attrs = ConvAttributes::default();
        // SAFETY: refused before the kernel is reached (null X), or empty (nothing is touched).
        let e = unsafe {
            launch_depthwise_conv(
                DeviceDtype::F32,
                &conv(1, 2, 3, 3, 3),
                &attrs,
                null,
                std::ptr::null_mut(),
            )
        }
        .unwrap_err();
        assert!(matches!(e, CudaConvError::NullPointer("X")), "{e}");
        // SAFETY: as above.
        let empty = unsafe {
            launch_depthwise_conv(
                DeviceDtype::Bf16,
                &conv(2, 0, 3, 3, 3),
                &attrs,
                null,
                std::ptr::null_mut(),
            )
        };
        assert!(empty.is_ok());
    }
}
