//! A model's `metadata_props` (ONNX ModelProto field 14), read without decoding the graph.
//!
//! gm-export records there what a caller needs besides the graph, in particular
//! `groupmamba.preprocessing` (the evaluation transform) and `groupmamba.output` (class count);
//! the backends do not expose metadata, and need not: this reads it straight from the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use prost::Message;

#[derive(Debug, thiserror::Error)]
pub enum MetadataError {
    #[error("cannot read model {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not an ONNX model: {message}")]
    NotOnnx { path: PathBuf, message: String },
}

/// Only the metadata field of a ModelProto; prost skips the others (the graph) undecoded.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelMetadata {
    #[prost(message, repeated, tag = "14")]
    metadata_props: Vec<Entry>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Entry {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(string, tag = "2")]
    value: String,
}

/// All metadata entries of the model at `path` (a later duplicate key wins).
pub fn read(path: &Path) -> Result<BTreeMap<String, String>, MetadataError> {
    let bytes = std::fs::read(path).map_err(|source| MetadataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    parse(&bytes).map_err(|message| MetadataError::NotOnnx {
        path: path.to_path_buf(),
        message,
    })
}

/// [`read`] on bytes already in memory.
pub fn parse(bytes: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let model = ModelMetadata::decode(bytes).map_err(|e| e.to_string())?;
    Ok(model
        .metadata_props
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_entries_and_skips_other_fields() {
        // Field 7 (graph) as opaque bytes, then two field-14 entries.
        let mut bytes = vec![0x3a, 3, 1, 2, 3];
        for (k, v) in [("a", "1"), ("b", "two")] {
            let mut entry = vec![0x0a, k.len() as u8];
            entry.extend_from_slice(k.as_bytes());
            entry.extend_from_slice(&[0x12, v.len() as u8]);
            entry.extend_from_slice(v.as_bytes());
            bytes.extend_from_slice(&[0x72, entry.len() as u8]);
            bytes.extend_from_slice(&entry);
        }
        let m = parse(&bytes).unwrap();
        assert_eq!(m.get("a").map(String::as_str), Some("1"));
        assert_eq!(m.get("b").map(String::as_str), Some("two"));
        assert!(parse(b"\xff\xff\xff").is_err());
    }
}
