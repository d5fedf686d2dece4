//! Shared by the runtime's integration tests: a small exported model to run.

use std::path::{Path, PathBuf};

/// Exports the shared fixture's configuration (custom-64x64) at 64×64 with seeded random weights
/// into `dir/m.onnx`: a real GroupMamba graph that runs in well under a second.
pub fn fixture_config_model(dir: &Path) -> PathBuf {
    let out = dir.join("m.onnx");
    let config = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/parity/custom-64x64/config.json"
    );
    gm_converter::export::export(&gm_converter::export::ExportOptions {
        config: gm_converter::model::ModelConfig::from_file(config.as_ref()).unwrap(),
        checkpoint: None,
        seed: 1,
        height: 64,
        width: 64,
        debug_outputs: false,
        allow_nonfinite: false,
        precision: gm_converter::onnx::FloatType::F32,
        scan: gm_converter::model::emit::ScanMode::CustomOp,
        fused_ops: false,
        out: out.clone(),
    })
    .unwrap();
    out
}
