//! Checkpoint loading: PyTorch `.pth` (torch.save zip format) and `.safetensors` files become
//! named f32 [`Tensor`]s, which [`Checkpoint::validate`] then compares strictly with what the model
//! expects.
//!
//! - Every element type is converted to f32 (int64 `num_batches_tracked` scalars become shape-`[]`
//!   tensors).
//! - A `.pth` whose top level holds no tensors is searched for a nested state dict under
//!   [`NESTED_KEYS`] (first hit wins, recorded in [`Checkpoint::nested_key`]).
//! - A `module.` prefix shared by every key (DataParallel / DDP) is stripped and recorded.
//! - The format is recognised by content (zip / legacy torch pickle / safetensors header), so a
//!   misnamed file still loads or fails with an error that says what it is.

mod convert;
mod error;
mod pth;
mod st;
mod validate;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::tensor::Tensor;

pub use error::{
    MismatchReport, MissingTensor, NonFiniteTensor, ShapeMismatch, UnexpectedTensor, WeightsError,
    LIST_CAP,
};
pub use validate::ExpectedTensor;

/// Top-level keys searched, in this order, for a nested state dict when a `.pth` holds no
/// tensors at its top level (training checkpoints: `{"model": …, "model_ema": …, "epoch": …}`).
pub const NESTED_KEYS: [&str; 3] = ["model_ema", "model", "state_dict"];

/// Prefix stripped when every key carries it (models wrapped in DataParallel / DDP).
pub const MODULE_PREFIX: &str = "module.";

/// The pickle bytes every legacy (pre-zip) `torch.save` file starts with: protocol 2, then the
/// magic number 0x1950a86a20f9469cfc6c as a LONG1.
const LEGACY_MAGIC: [u8; 14] = [
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointFormat {
    Pth,
    Safetensors,
}

/// A loaded checkpoint: every tensor as f32, keyed by its (prefix-stripped) name.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub path: PathBuf,
    /// Lower-case hex SHA-256 of the file's bytes.
    pub sha256: String,
    pub format: CheckpointFormat,
    /// The top-level key the state dict was found under, if it was nested.
    pub nested_key: Option<String>,
    /// The prefix removed from every key (`module.`), if any.
    pub stripped_prefix: Option<String>,
    pub tensors: BTreeMap<String, Tensor>,
}

impl Checkpoint {
    /// Total number of values over all tensors.
    pub fn num_values(&self) -> usize {
        self.tensors.values().map(Tensor::numel).sum()
    }
}

/// Loads a `.pth` or `.safetensors` checkpoint (see the module docs).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint, WeightsError> {
    let (format, len) = sniff(path)?;
    let sha256 = sha256_file(path)?;
    let (nested_key, named) = match format {
        CheckpointFormat::Pth => {
            let c = pth::load(path, len)?;
            (c.nested_key, c.tensors)
        }
        CheckpointFormat::Safetensors => (None, st::load(path)?),
    };
    let (stripped_prefix, named) = strip_common_prefix(named, MODULE_PREFIX);
    let mut tensors = BTreeMap::new();
    for (name, t) in named {
        if tensors.contains_key(&name) {
            return Err(WeightsError::BadTensor {
                path: path.to_path_buf(),
                name,
                detail: "appears twice in the checkpoint".into(),
            });
        }
        tensors.insert(name, t);
    }
    Ok(Checkpoint {
        path: path.to_path_buf(),
        sha256,
        format,
        nested_key,
        stripped_prefix,
        tensors,
    })
}

/// Removes `prefix` from every name when every name has it.
fn strip_common_prefix(
    named: Vec<(String, Tensor)>,
    prefix: &str,
) -> (Option<String>, Vec<(String, Tensor)>) {
    if named.is_empty() || !named.iter().all(|(n, _)| n.starts_with(prefix)) {
        return (None, named);
    }
    let named = named
        .into_iter()
        .map(|(n, t)| (n[prefix.len()..].to_string(), t))
        .collect();
    (Some(prefix.to_string()), named)
}

/// Recognises the file's format from its first bytes; errors for missing, empty, legacy and
/// unknown files. Returns the format and the file's length.
fn sniff(path: &Path) -> Result<(CheckpointFormat, u64), WeightsError> {
    let io_err = |source: std::io::Error| {
        if source.kind() == std::io::ErrorKind::NotFound {
            WeightsError::NotFound {
                path: path.to_path_buf(),
            }
        } else {
            WeightsError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    let meta = std::fs::metadata(path).map_err(io_err)?;
    if !meta.is_file() {
        return Err(WeightsError::NotAFile {
            path: path.to_path_buf(),
        });
    }
    let len = meta.len();
    if len == 0 {
        return Err(WeightsError::Empty {
            path: path.to_path_buf(),
        });
    }
    let mut head = Vec::with_capacity(16);
    File::open(path)
        .and_then(|f| f.take(16).read_to_end(&mut head))
        .map_err(io_err)?;

    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return Ok((CheckpointFormat::Pth, len));
    }
    // Legacy files start with the magic number pickled at any protocol ≥ 2.
    if head.len() >= LEGACY_MAGIC.len() && head[0] == 0x80 && head[2..14] == LEGACY_MAGIC[2..] {
        return Err(WeightsError::LegacyTorchFormat {
            path: path.to_path_buf(),
        });
    }
    if looks_like_safetensors(&head, len) {
        return Ok((CheckpointFormat::Safetensors, len));
    }
    let by_extension = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    if by_extension {
        // Let the safetensors reader say what is wrong with it.
        return Ok((CheckpointFormat::Safetensors, len));
    }
    // A zip whose first bytes were cut or overwritten still has "PK" up front.
    if head.starts_with(b"PK") {
        return Err(WeightsError::Zip {
            path: path.to_path_buf(),
            detail: "the file starts with \"PK\" but not with a zip local-file header".into(),
        });
    }
    let hex: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    let mut described = hex.join(" ");
    if head.first() == Some(&0x80) {
        described.push_str(" (a pickle stream, but not a torch.save file)");
    }
    Err(WeightsError::UnknownFormat {
        path: path.to_path_buf(),
        head: described,
    })
}

/// A safetensors file: 8-byte little-endian header length, then a JSON object.
fn looks_like_safetensors(head: &[u8], len: u64) -> bool {
    if head.len() < 9 {
        return false;
    }
    let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
    n >= 2 && n <= len - 8 && head[8] == b'{'
}

/// Streams the file through SHA-256.
fn sha256_file(path: &Path) -> Result<String, WeightsError> {
    let io_err = |source| WeightsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = File::open(path).map_err(io_err)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).map_err(io_err)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_only_a_common_prefix() {
        let t = || Tensor::new(vec![1], vec![0.0]);
        let (p, n) = strip_common_prefix(
            vec![("module.a".into(), t()), ("module.b.c".into(), t())],
            MODULE_PREFIX,
        );
        assert_eq!(p.as_deref(), Some("module."));
        assert_eq!(n[1].0, "b.c");
        let (p, n) = strip_common_prefix(
            vec![("module.a".into(), t()), ("b".into(), t())],
            MODULE_PREFIX,
        );
        assert_eq!(p, None);
        assert_eq!(n[0].0, "module.a");
    }

    #[test]
    fn safetensors_header_sniff() {
        let mut h = 5u64.to_le_bytes().to_vec();
        h.extend_from_slice(b"{\"a\":");
        assert!(looks_like_safetensors(&h, 100));
        assert!(!looks_like_safetensors(&h, 10)); // header longer than the file
        h[8] = b'x';
        assert!(!looks_like_safetensors(&h, 100));
    }
}
