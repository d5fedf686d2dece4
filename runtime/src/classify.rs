//! `gm-run classify`: image files in, top-k classes out.
//!
//! Walks the inputs, preprocesses each image ([`crate::image`]) with the transform recorded in the
//! model, runs them through any [`Backend`] in batches, and turns each row of logits into the k
//! most probable classes (softmax). Each file gets exactly one [`Record`], in input order, whether
//! it was classified or failed: a bad file never stops the others.

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, HostTensor, InputDim};
use crate::image::{self, DecodeLimits, ImageError, Preprocessing};
use crate::metadata::{self, MetadataError};

/// File name extensions taken when walking a directory (files named explicitly are always tried).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp"];

/// The ImageNet-1k class names in the standard order (sorted synsets), from `models/`.
const IMAGENET_LABELS: &str = include_str!("../../models/imagenet1k_labels.txt");

#[derive(Debug, thiserror::Error)]
pub enum ClassifyError {
    #[error("{path}: {message}")]
    Input { path: PathBuf, message: String },
    #[error("labels {path}: {message}")]
    Labels { path: PathBuf, message: String },
    #[error("model {path}: {message}")]
    Model { path: PathBuf, message: String },
    #[error(transparent)]
    Metadata(#[from] MetadataError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// Class names, indexed by class.
#[derive(Debug, Clone, PartialEq)]
pub struct Labels {
    names: Vec<String>,
}

impl Labels {
    /// The 1000 ImageNet-1k classes, built into the binary so a fresh build needs no data files.
    pub fn imagenet() -> Self {
        Labels {
            names: IMAGENET_LABELS.lines().map(str::to_string).collect(),
        }
    }

    /// One name per line; blank lines are kept (as classes without a name), a trailing newline
    /// is not a class.
    pub fn from_file(path: &Path) -> Result<Self, ClassifyError> {
        let text = fs::read_to_string(path).map_err(|e| ClassifyError::Labels {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        Ok(Labels {
            names: text.lines().map(|l| l.trim().to_string()).collect(),
        })
    }

    /// Classes named `class 0`, `class 1`, … for models whose classes have no names here.
    pub fn numbered(count: usize) -> Self {
        Labels {
            names: (0..count).map(|i| format!("class {i}")).collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    pub fn name(&self, index: usize) -> String {
        self.names
            .get(index)
            .cloned()
            .unwrap_or_else(|| format!("class {index}"))
    }
}

/// Expands the command-line inputs, in order: files as given, directories walked recursively
/// (entries sorted by name, hidden ones skipped, only [`IMAGE_EXTENSIONS`]). A path that cannot
/// be read becomes an error entry in its place.
pub fn collect_inputs(inputs: &[PathBuf]) -> Vec<Result<PathBuf, ClassifyError>> {
    let mut out = Vec::new();
    let mut visited = HashSet::new();
    for input in inputs {
        match fs::metadata(input) {
            Ok(m) if m.is_dir() => walk(input, &mut out, &mut visited),
            Ok(_) => out.push(Ok(input.clone())),
            Err(e) => out.push(Err(ClassifyError::Input {
                path: input.clone(),
                message: e.to_string(),
            })),
        }
    }
    out
}

fn has_image_extension(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| x.eq_ignore_ascii_case(e)))
}

fn walk(dir: &Path, out: &mut Vec<Result<PathBuf, ClassifyError>>, visited: &mut HashSet<PathBuf>) {
    // Symlinked directories are followed, but each real directory is walked once (no cycles).
    if let Ok(real) = fs::canonicalize(dir) {
        if !visited.insert(real) {
            return;
        }
    }
    let entries = match fs::read_dir(dir) {
        Ok(rd) => rd.collect::<Result<Vec<_>, _>>(),
        Err(e) => Err(e),
    };
    let mut paths: Vec<PathBuf> = match entries {
        Ok(entries) => entries.into_iter().map(|e| e.path()).collect(),
        Err(e) => {
            out.push(Err(ClassifyError::Input {
                path: dir.to_path_buf(),
                message: format!("cannot list the directory: {e}"),
            }));
            return;
        }
    };
    paths.sort();
    for path in paths {
        let hidden = path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        if hidden {
            continue;
        }
        match fs::metadata(&path) {
            Ok(m) if m.is_dir() => walk(&path, out, visited),
            Ok(_) if has_image_extension(&path) => out.push(Ok(path)),
            Ok(_) => {}
            // A dangling symlink with an image name is worth a message; anything else is not ours.
            Err(e) if has_image_extension(&path) => out.push(Err(ClassifyError::Input {
                path,
                message: e.to_string(),
            })),
            Err(_) => {}
        }
    }
}

/// Softmax of one row of logits (computed in f64, shifted by the maximum: no overflow).
pub fn softmax(logits: &[f32]) -> Vec<f32> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let exps: Vec<f64> = logits
        .iter()
        .map(|&x| (f64::from(x) - f64::from(max)).exp())
        .collect();
    let sum: f64 = exps.iter().sum();
    exps.iter().map(|&e| (e / sum) as f32).collect()
}

/// Indices of the `k` largest values, largest first; ties go to the lower index. NaNs rank last.
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..values.len()).collect();
    idx.sort_by(|&a, &b| {
        let (x, y) = (values[a], values[b]);
        match (x.is_nan(), y.is_nan()) {
            (true, true) => a.cmp(&b),
            (true, false) => std::cmp::Ordering::Greater,
            (false, true) => std::cmp::Ordering::Less,
            _ => y.total_cmp(&x).then(a.cmp(&b)),
        }
    });
    idx.truncate(k);
    idx
}

/// One class of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    pub index: usize,
    pub label: String,
    pub prob: f32,
}

/// What became of one input file: its top-k classes, or why it could not be classified.
#[derive(Debug)]
pub struct Record {
    pub path: PathBuf,
    pub outcome: Result<Vec<Prediction>, ClassifyError>,
}

impl Record {
    /// `{"path": …, "topk": [{"index", "label", "prob"}, …]}`, or `{"path": …, "error": …}`.
    pub fn to_json(&self) -> serde_json::Value {
        let path = self.path.to_string_lossy();
        match &self.outcome {
            Ok(preds) => serde_json::json!({
                "path": path,
                "topk": preds.iter().map(|p| serde_json::json!({
                    "index": p.index, "label": p.label, "prob": p.prob,
                })).collect::<Vec<_>>(),
            }),
            Err(e) => serde_json::json!({"path": path, "error": e.to_string()}),
        }
    }
}

/// Settings of a run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Classes reported per image.
    pub topk: usize,
    /// Images per model call.
    pub batch: usize,
    pub limits: DecodeLimits,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            topk: 5,
            batch: 8,
            limits: DecodeLimits::default(),
        }
    }
}

/// Totals of a run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Summary {
    pub classified: usize,
    pub failed: usize,
    pub batches: usize,
    /// Time spent decoding and transforming images, and inside the backend.
    pub preprocess: Duration,
    pub inference: Duration,
}

/// What a model needs from classify: its transform, and the class count it declares.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    pub preprocessing: Preprocessing,
    /// `classes` of gm-export's `groupmamba.output`, where present.
    pub classes: Option<usize>,
}

impl ModelInfo {
    /// Reads gm-export's metadata from the model file.
    pub fn read(model: &Path) -> Result<Self, ClassifyError> {
        let meta = metadata::read(model)?;
        let model_err = |message: String| ClassifyError::Model {
            path: model.to_path_buf(),
            message,
        };
        let json = meta.get("groupmamba.preprocessing").ok_or_else(|| {
            model_err(
                "no `groupmamba.preprocessing` metadata: classify needs a model exported by \
                 gm-export, which records the evaluation transform"
                    .to_string(),
            )
        })?;
        let preprocessing =
            Preprocessing::from_metadata_json(json).map_err(|e| model_err(e.to_string()))?;
        let classes = meta
            .get("groupmamba.output")
            .and_then(|o| serde_json::from_str::<serde_json::Value>(o).ok())
            .and_then(|o| o.get("classes")?.as_u64())
            .map(|c| c as usize);
        Ok(ModelInfo {
            preprocessing,
            classes,
        })
    }
}

/// Runs images through a loaded model.
pub struct Classifier<'a> {
    backend: &'a mut dyn Backend,
    model: PathBuf,
    prep: Preprocessing,
    labels: Labels,
    options: Options,
    /// The batch size the model insists on, if its batch dimension is fixed.
    fixed_batch: Option<usize>,
}

impl<'a> Classifier<'a> {
    /// Checks that the model takes `[batch, 3, H, W]` with the crop size of its transform.
    pub fn new(
        backend: &'a mut dyn Backend,
        model: &Path,
        prep: Preprocessing,
        labels: Labels,
        options: Options,
    ) -> Result<Self, ClassifyError> {
        let [h, w] = prep.crop;
        let fixed = |d: &InputDim, n: usize| matches!(d, InputDim::Fixed(m) if *m == n);
        let fixed_batch = match backend.input_shape() {
            [b, c, hh, ww]
                if fixed(c, 3)
                    && (fixed(hh, h) || matches!(hh, InputDim::Dynamic(_)))
                    && (fixed(ww, w) || matches!(ww, InputDim::Dynamic(_))) =>
            {
                match b {
                    InputDim::Fixed(n) => Some(*n),
                    InputDim::Dynamic(_) => None,
                }
            }
            other => {
                return Err(ClassifyError::Model {
                    path: model.to_path_buf(),
                    message: format!(
                    "its input is {other:?}, but its preprocessing makes [N, 3, {h}, {w}] images"
                ),
                })
            }
        };
        Ok(Classifier {
            backend,
            model: model.to_path_buf(),
            prep,
            labels,
            options,
            fixed_batch,
        })
    }

    /// Classifies `inputs` (from [`collect_inputs`]) and hands each file's [`Record`] to `emit`,
    /// in input order, as soon as its batch is done. Fails only when the model itself fails.
    pub fn run(
        &mut self,
        inputs: Vec<Result<PathBuf, ClassifyError>>,
        mut emit: impl FnMut(Record),
    ) -> Result<Summary, ClassifyError> {
        let batch = self.fixed_batch.unwrap_or(self.options.batch.max(1));
        let [h, w] = self.prep.crop;
        let plane = 3 * h * w;
        let mut summary = Summary::default();
        let mut pending = inputs.into_iter().peekable();
        while pending.peek().is_some() {
            // Fill one batch with images that preprocess, keeping every file's slot in order.
            let mut slots: Vec<(PathBuf, Result<usize, ClassifyError>)> = Vec::new();
            let mut data: Vec<f32> = Vec::with_capacity(batch * plane);
            let mut n = 0;
            let started = Instant::now();
            while n < batch {
                let Some(input) = pending.next() else { break };
                match input {
                    Err(e) => {
                        let path = match &e {
                            ClassifyError::Input { path, .. } => path.clone(),
                            _ => PathBuf::new(),
                        };
                        slots.push((path, Err(e)));
                    }
                    Ok(path) => match image::load(&path, &self.prep, &self.options.limits) {
                        Ok(t) => {
                            data.extend_from_slice(&t);
                            slots.push((path, Ok(n)));
                            n += 1;
                        }
                        Err(e) => slots.push((path, Err(e.into()))),
                    },
                }
            }
            summary.preprocess += started.elapsed();
            let probs = if n > 0 {
                let rows = self.fixed_batch.unwrap_or(n);
                data.resize(rows * plane, 0.0); // a fixed batch is padded with zeros
                let started = Instant::now();
                let outputs = self.backend.run(&HostTensor {
                    shape: vec![rows, 3, h, w],
                    data,
                })?;
                summary.inference += started.elapsed();
                summary.batches += 1;
                let logits = outputs
                    .into_iter()
                    .next()
                    .ok_or_else(|| ClassifyError::Model {
                        path: self.model.clone(),
                        message: "the model produced no output".to_string(),
                    })?;
                match logits.shape.as_slice() {
                    [r, c] if *r == rows && *c > 0 => {
                        logits.data.chunks_exact(*c).take(n).map(softmax).collect()
                    }
                    other => {
                        return Err(ClassifyError::Model {
                            path: self.model.clone(),
                            message: format!(
                                "its output has shape {other:?}; expected [{rows}, classes] logits"
                            ),
                        })
                    }
                }
            } else {
                Vec::new()
            };
            for (path, slot) in slots {
                let outcome = slot.map(|row| self.predictions(&probs[row]));
                match &outcome {
                    Ok(_) => summary.classified += 1,
                    Err(_) => summary.failed += 1,
                }
                emit(Record { path, outcome });
            }
        }
        Ok(summary)
    }

    fn predictions(&self, probs: &[f32]) -> Vec<Prediction> {
        top_k(probs, self.options.topk)
            .into_iter()
            .map(|index| Prediction {
                index,
                label: self.labels.name(index),
                prob: probs[index],
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn imagenet_labels_are_the_standard_list() {
        let l = Labels::imagenet();
        assert_eq!(l.len(), 1000);
        assert_eq!(l.name(0), "tench");
        assert_eq!(l.name(1), "goldfish");
        assert_eq!(l.name(207), "golden retriever");
        assert_eq!(l.name(999), "toilet tissue");
        assert_eq!(l.name(1000), "class 1000");
    }

    #[test]
    fn softmax_is_stable_and_normalised() {
        let p = softmax(&[1000.0, 1000.0, -1000.0]);
        assert!((p[0] - 0.5).abs() < 1e-7 && (p[1] - 0.5).abs() < 1e-7 && p[2] == 0.0);
        let p = softmax(&[0.0, 1.0f32.ln(), 2.0f32.ln()]);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        assert!((p[2] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn top_k_orders_by_value_then_index() {
        assert_eq!(top_k(&[0.1, 0.5, 0.5, f32::NAN, 0.9], 3), vec![4, 1, 2]);
        assert_eq!(top_k(&[0.1, 0.2], 5), vec![1, 0]);
        assert_eq!(top_k(&[f32::NAN, 0.0], 2), vec![1, 0]);
    }

    #[test]
    fn extensions() {
        assert!(has_image_extension(Path::new("a/b.JPG")));
        assert!(has_image_extension(Path::new("b.webp")));
        assert!(!has_image_extension(Path::new("b.gif")));
        assert!(!has_image_extension(Path::new("jpg")));
    }
}
