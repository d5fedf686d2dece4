//! End-to-end parity with the official model: export each shared fixture's checkpoint at its
//! input size, run it through tract, compare logits and every exposed intermediate tensor.
//!
//! Metric: max absolute difference. Tolerance: 1e-4 on logits (FP32), and 1e-4 on intermediates.

use std::path::{Path, PathBuf};

use gm_converter::export::{export, ExportOptions};
use gm_converter::model::emit::ScanMode;
use gm_converter::model::ModelConfig;
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{Backend, HostTensor};
use gm_runtime::npy;

const LOGITS_TOL: f32 = 1e-4;
const INTERMEDIATE_TOL: f32 = 1e-4;

fn parity_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity");
    assert!(
        root.is_dir(),
        "parity fixtures not found at {} (the shared folder must sit beside the checkout)",
        root.display()
    );
    root
}

fn scratch_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-tests-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_case(case: &str, scan: ScanMode) {
    let dir = parity_root().join(case);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pth"))
        .expect("fixture checkpoint");
    let (in_shape, in_data) = npy::read_f32(dir.join("input.npy")).unwrap();
    let out = scratch_dir(&format!("{case}-{scan:?}")).join("model.onnx");
    let report = export(&ExportOptions {
        config,
        checkpoint: Some(checkpoint),
        seed: 0,
        height: in_shape[2],
        width: in_shape[3],
        debug_outputs: true,
        allow_nonfinite: false,
        precision: gm_converter::onnx::FloatType::F32,
        scan,
        out: out.clone(),
    })
    .unwrap();
    println!(
        "{case}: exported {} nodes, {} parameters",
        report.nodes, report.parameters
    );

    let mut backend = TractBackend::load(&out).unwrap();
    let names = backend.output_names().to_vec();
    let outputs = backend
        .run(&HostTensor {
            shape: in_shape,
            data: in_data,
        })
        .unwrap();

    let mut compared = 0;
    for (name, value) in names.iter().zip(&outputs) {
        let file = if name.starts_with("block") {
            dir.join("blocks").join(format!("{name}.npy"))
        } else {
            dir.join(format!("{name}.npy"))
        };
        if !file.exists() {
            continue;
        }
        let (shape, expected) = npy::read_f32(&file).unwrap();
        assert_eq!(value.shape, shape, "{case}: shape of {name}");
        let err = max_abs(&value.data, &expected);
        let tol = if name == "logits" {
            LOGITS_TOL
        } else {
            INTERMEDIATE_TOL
        };
        println!("{case}: {name:<28} max abs err {err:.3e} (tol {tol:.0e})");
        assert!(
            err <= tol,
            "{case}: {name} differs from the official model: max abs {err:e} > {tol:e}"
        );
        compared += 1;
    }
    assert_eq!(names[0], "logits");
    // logits, logits_head/dist, features, cls_block, stem, 4 stages and every block's tensors.
    assert!(
        compared >= 15,
        "{case}: only {compared} tensors had a reference to compare with"
    );
}

#[test]
fn custom_64x64_matches_official_logits_and_intermediates() {
    check_case("custom-64x64", ScanMode::CustomOp);
}

#[test]
fn custom_72x100_odd_non_square_matches_official() {
    check_case("custom-72x100", ScanMode::CustomOp);
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

/// FP16 export (weights and activations FP16, scan state FP32) through tract: logits must keep
/// cosine similarity ≥ 0.9999 with the official FP32 logits and the same top-1 class.
fn check_fp16_case(case: &str) {
    let dir = parity_root().join(case);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pth"))
        .expect("fixture checkpoint");
    let (in_shape, in_data) = npy::read_f32(dir.join("input.npy")).unwrap();
    let out = scratch_dir(&format!("{case}-fp16")).join("model.onnx");
    export(&ExportOptions {
        config,
        checkpoint: Some(checkpoint),
        seed: 0,
        height: in_shape[2],
        width: in_shape[3],
        debug_outputs: false,
        allow_nonfinite: false,
        precision: gm_converter::onnx::FloatType::F16,
        scan: gm_converter::model::emit::ScanMode::CustomOp,
        out: out.clone(),
    })
    .unwrap();
    let mut backend = TractBackend::load(&out).unwrap();
    let logits = backend
        .run(&HostTensor {
            shape: in_shape,
            data: in_data,
        })
        .unwrap()
        .remove(0);
    let (_, expected) = npy::read_f32(dir.join("logits.npy")).unwrap();
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
        "{case} fp16: cosine {cosine:.7}, max abs err {:.3e}, top-1 {} vs official {}",
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
    check_fp16_case("custom-64x64");
}

#[test]
fn custom_72x100_fp16_keeps_cosine_and_top1() {
    check_fp16_case("custom-72x100");
}
