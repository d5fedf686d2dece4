//! End-to-end parity with the official model: export each shared fixture's checkpoint at its
//! input size, run it through tract, compare logits and every exposed intermediate tensor.
//!
//! Metric: max absolute difference. Tolerance: 1e-4 on logits (FP32), and 1e-4 on intermediates.

use gm_converter::model::emit::ScanMode;
use gm_converter::onnx::FloatType;
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::Backend;
use gm_tests::fixtures::{max_abs, Fixture};

/// Logits and every intermediate: max abs ≤ 1e-4 (FP32).
const TOL: f32 = 1e-4;

fn check_case(case: &str, scan: ScanMode) {
    check_export(case, scan, false);
}

fn check_export(case: &str, scan: ScanMode, fused_ops: bool) {
    let fixture = Fixture::load(case);
    let tag = format!("{scan:?}-fused-{fused_ops}");
    let out = fixture.export_with(&tag, FloatType::F32, scan, fused_ops, true);
    let mut backend = TractBackend::load(&out).unwrap();
    let names = backend.output_names().to_vec();
    let outputs = backend.run(&fixture.input).unwrap();
    fixture.assert_outputs_match("tract", &names, &outputs, TOL);
}

#[test]
fn custom_64x64_matches_official_logits_and_intermediates() {
    check_case("custom-64x64", ScanMode::CustomOp);
}

#[test]
fn custom_72x100_odd_non_square_matches_official() {
    check_case("custom-72x100", ScanMode::CustomOp);
}

/// `--fused-ops` (every LayerNorm one GroupedLayerNorm node, out_norm's affine and SiLU gate
/// fused, block-diagonal in/out projections): the same tolerance, intermediates included.
#[test]
fn custom_64x64_fused_ops_matches_official() {
    check_export("custom-64x64", ScanMode::CustomOp, true);
}

#[test]
fn custom_72x100_fused_ops_matches_official() {
    check_export("custom-72x100", ScanMode::CustomOp, true);
}

/// The portable export (standard ONNX ops only) must match the official model as closely.
#[test]
fn custom_64x64_portable_scan_matches_official() {
    check_case("custom-64x64", ScanMode::Portable { chunk: 16 });
}

#[test]
fn custom_72x100_portable_scan_matches_official() {
    // A chunk that divides no sequence length: padding and three levels of carries.
    check_case("custom-72x100", ScanMode::Portable { chunk: 7 });
}

/// The function export (`--scan function`): tract ignores the model-local function and runs our
/// registered op (tract keys ops by type), so this must match exactly as the custom-op export.
#[test]
fn custom_64x64_function_export_matches_official() {
    check_case("custom-64x64", ScanMode::Function { chunk: 16 });
}

#[test]
fn custom_72x100_function_export_matches_official() {
    check_case("custom-72x100", ScanMode::Function { chunk: 16 });
}

/// FP16 export (weights and activations FP16, scan state FP32) through tract: logits must keep
/// cosine similarity ≥ 0.9999 with the official FP32 logits and the same top-1 class.
fn check_fp16_case(case: &str, scan: ScanMode) {
    check_fp16_export(case, scan, false);
}

fn check_fp16_export(case: &str, scan: ScanMode, fused_ops: bool) {
    let fixture = Fixture::load(case);
    // One file per mode: the tests run in parallel.
    let tag = match scan {
        ScanMode::CustomOp => "fp16",
        ScanMode::Portable { .. } => "fp16-portable",
        ScanMode::Function { .. } => "fp16-function",
    };
    let tag = format!("{tag}-fused-{fused_ops}");
    let out = fixture.export_with(&tag, FloatType::F16, scan, fused_ops, false);
    let mut backend = TractBackend::load(&out).unwrap();
    let logits = backend.run(&fixture.input).unwrap().remove(0);
    let (_, expected) = fixture.reference("logits").unwrap();
    let dot: f64 = logits
        .data
        .iter()
        .zip(&expected)
        .map(|(a, b)| *a as f64 * *b as f64)
        .sum();
    let norm = |v: &[f32]| v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let cosine = dot / (norm(&logits.data) * norm(&expected));
    let argmax = |v: &[f32]| (0..v.len()).max_by(|&i, &j| v[i].total_cmp(&v[j])).unwrap();
    println!(
        "{case} fp16 ({scan:?}, fused norms {fused_ops}): cosine {cosine:.7}, max abs err {:.3e}, top-1 {} vs official {}",
        max_abs(&logits.data, &expected),
        argmax(&logits.data),
        argmax(&expected)
    );
    assert!(cosine >= 0.9999, "{case}: FP16 cosine {cosine} < 0.9999");
    assert_eq!(
        argmax(&logits.data),
        argmax(&expected),
        "{case}: FP16 top-1 differs"
    );
}

#[test]
fn custom_64x64_fp16_keeps_cosine_and_top1() {
    check_fp16_case("custom-64x64", ScanMode::CustomOp);
}

/// The portable scan of an FP16 export computes in FP32 (Cast in, Cast out), like the op.
#[test]
fn custom_64x64_fp16_portable_keeps_cosine_and_top1() {
    check_fp16_case("custom-64x64", ScanMode::Portable { chunk: 16 });
}

#[test]
fn custom_72x100_fp16_portable_keeps_cosine_and_top1() {
    check_fp16_case("custom-72x100", ScanMode::Portable { chunk: 16 });
}

#[test]
fn custom_72x100_fp16_keeps_cosine_and_top1() {
    check_fp16_case("custom-72x100", ScanMode::CustomOp);
}

#[test]
fn custom_72x100_fp16_fused_ops_keeps_cosine_and_top1() {
    check_fp16_export("custom-72x100", ScanMode::CustomOp, true);
}
