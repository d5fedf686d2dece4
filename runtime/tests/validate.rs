//! gm-validate: the shared official-model fixtures pass; deliberately broken exports fail, and
//! the first divergent tensor names the block (and group) where the defect is.
//!
//! The defects are the two that matter most for this model: one weight of one group's SSM off
//! (`block3.1.attn.mamba_g2.Ds`, one channel), and one group scanning the wrong way (the
//! `directions` attribute of block1.0's SelectiveScan node). Each is checked against the official
//! fixture directory (which has every block's output, and block1.0's internals) and, for the
//! weight, against a reference made from the correct export with every debug output, which pins
//! the divergence down to the group's own output.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use gm_converter::export::{build_model, export, ExportOptions};
use gm_converter::model::emit::ScanMode;
use gm_converter::model::{GroupMamba, ModelConfig};
use gm_converter::onnx::proto::ModelProto;
use gm_converter::onnx::FloatType;
use gm_converter::weights::load_checkpoint;
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{Backend, HostTensor};
use gm_runtime::validate::report::{BackendReport, Outcome};
use gm_runtime::validate::tolerance::{Precision, Tolerances};
use gm_runtime::validate::{compare_outputs, ModelInfo, Reference};
use prost::Message;

fn fixture(case: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../shared/parity")
        .join(case);
    assert!(dir.is_dir(), "parity fixture {} not found", dir.display());
    dir
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-validate-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn checkpoint(dir: &Path) -> PathBuf {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|e| e == "pth"))
        .expect("fixture checkpoint")
}

fn options(case: &str, precision: FloatType, out: PathBuf) -> ExportOptions {
    let dir = fixture(case);
    let reference = Reference::load(&dir).unwrap();
    let shape = &reference.input.as_ref().unwrap().shape;
    ExportOptions {
        config: ModelConfig::from_file(&dir.join("config.json")).unwrap(),
        checkpoint: Some(checkpoint(&dir)),
        seed: 0,
        height: shape[2],
        width: shape[3],
        debug_outputs: true,
        allow_nonfinite: false,
        precision,
        scan: ScanMode::CustomOp,
        fused_ops: false,
        out,
    }
}

/// The fixture's checkpoint exported with debug outputs.
fn export_fixture(case: &str, precision: FloatType, name: &str) -> PathBuf {
    let out = scratch(name).join("model.onnx");
    export(&options(case, precision, out.clone())).unwrap();
    out
}

/// The fixture's checkpoint with `edit` applied to its weights, exported with debug outputs.
fn export_edited(
    case: &str,
    name: &str,
    edit: impl FnOnce(&mut BTreeMap<String, gm_converter::tensor::Tensor>),
) -> PathBuf {
    let out = scratch(name).join("model.onnx");
    let opts = options(case, FloatType::F32, out.clone());
    let mut ckpt = load_checkpoint(opts.checkpoint.as_ref().unwrap()).unwrap();
    edit(&mut ckpt.tensors);
    let model = GroupMamba::new(opts.config.clone());
    let proto = build_model(&model, &ckpt.tensors, &opts, vec![]);
    std::fs::write(&out, proto.encode_to_vec()).unwrap();
    out
}

/// Rewrites the `directions` attribute of the SelectiveScan node of `layer` (e.g. block1.0.attn).
fn with_directions(model: &Path, layer: &str, directions: &[i64], name: &str) -> PathBuf {
    let mut proto = ModelProto::decode(std::fs::read(model).unwrap().as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let prefix = format!("{layer}/");
    let node = graph
        .node
        .iter_mut()
        .find(|n| n.op_type == "SelectiveScan" && n.name.starts_with(&prefix))
        .unwrap_or_else(|| panic!("no SelectiveScan node in {layer}"));
    let attr = node
        .attribute
        .iter_mut()
        .find(|a| a.name == "directions")
        .unwrap();
    assert_eq!(attr.ints, vec![0, 1, 2, 3]);
    attr.ints = directions.to_vec();
    let out = scratch(name).join("model.onnx");
    std::fs::write(&out, proto.encode_to_vec()).unwrap();
    out
}

fn run_tract(model: &Path, input: &HostTensor) -> (Vec<String>, Vec<HostTensor>) {
    let mut backend = TractBackend::load(model).unwrap();
    let outputs = backend.run(input).unwrap();
    (backend.output_names().to_vec(), outputs)
}

/// Validates `model` against `reference` through tract with the model's default tolerances.
fn validate_tract(model: &Path, reference: &Reference) -> BackendReport {
    let (precision, source) = ModelInfo::read(model).unwrap().precision();
    let tolerances = Tolerances::defaults(precision, source);
    let (names, outputs) = run_tract(model, reference.input.as_ref().unwrap());
    let report = compare_outputs(
        "tract",
        &names,
        &outputs,
        &reference.tensors,
        &tolerances,
        false,
    )
    .unwrap();
    println!("{}", report.verdict_line());
    report
}

/// A reference holding every output of `model` (the correct export) on the fixture's input.
fn self_reference(model: &Path, case: &str) -> Reference {
    let mut reference = Reference::load(&fixture(case)).unwrap();
    let (names, outputs) = run_tract(model, reference.input.as_ref().unwrap());
    reference.tensors = names.into_iter().zip(outputs).collect();
    reference
}

fn gm_validate(args: &[&str]) -> (i32, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gm-validate"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    println!("{text}");
    (o.status.code().unwrap_or(-1), text)
}

#[test]
fn both_fixtures_pass_against_the_official_tensors() {
    for case in ["custom-64x64", "custom-72x100"] {
        let model = export_fixture(case, FloatType::F32, &format!("ok-{case}"));
        let reference = Reference::load(&fixture(case)).unwrap();
        let report = validate_tract(&model, &reference);
        assert_eq!(report.outcome, Outcome::Pass, "{case}");
        // stem, 5 blocks, block1.0's attn/mlp/4 groups, 4 stages, cls_block, features, 3 logits
        assert_eq!(report.compared.len(), 21, "{case}");
        assert!(report.compared.iter().any(|c| c.profile.is_some()));
        assert_eq!(report.compared.last().unwrap().name, "logits");
    }
}

#[test]
fn cli_passes_fixture_directory_and_writes_json() {
    let case = "custom-72x100";
    let model = export_fixture(case, FloatType::F32, "cli-ok");
    let json = scratch("cli-ok").join("report.json");
    let (code, text) = gm_validate(&[
        "--model",
        model.to_str().unwrap(),
        "--reference",
        fixture(case).to_str().unwrap(),
        "--backend",
        "tract",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("tract: PASS") && text.contains("fp32 defaults"),
        "{text}"
    );
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(report["result"], "pass");
    assert_eq!(report["precision"], "fp32");
    let tensors = report["backends"][0]["tensors"].as_array().unwrap();
    assert_eq!(tensors.len(), 21);
    let g3 = tensors
        .iter()
        .find(|t| t["name"] == "block1.0.attn.mamba_g3")
        .unwrap();
    assert_eq!(g3["scan_profile"]["direction"], "←");
    assert_eq!(
        g3["scan_profile"]["max_abs_per_bin"]
            .as_array()
            .unwrap()
            .len(),
        10
    );
    assert!(
        report["backends"][0]["tensors"][20]["max_abs"]
            .as_f64()
            .unwrap()
            < 1e-5
    );
}

#[test]
fn one_perturbed_weight_is_localised_to_its_block_and_group() {
    let case = "custom-64x64";
    // One channel of group 2's skip weight D in block3.1, off by 0.05 (of ~1).
    let broken = export_edited(case, "ds", |w| {
        let ds = w.get_mut("block3.1.attn.mamba_g2.Ds").unwrap();
        ds.data[5] += 0.05;
    });

    // Against the official tensors: everything before block3.1 passes, block3.1 is the first
    // divergence (the fixture has every block's output but only block1.0's internals).
    let official = Reference::load(&fixture(case)).unwrap();
    let report = validate_tract(&broken, &official);
    let first = report
        .first_divergence()
        .expect("the defect must be detected");
    assert_eq!(first.name, "block3.1");
    assert!(report.compared[..report.compared.len() - 1]
        .iter()
        .all(|c| c.verdict.pass));
    assert!(report
        .verdict_line()
        .contains("diverges first at block3.1 (max abs"));

    // Against a reference with every tensor: the group's own output is named.
    let good = export_fixture(case, FloatType::F32, "ds-good");
    let full = self_reference(&good, case);
    let report = validate_tract(&broken, &full);
    let first = report.first_divergence().unwrap();
    assert_eq!(first.name, "block3.1.attn.mamba_g2");
    // block3.1's group 1, computed before group 2 and independent of it, still matches.
    assert!(report
        .compared
        .iter()
        .any(|c| c.name == "block3.1.attn.mamba_g1" && c.verdict.pass));
    // The group's error along its ↓ scan over the 4×4 map of stage 3.
    let profile = first.profile.as_ref().unwrap();
    println!("perturbed D, g2 profile: {:?}", profile.bins);
    assert_eq!((profile.height, profile.width), (4, 4));
    assert!(profile.first_above(first.criterion.atol).is_some());

    // The command line says the same and exits with 1.
    let (code, text) = gm_validate(&[
        "--model",
        broken.to_str().unwrap(),
        "--reference",
        fixture(case).to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("FAIL — diverges first at block3.1 (max abs"),
        "{text}"
    );
    assert!(text.contains("later tensors not compared"), "{text}");
}

#[test]
fn a_group_scanning_the_wrong_way_is_localised_to_that_group() {
    let case = "custom-64x64";
    let good = export_fixture(case, FloatType::F32, "dir-good");
    // Group 3 of block1.0 scans → (like group 1) instead of ←.
    let broken = with_directions(&good, "block1.0.attn", &[0, 1, 0, 3], "dir-bad");
    let official = Reference::load(&fixture(case)).unwrap();
    let report = validate_tract(&broken, &official);
    let first = report
        .first_divergence()
        .expect("the wrong direction must be detected");
    assert_eq!(first.name, "block1.0.attn.mamba_g3");
    for ok in ["stem", "block1.0.attn.mamba_g1", "block1.0.attn.mamba_g2"] {
        assert!(
            report
                .compared
                .iter()
                .any(|c| c.name == ok && c.verdict.pass),
            "{ok} must still pass"
        );
    }
    let profile = first.profile.as_ref().unwrap();
    println!("wrong direction, g3 profile: {:?}", profile.bins);
    // Not a small drift: off from the start of the sequence.
    assert!(profile.bins[0] > first.criterion.atol);

    // Groups 3 and 4 swapped: 3 is reported first.
    let swapped = with_directions(&good, "block1.0.attn", &[0, 1, 3, 2], "dir-swap");
    let report = validate_tract(&swapped, &official);
    assert_eq!(
        report.first_divergence().unwrap().name,
        "block1.0.attn.mamba_g3"
    );
}

#[test]
fn a_wrong_decay_is_exact_at_the_scan_start_and_wrong_after_it() {
    let case = "custom-64x64";
    // Group 3 of block1.0 (scans ←) with its decay rates A = −exp(A_logs) 30 % too large.
    let broken = export_edited(case, "decay", |w| {
        let a = w.get_mut("block1.0.attn.mamba_g3.A_logs").unwrap();
        a.data.iter_mut().for_each(|v| *v += 0.26);
    });
    let official = Reference::load(&fixture(case)).unwrap();
    let report = validate_tract(&broken, &official);
    let first = report.first_divergence().unwrap();
    assert_eq!(first.name, "block1.0.attn.mamba_g3");
    let p = first.profile.as_ref().unwrap();
    println!("wrong decay, g3 profile: {:?}", p.bins);
    // The first step has no history (h = Δ·B·u whatever A is): exact there; the error comes
    // with the state, after the first position of the scan, i.e. at the bottom-right pixel.
    assert!(p.per_position[0] < 1e-5, "{}", p.per_position[0]);
    assert!(p.first_above(first.criterion.atol).unwrap() > 0);
    assert!(p.bins[9] > first.criterion.atol);
}

#[test]
fn fp16_export_passes_with_fp16_defaults_and_fp32_tolerances_reject_it() {
    let case = "custom-64x64";
    let model = export_fixture(case, FloatType::F16, "fp16");
    assert_eq!(
        ModelInfo::read(&model).unwrap().precision().0,
        Precision::Fp16
    );
    let official = Reference::load(&fixture(case)).unwrap();
    let report = validate_tract(&model, &official);
    assert_eq!(report.outcome, Outcome::Pass);
    let logits = report.compared.last().unwrap();
    assert!(logits.stats.as_ref().unwrap().cosine >= 0.9999);

    // The same model judged by FP32 criteria fails at once: FP16 rounding is far above 1e-3.
    let (code, text) = gm_validate(&[
        "--model",
        model.to_str().unwrap(),
        "--reference",
        fixture(case).to_str().unwrap(),
        "--backend",
        "tract",
        "--metric",
        "max-abs",
        "--atol",
        "1e-3",
        "--rtol",
        "1e-3",
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("command-line overrides") && text.contains("diverges first at stem"),
        "{text}"
    );
}

#[test]
fn compare_backends_fp16_against_fp32_on_a_seeded_input() {
    let case = "custom-72x100";
    let fp16 = export_fixture(case, FloatType::F16, "cmp16");
    let fp32 = export_fixture(case, FloatType::F32, "cmp32");
    let (code, text) = gm_validate(&[
        "--model",
        fp16.to_str().unwrap(),
        "--compare-backends",
        "tract,tract",
        "--model-b",
        fp32.to_str().unwrap(),
        "--seed",
        "3",
        "--batch",
        "2",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("seeded standard-normal input [2, 3, 72, 100] (seed 3)"),
        "{text}"
    );
    assert!(
        text.contains("precision fp16") && text.contains("tract vs tract: PASS"),
        "{text}"
    );

    // A broken model B is caught too (here: the FP32 export with a wrong direction as B).
    let broken = with_directions(&fp32, "block2.0.attn", &[1, 1, 2, 3], "cmp-bad");
    let (code, text) = gm_validate(&[
        "--model",
        fp32.to_str().unwrap(),
        "--compare-backends",
        "tract,tract",
        "--model-b",
        broken.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{text}");
    assert!(
        text.contains("diverges first at block2.0.attn.mamba_g1"),
        "{text}"
    );
}

#[test]
fn ort_cpu_passes_the_fixture_when_onnx_runtime_is_installed() {
    let case = "custom-64x64";
    let model = export_fixture(case, FloatType::F32, "ort");
    let (code, text) = gm_validate(&[
        "--model",
        model.to_str().unwrap(),
        "--reference",
        fixture(case).to_str().unwrap(),
        "--backend",
        "all",
    ]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("tract: PASS"), "{text}");
    if text.contains("ort-cpu: SKIPPED") {
        assert!(
            std::env::var("GM_REQUIRE_ORT").as_deref() != Ok("1"),
            "GM_REQUIRE_ORT=1 but ort-cpu was skipped: {text}"
        );
        println!("ort-cpu: SKIPPED (no ONNX Runtime here)");
    } else {
        assert!(text.contains("ort-cpu: PASS"), "{text}");
    }
}

#[test]
fn bad_invocations_exit_2_with_a_clear_message() {
    let case = "custom-64x64";
    let model = export_fixture(case, FloatType::F32, "bad");
    let (code, text) = gm_validate(&[
        "--model",
        model.to_str().unwrap(),
        "--reference",
        "/nonexistent/ref.npz",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("/nonexistent/ref.npz"), "{text}");
    // A reference made at another size: the input does not fit the model.
    let (code, text) = gm_validate(&[
        "--model",
        model.to_str().unwrap(),
        "--reference",
        fixture("custom-72x100").to_str().unwrap(),
        "--backend",
        "tract",
    ]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("[1, 3, 72, 100]"), "{text}");
}
