//! `exp` and `softplus` for float32 written out in arithmetic, for the CPU kernel's elementwise
//! pass: libm calls (`expf`, `log1pf`) cannot be vectorised, cost 10–40 ns each depending on the
//! C library, and slow down further on subnormal results. These are branch-free (selects only),
//! so a loop over a row compiles to SIMD, and they never produce a subnormal.
//!
//! Accuracy (checked against f64 in the tests below): `exp` within 2 ulp over [−87, 88.3];
//! `softplus` within 3e-7 relative. The spec allows such rounding differences (SPEC.md §3).

use crate::spec::SOFTPLUS_THRESHOLD;

/// Below this, `exp` returns 0 (the true value is < 1.7e-38, at the subnormal boundary).
const EXP_MIN: f32 = -87.0;
/// Above this, `exp` returns +∞ (the true value is within 2% of f32::MAX).
const EXP_MAX: f32 = 88.3;
/// ln 2 split so that k·LN2_HI is exact for |k| ≤ 2^16 (low 8 bits of the significand zero).
const LN2_HI: f32 = 0.693_145_75;
const LN2_LO: f32 = 1.428_606_8e-6;
/// Adding and subtracting 1.5·2^23 rounds a float of magnitude < 2^22 to an integer (ties to even).
const ROUND_MAGIC: f32 = 12_582_912.0;

/// e^x. NaN stays NaN; x > 88.3 gives +∞; x < −87 gives 0 (never a subnormal).
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(EXP_MIN, EXP_MAX);
    // x = k·ln2 + r, |r| ≤ ln2/2; e^x = 2^k · e^r.
    let v = xc * std::f32::consts::LOG2_E + ROUND_MAGIC;
    let k = v - ROUND_MAGIC;
    let r = (xc - k * LN2_HI) - k * LN2_LO;
    // Taylor series of e^r to r^7/7!: truncation below 5.3e-9 relative for |r| ≤ 0.347.
    let p = 1.0
        + r * (1.0
            + r * (1.0 / 2.0
                + r * (1.0 / 6.0
                    + r * (1.0 / 24.0
                        + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    // 2^k from the exponent bits; k ∈ [−126, 127], so the scale is a normal float. k is read
    // from v's low significand bits (v = 1.5·2^23 + k), not with `as i32`, whose saturating
    // conversion does not vectorise.
    let k_int = (v.to_bits() as i32).wrapping_sub(ROUND_MAGIC.to_bits() as i32);
    let scale = f32::from_bits((k_int.wrapping_add(127) as u32) << 23);
    let y = p * scale;
    let y = if x > EXP_MAX { f32::INFINITY } else { y };
    if x < EXP_MIN {
        0.0
    } else {
        y
    }
}

/// `softplus(x) = x` if `x > 20`, else `ln(1 + e^x)` (PyTorch's default threshold, the rule of
/// the official kernel), evaluated as `max(x, 0) + log1p(e^−|x|)` with
/// `log1p(e) = 2·atanh(s) = 2(s + s³/3 + … + s¹³/13)`, `s = e/(2+e) ≤ 1/3` (next term
/// < 1e-8). NaN propagates; −∞ gives 0.
#[inline(always)]
pub fn softplus(x: f32) -> f32 {
    let e = exp(-x.abs());
    let s = e / (2.0 + e);
    let s2 = s * s;
    let series = 2.0
        * s
        * (1.0
            + s2 * (1.0 / 3.0
                + s2 * (1.0 / 5.0
                    + s2 * (1.0 / 7.0
                        + s2 * (1.0 / 9.0 + s2 * (1.0 / 11.0 + s2 * (1.0 / 13.0)))))));
    let v = x.max(0.0) + series;
    if x > SOFTPLUS_THRESHOLD {
        x
    } else {
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ulps(a: f32, b: f32) -> i64 {
        (a.to_bits() as i64 - b.to_bits() as i64).abs()
    }

    #[test]
    fn exp_matches_f64_within_2_ulp() {
        let mut worst = 0;
        let mut x = EXP_MIN;
        while x <= EXP_MAX {
            let want = (x as f64).exp() as f32;
            worst = worst.max(ulps(exp(x), want));
            x += 1.37e-3;
        }
        for x in [-1e-30f32, 0.0, 1e-30, -0.5, 0.5, -1.0, 1.0, -10.0, 10.0] {
            worst = worst.max(ulps(exp(x), (x as f64).exp() as f32));
        }
        assert!(worst <= 2, "worst {worst} ulp");
    }

    #[test]
    fn exp_edges() {
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(100.0), f32::INFINITY);
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-90.0), 0.0);
        assert!(exp(-87.0).is_normal());
        assert!(exp(88.3).is_finite());
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn softplus_matches_f64() {
        let mut worst = 0f64;
        let mut x = -60.0f32;
        while x <= 30.0 {
            let xd = x as f64;
            let want = if x > 20.0 { xd } else { xd.exp().ln_1p() };
            let got = softplus(x) as f64;
            worst = worst.max((got - want).abs() / want.abs().max(f64::MIN_POSITIVE));
            x += 7.3e-4;
        }
        assert!(worst < 3e-7, "worst relative error {worst:e}");
    }

    #[test]
    fn softplus_edges() {
        assert_eq!(softplus(25.0), 25.0);
        assert_eq!(softplus(100.0), 100.0);
        assert_eq!(softplus(20.000_002), 20.000_002);
        assert!((softplus(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert!((softplus(20.0) - 20.0).abs() < 1e-6);
        assert!(softplus(f32::NAN).is_nan());
        assert_eq!(softplus(f32::NEG_INFINITY), 0.0);
        assert_eq!(softplus(f32::INFINITY), f32::INFINITY);
        assert!(softplus(-100.0) >= 0.0 && softplus(-100.0) < 1e-30);
    }
}
