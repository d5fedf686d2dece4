//! Error statistics of one tensor against its reference.
//!
//! Everything is accumulated in f64 over the flattened tensors (same shape required):
//! - `max_abs` = max |a − r|; `mean_abs` = mean |a − r|;
//! - `max_rel` = max |a − r| / |r| over the elements with |r| ≥ 1e-3 · max |r|: relative error is
//!   meaningless at the zero crossings every activation has, so elements smaller than a thousandth
//!   of the tensor's scale are left out of this one figure (they still count in every other one);
//! - `cosine` = ⟨a, r⟩ / (‖a‖ ‖r‖) (1 when both are zero, 0 when only one is);
//! - for logits ([`TopK`]): per sample, whether the top-1 class agrees and how many of the
//!   reference's top-5 classes are in the model's top 5;
//! - for the output of one group's SSM (a name containing `mamba_g{k}`, layout (B, H, W, d)),
//!   [`ScanProfile`]: the error along the sequence position of that group's scan direction.
//!
//! Non-finite values are counted, and excluded from the sums so one NaN does not hide the rest.

/// Fraction of a tensor's largest |reference| below which elements are left out of `max_rel`.
pub const REL_FLOOR: f64 = 1e-3;
/// Number of bins of a scan profile (deciles; fewer when the sequence is shorter).
pub const PROFILE_BINS: usize = 10;

/// Statistics of `actual` against `reference` (same length; see the module doc).
#[derive(Debug, Clone, PartialEq)]
pub struct Stats {
    pub elements: usize,
    pub max_abs: f64,
    /// Flat index of the element with the largest |a − r|.
    pub max_abs_at: usize,
    pub max_rel: f64,
    pub mean_abs: f64,
    pub cosine: f64,
    /// max |r|: the reference's scale.
    pub ref_absmax: f64,
    /// NaN/Inf values in the model's output where the reference is finite.
    pub nonfinite: usize,
}

/// Computes [`Stats`]; `actual.len()` must equal `reference.len()`.
pub fn stats(actual: &[f32], reference: &[f32]) -> Stats {
    assert_eq!(
        actual.len(),
        reference.len(),
        "stats of tensors of different sizes"
    );
    let ref_absmax = reference
        .iter()
        .filter(|r| r.is_finite())
        .fold(0.0f64, |m, r| m.max(r.abs() as f64));
    let rel_floor = REL_FLOOR * ref_absmax;
    let (mut max_abs, mut max_abs_at, mut max_rel, mut sum_abs) = (0.0f64, 0usize, 0.0f64, 0.0f64);
    let (mut dot, mut na, mut nr) = (0.0f64, 0.0f64, 0.0f64);
    let mut nonfinite = 0usize;
    let mut counted = 0usize;
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        if !r.is_finite() {
            continue;
        }
        if !a.is_finite() {
            nonfinite += 1;
            continue;
        }
        let (a, r) = (a as f64, r as f64);
        let d = (a - r).abs();
        if d > max_abs {
            max_abs = d;
            max_abs_at = i;
        }
        if r.abs() >= rel_floor && r != 0.0 {
            max_rel = max_rel.max(d / r.abs());
        }
        sum_abs += d;
        dot += a * r;
        na += a * a;
        nr += r * r;
        counted += 1;
    }
    let cosine = match (na > 0.0, nr > 0.0) {
        (true, true) => dot / (na.sqrt() * nr.sqrt()),
        (false, false) => 1.0,
        _ => 0.0,
    };
    Stats {
        elements: actual.len(),
        max_abs,
        max_abs_at,
        max_rel,
        mean_abs: if counted > 0 {
            sum_abs / counted as f64
        } else {
            0.0
        },
        cosine,
        ref_absmax,
        nonfinite,
    }
}

/// The largest elementwise ratio |a − r| / (atol + rtol·|r|) and where it is: ≤ 1 means every
/// element passes `numpy.allclose(a, r, rtol, atol)`. Non-finite model values give infinity.
pub fn allclose_ratio(actual: &[f32], reference: &[f32], atol: f64, rtol: f64) -> (f64, usize) {
    let mut worst = (0.0f64, 0usize);
    for (i, (&a, &r)) in actual.iter().zip(reference).enumerate() {
        if !r.is_finite() {
            continue;
        }
        let ratio = if !a.is_finite() {
            f64::INFINITY
        } else {
            let d = (a as f64 - r as f64).abs();
            let bound = atol + rtol * (r as f64).abs();
            if bound > 0.0 {
                d / bound
            } else if d == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        };
        if ratio > worst.0 {
            worst = (ratio, i);
        }
    }
    worst
}

/// Top-1 / top-5 agreement over the samples of a logits tensor (last axis = classes).
#[derive(Debug, Clone, PartialEq)]
pub struct TopK {
    pub samples: usize,
    /// Samples whose arg-max class agrees.
    pub top1_agree: usize,
    /// For each sample whose top-1 differs: the reference's margin between its first and second
    /// class. A flip needs an error of at least half the margin, so a flip with a margin larger
    /// than twice the allowed error is a real disagreement, not a near-tie (see `tolerance`).
    pub disagree_margins: Vec<f64>,
    /// Mean over samples of |top5(a) ∩ top5(r)| / 5 (with fewer than 5 classes, of that many).
    pub top5_overlap: f64,
}

/// [`TopK`] for `[.., classes]` tensors; `None` for fewer than 2 classes.
pub fn topk(actual: &[f32], reference: &[f32], classes: usize) -> Option<TopK> {
    if classes < 2 || actual.len() != reference.len() || !actual.len().is_multiple_of(classes) {
        return None;
    }
    let samples = actual.len() / classes;
    let k = classes.min(5);
    let (mut top1_agree, mut margins, mut overlap) = (0usize, Vec::new(), 0.0f64);
    for s in 0..samples {
        let a = &actual[s * classes..(s + 1) * classes];
        let r = &reference[s * classes..(s + 1) * classes];
        let ta = top_indices(a, k);
        let tr = top_indices(r, k);
        if ta[0] == tr[0] {
            top1_agree += 1;
        } else {
            margins.push((r[tr[0]] - r[tr[1]]) as f64);
        }
        overlap += ta.iter().filter(|i| tr.contains(i)).count() as f64 / k as f64;
    }
    Some(TopK {
        samples,
        top1_agree,
        disagree_margins: margins,
        top5_overlap: overlap / samples.max(1) as f64,
    })
}

/// Indices of the `k` largest values, largest first (NaN sorts lowest; ties by lower index).
fn top_indices(v: &[f32], k: usize) -> Vec<usize> {
    let key = |x: f32| if x.is_nan() { f32::NEG_INFINITY } else { x };
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&i, &j| key(v[j]).total_cmp(&key(v[i])).then(i.cmp(&j)));
    idx.truncate(k);
    idx
}

/// The scan direction of GroupMamba's group k (official `CrossScan_k`), on an H×W raster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScanDirection {
    /// g1 →: row-major, s = h·W + w.
    Right,
    /// g2 ↓: column-major, s = w·H + h.
    Down,
    /// g3 ←: g1 reversed, s = L − 1 − (h·W + w).
    Left,
    /// g4 ↑: g2 reversed, s = L − 1 − (w·H + h).
    Up,
}

impl ScanDirection {
    /// The direction of a tensor named `….mamba_g{k}` (k = 1..4), else `None`.
    pub fn of_tensor(name: &str) -> Option<Self> {
        let k = name.rsplit_once("mamba_g")?.1;
        Some(match k {
            "1" => Self::Right,
            "2" => Self::Down,
            "3" => Self::Left,
            "4" => Self::Up,
            _ => return None,
        })
    }

    pub fn arrow(self) -> &'static str {
        match self {
            Self::Right => "→",
            Self::Down => "↓",
            Self::Left => "←",
            Self::Up => "↑",
        }
    }

    pub fn group(self) -> usize {
        match self {
            Self::Right => 1,
            Self::Down => 2,
            Self::Left => 3,
            Self::Up => 4,
        }
    }

    /// Sequence position of pixel (h, w) on an `height`×`width` raster.
    pub fn position(self, h: usize, w: usize, height: usize, width: usize) -> usize {
        let l = height * width;
        match self {
            Self::Right => h * width + w,
            Self::Down => w * height + h,
            Self::Left => l - 1 - (h * width + w),
            Self::Up => l - 1 - (w * height + h),
        }
    }
}

/// Error of one group's SSM output along its scan: the sequence (length L = H·W) is cut into
/// [`PROFILE_BINS`] equal parts in scan order, and each part gets the largest |a − r| of its
/// positions (over batch and channels). A wrong direction or a state that leaks in from elsewhere
/// shows as error from the very first positions; error that accumulates in the recurrence (a
/// wrong decay, lost precision in the state) grows towards the end.
#[derive(Debug, Clone, PartialEq)]
pub struct ScanProfile {
    pub direction: ScanDirection,
    pub height: usize,
    pub width: usize,
    /// Max abs error per bin, first bin = start of the scan.
    pub bins: Vec<f64>,
    /// Max abs error per sequence position (scan order), length L.
    pub per_position: Vec<f64>,
}

impl ScanProfile {
    /// First scan position whose error is above `threshold`.
    pub fn first_above(&self, threshold: f64) -> Option<usize> {
        self.per_position.iter().position(|&e| e > threshold)
    }
}

/// The [`ScanProfile`] of a (B, H, W, d) tensor named `….mamba_g{k}`; `None` for other names or
/// shapes.
pub fn scan_profile(
    name: &str,
    shape: &[usize],
    actual: &[f32],
    reference: &[f32],
) -> Option<ScanProfile> {
    let direction = ScanDirection::of_tensor(name)?;
    let [batch, height, width, channels] = *shape else {
        return None;
    };
    let l = height * width;
    if l == 0 || batch * l * channels != actual.len() || actual.len() != reference.len() {
        return None;
    }
    let mut per_position = vec![0.0f64; l];
    for b in 0..batch {
        for h in 0..height {
            for w in 0..width {
                let base = ((b * height + h) * width + w) * channels;
                let err = (base..base + channels)
                    .map(|i| {
                        let (a, r) = (actual[i], reference[i]);
                        if !a.is_finite() && r.is_finite() {
                            f64::INFINITY
                        } else {
                            (a as f64 - r as f64).abs()
                        }
                    })
                    .fold(0.0, f64::max);
                let s = direction.position(h, w, height, width);
                per_position[s] = per_position[s].max(err);
            }
        }
    }
    let n = PROFILE_BINS.min(l);
    let bins = (0..n)
        .map(|k| {
            let (lo, hi) = (k * l / n, (k + 1) * l / n);
            per_position[lo..hi].iter().copied().fold(0.0, f64::max)
        })
        .collect();
    Some(ScanProfile {
        direction,
        height,
        width,
        bins,
        per_position,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_statistics() {
        let r = [1.0f32, -2.0, 0.5, 0.0];
        let a = [1.1f32, -2.0, 0.5, 0.001];
        let s = stats(&a, &r);
        assert!((s.max_abs - 0.1).abs() < 1e-6 && s.max_abs_at == 0);
        // 0.0 is below the relative floor: max rel comes from element 0 only.
        assert!((s.max_rel - 0.1).abs() < 1e-6, "{}", s.max_rel);
        assert!((s.mean_abs - 0.101 / 4.0).abs() < 1e-6);
        assert!(s.cosine > 0.99 && s.cosine < 1.0);
        assert_eq!(s.ref_absmax, 2.0);
        let s = stats(&[f32::NAN, 1.0], &[1.0, 1.0]);
        assert_eq!(s.nonfinite, 1);
        assert_eq!(stats(&[0.0; 3], &[0.0; 3]).cosine, 1.0);
        assert_eq!(stats(&[1.0; 3], &[0.0; 3]).cosine, 0.0);
    }

    #[test]
    fn allclose_ratio_matches_numpy_semantics() {
        let (ratio, at) = allclose_ratio(&[1.0, 10.5], &[1.0, 10.0], 0.1, 0.01);
        assert!((ratio - 0.5 / 0.2).abs() < 1e-9 && at == 1);
        assert_eq!(
            allclose_ratio(&[f32::NAN], &[1.0], 1.0, 0.0).0,
            f64::INFINITY
        );
        assert_eq!(allclose_ratio(&[1.0], &[1.0], 0.0, 0.0).0, 0.0);
    }

    #[test]
    fn top_k_agreement() {
        let r = [
            0.0f32, 5.0, 1.0, 2.0, 3.0, 4.0, /* sample 2 */ 9.0, 0.0, 1.0, 2.0, 3.0, 4.0,
        ];
        let a = [
            0.0f32, 5.0, 1.0, 2.0, 3.0, 4.0, /* sample 2 */ 0.0, 9.0, 1.0, 2.0, 3.0, 4.0,
        ];
        let t = topk(&a, &r, 6).unwrap();
        assert_eq!((t.samples, t.top1_agree), (2, 1));
        // sample 2: the reference's margin is 9 − 4; the model's top 5 misses class 0: 4/5.
        assert_eq!(t.disagree_margins, vec![5.0]);
        assert!((t.top5_overlap - 0.9).abs() < 1e-9, "{}", t.top5_overlap);
        assert!(topk(&a, &r, 5).is_none());
    }

    #[test]
    fn scan_positions_follow_the_official_cross_scans() {
        // 2×3 raster: p = h·3 + w.
        let order = |d: ScanDirection| {
            let mut seq = vec![(0, 0); 6];
            for h in 0..2 {
                for w in 0..3 {
                    seq[d.position(h, w, 2, 3)] = (h, w);
                }
            }
            seq
        };
        assert_eq!(
            order(ScanDirection::Right),
            [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
        );
        assert_eq!(
            order(ScanDirection::Down),
            [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
        );
        assert_eq!(
            order(ScanDirection::Left),
            [(1, 2), (1, 1), (1, 0), (0, 2), (0, 1), (0, 0)]
        );
        assert_eq!(
            order(ScanDirection::Up),
            [(1, 2), (0, 2), (1, 1), (0, 1), (1, 0), (0, 0)]
        );
        assert_eq!(
            ScanDirection::of_tensor("block3.1.attn.mamba_g2"),
            Some(ScanDirection::Down)
        );
        assert_eq!(ScanDirection::of_tensor("block3.1.attn"), None);
    }

    #[test]
    fn scan_profile_bins_in_scan_order() {
        // (1, 2, 5, 1): error only at pixel (1, 4), the last in row-major order.
        let r = vec![0.0f32; 10];
        let mut a = r.clone();
        a[9] = 1.0;
        let p = scan_profile("x.mamba_g1", &[1, 2, 5, 1], &a, &r).unwrap();
        assert_eq!(p.bins.len(), 10);
        assert_eq!(p.bins[9], 1.0);
        assert_eq!(p.first_above(0.5), Some(9));
        // ← starts there.
        let p = scan_profile("x.mamba_g3", &[1, 2, 5, 1], &a, &r).unwrap();
        assert_eq!(p.first_above(0.5), Some(0));
        // ↓: (1, 4) is the last of column-major order too; ↑ starts at it.
        let p = scan_profile("x.mamba_g2", &[1, 2, 5, 1], &a, &r).unwrap();
        assert_eq!(p.first_above(0.5), Some(9));
        let p = scan_profile("x.mamba_g4", &[1, 2, 5, 1], &a, &r).unwrap();
        assert_eq!(p.first_above(0.5), Some(0));
        assert!(scan_profile("x.attn", &[1, 2, 5, 1], &a, &r).is_none());
    }
}
