//! Validation of an exported model against reference tensors (the official PyTorch model's, or
//! another backend's): the library behind `gm-validate`.
//!
//! - [`reference`](mod@reference): reading `.npz` references and fixture directories;
//! - [`metrics`]: error statistics, top-k agreement, the error profile along a group's scan;
//! - [`tolerance`]: criteria and their precision-dependent defaults;
//! - [`report`]: the table and the JSON.
//!
//! [`compare_outputs`] walks the model's outputs in graph order (the order gm-export produces
//! them, with `logits`, which it lists first, moved to the end where it is computed) and compares
//! each one that has a reference, stopping at the first tensor out of tolerance unless asked to
//! go on: the first divergent tensor is where a defect is, everything after it inherits the error.

pub mod metrics;
pub mod reference;
pub mod report;
pub mod tolerance;

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::HostTensor;
use metrics::{allclose_ratio, scan_profile, stats, topk};
use report::{BackendReport, Comparison, Outcome};
use tolerance::{is_logits, judge, Precision, Tolerances, Verdict};

pub use reference::{Reference, ReferenceError};

#[derive(Debug, thiserror::Error)]
pub enum ValidateError {
    #[error(transparent)]
    Metadata(#[from] crate::metadata::MetadataError),
    #[error(transparent)]
    Reference(#[from] ReferenceError),
    #[error("the model has {outputs} outputs but the backend returned {returned}")]
    OutputCount { outputs: usize, returned: usize },
}

/// What gm-export recorded in a model's metadata that validation uses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ModelInfo {
    /// `groupmamba.precision`, when present.
    pub precision: Option<String>,
    pub scan: Option<String>,
    pub variant: Option<String>,
    pub checkpoint: Option<String>,
    pub producer: Option<String>,
}

impl ModelInfo {
    /// Reads the `groupmamba.*` metadata of the model at `path`.
    pub fn read(path: &Path) -> Result<Self, ValidateError> {
        let map = crate::metadata::read(path)?;
        let get = |k: &str| map.get(&format!("groupmamba.{k}")).cloned();
        Ok(Self {
            precision: get("precision"),
            scan: get("scan"),
            variant: get("variant"),
            checkpoint: get("checkpoint"),
            producer: get("producer"),
        })
    }

    /// The model's precision and where that came from.
    pub fn precision(&self) -> (Precision, String) {
        match (
            Precision::from_metadata(self.precision.as_deref()),
            &self.precision,
        ) {
            (Some(p), _) => (p, "from the model's groupmamba.precision metadata".into()),
            (None, Some(v)) => (
                Precision::Fp32,
                format!("unknown groupmamba.precision \"{v}\": assumed fp32"),
            ),
            (None, None) => (
                Precision::Fp32,
                "no groupmamba.precision metadata: assumed fp32".into(),
            ),
        }
    }

    /// One line for the report.
    pub fn describe(&self) -> String {
        let or = |v: &Option<String>| v.clone().unwrap_or_else(|| "?".into());
        format!(
            "{} {}, scan {}, weights {} ({})",
            or(&self.variant),
            or(&self.precision),
            or(&self.scan),
            or(&self.checkpoint),
            or(&self.producer)
        )
    }
}

/// Output indices in the order the graph computes them: gm-export lists `logits` first although
/// it is computed last, so it moves to the end; the rest keep their order.
pub fn graph_order(names: &[String]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..names.len()).filter(|&i| names[i] != "logits").collect();
    order.extend((0..names.len()).filter(|&i| names[i] == "logits"));
    order
}

/// Compares one tensor.
pub fn compare_tensor(
    name: &str,
    actual: &HostTensor,
    reference: &HostTensor,
    tolerances: &Tolerances,
) -> Comparison {
    let criterion = *tolerances.for_tensor(name);
    if actual.shape != reference.shape {
        return Comparison {
            name: name.to_string(),
            shape: actual.shape.clone(),
            reference_shape: reference.shape.clone(),
            stats: None,
            top: None,
            profile: None,
            criterion,
            verdict: Verdict {
                pass: false,
                score: f64::INFINITY,
                reason: Some(format!(
                    "shape {:?} differs from the reference's {:?}",
                    actual.shape, reference.shape
                )),
            },
        };
    }
    let st = stats(&actual.data, &reference.data);
    let (ratio, _) = allclose_ratio(
        &actual.data,
        &reference.data,
        criterion.atol,
        criterion.rtol,
    );
    let top = if is_logits(name) {
        actual
            .shape
            .last()
            .and_then(|&classes| topk(&actual.data, &reference.data, classes))
    } else {
        None
    };
    let top1_value = st.ref_absmax;
    let verdict = judge(&criterion, &st, ratio, top.as_ref(), top1_value);
    let profile = scan_profile(name, &actual.shape, &actual.data, &reference.data);
    Comparison {
        name: name.to_string(),
        shape: actual.shape.clone(),
        reference_shape: reference.shape.clone(),
        stats: Some(st),
        top,
        profile,
        criterion,
        verdict,
    }
}

/// Compares a backend's outputs (`names[i]` ↔ `outputs[i]`) with `reference`, in graph order.
/// Stops at the first tensor out of tolerance unless `keep_going`.
pub fn compare_outputs(
    backend: &str,
    names: &[String],
    outputs: &[HostTensor],
    reference: &BTreeMap<String, HostTensor>,
    tolerances: &Tolerances,
    keep_going: bool,
) -> Result<BackendReport, ValidateError> {
    if names.len() != outputs.len() {
        return Err(ValidateError::OutputCount {
            outputs: names.len(),
            returned: outputs.len(),
        });
    }
    let mut report = BackendReport {
        backend: backend.to_string(),
        runtime: None,
        load_s: 0.0,
        run_s: 0.0,
        compared: vec![],
        not_compared: vec![],
        no_reference: vec![],
        outcome: Outcome::Pass,
    };
    for i in graph_order(names) {
        let name = &names[i];
        let Some(expected) = reference.get(name) else {
            report.no_reference.push(name.clone());
            continue;
        };
        if matches!(report.outcome, Outcome::Fail { .. }) && !keep_going {
            report.not_compared.push(name.clone());
            continue;
        }
        let c = compare_tensor(name, &outputs[i], expected, tolerances);
        if !c.verdict.pass && report.outcome == Outcome::Pass {
            report.outcome = Outcome::Fail {
                first: report.compared.len(),
            };
        }
        report.compared.push(c);
    }
    Ok(report)
}

/// Reference tensors that are not among the model's outputs.
pub fn reference_only(names: &[String], reference: &BTreeMap<String, HostTensor>) -> Vec<String> {
    reference
        .keys()
        .filter(|k| !names.contains(k))
        .cloned()
        .collect()
}

/// A seeded standard-normal tensor (SplitMix64 + Box–Muller): the same values for the same seed
/// on every machine, for comparing backends without a reference file.
pub fn seeded_normal(shape: &[usize], seed: u64) -> HostTensor {
    let n: usize = shape.iter().product();
    let mut state = seed;
    let mut next = move || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    // Uniform in (0, 1]: 53 random bits, never 0 (ln(0) would be infinite).
    let mut uniform = move || ((next() >> 11) as f64 + 1.0) / (1u64 << 53) as f64;
    let mut data = Vec::with_capacity(n);
    while data.len() < n {
        let (u1, u2) = (uniform(), uniform());
        let r = (-2.0 * u1.ln()).sqrt();
        let t = std::f64::consts::TAU * u2;
        data.push((r * t.cos()) as f32);
        if data.len() < n {
            data.push((r * t.sin()) as f32);
        }
    }
    HostTensor {
        shape: shape.to_vec(),
        data,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(shape: &[usize], data: &[f32]) -> HostTensor {
        HostTensor {
            shape: shape.to_vec(),
            data: data.to_vec(),
        }
    }

    #[test]
    fn logits_are_compared_last_and_comparison_stops_at_the_first_failure() {
        let names: Vec<String> = ["logits", "stem", "block1.0", "stage1"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(graph_order(&names), vec![1, 2, 3, 0]);
        let outputs = vec![
            t(&[1, 2], &[1.0, 0.0]),
            t(&[2], &[1.0, 1.0]),
            t(&[2], &[1.0, 1.5]),
            t(&[2], &[9.0, 9.0]),
        ];
        let mut reference = BTreeMap::new();
        reference.insert("logits".to_string(), t(&[1, 2], &[1.0, 0.0]));
        reference.insert("stem".to_string(), t(&[2], &[1.0, 1.0]));
        reference.insert("block1.0".to_string(), t(&[2], &[1.0, 1.0]));
        reference.insert("stage1".to_string(), t(&[2], &[1.0, 1.0]));
        reference.insert("features".to_string(), t(&[2], &[1.0, 1.0]));
        let tol = Tolerances::defaults(Precision::Fp32, "test");
        let r = compare_outputs("tract", &names, &outputs, &reference, &tol, false).unwrap();
        assert_eq!(r.outcome, Outcome::Fail { first: 1 });
        assert_eq!(r.first_divergence().unwrap().name, "block1.0");
        assert_eq!(r.not_compared, vec!["stage1", "logits"]);
        assert!(r
            .verdict_line()
            .contains("diverges first at block1.0 (max abs 5.00e-1"));
        let all = compare_outputs("tract", &names, &outputs, &reference, &tol, true).unwrap();
        assert_eq!(all.compared.len(), 4);
        assert_eq!(all.first_divergence().unwrap().name, "block1.0");
        assert_eq!(reference_only(&names, &reference), vec!["features"]);
    }

    #[test]
    fn shape_mismatch_fails() {
        let tol = Tolerances::defaults(Precision::Fp32, "test");
        let c = compare_tensor("stem", &t(&[2], &[0.0; 2]), &t(&[1, 2], &[0.0; 2]), &tol);
        assert!(!c.verdict.pass && c.verdict.reason.unwrap().contains("shape"));
    }

    #[test]
    fn seeded_normal_is_reproducible_and_standard() {
        let a = seeded_normal(&[1, 3, 64, 64], 7);
        assert_eq!(a, seeded_normal(&[1, 3, 64, 64], 7));
        assert_ne!(a.data, seeded_normal(&[1, 3, 64, 64], 8).data);
        let n = a.data.len() as f64;
        let mean = a.data.iter().map(|&x| x as f64).sum::<f64>() / n;
        let var = a
            .data
            .iter()
            .map(|&x| (x as f64 - mean).powi(2))
            .sum::<f64>()
            / n;
        assert!(
            mean.abs() < 0.05 && (var - 1.0).abs() < 0.05,
            "{mean} {var}"
        );
    }
}
