//! Strict comparison of a checkpoint's tensors with the tensors a model expects.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;

use super::error::{
    MismatchReport, MissingTensor, NonFiniteTensor, ShapeMismatch, UnexpectedTensor,
};
use super::{Checkpoint, WeightsError};
use crate::tensor::Tensor;

/// One tensor the model needs from the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// `false` for tensors that may be absent (e.g. BatchNorm `num_batches_tracked`); when
    /// present they must still have the right shape.
    pub required: bool,
}

impl ExpectedTensor {
    pub fn required(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            required: true,
        }
    }

    pub fn optional(name: impl Into<String>, shape: &[usize]) -> Self {
        Self {
            name: name.into(),
            shape: shape.to_vec(),
            required: false,
        }
    }
}

impl Checkpoint {
    /// Checks the checkpoint against the model's tensors. Reports every problem at once: missing
    /// required tensors, unexpected tensors, wrong shapes and (unless `allow_nonfinite`) tensors
    /// holding NaN/Inf. The error is [`WeightsError::Mismatch`].
    pub fn validate(
        &self,
        expected: &[ExpectedTensor],
        allow_nonfinite: bool,
    ) -> Result<(), WeightsError> {
        let report = compare(&self.path, &self.tensors, expected, allow_nonfinite);
        if report.is_clean() {
            Ok(())
        } else {
            Err(WeightsError::Mismatch(Box::new(report)))
        }
    }
}

/// Builds the full report (clean when everything matches).
pub(crate) fn compare(
    path: &Path,
    tensors: &BTreeMap<String, Tensor>,
    expected: &[ExpectedTensor],
    allow_nonfinite: bool,
) -> MismatchReport {
    let mut report = MismatchReport {
        path: path.to_path_buf(),
        ..Default::default()
    };
    let mut known: HashSet<&str> = HashSet::with_capacity(expected.len());
    for exp in expected {
        if !known.insert(exp.name.as_str()) {
            continue; // a repeated expectation adds nothing
        }
        match tensors.get(&exp.name) {
            None if exp.required => report.missing.push(MissingTensor {
                name: exp.name.clone(),
                expected: exp.shape.clone(),
            }),
            None => {}
            Some(t) => {
                report.compared += 1;
                if t.shape != exp.shape {
                    report.mis_shaped.push(ShapeMismatch {
                        name: exp.name.clone(),
                        expected: exp.shape.clone(),
                        found: t.shape.clone(),
                    });
                }
                if !allow_nonfinite {
                    if let Some(nf) = non_finite(&exp.name, t) {
                        report.non_finite.push(nf);
                    }
                }
            }
        }
    }
    for (name, t) in tensors {
        if !known.contains(name.as_str()) {
            report.unexpected.push(UnexpectedTensor {
                name: name.clone(),
                shape: t.shape.clone(),
            });
        }
    }
    report.expected_depths = stage_depths(expected.iter().map(|e| e.name.as_str()));
    report.found_depths = stage_depths(tensors.keys().map(String::as_str));
    report
}

fn non_finite(name: &str, t: &Tensor) -> Option<NonFiniteTensor> {
    let mut nan = 0;
    let mut inf = 0;
    let mut first = None;
    for (i, v) in t.data.iter().enumerate() {
        if !v.is_finite() {
            if v.is_nan() {
                nan += 1;
            } else {
                inf += 1;
            }
            first.get_or_insert(i);
        }
    }
    first.map(|first_index| NonFiniteTensor {
        name: name.to_string(),
        nan,
        inf,
        numel: t.numel(),
        first_index,
    })
}

/// Number of blocks per stage, from names `block{stage}.{index}.…`: (stage, max index + 1), by stage.
fn stage_depths<'a>(names: impl Iterator<Item = &'a str>) -> Vec<(usize, usize)> {
    let mut depths: BTreeMap<usize, usize> = BTreeMap::new();
    for name in names {
        let Some(rest) = name.strip_prefix("block") else {
            continue;
        };
        let mut parts = rest.splitn(3, '.');
        let (Some(stage), Some(index), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let (Ok(stage), Ok(index)) = (stage.parse::<usize>(), index.parse::<usize>()) else {
            continue;
        };
        let d = depths.entry(stage).or_default();
        *d = (*d).max(index + 1);
    }
    depths.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::weights::CheckpointFormat;
    use std::path::PathBuf;

    fn t(shape: &[usize]) -> Tensor {
        let n = shape.iter().product();
        Tensor::new(shape.to_vec(), vec![0.5; n])
    }

    fn ckpt(entries: Vec<(&str, Tensor)>) -> Checkpoint {
        Checkpoint {
            path: PathBuf::from("foo.pth"),
            sha256: String::new(),
            format: CheckpointFormat::Pth,
            nested_key: None,
            stripped_prefix: None,
            tensors: entries
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
        }
    }

    fn model() -> Vec<ExpectedTensor> {
        vec![
            ExpectedTensor::required("patch_embed1.proj.weight", &[64, 32, 3, 3]),
            ExpectedTensor::required("bn.weight", &[32]),
            ExpectedTensor::optional("bn.num_batches_tracked", &[]),
            ExpectedTensor::required("block1.0.norm2.weight", &[64]),
            ExpectedTensor::required("block1.1.norm2.weight", &[64]),
            ExpectedTensor::required("head.weight", &[10, 64]),
        ]
    }

    fn matching() -> Vec<(&'static str, Tensor)> {
        vec![
            ("patch_embed1.proj.weight", t(&[64, 32, 3, 3])),
            ("bn.weight", t(&[32])),
            ("bn.num_batches_tracked", t(&[])),
            ("block1.0.norm2.weight", t(&[64])),
            ("block1.1.norm2.weight", t(&[64])),
            ("head.weight", t(&[10, 64])),
        ]
    }

    fn report(c: &Checkpoint, allow_nonfinite: bool) -> MismatchReport {
        match c.validate(&model(), allow_nonfinite) {
            Err(WeightsError::Mismatch(r)) => *r,
            other => panic!("expected a mismatch, got {other:?}"),
        }
    }

    #[test]
    fn exact_match_passes() {
        ckpt(matching()).validate(&model(), false).unwrap();
    }

    #[test]
    fn optional_may_be_absent_but_not_misshaped() {
        let mut e = matching();
        e.retain(|(k, _)| *k != "bn.num_batches_tracked");
        ckpt(e).validate(&model(), false).unwrap();

        let mut e = matching();
        e[2].1 = t(&[1]);
        let r = report(&ckpt(e), false);
        assert_eq!(
            r.mis_shaped,
            vec![ShapeMismatch {
                name: "bn.num_batches_tracked".into(),
                expected: vec![],
                found: vec![1],
            }]
        );
        assert!(r.missing.is_empty() && r.unexpected.is_empty());
    }

    #[test]
    fn reports_all_problems_together() {
        let mut e = matching();
        e.retain(|(k, _)| *k != "bn.weight" && *k != "head.weight");
        e.push(("extra.a", t(&[2])));
        e.push(("extra.b", t(&[3, 3])));
        e[2].1 = t(&[2]); // bn.num_batches_tracked mis-shaped (optional)
        e[3].1 = t(&[65]); // block1.1.norm2.weight mis-shaped
        let r = report(&ckpt(e), false);
        let missing: Vec<&str> = r.missing.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(missing, ["bn.weight", "head.weight"]);
        assert_eq!(r.missing[1].expected, vec![10, 64]);
        let unexpected: Vec<&str> = r.unexpected.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(unexpected, ["extra.a", "extra.b"]);
        assert_eq!(r.unexpected[1].shape, vec![3, 3]);
        assert_eq!(r.mis_shaped.len(), 2);
        assert_eq!(r.mis_shaped[1].name, "block1.1.norm2.weight");
        assert_eq!(r.mis_shaped[1].found, vec![65]);
        assert_eq!(r.compared, 4);

        let text = r.to_string();
        let first = text.lines().next().unwrap();
        assert_eq!(
            first,
            "checkpoint foo.pth does not match the model: 2 missing, 2 unexpected, 2 mis-shaped key(s)"
        );
        assert!(text.contains("\n  missing: head.weight (expected shape [10, 64])"));
        assert!(text.contains("\n  unexpected: extra.b (shape [3, 3])"));
        assert!(text.contains("\n  mis-shaped: block1.1.norm2.weight: expected [64], found [65]"));
    }

    #[test]
    fn non_finite_is_reported_unless_allowed() {
        let mut e = matching();
        e[1].1.data[3] = f32::NAN;
        e[1].1.data[7] = f32::NAN;
        e[5].1.data[600] = f32::NEG_INFINITY;
        let c = ckpt(e);
        let r = report(&c, false);
        assert_eq!(r.key_problems(), 0);
        assert_eq!(
            r.non_finite,
            vec![
                NonFiniteTensor {
                    name: "bn.weight".into(),
                    nan: 2,
                    inf: 0,
                    numel: 32,
                    first_index: 3
                },
                NonFiniteTensor {
                    name: "head.weight".into(),
                    nan: 0,
                    inf: 1,
                    numel: 640,
                    first_index: 600
                }
            ]
        );
        let text = r.to_string();
        assert!(
            text.starts_with("checkpoint foo.pth has non-finite values: 2 tensor(s)"),
            "{text}"
        );
        assert!(text.contains("bn.weight: 2 NaN and 0 Inf of 32 values (first at flat index 3)"));
        c.validate(&model(), true).unwrap();
    }

    #[test]
    fn listing_is_capped() {
        let mut e = matching();
        for i in 0..45 {
            e.push((Box::leak(format!("junk.{i:02}").into_boxed_str()), t(&[1])));
        }
        let text = report(&ckpt(e), false).to_string();
        assert_eq!(text.matches("\n  unexpected: ").count(), 20);
        assert!(text.contains("\n  … and 25 more unexpected"), "{text}");
        assert!(text.starts_with(
            "checkpoint foo.pth does not match the model: 0 missing, 45 unexpected, 0 mis-shaped key(s)"
        ));
    }

    #[test]
    fn hints_at_another_width() {
        let mut e = matching();
        e[0].1 = t(&[96, 64, 3, 3]);
        let r = report(&ckpt(e), false);
        assert!(r.looks_like_other_model_size());
        assert_eq!(r.width_evidence().len(), 1);
        let hint = r.size_hint().unwrap();
        assert!(hint.contains("patch_embed1.proj.weight is [96, 64, 3, 3] in the checkpoint but [64, 32, 3, 3] in the model"), "{hint}");
        assert!(r
            .to_string()
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("  hint: this looks like a checkpoint of a different model size"));
    }

    #[test]
    fn hints_at_another_depth() {
        let mut e = matching();
        e.push(("block1.2.norm2.weight", t(&[64])));
        let r = report(&ckpt(e), false);
        assert_eq!(r.expected_depths, vec![(1, 2)]);
        assert_eq!(r.found_depths, vec![(1, 3)]);
        let hint = r.size_hint().unwrap();
        assert!(
            hint.contains(
                "blocks per stage are [block1: 3] in the checkpoint but [block1: 2] in the model"
            ),
            "{hint}"
        );
    }

    #[test]
    fn no_hint_for_a_small_local_problem() {
        let mut e = matching();
        e[5].1 = t(&[1000, 64]); // other class count only
        e.retain(|(k, _)| *k != "bn.weight");
        let r = report(&ckpt(e), false);
        assert!(r.size_hint().is_none(), "{:?}", r.size_hint());
        assert_eq!(r.width_evidence().len(), 1); // the head, exposed for the caller
    }

    #[test]
    fn stage_depths_parse() {
        let d = stage_depths(
            [
                "block1.0.a",
                "block1.1.a.b",
                "block3.4.x",
                "blockx.1.a",
                "block2.a.b",
                "norm1.weight",
                "block1.7",
            ]
            .into_iter(),
        );
        assert_eq!(d, vec![(1, 2), (3, 5)]);
    }
}
