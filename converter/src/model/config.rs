//! Model configuration: the official variants (shipped as `models/*.json`) and user JSON files.
//!
//! The fields mirror the arguments of the official `GroupMamba` constructor. Everything else
//! (group width, dt rank, CAM width) is derived exactly as the official code derives it.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use thiserror::Error;

/// Channels are split into this many groups, one scan direction each (→ ↓ ← ↑).
pub const GROUPS: usize = 4;
/// Channel Affinity Modulation reduction: hidden width = C / 16 (floor).
pub const CAM_REDUCTION: usize = 16;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("unknown variant '{0}' (expected tiny, small or base)")]
    UnknownVariant(String),
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config {path} is not a valid model config: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("config {origin}: {message}")]
    Invalid { origin: String, message: String },
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct ModelConfig {
    /// "tiny" / "small" / "base" for the official configurations, "custom" otherwise.
    #[serde(default = "custom")]
    pub variant: String,
    pub stem_hidden_dim: usize,
    pub embed_dims: [usize; 4],
    pub depths: [usize; 4],
    pub mlp_ratios: [usize; 4],
    pub num_classes: usize,
    #[serde(default = "three")]
    pub in_chans: usize,
    /// Official models carry a second (distillation) head and average both at inference.
    #[serde(default = "yes")]
    pub distillation: bool,
}

fn custom() -> String {
    "custom".to_string()
}
fn three() -> usize {
    3
}
fn yes() -> bool {
    true
}

/// Per-stage widths derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerDims {
    /// Channels C of the stage.
    pub channels: usize,
    /// Channels of one group d = C / 4.
    pub group: usize,
    /// Low-rank width of the dt projection, ceil(d / 16).
    pub dt_rank: usize,
    /// Hidden width of the channel-affinity MLP, C / 16.
    pub cam_hidden: usize,
}

impl LayerDims {
    pub fn new(channels: usize) -> Self {
        let group = channels / GROUPS;
        Self {
            channels,
            group,
            dt_rank: group.div_ceil(16),
            cam_hidden: channels / CAM_REDUCTION,
        }
    }
}

impl ModelConfig {
    pub fn variant(name: &str) -> Result<Self, ConfigError> {
        let text = match name {
            "tiny" => include_str!("../../../models/tiny.json"),
            "small" => include_str!("../../../models/small.json"),
            "base" => include_str!("../../../models/base.json"),
            other => return Err(ConfigError::UnknownVariant(other.to_string())),
        };
        let config: Self = serde_json::from_str(text).expect("bundled variant configs are valid");
        config.validate(&format!("variant {name}"))?;
        Ok(config)
    }

    /// Reads a JSON config. A fixture's `config.json` (config under a `model` key) works too.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let parse_err = |e: serde_json::Error| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        let mut value: serde_json::Value = serde_json::from_str(&text).map_err(parse_err)?;
        if value.get("embed_dims").is_none() {
            if let Some(model) = value.get_mut("model") {
                value = model.take();
            }
        }
        let config: Self = serde_json::from_value(value).map_err(parse_err)?;
        config.validate(&path.display().to_string())?;
        Ok(config)
    }

    fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            message,
        };
        if self.stem_hidden_dim == 0 || self.num_classes == 0 || self.in_chans == 0 {
            return Err(invalid(
                "stem_hidden_dim, num_classes and in_chans must be positive".into(),
            ));
        }
        for (i, &c) in self.embed_dims.iter().enumerate() {
            if c % GROUPS != 0 || c < CAM_REDUCTION {
                return Err(invalid(format!(
                    "embed_dims[{i}] = {c}: must be a multiple of {GROUPS} (four channel groups) \
                     and at least {CAM_REDUCTION} (channel-affinity reduction)"
                )));
            }
        }
        if let Some(i) = self.mlp_ratios.iter().position(|&r| r == 0) {
            return Err(invalid(format!("mlp_ratios[{i}] must be positive")));
        }
        Ok(())
    }

    pub fn layer_dims(&self, stage: usize) -> LayerDims {
        LayerDims::new(self.embed_dims[stage])
    }

    /// The configuration as JSON, for the model's metadata.
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "variant": self.variant,
            "stem_hidden_dim": self.stem_hidden_dim,
            "embed_dims": self.embed_dims,
            "depths": self.depths,
            "mlp_ratios": self.mlp_ratios,
            "num_classes": self.num_classes,
            "in_chans": self.in_chans,
            "distillation": self.distillation,
        })
        .to_string()
    }
}

/// Spatial size after a stride-2 convolution with "same"-style padding (k3/p1 or k7/p3).
pub fn halve(n: usize) -> usize {
    n.div_ceil(2)
}

/// Token grid (H, W) of each stage for an input of `height` × `width`.
pub fn stage_sizes(height: usize, width: usize) -> [(usize, usize); 4] {
    let mut hw = (halve(halve(height)), halve(halve(width)));
    let mut out = [(0, 0); 4];
    for (i, slot) in out.iter_mut().enumerate() {
        if i > 0 {
            hw = (halve(hw.0), halve(hw.1));
        }
        *slot = hw;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_variants_derive_the_published_widths() {
        let tiny = ModelConfig::variant("tiny").unwrap();
        let dims: Vec<_> = (0..4).map(|s| tiny.layer_dims(s)).collect();
        assert_eq!(
            dims.iter().map(|d| d.group).collect::<Vec<_>>(),
            [16, 32, 87, 112]
        );
        assert_eq!(
            dims.iter().map(|d| d.dt_rank).collect::<Vec<_>>(),
            [1, 2, 6, 7]
        );
        assert_eq!(
            dims.iter().map(|d| d.cam_hidden).collect::<Vec<_>>(),
            [4, 8, 21, 28]
        );
        let base = ModelConfig::variant("base").unwrap();
        assert_eq!(base.layer_dims(2).dt_rank, 7);
        assert_eq!(base.layer_dims(2).cam_hidden, 26);
    }

    #[test]
    fn stage_sizes_follow_ceil_halving() {
        assert_eq!(
            stage_sizes(224, 224),
            [(56, 56), (28, 28), (14, 14), (7, 7)]
        );
        assert_eq!(stage_sizes(72, 100), [(18, 25), (9, 13), (5, 7), (3, 4)]);
    }

    #[test]
    fn rejects_widths_not_divisible_into_groups() {
        let mut c = ModelConfig::variant("tiny").unwrap();
        c.embed_dims[2] = 346;
        let err = c.validate("test").unwrap_err().to_string();
        assert!(err.contains("embed_dims[2] = 346"), "{err}");
    }
}
