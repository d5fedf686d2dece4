//! The ONNX Runtime backend: the scan op in a one-node model against the CPU kernel, the
//! `ai.groupmamba` opset check, and gm-run's handling of missing or unusable ONNX Runtime
//! libraries (what it tried, what it found, what it needs; `--backend auto` falling back to tract).
//!
//! Tests that need ONNX Runtime skip with a notice when none is found, and fail when
//! `GM_REQUIRE_ORT=1` (scripts/test.sh sets it).

use std::path::{Path, PathBuf};
use std::process::Command;

use gm_ops::{selective_scan_to_vec, Direction, ScanInputs, ScanShape};
use gm_runtime::backend::ort::{self as ort_backend, OrtError};
use gm_runtime::npy;
use gm_runtime::testing::{ort_or_skip, random, ScanModel};
use prost::Message;

mod common;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-ort-backend-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The one-node model of `ScanModel` with `ai.groupmamba` imported at `version`, serialised.
fn scan_model(c: i64, h: i64, w: i64, directions: &[i64], version: i64) -> Vec<u8> {
    ScanModel {
        import: Some(version),
        ..ScanModel::new(c, h, w, directions)
    }
    .model()
    .encode_to_vec()
}

/// A one-node model big enough that the kernel is split into several tasks per group (ORT's
/// thread pool): odd, non-square map, all four directions, batch 2; its inputs and the CPU
/// kernel's output.
struct OneNode {
    shape: ScanShape,
    bytes: Vec<u8>,
    inputs: [Vec<f32>; 7],
    expected: Vec<f32>,
}

fn one_node() -> OneNode {
    let shape = ScanShape {
        batch: 2,
        channels: 256,
        groups: 4,
        height: 37,
        width: 45,
    };
    let dirs = [0i64, 1, 2, 3];
    let directions: Vec<Direction> = dirs
        .iter()
        .map(|&d| Direction::from_i64(d).unwrap())
        .collect();
    let nchw = shape.batch * shape.channels * shape.seq_len();
    let ngwh = shape.batch * shape.groups * shape.seq_len();
    let inputs = [
        random(1, nchw, -2.0, 2.0),
        random(2, nchw, -4.0, 3.0),
        random(3, shape.channels, -3.0, -0.05),
        random(4, ngwh, -1.5, 1.5),
        random(5, ngwh, -1.5, 1.5),
        random(6, shape.channels, -1.0, 1.0),
        random(7, shape.channels, -1.0, 1.0),
    ];
    let scan_inputs = ScanInputs {
        u: &inputs[0],
        delta: &inputs[1],
        a: &inputs[2],
        b: &inputs[3],
        c: &inputs[4],
        d: &inputs[5],
        delta_bias: &inputs[6],
    };
    let expected = selective_scan_to_vec(&shape, &directions, scan_inputs).unwrap();
    let bytes = scan_model(
        shape.channels as i64,
        shape.height as i64,
        shape.width as i64,
        &dirs,
        1,
    );
    OneNode {
        shape,
        bytes,
        inputs,
        expected,
    }
}

/// Runs `case` in `session`; returns the max abs difference from the CPU kernel.
fn run_one_node(session: &mut ort::session::Session, case: &OneNode) -> f32 {
    let shape = &case.shape;
    let x = vec![shape.batch, shape.channels, shape.height, shape.width];
    let g = vec![shape.batch, shape.groups, shape.height, shape.width];
    let ch = vec![shape.channels];
    let t = |ix: usize, s: &Vec<usize>| {
        ort::value::Tensor::from_array((s.clone(), case.inputs[ix].clone())).unwrap()
    };
    let outputs = session
        .run(ort::inputs![
            "u" => t(0, &x),
            "delta" => t(1, &x),
            "A" => t(2, &ch),
            "B" => t(3, &g),
            "C" => t(4, &g),
            "D" => t(5, &ch),
            "delta_bias" => t(6, &ch),
        ])
        .unwrap();
    let (out_shape, y) = outputs["y"].try_extract_tensor::<f32>().unwrap();
    let out_dims: Vec<usize> = out_shape.iter().map(|&d| d as usize).collect();
    assert_eq!(out_dims, x);
    y.iter()
        .zip(&case.expected)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max)
}

#[test]
fn one_node_model_matches_the_cpu_kernel() {
    let Some(rt) = ort_or_skip("one_node_model_matches_the_cpu_kernel") else {
        return;
    };
    let case = one_node();
    let mut session = ort_backend::session_builder(rt)
        .unwrap()
        .commit_from_memory(&case.bytes)
        .unwrap();
    let err = run_one_node(&mut session, &case);
    println!(
        "one-node SelectiveScan, op registered in-process, vs CPU kernel: max abs err {err:e}"
    );
    // Same kernel, same order of operations: identical results.
    assert_eq!(err, 0.0);
}

#[test]
fn custom_op_library_works_through_with_operator_library() {
    let Some(rt) = ort_or_skip("custom_op_library_works_through_with_operator_library") else {
        return;
    };
    let library = std::env::var_os("GM_ORT_LIBRARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/libgroupmamba_ops.so")
        });
    if !library.is_file() {
        let message = format!(
            "{} is not built (cargo build -p gm-ort-library; or set GM_ORT_LIBRARY)",
            library.display()
        );
        assert!(
            std::env::var("GM_REQUIRE_ORT").as_deref() != Ok("1"),
            "GM_REQUIRE_ORT=1: {message}"
        );
        println!("SKIPPED: {message}");
        return;
    }
    let case = one_node();
    let mut session = ort::session::Session::builder(rt.environment())
        .unwrap()
        .with_operator_library(&library)
        .unwrap()
        .commit_from_memory(&case.bytes)
        .unwrap();
    let err = run_one_node(&mut session, &case);
    println!(
        "one-node SelectiveScan through {} (with_operator_library) vs CPU kernel: max abs err {err:e}",
        library.display()
    );
    assert_eq!(err, 0.0);
}

#[test]
fn bad_nodes_fail_at_session_creation_naming_the_node() {
    let Some(rt) = ort_or_skip("bad_nodes_fail_at_session_creation_naming_the_node") else {
        return;
    };
    // directions entry out of range
    let bytes = scan_model(8, 3, 5, &[0, 1, 2, 7], 1);
    let err = ort_backend::session_builder(rt)
        .unwrap()
        .commit_from_memory(&bytes)
        .map(|_| ())
        .expect_err("a bad direction must be refused")
        .to_string();
    assert!(
        err.contains("block1.0.scan") && err.contains("`directions`[3] = 7"),
        "{err}"
    );
    // C not divisible by G: ONNX Runtime only logs shape-inference errors of custom ops, so
    // this one may surface at session creation or at the first run; either way it is named.
    let bytes = scan_model(6, 3, 5, &[0, 1, 2, 3], 1);
    let result = ort_backend::session_builder(rt)
        .unwrap()
        .commit_from_memory(&bytes)
        .and_then(|mut session| {
            let t = |s: Vec<usize>| {
                let len = s.iter().product::<usize>();
                ort::value::Tensor::from_array((s, vec![0.5f32; len])).unwrap()
            };
            session
                .run(ort::inputs![
                    "u" => t(vec![1, 6, 3, 5]),
                    "delta" => t(vec![1, 6, 3, 5]),
                    "A" => t(vec![6]),
                    "B" => t(vec![1, 4, 3, 5]),
                    "C" => t(vec![1, 4, 3, 5]),
                    "D" => t(vec![6]),
                    "delta_bias" => t(vec![6]),
                ])
                .map(|_| ())
        });
    let err = result
        .expect_err("6 channels in 4 groups must be refused")
        .to_string();
    assert!(
        err.contains("block1.0.scan") && err.contains("not divisible by G = 4"),
        "{err}"
    );
}

#[test]
fn unknown_custom_opset_version_is_refused() {
    let dir = scratch("opset");
    let path = dir.join("scan_v2.onnx");
    let bytes = scan_model(8, 3, 5, &[0, 1, 2, 3], 2);
    std::fs::write(&path, &bytes).unwrap();
    let err = ort_backend::check_custom_opset(&path, &bytes)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("scan_v2.onnx")
            && err.contains("\"ai.groupmamba\" version 2")
            && err.contains("implements version 1"),
        "{err}"
    );
    ort_backend::check_custom_opset(&path, &scan_model(8, 3, 5, &[0, 1, 2, 3], 1)).unwrap();
    // gm-run refuses it before ONNX Runtime sees it (whether or not one is installed).
    let input = dir.join("x.npy");
    npy::write_f32(&input, &[1, 3, 8, 8], &[0.0; 192]).unwrap();
    if ort_backend::runtime().is_ok() {
        let (ok, stderr) = gm_run(&path, &input, &dir.join("y.npy"), "ort", &[]);
        assert!(!ok && stderr.contains("version 2"), "{stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

fn gm_run(
    model: &Path,
    input: &Path,
    output: &Path,
    backend: &str,
    env: &[(&str, &Path)],
) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_gm-run"));
    cmd.args(["--model", model.to_str().unwrap()])
        .args(["--input", input.to_str().unwrap()])
        .args(["--output", output.to_str().unwrap()])
        .args(["--backend", backend]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let o = cmd.output().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A small exported model (random weights) and an input for it.
fn small_model(dir: &Path) -> (PathBuf, PathBuf) {
    let out = common::fixture_config_model(dir);
    let input = dir.join("x.npy");
    npy::write_f32(&input, &[1, 3, 64, 64], &random(9, 3 * 64 * 64, -1.0, 1.0)).unwrap();
    (out, input)
}

/// A stand-in for an old ONNX Runtime: exports `OrtGetApiBase`, reports version 1.16.3.
/// `None` when no C compiler is available.
fn fake_old_runtime(dir: &Path) -> Option<PathBuf> {
    let src = dir.join("fake_ort.c");
    std::fs::write(
        &src,
        "typedef struct { const void* (*get_api)(unsigned); const char* (*version)(void); } Base;\n\
         static const void* get_api(unsigned v) { (void)v; return 0; }\n\
         static const char* version(void) { return \"1.16.3\"; }\n\
         static const Base base = { get_api, version };\n\
         const Base* OrtGetApiBase(void) { return &base; }\n",
    )
    .unwrap();
    let lib = dir.join("libonnxruntime.so.1.16.3");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&lib)
        .arg(&src)
        .status()
        .ok()?;
    status.success().then_some(lib)
}

/// An ELF header for another architecture (aarch64 on x86_64 machines, x86_64 elsewhere).
fn foreign_elf(dir: &Path) -> (PathBuf, &'static str) {
    let (machine, name): (u16, &str) = if std::env::consts::ARCH == "x86_64" {
        (183, "aarch64")
    } else {
        (62, "x86_64")
    };
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[4] = 2; // 64-bit
    header[5] = 1; // little-endian
    header[6] = 1;
    header[16] = 3; // shared object
    header[18..20].copy_from_slice(&machine.to_le_bytes());
    let path = dir.join("libonnxruntime.so.1.20.0");
    std::fs::write(&path, header).unwrap();
    (path, name)
}

#[test]
fn unusable_libraries_are_refused_naming_what_was_found_and_needed() {
    let dir = scratch("libs");
    let (model, input) = small_model(&dir);
    let output = dir.join("logits.npy");

    // Wrong architecture.
    let (foreign, arch) = foreign_elf(&dir);
    let err = ort_backend::probe_library(&foreign).unwrap_err();
    assert!(matches!(err, OrtError::WrongArchitecture { .. }), "{err}");
    let (ok, stderr) = gm_run(
        &model,
        &input,
        &output,
        "ort",
        &[("ORT_DYLIB_PATH", &foreign)],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains(arch) && stderr.contains(std::env::consts::ARCH),
        "{stderr}"
    );
    assert!(!output.exists());

    // Not a shared library at all.
    let text = dir.join("libonnxruntime.so.1.21.0");
    std::fs::write(&text, "not a library").unwrap();
    let err = ort_backend::probe_library(&text).unwrap_err().to_string();
    assert!(err.contains("not an ONNX Runtime shared library"), "{err}");

    // Too old.
    if let Some(old) = fake_old_runtime(&dir) {
        let err = ort_backend::probe_library(&old).unwrap_err();
        assert!(matches!(err, OrtError::TooOld { .. }), "{err}");
        let (ok, stderr) = gm_run(&model, &input, &output, "ort", &[("ORT_DYLIB_PATH", &old)]);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains("1.16.3") && stderr.contains("needs ONNX Runtime 1.17 or newer"),
            "{stderr}"
        );
    } else {
        println!("no C compiler: the too-old case was not checked");
    }

    // Nothing where ORT_DYLIB_PATH points: says what it tried.
    let missing = dir.join("nowhere/libonnxruntime.so");
    let (ok, stderr) = gm_run(
        &model,
        &input,
        &output,
        "ort",
        &[("ORT_DYLIB_PATH", &missing)],
    );
    assert!(!ok, "{stderr}");
    assert!(
        stderr.contains("no ONNX Runtime library found")
            && stderr.contains("tried")
            && stderr.contains("nowhere/libonnxruntime.so: no such file"),
        "{stderr}"
    );
    assert!(!output.exists());

    // --backend auto falls back to tract and says why.
    let (ok, stderr) = gm_run(
        &model,
        &input,
        &output,
        "auto",
        &[("ORT_DYLIB_PATH", &foreign)],
    );
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("using tract") && stderr.contains(arch),
        "{stderr}"
    );
    std::fs::remove_file(&output).unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn auto_uses_ort_when_available_and_agrees_with_tract() {
    if ort_or_skip("auto_uses_ort_when_available_and_agrees_with_tract").is_none() {
        return;
    }
    let dir = scratch("auto");
    let (model, input) = small_model(&dir);
    let (ok, stderr) = gm_run(&model, &input, &dir.join("auto.npy"), "auto", &[]);
    assert!(ok && stderr.contains("using ort"), "{stderr}");
    let (ok, stderr) = gm_run(&model, &input, &dir.join("tract.npy"), "tract", &[]);
    assert!(ok, "{stderr}");
    let (_, a) = npy::read_f32(dir.join("auto.npy")).unwrap();
    let (_, t) = npy::read_f32(dir.join("tract.npy")).unwrap();
    let err = a
        .iter()
        .zip(&t)
        .map(|(p, q)| (p - q).abs())
        .fold(0.0f32, f32::max);
    println!("gm-run ort vs tract, random weights: max abs err {err:e}");
    assert!(err <= 1e-4);
    std::fs::remove_dir_all(&dir).ok();
}

/// tract runs a batch image by image through its batch-1 plan; ONNX Runtime runs the batch
/// whole. Three different images must give the same logits both ways (max abs ≤ 1e-5).
#[test]
fn tract_batch_matches_ort_batch() {
    use gm_runtime::backend::ort::OrtBackend;
    use gm_runtime::backend::tract::TractBackend;
    use gm_runtime::backend::{Backend, HostTensor};
    let Some(rt) = ort_or_skip("tract_batch_matches_ort_batch") else {
        return;
    };
    let dir = scratch("tract_batch");
    let model = common::fixture_config_model(&dir);
    let images = HostTensor {
        shape: vec![3, 3, 64, 64],
        data: random(21, 3 * 3 * 64 * 64, -2.0, 2.0),
    };
    let t = TractBackend::load(&model).unwrap().run(&images).unwrap();
    let o = OrtBackend::load_in(rt, &model)
        .unwrap()
        .run(&images)
        .unwrap();
    assert_eq!(t[0].shape, vec![3, 1000]);
    assert_eq!(t[0].shape, o[0].shape);
    let err = t[0]
        .data
        .iter()
        .zip(&o[0].data)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    println!("batch of 3: tract (per image) vs ONNX Runtime (batched) logits max abs {err:e}");
    assert!(err <= 1e-5, "tract vs ORT batch of 3: max abs {err}");
    // The three images differ, so do their logits: the batch was not one image repeated.
    assert_ne!(t[0].data[..1000], t[0].data[1000..2000]);
}
