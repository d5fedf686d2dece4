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

/// xorshift64*: deterministic test data without a dependency.
pub struct Rng(u64);

impl Rng {
    /// A stream for `seed` (any value, 0 included).
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    /// Uniform in [lo, hi), 24 random bits.
    pub fn uniform(&mut self, lo: f32, hi: f32) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let bits = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 40;
        lo + (hi - lo) * (bits as f32 / (1u64 << 24) as f32)
    }

    /// `len` uniform values in [lo, hi).
    pub fn vec(&mut self, len: usize, lo: f32, hi: f32) -> Vec<f32> {
        (0..len).map(|_| self.uniform(lo, hi)).collect()
    }
}

/// `n` uniform values in [lo, hi) from a fresh stream for `seed`.
pub fn random(seed: u64, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    Rng::new(seed).vec(n, lo, hi)
}
