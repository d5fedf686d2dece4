//! The validation report: a table per backend for people, JSON for machines.

use std::fmt::Write as _;
use std::path::PathBuf;

use serde_json::{json, Value};

use super::metrics::{ScanProfile, Stats, TopK};
use super::tolerance::{Criterion, Tolerances, Verdict};

/// One tensor compared.
#[derive(Debug, Clone)]
pub struct Comparison {
    pub name: String,
    pub shape: Vec<usize>,
    pub reference_shape: Vec<usize>,
    /// `None` when the shapes differ (nothing else can be computed).
    pub stats: Option<Stats>,
    pub top: Option<TopK>,
    pub profile: Option<ScanProfile>,
    pub criterion: Criterion,
    pub verdict: Verdict,
}

/// How a backend's run ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Pass,
    /// Diverged; the index into `compared` of the first tensor out of tolerance.
    Fail {
        first: usize,
    },
    /// Not run (e.g. `--backend all` and ONNX Runtime is not installed).
    Skipped(String),
    /// Could not load or run the model.
    Error(String),
}

/// The result of one backend against the reference.
#[derive(Debug, Clone)]
pub struct BackendReport {
    pub backend: String,
    /// The runtime in words (library, version), when known.
    pub runtime: Option<String>,
    pub load_s: f64,
    pub run_s: f64,
    /// Tensors compared, in graph order, up to the first divergence (all with `--keep-going`).
    pub compared: Vec<Comparison>,
    /// Tensors with a reference that were not compared because the comparison stopped.
    pub not_compared: Vec<String>,
    /// Model outputs with no reference tensor.
    pub no_reference: Vec<String>,
    pub outcome: Outcome,
}

impl BackendReport {
    pub fn skipped(backend: &str, why: String) -> Self {
        Self::empty(backend, Outcome::Skipped(why))
    }

    pub fn error(backend: &str, why: String) -> Self {
        Self::empty(backend, Outcome::Error(why))
    }

    fn empty(backend: &str, outcome: Outcome) -> Self {
        Self {
            backend: backend.to_string(),
            runtime: None,
            load_s: 0.0,
            run_s: 0.0,
            compared: vec![],
            not_compared: vec![],
            no_reference: vec![],
            outcome,
        }
    }

    /// The first tensor out of tolerance.
    pub fn first_divergence(&self) -> Option<&Comparison> {
        match self.outcome {
            Outcome::Fail { first } => self.compared.get(first),
            _ => None,
        }
    }

    /// "diverges first at block3.1.attn (max abs 3.1e-2)", or the outcome in words.
    pub fn verdict_line(&self) -> String {
        match &self.outcome {
            Outcome::Pass => format!(
                "{}: PASS — all {} compared tensors within tolerance",
                self.backend,
                self.compared.len()
            ),
            Outcome::Fail { .. } => {
                let c = self.first_divergence().expect("failing row");
                let what = match &c.stats {
                    Some(s) => format!("max abs {:.2e}, cosine {:.6}", s.max_abs, s.cosine),
                    None => format!("shape {:?} vs reference {:?}", c.shape, c.reference_shape),
                };
                format!(
                    "{}: FAIL — diverges first at {} ({what}): {}",
                    self.backend,
                    c.name,
                    c.verdict.reason.as_deref().unwrap_or("out of tolerance")
                )
            }
            Outcome::Skipped(why) => format!("{}: SKIPPED — {why}", self.backend),
            Outcome::Error(why) => format!("{}: ERROR — {why}", self.backend),
        }
    }
}

/// Everything one gm-validate run found.
#[derive(Debug, Clone)]
pub struct Report {
    pub model: PathBuf,
    /// Lines about the model (precision, scan, weights).
    pub model_info: Vec<String>,
    /// What the tensors were compared against, in words.
    pub reference: String,
    /// Reference tensors the model does not output (export with `--debug-outputs`).
    pub reference_only: Vec<String>,
    pub tolerances: Tolerances,
    pub backends: Vec<BackendReport>,
}

impl Report {
    /// True when no backend failed or errored (skipped ones do not count), and one ran.
    pub fn passed(&self) -> bool {
        self.backends.iter().any(|b| b.outcome == Outcome::Pass)
            && self
                .backends
                .iter()
                .all(|b| matches!(b.outcome, Outcome::Pass | Outcome::Skipped(_)))
    }

    /// The human-readable report. Scan profiles are printed for the tensors that fail, and for
    /// every scan output when `all_profiles` (the JSON always has them).
    pub fn to_text(&self, all_profiles: bool) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "model:     {}", self.model.display());
        for line in &self.model_info {
            let _ = writeln!(s, "           {line}");
        }
        let _ = writeln!(s, "reference: {}", self.reference);
        for line in self.tolerances.describe() {
            let _ = writeln!(s, "{line}");
        }
        if !self.reference_only.is_empty() {
            let _ = writeln!(
                s,
                "not in the model's outputs (export with --debug-outputs to compare them): {}",
                self.reference_only.join(", ")
            );
        }
        for b in &self.backends {
            let _ = writeln!(s);
            s.push_str(&backend_table(b, all_profiles));
        }
        s
    }

    /// The machine-readable report.
    pub fn to_json(&self) -> Value {
        json!({
            "tool": "gm-validate",
            "version": env!("CARGO_PKG_VERSION"),
            "model": self.model.display().to_string(),
            "model_info": self.model_info,
            "reference": self.reference,
            "reference_only": self.reference_only,
            "precision": self.tolerances.precision.name(),
            "precision_source": self.tolerances.precision_source,
            "tolerances": {
                "overridden": self.tolerances.overridden,
                "logits": criterion_json(&self.tolerances.logits),
                "intermediate": criterion_json(&self.tolerances.intermediate),
            },
            "result": if self.passed() { "pass" } else { "fail" },
            "backends": self.backends.iter().map(backend_json).collect::<Vec<_>>(),
        })
    }
}

fn criterion_json(c: &Criterion) -> Value {
    json!({
        "metric": c.metric.name(),
        "atol": c.atol,
        "rtol": c.rtol,
        "min_cosine": c.min_cosine,
    })
}

fn finite(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

fn backend_json(b: &BackendReport) -> Value {
    let (status, detail) = match &b.outcome {
        Outcome::Pass => ("pass", Value::Null),
        Outcome::Fail { .. } => ("fail", Value::Null),
        Outcome::Skipped(w) => ("skipped", json!(w)),
        Outcome::Error(w) => ("error", json!(w)),
    };
    json!({
        "backend": b.backend,
        "runtime": b.runtime,
        "status": status,
        "detail": detail,
        "verdict": b.verdict_line(),
        "first_divergence": b.first_divergence().map(|c| c.name.clone()),
        "load_s": b.load_s,
        "run_s": b.run_s,
        "tensors": b.compared.iter().map(comparison_json).collect::<Vec<_>>(),
        "not_compared": b.not_compared,
        "no_reference": b.no_reference,
    })
}

fn comparison_json(c: &Comparison) -> Value {
    let mut v = json!({
        "name": c.name,
        "shape": c.shape,
        "reference_shape": c.reference_shape,
        "pass": c.verdict.pass,
        "score": finite(c.verdict.score),
        "reason": c.verdict.reason,
        "criterion": criterion_json(&c.criterion),
    });
    if let Some(s) = &c.stats {
        v["max_abs"] = finite(s.max_abs);
        v["max_abs_index"] = json!(s.max_abs_at);
        v["max_rel"] = finite(s.max_rel);
        v["mean_abs"] = finite(s.mean_abs);
        v["cosine"] = finite(s.cosine);
        v["reference_absmax"] = finite(s.ref_absmax);
        v["nonfinite"] = json!(s.nonfinite);
    }
    if let Some(t) = &c.top {
        v["top1_agree"] = json!(t.top1_agree);
        v["samples"] = json!(t.samples);
        v["top5_overlap"] = json!(t.top5_overlap);
        v["top1_disagree_margins"] = json!(t.disagree_margins);
    }
    if let Some(p) = &c.profile {
        v["scan_profile"] = json!({
            "group": p.direction.group(),
            "direction": p.direction.arrow(),
            "height": p.height,
            "width": p.width,
            "max_abs_per_bin": p.bins.iter().map(|&x| finite(x)).collect::<Vec<_>>(),
            "first_position_above_atol": p.first_above(c.criterion.atol),
        });
    }
    v
}

/// `3.1e-2`-style number, `-` for none.
fn sci(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        "inf".into()
    } else {
        format!("{v:.1e}")
    }
}

fn shape_str(shape: &[usize]) -> String {
    format!(
        "[{}]",
        shape
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join(",")
    )
}

fn backend_table(b: &BackendReport, all_profiles: bool) -> String {
    let mut s = String::new();
    let mut title = format!("backend {}", b.backend);
    if let Some(rt) = &b.runtime {
        title.push_str(&format!(" ({rt})"));
    }
    if matches!(b.outcome, Outcome::Pass | Outcome::Fail { .. }) {
        title.push_str(&format!(
            ": loaded in {:.2} s, ran in {:.3} s",
            b.load_s, b.run_s
        ));
    }
    let _ = writeln!(s, "{title}");
    if !b.compared.is_empty() {
        let width = b
            .compared
            .iter()
            .map(|c| c.name.chars().count())
            .max()
            .unwrap_or(6)
            .max(6);
        let _ = writeln!(
            s,
            "  {:>3}  {:<width$}  {:<14}  {:>8}  {:>8}  {:>8}  {:>10}  {:>7}  result",
            "#", "tensor", "shape", "max abs", "max rel", "mean abs", "cosine", "err/tol"
        );
        for (i, c) in b.compared.iter().enumerate() {
            let result = if c.verdict.pass { "ok" } else { "FAIL" };
            match &c.stats {
                Some(st) => {
                    let _ = writeln!(
                        s,
                        "  {:>3}  {:<width$}  {:<14}  {:>8}  {:>8}  {:>8}  {:>10.7}  {:>7}  {result}",
                        i + 1,
                        c.name,
                        shape_str(&c.shape),
                        sci(st.max_abs),
                        sci(st.max_rel),
                        sci(st.mean_abs),
                        st.cosine,
                        sci(c.verdict.score),
                    );
                }
                None => {
                    let _ = writeln!(
                        s,
                        "  {:>3}  {:<width$}  {:<14}  shape differs from the reference {}  {result}",
                        i + 1,
                        c.name,
                        shape_str(&c.shape),
                        shape_str(&c.reference_shape),
                    );
                }
            }
            if let Some(t) = &c.top {
                let _ = writeln!(
                    s,
                    "  {:>3}  {:<width$}  top-1 agrees in {}/{} samples, top-5 overlap {:.0}%",
                    "",
                    "",
                    t.top1_agree,
                    t.samples,
                    100.0 * t.top5_overlap
                );
            }
            if let Some(p) = c
                .profile
                .as_ref()
                .filter(|_| all_profiles || !c.verdict.pass)
            {
                let bins = p.bins.iter().map(|&x| sci(x)).collect::<Vec<_>>().join(" ");
                let mut line = format!(
                    "  {:>3}  {:<width$}  scan g{} {} over {}×{}: max abs per tenth of the sequence: {bins}",
                    "",
                    "",
                    p.direction.group(),
                    p.direction.arrow(),
                    p.height,
                    p.width
                );
                if !c.verdict.pass {
                    match p.first_above(c.criterion.atol) {
                        Some(pos) => line.push_str(&format!(
                            "; first position above {:.0e}: {pos} of {}",
                            c.criterion.atol,
                            p.per_position.len()
                        )),
                        None => {
                            line.push_str(&format!("; no position above {:.0e}", c.criterion.atol))
                        }
                    }
                }
                let _ = writeln!(s, "{line}");
            }
        }
        if !b.not_compared.is_empty() {
            let _ = writeln!(
                s,
                "  … stopped at the first divergence; {} later tensors not compared (--keep-going compares all)",
                b.not_compared.len()
            );
        }
    }
    if !b.no_reference.is_empty() {
        let _ = writeln!(
            s,
            "  {} model outputs have no reference tensor (not compared): {}",
            b.no_reference.len(),
            abbreviate(&b.no_reference, 6)
        );
    }
    let _ = writeln!(s, "{}", b.verdict_line());
    s
}

fn abbreviate(names: &[String], n: usize) -> String {
    if names.len() <= n {
        names.join(", ")
    } else {
        format!("{}, … ({} more)", names[..n].join(", "), names.len() - n)
    }
}
