//! Export driver: weights (checkpoint or seeded random) → validated → graph → ONNX file on disk.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use prost::Message;
use thiserror::Error;

use crate::model::emit::{Emitter, ScanMode, BATCH};
use crate::model::function_scan::selective_scan_function;
use crate::model::params::{expected_tensors, parameter_count, random_weights};
use crate::model::{GroupMamba, ModelConfig};
use crate::onnx::proto::{DataType, ModelProto, OperatorSetIdProto, StringStringEntryProto};
use crate::onnx::{Dim, FloatType, GraphBuilder};
use crate::tensor::Tensor;
use crate::weights::{load_checkpoint, WeightsError};

/// Standard ONNX opset: 17 brings LayerNormalization and is accepted by ONNX Runtime ≥ 1.13,
/// tract and TensorRT 10.
pub const ONNX_OPSET: i64 = 17;
/// IR version 8 is the first that allows opset 17, and every runtime we target reads it.
pub const IR_VERSION: i64 = 8;
/// Largest accepted input side: far beyond any GroupMamba use, small enough that every index
/// of the largest scan (L = (H/4)·(W/4) positions) fits comfortably in 32 bits.
pub const MAX_SIDE: usize = 8192;

/// Official evaluation transform (timm/ImageNet defaults used by GroupMamba's `build_transform`).
pub const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const STD: [f32; 3] = [0.229, 0.224, 0.225];
pub const CROP_RATIO: f64 = 224.0 / 256.0;

#[derive(Debug, Clone)]
pub struct ExportOptions {
    pub config: ModelConfig,
    pub checkpoint: Option<PathBuf>,
    pub seed: u64,
    pub height: usize,
    pub width: usize,
    pub debug_outputs: bool,
    pub allow_nonfinite: bool,
    /// Element type of weights and activations. FP16 keeps the graph's input and output FP32
    /// (cast at the edges) and the scan's state and per-channel parameters FP32.
    pub precision: FloatType,
    pub scan: ScanMode,
    /// Fused `ai.groupmamba` operators for the memory-bound chains around the scan: every
    /// LayerNorm as one `GroupedLayerNorm` (SS2D's out_norm with its affine and SiLU gate fused
    /// in) and every depthwise convolution, with its bias, the preceding Linear's bias and its
    /// activation, as one `DepthwiseConv`: fewer, faster kernels on GPUs. Needs
    /// `ScanMode::CustomOp` (the other modes exist for runtimes without our ops).
    pub fused_ops: bool,
    pub out: PathBuf,
}

#[derive(Debug, Error)]
pub enum ExportError {
    #[error(
        "--fused-ops needs --scan custom: `{scan}` is for runtimes without our ops, and \
         the fused operators are ours"
    )]
    FusedOpsNeedCustomScan { scan: String },
    #[error("--{option} {value}: the input size must be between 1 and {MAX_SIDE} pixels")]
    InputSize { option: &'static str, value: usize },
    #[error("--out {path}: the output folder {folder} does not exist")]
    MissingOutputFolder { path: PathBuf, folder: PathBuf },
    #[error(transparent)]
    Weights(#[from] WeightsError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What was exported, for the command's summary and for tests.
#[derive(Debug, Clone)]
pub struct ExportReport {
    pub out: PathBuf,
    pub parameters: usize,
    pub state_dict_keys: usize,
    pub nodes: usize,
    pub bytes: usize,
    pub weights_source: String,
    pub debug_outputs: Vec<String>,
    pub seconds: f64,
}

pub fn export(opts: &ExportOptions) -> Result<ExportReport, ExportError> {
    let started = Instant::now();
    for (option, value) in [("height", opts.height), ("width", opts.width)] {
        if value == 0 || value > MAX_SIDE {
            return Err(ExportError::InputSize { option, value });
        }
    }
    if opts.fused_ops && opts.scan != ScanMode::CustomOp {
        return Err(ExportError::FusedOpsNeedCustomScan {
            scan: scan_name(opts.scan),
        });
    }
    check_output_folder(&opts.out)?;

    let model = GroupMamba::new(opts.config.clone());
    let specs = model.params().specs;
    let (weights, source_meta) = match &opts.checkpoint {
        Some(path) => {
            let ckpt = load_checkpoint(path)?;
            ckpt.validate(&expected_tensors(&specs), opts.allow_nonfinite)?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let meta = vec![
                ("groupmamba.checkpoint".to_string(), name),
                (
                    "groupmamba.checkpoint_sha256".to_string(),
                    ckpt.sha256.clone(),
                ),
            ];
            (ckpt.tensors, meta)
        }
        None => {
            let meta = vec![
                ("groupmamba.checkpoint".to_string(), "random".to_string()),
                (
                    "groupmamba.checkpoint_sha256".to_string(),
                    "random".to_string(),
                ),
                ("groupmamba.random_seed".to_string(), opts.seed.to_string()),
            ];
            (random_weights(&specs, opts.seed), meta)
        }
    };

    let model_proto = build_model(&model, &weights, opts, source_meta.clone());
    let debug_outputs = model_proto.graph.as_ref().map_or(vec![], |g| {
        g.output.iter().skip(1).map(|o| o.name.clone()).collect()
    });
    let nodes = model_proto.graph.as_ref().map_or(0, |g| g.node.len());
    let bytes = model_proto.encode_to_vec();
    write_atomically(&opts.out, &bytes)?;

    Ok(ExportReport {
        out: opts.out.clone(),
        parameters: parameter_count(&specs),
        state_dict_keys: specs.len(),
        nodes,
        bytes: bytes.len(),
        weights_source: source_meta[0].1.clone(),
        debug_outputs,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Builds the ModelProto for `model` with `weights` (already validated).
pub fn build_model(
    model: &GroupMamba,
    weights: &BTreeMap<String, Tensor>,
    opts: &ExportOptions,
    source_meta: Vec<(String, String)>,
) -> ModelProto {
    let cfg = &model.config;
    let float = opts.precision;
    let mut e = Emitter::new(
        GraphBuilder::new("groupmamba"),
        weights,
        float,
        opts.debug_outputs,
    );
    e.scan = opts.scan;
    e.fused_ops = opts.fused_ops;
    let images = e.g.input(
        "images",
        DataType::Float,
        &[
            Dim::Symbolic(BATCH),
            Dim::Fixed(cfg.in_chans),
            Dim::Fixed(opts.height),
            Dim::Fixed(opts.width),
        ],
    );
    let x = e.narrow(&images);
    let logits = model.emit(&mut e, &x, opts.height, opts.width);
    let logits = e.widen(&logits);
    e.g.output(
        &logits,
        "logits",
        DataType::Float,
        &[Dim::Symbolic(BATCH), Dim::Fixed(cfg.num_classes)],
    );
    let mut graph = e.g.finish();
    // `logits` first, debug outputs after it, in the order they were produced.
    let last = graph.output.pop().expect("logits output");
    graph.output.insert(0, last);

    let mut meta = vec![
        ("groupmamba.variant".to_string(), cfg.variant.clone()),
        ("groupmamba.config".to_string(), cfg.to_json()),
        (
            "groupmamba.producer".to_string(),
            format!("gm-export {}", env!("CARGO_PKG_VERSION")),
        ),
        ("groupmamba.input".to_string(), input_meta(cfg, opts)),
        (
            "groupmamba.preprocessing".to_string(),
            preprocessing_meta(opts),
        ),
        (
            "groupmamba.precision".to_string(),
            precision_name(float).to_string(),
        ),
        ("groupmamba.scan".to_string(), scan_name(opts.scan)),
        (
            "groupmamba.fused_ops".to_string(),
            fused_ops_name(opts.fused_ops).to_string(),
        ),
        ("groupmamba.output".to_string(), output_meta(cfg)),
    ];
    meta.extend(source_meta);

    let mut opset_import = vec![OperatorSetIdProto {
        domain: String::new(),
        version: ONNX_OPSET,
    }];
    if matches!(opts.scan, ScanMode::CustomOp | ScanMode::Function { .. }) {
        opset_import.push(OperatorSetIdProto {
            domain: gm_ops::spec::DOMAIN.to_string(),
            version: gm_ops::spec::OPSET_VERSION,
        });
    }
    ModelProto {
        ir_version: IR_VERSION,
        producer_name: "gm-export".to_string(),
        producer_version: env!("CARGO_PKG_VERSION").to_string(),
        domain: "ai.groupmamba".to_string(),
        model_version: 1,
        doc_string: format!(
            "GroupMamba ({}) exported by gm-export; selective scan: {}",
            cfg.variant,
            match opts.scan {
                ScanMode::CustomOp => format!(
                    "{}::{} v{}",
                    gm_ops::spec::DOMAIN,
                    gm_ops::spec::OP_TYPE,
                    gm_ops::spec::OPSET_VERSION
                ),
                ScanMode::Function { .. } => format!(
                    "{}::{} v{}, with a model-local function of the same name that runtimes \
                     without the op inline",
                    gm_ops::spec::DOMAIN,
                    gm_ops::spec::OP_TYPE,
                    gm_ops::spec::OPSET_VERSION
                ),
                ScanMode::Portable { .. } => scan_name(opts.scan),
            }
        ),
        graph: Some(graph),
        opset_import,
        metadata_props: meta
            .into_iter()
            .map(|(key, value)| StringStringEntryProto { key, value })
            .collect(),
        functions: match opts.scan {
            ScanMode::Function { chunk } => vec![selective_scan_function(chunk, ONNX_OPSET)],
            _ => vec![],
        },
    }
}

pub fn scan_name(scan: ScanMode) -> String {
    match scan {
        ScanMode::CustomOp => "custom-op".to_string(),
        ScanMode::Portable { chunk } => format!("portable (chunk {chunk})"),
        ScanMode::Function { chunk } => format!("function (chunk {chunk})"),
    }
}

/// Whether LayerNorms and depthwise convolutions are fused operators (metadata
/// `groupmamba.fused_ops`).
pub fn fused_ops_name(fused: bool) -> &'static str {
    if fused {
        "ai.groupmamba::GroupedLayerNorm, ai.groupmamba::DepthwiseConv"
    } else {
        "none (standard LayerNormalization and Conv)"
    }
}

pub fn precision_name(float: FloatType) -> &'static str {
    match float {
        FloatType::F32 => "fp32",
        FloatType::F16 => "fp16",
    }
}

fn input_meta(cfg: &ModelConfig, opts: &ExportOptions) -> String {
    serde_json::json!({
        "name": "images", "layout": "NCHW", "dtype": "float32",
        "channels": cfg.in_chans, "height": opts.height, "width": opts.width,
        "batch": "dynamic",
    })
    .to_string()
}

/// The official evaluation transform, scaled to the export size as the official code scales it
/// (`Resize(int(256/224 · size))`, `CenterCrop(size)`).
fn preprocessing_meta(opts: &ExportOptions) -> String {
    let shorter = opts.height.min(opts.width);
    serde_json::json!({
        "resize_shorter_side": (shorter as f64 / CROP_RATIO) as usize,
        "interpolation": "bicubic",
        "antialias": true,
        "center_crop": [opts.height, opts.width],
        "color": "RGB",
        "scale": 1.0 / 255.0,
        "mean": MEAN,
        "std": STD,
    })
    .to_string()
}

fn output_meta(cfg: &ModelConfig) -> String {
    let formula = if cfg.distillation {
        "(head(f) + dist_head(f)) / 2"
    } else {
        "head(f)"
    };
    serde_json::json!({"name": "logits", "classes": cfg.num_classes, "formula": formula, "kind": "logits (softmax not applied)"})
        .to_string()
}

fn check_output_folder(out: &Path) -> Result<(), ExportError> {
    let folder = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !folder.is_dir() {
        return Err(ExportError::MissingOutputFolder {
            path: out.to_path_buf(),
            folder,
        });
    }
    Ok(())
}

/// Writes next to the destination, then renames: readers never see a half-written model.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{file_name}.tmp-{}", std::process::id()));
    let err = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(err(e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        err(e)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::function_scan::{ATTRIBUTE, INPUTS, OUTPUT};

    fn build(scan: ScanMode) -> ModelProto {
        build_with(scan, false)
    }

    fn build_with(scan: ScanMode, fused_ops: bool) -> ModelProto {
        let config = ModelConfig {
            variant: "custom".into(),
            stem_hidden_dim: 8,
            embed_dims: [16, 16, 32, 32],
            depths: [1, 1, 1, 1],
            mlp_ratios: [2, 2, 2, 2],
            num_classes: 10,
            in_chans: 3,
            distillation: true,
        };
        let model = GroupMamba::new(config.clone());
        let weights = random_weights(&model.params().specs, 0);
        let opts = ExportOptions {
            config,
            checkpoint: None,
            seed: 0,
            height: 40,
            width: 24,
            debug_outputs: false,
            allow_nonfinite: false,
            precision: FloatType::F32,
            scan,
            fused_ops,
            out: PathBuf::from("unused.onnx"),
        };
        build_model(&model, &weights, &opts, vec![])
    }

    fn count(m: &ModelProto, domain: &str, op_type: &str) -> usize {
        let graph = m.graph.as_ref().unwrap();
        let same = |n: &&crate::onnx::proto::NodeProto| n.domain == domain && n.op_type == op_type;
        graph.node.iter().filter(same).count()
    }

    /// `--fused-ops`: every LayerNorm is a GroupedLayerNorm (one per norm module and one per
    /// SS2D out_norm), every depthwise conv a DepthwiseConv; the standard graph has none of them.
    #[test]
    fn fused_ops_replace_every_layer_norm_and_depthwise_conv() {
        use gm_ops::dwconv::DWCONV_OP_TYPE;
        use gm_ops::norm::NORM_OP_TYPE;
        use gm_ops::spec::DOMAIN;
        let standard = build(ScanMode::CustomOp);
        let fused = build_with(ScanMode::CustomOp, true);
        let norms = count(&standard, "", "LayerNormalization");
        let convs = count(&standard, "", "Conv");
        assert!(norms > 0 && convs > 0);
        assert_eq!(count(&fused, "", "LayerNormalization"), 0);
        assert_eq!(count(&fused, DOMAIN, NORM_OP_TYPE), norms);
        // The depthwise convs (one per layer, one per FFN) leave; the stem's and the downsamplings'
        // dense convs stay standard.
        let depthwise = count(&fused, DOMAIN, DWCONV_OP_TYPE);
        assert!(depthwise > 0);
        assert_eq!(count(&fused, "", "Conv"), convs - depthwise);
        // Every DepthwiseConv runs channels-last, on the (B, H, W, C) view of a Linear's tokens
        // (the layers' convs and the FFNs' convs, which take fc1's bias as InputBias).
        let graph = fused.graph.as_ref().unwrap();
        let convs: Vec<_> = graph
            .node
            .iter()
            .filter(|n| n.op_type == DWCONV_OP_TYPE)
            .collect();
        assert!(convs.iter().any(|n| n.input.len() == 4));
        assert!(convs.iter().any(|n| n.input.len() == 3));
        for node in convs {
            let channels_last = node
                .attribute
                .iter()
                .find(|a| a.name == gm_ops::dwconv::ATTR_CHANNELS_LAST)
                .and_then(|a| a.i);
            assert_eq!(channels_last, Some(1), "{}", node.name);
        }
        assert_eq!(count(&standard, DOMAIN, NORM_OP_TYPE), 0);
        assert_eq!(count(&standard, DOMAIN, DWCONV_OP_TYPE), 0);
        assert_eq!(fused.opset_import, standard.opset_import);
        assert!(meta(&fused, "groupmamba.fused_ops").contains(NORM_OP_TYPE));
        assert!(meta(&standard, "groupmamba.fused_ops").starts_with("none"));
    }

    /// The fused operators are ours: the modes for runtimes without our ops refuse them, before
    /// anything is written.
    #[test]
    fn fused_ops_need_the_custom_scan() {
        let dir = std::env::temp_dir().join(format!("gm-fused-refused-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for scan in [
            ScanMode::Portable { chunk: 16 },
            ScanMode::Function { chunk: 16 },
        ] {
            let out = dir.join("m.onnx");
            let opts = ExportOptions {
                config: ModelConfig::variant("tiny").unwrap(),
                checkpoint: None,
                seed: 0,
                height: 32,
                width: 32,
                debug_outputs: false,
                allow_nonfinite: false,
                precision: FloatType::F32,
                scan,
                fused_ops: true,
                out: out.clone(),
            };
            let err = export(&opts).unwrap_err();
            assert!(
                matches!(err, ExportError::FusedOpsNeedCustomScan { .. }),
                "{err}"
            );
            assert!(
                err.to_string().contains("--fused-ops needs --scan custom"),
                "{err}"
            );
            assert!(!out.exists());
        }
    }

    fn meta(m: &ModelProto, key: &str) -> String {
        let entry = m.metadata_props.iter().find(|e| e.key == key).unwrap();
        entry.value.clone()
    }

    /// `--scan function`: the custom-op graph, opsets and IR version, plus one function with the
    /// op's interface; the scan mode in the metadata.
    #[test]
    fn function_export_is_the_custom_graph_plus_one_function() {
        let custom = build(ScanMode::CustomOp);
        let function = build(ScanMode::Function { chunk: 16 });
        assert_eq!(function.graph, custom.graph);
        assert_eq!(function.opset_import, custom.opset_import);
        assert_eq!(function.ir_version, 8);
        assert!(custom.functions.is_empty());
        assert_eq!(meta(&custom, "groupmamba.scan"), "custom-op");
        assert_eq!(meta(&function, "groupmamba.scan"), "function (chunk 16)");

        assert_eq!(function.functions.len(), 1);
        let f = &function.functions[0];
        assert_eq!(
            (f.domain.as_str(), f.name.as_str()),
            (gm_ops::spec::DOMAIN, gm_ops::spec::OP_TYPE)
        );
        assert_eq!(f.input, INPUTS);
        assert_eq!(f.output, [OUTPUT]);
        assert_eq!(f.attribute, [ATTRIBUTE]);
        assert_eq!(
            f.opset_import,
            [OperatorSetIdProto {
                domain: String::new(),
                version: ONNX_OPSET
            }]
        );
        // Standard operators only, no Loop/Scan, every value defined before it is used, and the
        // output produced by the last node.
        let mut defined: std::collections::HashSet<&str> = INPUTS.into_iter().collect();
        for node in &f.node {
            assert_eq!(node.domain, "", "{}", node.op_type);
            assert!(!["Loop", "Scan", "If"].contains(&node.op_type.as_str()));
            for input in &node.input {
                assert!(
                    defined.contains(input.as_str()),
                    "{input} used before defined"
                );
            }
            defined.extend(node.output.iter().map(String::as_str));
        }
        assert_eq!(f.node.last().unwrap().op_type, "CastLike");
        assert_eq!(f.node.last().unwrap().output, [OUTPUT]);
        // `directions` enters through one Constant referring to the call's attribute.
        let refs: Vec<_> = f
            .node
            .iter()
            .flat_map(|n| &n.attribute)
            .filter(|a| !a.ref_attr_name.is_empty())
            .collect();
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].ref_attr_name, ATTRIBUTE);
    }
}
