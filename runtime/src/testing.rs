//! Helpers for this workspace's own tests (the runtime's integration tests and the `gm-tests`
//! crate), kept here so that both use one copy.

use crate::backend::ort::{self as ort_backend, OrtRuntime};

/// The process's ONNX Runtime, or `None` (with a notice) when there is none, unless
/// `GM_REQUIRE_ORT=1` (scripts/test.sh sets it), which makes a missing ONNX Runtime a failure.
pub fn ort_or_skip(test: &str) -> Option<&'static OrtRuntime> {
    match ort_backend::runtime() {
        Ok(rt) => {
            println!("{test}: {}", rt.describe());
            Some(rt)
        }
        Err(e) if std::env::var("GM_REQUIRE_ORT").as_deref() == Ok("1") => {
            panic!("{test}: GM_REQUIRE_ORT=1 but ONNX Runtime is not available: {e}")
        }
        Err(e) => {
            println!("{test}: SKIPPED (set GM_REQUIRE_ORT=1 to make this a failure): {e}");
            None
        }
    }
}
