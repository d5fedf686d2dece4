//! `libgroupmamba_ops.so`: the `ai.groupmamba::SelectiveScan` operator (version 1, float32,
//! CPU) as an ONNX Runtime custom-op library.
//!
//! ONNX Runtime loads the library and calls [`RegisterCustomOps`] with the session options and
//! its own `OrtApiBase`:
//! - Python: `so = onnxruntime.SessionOptions(); so.register_custom_ops_library(path)`;
//! - C/C++: `OrtApi::RegisterCustomOpsLibrary_V2(options, path)`
//!   (`Ort::SessionOptions::RegisterCustomOpsLibrary(path)`);
//! - Rust (`ort`): `SessionBuilder::with_operator_library(path)`.
//!
//! The operator is `gm_ops::ort_op` (which calls the crate's one CPU kernel). The library asks
//! the caller's ONNX Runtime for API version 17, so it runs in ONNX Runtime 1.17 and later; an
//! older runtime gets an error status naming both versions. It depends on nothing but the C
//! library: no copy of ONNX Runtime is linked or loaded.

use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Mutex;

use ort::operator::OperatorDomain;
use ort::sys::{OrtApi, OrtApiBase, OrtErrorCode, OrtSessionOptions, OrtStatusPtr};
use ort::AsPointer;

/// The operator domain, created on the first registration and kept for the life of the
/// process: ONNX Runtime sessions hold a raw pointer to it.
struct SharedDomain(OperatorDomain);
// SAFETY: the domain is never mutated after creation; ONNX Runtime only reads it.
unsafe impl Send for SharedDomain {}
unsafe impl Sync for SharedDomain {}

static DOMAIN: Mutex<Option<&'static SharedDomain>> = Mutex::new(None);

/// Minimum ONNX Runtime minor version (= C API version) this library needs.
const MIN_MINOR: u32 = ort::MINOR_VERSION;

/// Registers the `ai.groupmamba` operator domain on `options`.
///
/// Returns null on success, else an `OrtStatus` (created with the caller's API) describing
/// the failure.
///
/// # Safety
/// `options` must be a valid `OrtSessionOptions*` and `api_base` the `OrtApiBase*` of the
/// ONNX Runtime that owns it, as ONNX Runtime passes them.
#[no_mangle]
pub unsafe extern "C" fn RegisterCustomOps(
    options: *mut OrtSessionOptions,
    api_base: *const OrtApiBase,
) -> OrtStatusPtr {
    if api_base.is_null() {
        // Without the API there is no way to build an error status.
        return OrtStatusPtr(std::ptr::null_mut());
    }
    // SAFETY: ONNX Runtime passes its own, valid OrtApiBase.
    let base = unsafe { &*api_base };
    match catch_unwind(AssertUnwindSafe(|| unsafe { register(options, base) })) {
        Ok(Ok(())) => OrtStatusPtr(std::ptr::null_mut()),
        Ok(Err(message)) => unsafe { error_status(base, &message) },
        Err(_) => unsafe {
            error_status(
                base,
                "groupmamba_ops: RegisterCustomOps panicked (see stderr)",
            )
        },
    }
}

unsafe fn register(options: *mut OrtSessionOptions, base: &OrtApiBase) -> Result<(), String> {
    let version = unsafe { version_string(base) };
    let minor = version
        .strip_prefix("1.")
        .and_then(|rest| rest.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(minor) if minor >= MIN_MINOR => (),
        _ => {
            return Err(format!(
                "groupmamba_ops needs ONNX Runtime >= 1.{MIN_MINOR} (C API version {MIN_MINOR}); \
                 this process runs ONNX Runtime {version}"
            ))
        }
    }
    let api = unsafe { (base.GetApi)(MIN_MINOR) };
    if api.is_null() {
        return Err(format!(
            "groupmamba_ops: ONNX Runtime {version} does not provide C API version {MIN_MINOR}"
        ));
    }
    // SAFETY: a non-null OrtApi of at least version MIN_MINOR, which is the layout ort uses.
    // `set_api` keeps the first API it is given; later calls come from the same runtime.
    ort::set_api(unsafe { (*api).clone() });

    let domain = shared_domain()?;
    if options.is_null() {
        return Err("groupmamba_ops: RegisterCustomOps got null session options".into());
    }
    let status = unsafe { ((*api).AddCustomOpDomain)(options, domain.0.ptr().cast_mut()) };
    if status.0.is_null() {
        Ok(())
    } else {
        let message = unsafe { CStr::from_ptr(((*api).GetErrorMessage)(status.0)) }
            .to_string_lossy()
            .into_owned();
        unsafe { ((*api).ReleaseStatus)(status.0) };
        Err(format!(
            "groupmamba_ops: adding the \"{}\" domain failed: {message}",
            gm_ops::DOMAIN
        ))
    }
}

fn shared_domain() -> Result<&'static SharedDomain, String> {
    let mut slot = DOMAIN.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(domain) = *slot {
        return Ok(domain);
    }
    let domain = gm_ops::ort_op::domain().map_err(|e| {
        format!(
            "groupmamba_ops: creating the \"{}\" operator domain failed: {e}",
            gm_ops::DOMAIN
        )
    })?;
    let domain: &'static SharedDomain = Box::leak(Box::new(SharedDomain(domain)));
    *slot = Some(domain);
    Ok(domain)
}

unsafe fn version_string(base: &OrtApiBase) -> String {
    let ptr: *const c_char = unsafe { (base.GetVersionString)() };
    if ptr.is_null() {
        return "(unknown version)".into();
    }
    unsafe { CStr::from_ptr(ptr) }
        .to_string_lossy()
        .into_owned()
}

/// An `OrtStatus` with `message`, made with the oldest API version (CreateStatus is in every
/// version), so that even a too-old runtime gets a readable error.
unsafe fn error_status(base: &OrtApiBase, message: &str) -> OrtStatusPtr {
    let api: *const OrtApi = unsafe { (base.GetApi)(1) };
    if api.is_null() {
        eprintln!("{message}");
        return OrtStatusPtr(std::ptr::null_mut());
    }
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    unsafe { ((*api).CreateStatus)(OrtErrorCode::ORT_FAIL, text.as_ptr()) }
}
