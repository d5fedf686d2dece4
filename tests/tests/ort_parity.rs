//! End-to-end parity through ONNX Runtime: export each shared fixture's checkpoint at its input
//! size, run it with gm-runtime's ORT backend (the scan registered in-process), compare the logits
//! and every exposed intermediate tensor with the official model's.
//!
//! Metric: max absolute difference; tolerance 1e-4 (FP32). Without ONNX Runtime (no
//! ORT_DYLIB_PATH, no Python onnxruntime) the tests print a notice and pass, unless
//! `GM_REQUIRE_ORT=1` (scripts/test.sh sets it), which makes that a failure.

use std::path::{Path, PathBuf};

use gm_converter::export::{export, ExportOptions};
use gm_converter::model::ModelConfig;
use gm_runtime::backend::ort::{self as ort_backend, OrtBackend, OrtRuntime};
use gm_runtime::backend::{Backend, HostTensor};
use gm_runtime::npy;

const TOL: f32 = 1e-4;

fn ort_or_skip(test: &str) -> Option<&'static OrtRuntime> {
    match ort_backend::runtime() {
        Ok(rt) => {
            println!("{test}: {}", rt.describe());
            Some(rt)
        }
        Err(e) if std::env::var("GM_REQUIRE_ORT").as_deref() == Ok("1") => {
            panic!("{test}: GM_REQUIRE_ORT=1 but ONNX Runtime is not available: {e}")
        }
        Err(e) => {
            println!("{test}: SKIPPED (set GM_REQUIRE_ORT=1 to make this a failure): {e}");
            None
        }
    }
}

fn parity_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity");
    assert!(
        root.is_dir(),
        "parity fixtures not found at {} (the shared folder must sit beside the checkout)",
        root.display()
    );
    root
}

fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn check_case(case: &str) {
    let Some(rt) = ort_or_skip(case) else {
        return;
    };
    let dir = parity_root().join(case);
    let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let checkpoint = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pth"))
        .expect("fixture checkpoint");
    let (in_shape, in_data) = npy::read_f32(dir.join("input.npy")).unwrap();
    let scratch = std::env::temp_dir().join(format!("gm-tests-ort-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&scratch).unwrap();
    let out = scratch.join("model.onnx");
    export(&ExportOptions {
        config,
        checkpoint: Some(checkpoint),
        seed: 0,
        height: in_shape[2],
        width: in_shape[3],
        debug_outputs: true,
        allow_nonfinite: false,
        precision: gm_converter::onnx::FloatType::F32,
        scan: gm_converter::model::emit::ScanMode::CustomOp,
        out: out.clone(),
    })
    .unwrap();

    let mut backend = OrtBackend::load_in(rt, &out).unwrap();
    let names = backend.output_names().to_vec();
    let outputs = backend
        .run(&HostTensor {
            shape: in_shape,
            data: in_data,
        })
        .unwrap();
    assert_eq!(names[0], "logits");
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
        println!("{case} [ort]: {name:<28} max abs err {err:.3e} (tol {TOL:.0e})");
        assert!(
            err <= TOL,
            "{case}: {name} through ONNX Runtime differs from the official model: max abs {err:e} > {TOL:e}"
        );
        compared += 1;
    }
    assert!(
        compared >= 15,
        "{case}: only {compared} tensors had a reference to compare with"
    );
    std::fs::remove_dir_all(&scratch).ok();
}

#[test]
fn ort_custom_64x64_matches_official() {
    check_case("custom-64x64");
}

#[test]
fn ort_custom_72x100_odd_non_square_matches_official() {
    check_case("custom-72x100");
}
