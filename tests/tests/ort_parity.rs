//! End-to-end parity through ONNX Runtime: export each shared fixture's checkpoint at its input
//! size, run it with gm-runtime's ORT backend (the scan registered in-process), compare the logits
//! and every exposed intermediate tensor with the official model's.
//!
//! The function export (`--scan function`) runs twice: with the op registered (ONNX Runtime must
//! run the op: the graph it saves after basic optimisation still has every SelectiveScan node) and
//! without it (ONNX Runtime must inline the function's body: no SelectiveScan node left, the body's
//! GatherElements in its place); both must match the official model.
//!
//! Metric: max absolute difference; tolerance 1e-4 (FP32). Without ONNX Runtime (no
//! ORT_DYLIB_PATH, no Python onnxruntime) the tests print a notice and pass, unless
//! `GM_REQUIRE_ORT=1` (scripts/test.sh sets it), which makes that a failure.

use std::collections::BTreeMap;
use std::path::Path;

use gm_converter::model::emit::ScanMode;
use gm_converter::onnx::proto::ModelProto;
use gm_converter::onnx::FloatType;
use gm_runtime::backend::ort::{OrtBackend, OrtLoadOptions};
use gm_runtime::backend::Backend;
use gm_runtime::testing::ort_or_skip;
use gm_tests::fixtures::Fixture;

const TOL: f32 = 1e-4;

fn check_case(case: &str) {
    check_export(case, false);
}

fn check_export(case: &str, fused_ops: bool) {
    let Some(rt) = ort_or_skip(case) else {
        return;
    };
    let fixture = Fixture::load(case);
    let tag = format!("ort-fused-{fused_ops}");
    let out = fixture.export_with(&tag, FloatType::F32, ScanMode::CustomOp, fused_ops, true);
    let mut backend = OrtBackend::load_in(rt, &out).unwrap();
    let names = backend.output_names().to_vec();
    let outputs = backend.run(&fixture.input).unwrap();
    fixture.assert_outputs_match("ort", &names, &outputs, TOL);
}

#[test]
fn ort_custom_64x64_matches_official() {
    check_case("custom-64x64");
}

#[test]
fn ort_custom_72x100_odd_non_square_matches_official() {
    check_case("custom-72x100");
}

/// `--fused-ops`: ONNX Runtime runs our GroupedLayerNorm (CPU kernel) for every LayerNorm.
#[test]
fn ort_fused_ops_64x64_matches_official() {
    check_export("custom-64x64", true);
}

#[test]
fn ort_fused_ops_72x100_matches_official() {
    check_export("custom-72x100", true);
}

/// Node count per op type of an ONNX file.
fn op_counts(path: &Path) -> BTreeMap<String, usize> {
    use prost::Message;
    let model = ModelProto::decode(std::fs::read(path).unwrap().as_slice()).unwrap();
    let mut counts = BTreeMap::new();
    for node in model.graph.unwrap().node {
        *counts.entry(node.op_type).or_insert(0) += 1;
    }
    counts
}

fn check_function_case(case: &str) {
    let Some(rt) = ort_or_skip(case) else {
        return;
    };
    let fixture = Fixture::load(case);
    let out = fixture.export(
        "ort-function",
        FloatType::F32,
        ScanMode::Function { chunk: 16 },
        true,
    );
    let count = |counts: &BTreeMap<String, usize>, op: &str| counts.get(op).copied().unwrap_or(0);
    let exported = op_counts(&out);
    let scans = count(&exported, "SelectiveScan");
    assert!(
        scans > 0,
        "{case}: the function export has no SelectiveScan node"
    );
    for without_scan_op in [false, true] {
        let label = if without_scan_op {
            "ort, function inlined (no op registered)"
        } else {
            "ort, op registered"
        };
        let optimized = out.with_file_name(format!("optimized-without-op-{without_scan_op}.onnx"));
        let options = OrtLoadOptions {
            without_scan_op,
            optimized_model: Some(optimized.clone()),
            ..OrtLoadOptions::default()
        };
        let mut backend = OrtBackend::load_with_options(rt, &out, &options).unwrap();
        let names = backend.output_names().to_vec();
        let outputs = backend.run(&fixture.input).unwrap();
        let counts = op_counts(&optimized);
        let total: usize = counts.values().sum();
        println!(
            "{case} [{label}]: ONNX Runtime's optimised graph: {total} nodes, {} SelectiveScan, {} GatherElements (export: {} nodes, {scans} SelectiveScan)",
            count(&counts, "SelectiveScan"),
            count(&counts, "GatherElements"),
            exported.values().sum::<usize>(),
        );
        if without_scan_op {
            assert_eq!(count(&counts, "SelectiveScan"), 0, "{case}: {label}");
            // Three GatherElements per inlined call: into visiting order (log a, b), and back.
            assert_eq!(
                count(&counts, "GatherElements"),
                3 * scans,
                "{case}: {label}"
            );
        } else {
            assert_eq!(count(&counts, "SelectiveScan"), scans, "{case}: {label}");
            assert_eq!(count(&counts, "GatherElements"), 0, "{case}: {label}");
        }
        fixture.assert_outputs_match(label, &names, &outputs, TOL);
    }
}

#[test]
fn ort_function_export_64x64_op_and_inlined_match_official() {
    check_function_case("custom-64x64");
}

#[test]
fn ort_function_export_72x100_op_and_inlined_match_official() {
    check_function_case("custom-72x100");
}
