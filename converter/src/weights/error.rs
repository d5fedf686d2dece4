//! Errors of checkpoint loading and validation.

use std::fmt;
use std::path::PathBuf;

/// How many problems of one kind a [`MismatchReport`] lists before summarising the rest.
pub const LIST_CAP: usize = 20;

/// Everything that can go wrong while reading or validating a checkpoint. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error("checkpoint file {} not found", path.display())]
    NotFound { path: PathBuf },

    #[error("checkpoint {} is not a regular file", path.display())]
    NotAFile { path: PathBuf },

    #[error("cannot read checkpoint {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("checkpoint {} is empty (0 bytes)", path.display())]
    Empty { path: PathBuf },

    #[error(
        "checkpoint {} is in the legacy torch.save format (a bare pickle stream, not a zip archive): \
         re-save it with torch.save(..., _use_new_zipfile_serialization=True) or convert to safetensors",
        path.display()
    )]
    LegacyTorchFormat { path: PathBuf },

    #[error(
        "checkpoint {} is truncated: it starts like a zip archive but is not a complete zip \
         (no end-of-central-directory record in its {size} bytes); re-download or re-save it{}",
        path.display(),
        detail.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
    )]
    Truncated {
        path: PathBuf,
        size: u64,
        detail: Option<String>,
    },

    #[error(
        "checkpoint {} is not a zip archive (PyTorch .pth), not a legacy torch.save file and not \
         safetensors; its first bytes are {head}",
        path.display()
    )]
    UnknownFormat { path: PathBuf, head: String },

    #[error("cannot read the zip archive {}: {detail}", path.display())]
    Zip { path: PathBuf, detail: String },

    #[error(
        "{} is a zip archive but not a torch.save checkpoint: no data.pkl entry (entries: {entries})",
        path.display()
    )]
    NoPickle { path: PathBuf, entries: String },

    #[error("cannot parse the pickle {entry} in {}: {detail}", path.display())]
    Pickle {
        path: PathBuf,
        entry: String,
        detail: String,
    },

    #[error(
        "no tensors found in {}: {top_level}; tried nested state dicts under {}",
        path.display(),
        tried.join(", ")
    )]
    NoTensors {
        path: PathBuf,
        /// What the top-level object is (its keys, for a dict).
        top_level: String,
        /// Each nested key tried, with what was found there.
        tried: Vec<String>,
    },

    #[error("tensor {name} in {}: {detail}", path.display())]
    BadTensor {
        path: PathBuf,
        name: String,
        detail: String,
    },

    #[error("cannot read safetensors file {}: {detail}", path.display())]
    Safetensors { path: PathBuf, detail: String },

    #[error("{0}")]
    Mismatch(Box<MismatchReport>),
}

/// A required tensor the checkpoint lacks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MissingTensor {
    pub name: String,
    pub expected: Vec<usize>,
}

/// A tensor in the checkpoint that the model does not have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnexpectedTensor {
    pub name: String,
    pub shape: Vec<usize>,
}

/// A tensor present in both with different shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShapeMismatch {
    pub name: String,
    pub expected: Vec<usize>,
    pub found: Vec<usize>,
}

/// A tensor holding NaN or ±Inf values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NonFiniteTensor {
    pub name: String,
    pub nan: usize,
    pub inf: usize,
    pub numel: usize,
    /// Flat (row-major) index of the first non-finite value.
    pub first_index: usize,
}

/// Everything [`Checkpoint::validate`](super::Checkpoint::validate) found wrong, all at once.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct MismatchReport {
    pub path: PathBuf,
    /// Required tensors absent from the checkpoint, in the model's order.
    pub missing: Vec<MissingTensor>,
    /// Checkpoint tensors the model does not know, in name order.
    pub unexpected: Vec<UnexpectedTensor>,
    /// Tensors with the wrong shape, in the model's order.
    pub mis_shaped: Vec<ShapeMismatch>,
    /// Tensors with NaN/Inf values (empty when non-finite values were allowed), in the model's order.
    pub non_finite: Vec<NonFiniteTensor>,
    /// How many of the model's tensors were present in the checkpoint (shape-compared).
    pub compared: usize,
    /// Blocks per stage (`block{stage}.{index}.` names) on each side, for spotting another depth.
    pub expected_depths: Vec<(usize, usize)>,
    pub found_depths: Vec<(usize, usize)>,
}

impl MismatchReport {
    pub fn is_clean(&self) -> bool {
        self.missing.is_empty()
            && self.unexpected.is_empty()
            && self.mis_shaped.is_empty()
            && self.non_finite.is_empty()
    }

    /// Number of key-level problems (missing + unexpected + mis-shaped).
    pub fn key_problems(&self) -> usize {
        self.missing.len() + self.unexpected.len() + self.mis_shaped.len()
    }

    /// The mis-shaped tensors that betray another model width: the stem / patch embeddings and the
    /// classifier heads. Empty when the widths agree.
    pub fn width_evidence(&self) -> Vec<&ShapeMismatch> {
        self.mis_shaped
            .iter()
            .filter(|m| {
                m.name.starts_with("patch_embed")
                    || m.name.starts_with("head.")
                    || m.name.starts_with("dist_head.")
            })
            .collect()
    }

    /// True when the checkpoint clearly belongs to another model size (another width or other
    /// stage depths) rather than being a slightly broken copy of this one.
    pub fn looks_like_other_model_size(&self) -> bool {
        self.size_hint().is_some()
    }

    /// One sentence explaining why the checkpoint looks like another model size, if it does.
    pub fn size_hint(&self) -> Option<String> {
        let mut reasons = Vec::new();
        let width = self.width_evidence();
        // A stem/patch-embedding width change (not just a different class count in the heads).
        if let Some(m) = width.iter().find(|m| m.name.starts_with("patch_embed")) {
            reasons.push(format!(
                "{} is {:?} in the checkpoint but {:?} in the model",
                m.name, m.found, m.expected
            ));
        } else if self.compared > 0 && self.mis_shaped.len() * 4 >= self.compared {
            reasons.push(format!(
                "{} of the {} shared tensors differ in shape",
                self.mis_shaped.len(),
                self.compared
            ));
        }
        if !self.found_depths.is_empty()
            && !self.expected_depths.is_empty()
            && self.found_depths != self.expected_depths
        {
            reasons.push(format!(
                "blocks per stage are {} in the checkpoint but {} in the model",
                fmt_depths(&self.found_depths),
                fmt_depths(&self.expected_depths)
            ));
        }
        if reasons.is_empty() {
            None
        } else {
            Some(format!(
                "this looks like a checkpoint of a different model size: {}",
                reasons.join("; ")
            ))
        }
    }
}

fn fmt_depths(depths: &[(usize, usize)]) -> String {
    let parts: Vec<String> = depths
        .iter()
        .map(|(s, n)| format!("block{s}: {n}"))
        .collect();
    format!("[{}]", parts.join(", "))
}

fn list<T>(
    f: &mut fmt::Formatter<'_>,
    kind: &str,
    items: &[T],
    line: impl Fn(&T) -> String,
) -> fmt::Result {
    for item in items.iter().take(LIST_CAP) {
        write!(f, "\n  {kind}: {}", line(item))?;
    }
    if items.len() > LIST_CAP {
        write!(f, "\n  … and {} more {kind}", items.len() - LIST_CAP)?;
    }
    Ok(())
}

impl fmt::Display for MismatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.display();
        if self.key_problems() > 0 {
            write!(
                f,
                "checkpoint {path} does not match the model: {} missing, {} unexpected, {} mis-shaped key(s)",
                self.missing.len(),
                self.unexpected.len(),
                self.mis_shaped.len()
            )?;
            if !self.non_finite.is_empty() {
                write!(
                    f,
                    ", {} tensor(s) with NaN/Inf values",
                    self.non_finite.len()
                )?;
            }
        } else {
            write!(
                f,
                "checkpoint {path} has non-finite values: {} tensor(s) contain NaN/Inf",
                self.non_finite.len()
            )?;
        }
        if let Some(hint) = self.size_hint() {
            write!(f, "\n  hint: {hint}")?;
        }
        list(f, "missing", &self.missing, |m| {
            format!("{} (expected shape {:?})", m.name, m.expected)
        })?;
        list(f, "unexpected", &self.unexpected, |u| {
            format!("{} (shape {:?})", u.name, u.shape)
        })?;
        list(f, "mis-shaped", &self.mis_shaped, |m| {
            format!("{}: expected {:?}, found {:?}", m.name, m.expected, m.found)
        })?;
        list(f, "non-finite", &self.non_finite, |n| {
            format!(
                "{}: {} NaN and {} Inf of {} values (first at flat index {})",
                n.name, n.nan, n.inf, n.numel, n.first_index
            )
        })?;
        if !self.non_finite.is_empty() {
            write!(
                f,
                "\n  (non-finite values can be accepted with allow_nonfinite)"
            )?;
        }
        Ok(())
    }
}
