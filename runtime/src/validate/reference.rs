//! Reference tensors: what the official PyTorch model computed for one input.
//!
//! Two layouts are read:
//! - a `.npz` (as `scripts/reference.py` writes it, or any `numpy.savez[_compressed]`): a zip of
//!   `NAME.npy` members, `input.npy` being the model input; an optional `manifest.json` member
//!   (provenance: versions, checkpoint, sha256 of every array) is kept and shown;
//! - a directory in the layout of the shared parity fixtures: `input.npy`, one `NAME.npy` per
//!   tensor, and a `blocks/` folder with more of them (`blocks/block1.0.attn.npy` is the tensor
//!   `block1.0.attn`). Other sub-folders (the fixtures' `scan/` call arguments) and non-`.npy`
//!   files are not tensors of the model and are ignored.
//!
//! Tensor names are the names of the model's (debug) outputs: `logits`, `stem`, `block2.0.mlp`, ….
//! Every array must be little-endian float32 ([`crate::npy`]).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::backend::HostTensor;
use crate::npy::{self, NpyError};

/// Name of the model input inside a reference.
pub const INPUT: &str = "input";
/// Name of the provenance member of a `.npz` written by `scripts/reference.py`.
pub const MANIFEST: &str = "manifest.json";

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("reference {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("reference {path}: not a .npz (zip) file: {message}")]
    NotZip { path: PathBuf, message: String },
    #[error(transparent)]
    Npy(#[from] NpyError),
    #[error("reference {path}: {member}: {message}")]
    Member {
        path: PathBuf,
        member: String,
        message: String,
    },
    #[error("reference {path} has no `{INPUT}` array (the model input); give one with --input")]
    NoInput { path: PathBuf },
    #[error("reference {path} holds no tensors")]
    Empty { path: PathBuf },
}

/// What kind of file or folder a reference came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferenceKind {
    Npz,
    Directory,
}

/// A loaded reference: the input and the expected tensors by name.
#[derive(Debug, Clone)]
pub struct Reference {
    pub path: PathBuf,
    pub kind: ReferenceKind,
    pub input: Option<HostTensor>,
    pub tensors: BTreeMap<String, HostTensor>,
    /// The `.npz`'s `manifest.json`, when it has one.
    pub manifest: Option<serde_json::Value>,
}

impl Reference {
    /// Loads a `.npz` file or a fixture-style directory (see the module doc).
    pub fn load(path: &Path) -> Result<Self, ReferenceError> {
        let meta = std::fs::metadata(path).map_err(|source| ReferenceError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let mut reference = if meta.is_dir() {
            load_dir(path)?
        } else {
            load_npz(path)?
        };
        reference.input = reference.tensors.remove(INPUT);
        if reference.tensors.is_empty() {
            return Err(ReferenceError::Empty {
                path: path.to_path_buf(),
            });
        }
        Ok(reference)
    }

    /// The input, or an error saying there is none.
    pub fn require_input(&self) -> Result<&HostTensor, ReferenceError> {
        self.input.as_ref().ok_or_else(|| ReferenceError::NoInput {
            path: self.path.clone(),
        })
    }

    /// One line about where the reference comes from (manifest fields when present).
    pub fn describe(&self) -> String {
        let kind = match self.kind {
            ReferenceKind::Npz => "npz",
            ReferenceKind::Directory => "fixture directory",
        };
        let mut s = format!(
            "{} ({kind}: {} tensors{})",
            self.path.display(),
            self.tensors.len(),
            self.input
                .as_ref()
                .map(|i| format!(" + input {:?}", i.shape))
                .unwrap_or_default()
        );
        if let Some(m) = &self.manifest {
            let field = |k: &str| m.get(k).and_then(|v| v.as_str()).map(str::to_string);
            let mut parts = vec![];
            if let Some(v) = field("model") {
                parts.push(format!("model {v}"));
            }
            if let Some(v) = m
                .get("weights")
                .and_then(|w| w.get("source"))
                .and_then(|v| v.as_str())
            {
                parts.push(format!("weights {v}"));
            }
            if let Some(v) = field("device") {
                parts.push(format!("on {v}"));
            }
            if let Some(v) = m
                .get("versions")
                .and_then(|v| v.get("torch"))
                .and_then(|v| v.as_str())
            {
                parts.push(format!("torch {v}"));
            }
            if let Some(v) = field("scan") {
                parts.push(format!("scan {v}"));
            }
            if !parts.is_empty() {
                s.push_str(&format!("; manifest: {}", parts.join(", ")));
            }
        }
        s
    }
}

fn load_dir(dir: &Path) -> Result<Reference, ReferenceError> {
    let mut tensors = BTreeMap::new();
    for folder in [dir.to_path_buf(), dir.join("blocks")] {
        if !folder.is_dir() {
            continue;
        }
        let entries = std::fs::read_dir(&folder).map_err(|source| ReferenceError::Io {
            path: folder.clone(),
            source,
        })?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file() && p.extension().is_some_and(|e| e == "npy"))
            .collect();
        files.sort();
        for file in files {
            let name = file
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let (shape, data) = npy::read_f32(&file)?;
            tensors.insert(name, HostTensor { shape, data });
        }
    }
    Ok(Reference {
        path: dir.to_path_buf(),
        kind: ReferenceKind::Directory,
        input: None,
        tensors,
        manifest: None,
    })
}

fn load_npz(path: &Path) -> Result<Reference, ReferenceError> {
    let file = std::fs::File::open(path).map_err(|source| ReferenceError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let mut zip = zip::ZipArchive::new(std::io::BufReader::new(file)).map_err(|e| {
        ReferenceError::NotZip {
            path: path.to_path_buf(),
            message: e.to_string(),
        }
    })?;
    let mut tensors = BTreeMap::new();
    let mut manifest = None;
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).map_err(|e| ReferenceError::NotZip {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        if entry.is_dir() {
            continue;
        }
        let member = entry
            .name()
            .map_err(|e| ReferenceError::NotZip {
                path: path.to_path_buf(),
                message: format!("member {i}: {e}"),
            })?
            .to_string();
        let member_err = |message: String| ReferenceError::Member {
            path: path.to_path_buf(),
            member: member.clone(),
            message,
        };
        let mut bytes = Vec::with_capacity(entry.size() as usize);
        entry
            .read_to_end(&mut bytes)
            .map_err(|e| member_err(format!("cannot read: {e}")))?;
        if member == MANIFEST {
            let value =
                serde_json::from_slice(&bytes).map_err(|e| member_err(format!("not JSON: {e}")))?;
            manifest = Some(value);
            continue;
        }
        let Some(name) = member.strip_suffix(".npy") else {
            return Err(member_err(
                "not a .npy member (a .npz holds NAME.npy arrays and optionally manifest.json)"
                    .into(),
            ));
        };
        let shown = PathBuf::from(format!("{}:{member}", path.display()));
        let (shape, data) = npy::parse_f32(&bytes, &shown)?;
        tensors.insert(name.to_string(), HostTensor { shape, data });
    }
    Ok(Reference {
        path: path.to_path_buf(),
        kind: ReferenceKind::Npz,
        input: None,
        tensors,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gm-ref-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn npz(path: &Path, members: &[(&str, Vec<u8>)], deflate: bool) {
        let file = std::fs::File::create(path).unwrap();
        let mut zip = zip::ZipWriter::new(file);
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let options = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            zip.start_file(*name, options).unwrap();
            zip.write_all(bytes).unwrap();
        }
        zip.finish().unwrap();
    }

    #[test]
    fn reads_stored_and_deflated_npz_with_manifest() {
        let dir = scratch("npz");
        let p = Path::new("x.npy");
        let input = npy::encode_f32(&[1, 2], &[1.0, 2.0], p).unwrap();
        let logits = npy::encode_f32(&[1, 3], &[0.5, -1.0, 2.0], p).unwrap();
        for deflate in [false, true] {
            let path = dir.join(format!("ref-{deflate}.npz"));
            npz(
                &path,
                &[
                    ("input.npy", input.clone()),
                    ("logits.npy", logits.clone()),
                    ("block1.0.attn.npy", logits.clone()),
                    (
                        "manifest.json",
                        br#"{"model": "tiny", "device": "cpu"}"#.to_vec(),
                    ),
                ],
                deflate,
            );
            let r = Reference::load(&path).unwrap();
            assert_eq!(r.input.as_ref().unwrap().data, vec![1.0, 2.0]);
            assert_eq!(r.tensors["logits"].shape, vec![1, 3]);
            assert!(r.tensors.contains_key("block1.0.attn"));
            assert!(r.describe().contains("model tiny"), "{}", r.describe());
        }
        let bad = dir.join("bad.npz");
        npz(&bad, &[("notes.txt", b"hello".to_vec())], false);
        let e = Reference::load(&bad).unwrap_err().to_string();
        assert!(
            e.contains("notes.txt") && e.contains("not a .npy member"),
            "{e}"
        );
        std::fs::write(dir.join("plain.npz"), b"not a zip").unwrap();
        let e = Reference::load(&dir.join("plain.npz"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("not a .npz"), "{e}");
    }

    #[test]
    fn reads_fixture_directories_and_ignores_scan_calls() {
        let dir = scratch("dir");
        std::fs::create_dir_all(dir.join("blocks")).unwrap();
        std::fs::create_dir_all(dir.join("scan")).unwrap();
        npy::write_f32(dir.join("input.npy"), &[1], &[1.0]).unwrap();
        npy::write_f32(dir.join("stem.npy"), &[1], &[2.0]).unwrap();
        npy::write_f32(dir.join("blocks/block1.0.npy"), &[1], &[3.0]).unwrap();
        npy::write_f32(dir.join("scan/call000_u.npy"), &[1], &[4.0]).unwrap();
        std::fs::write(dir.join("config.json"), b"{}").unwrap();
        let r = Reference::load(&dir).unwrap();
        assert_eq!(
            r.tensors.keys().collect::<Vec<_>>(),
            vec!["block1.0", "stem"]
        );
        assert!(r.input.is_some());
    }
}
