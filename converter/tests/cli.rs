//! gm-export on bad input: a one-line error naming the file/key/option, a non-zero exit, and no
//! output file. Checkpoint-format errors are also covered at library level in gm-tests.

use std::path::{Path, PathBuf};
use std::process::Command;

use gm_converter::weights::load_checkpoint;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity/custom-64x64")
}

fn fixture_checkpoint() -> PathBuf {
    fixture().join("groupmamba_custom_32-64-128-256_d1-1-2-1_ref.pth")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-export-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs gm-export with the fixture config at 64×64 plus `extra`; returns (success, stderr).
fn export(out: &Path, extra: &[&str]) -> (bool, String) {
    let config = fixture().join("config.json");
    let mut args = vec![
        "--config".to_string(),
        config.display().to_string(),
        "--height".into(),
        "64".into(),
        "--width".into(),
        "64".into(),
        "--out".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let o = Command::new(env!("CARGO_BIN_EXE_gm-export"))
        .args(&args)
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn assert_fails(out: &Path, extra: &[&str], needles: &[&str]) {
    let (ok, stderr) = export(out, extra);
    assert!(!ok, "gm-export {extra:?} should fail");
    for n in needles {
        assert!(stderr.contains(n), "stderr should mention {n:?}:\n{stderr}");
    }
    assert!(
        !out.exists(),
        "no output may be written on error ({})",
        out.display()
    );
    let leftovers: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    println!("{}", stderr.trim());
}

#[test]
fn exports_the_fixture_and_reports_it() {
    let out = scratch("ok").join("m.onnx");
    let ckpt = fixture_checkpoint();
    let (ok, stderr) = export(&out, &["--checkpoint", ckpt.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    assert!(out.exists());
}

#[test]
fn random_weights_are_announced() {
    let out = scratch("random").join("m.onnx");
    let (ok, stderr) = export(&out, &[]);
    assert!(ok, "{stderr}");
    assert!(stderr.contains("random weights"), "{stderr}");
}

#[test]
fn output_folder_must_exist() {
    let dir = scratch("nofolder");
    let out = dir.join("missing/sub/m.onnx");
    let (ok, stderr) = export(&out, &[]);
    assert!(!ok);
    assert!(
        stderr.contains("--out") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!dir.join("missing").exists());
}

#[test]
fn impossible_input_sizes_are_refused() {
    let out = scratch("size").join("m.onnx");
    let config = fixture().join("config.json");
    for (flag, value) in [("--height", "0"), ("--width", "100000")] {
        let o = Command::new(env!("CARGO_BIN_EXE_gm-export"))
            .args([
                "--config",
                config.to_str().unwrap(),
                flag,
                value,
                "--out",
                out.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success());
        assert!(stderr.contains(flag), "{stderr}");
        assert!(!out.exists());
    }
}

#[test]
fn checkpoint_of_another_variant_is_refused_with_key_and_shapes() {
    let out = scratch("variant").join("m.onnx");
    let ckpt = fixture_checkpoint();
    let o = Command::new(env!("CARGO_BIN_EXE_gm-export"))
        .args([
            "--variant",
            "tiny",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    // The stem width differs (16 vs 32): that key must be named with both shapes.
    assert!(stderr.contains("patch_embed1.conv.0.weight"), "{stderr}");
    assert!(
        stderr.contains("[32, 3, 7, 7]") && stderr.contains("[16, 3, 7, 7]"),
        "{stderr}"
    );
    assert!(!out.exists());
}

#[test]
fn truncated_and_non_zip_and_legacy_files_are_refused() {
    let dir = scratch("formats");
    let out = dir.join("m.onnx");
    let bytes = std::fs::read(fixture_checkpoint()).unwrap();

    let truncated = dir.join("truncated.pth");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_fails(
        &out,
        &["--checkpoint", truncated.to_str().unwrap()],
        &["truncated.pth", "truncated"],
    );

    let garbage = dir.join("garbage.pth");
    std::fs::write(&garbage, b"this is not a checkpoint at all").unwrap();
    assert_fails(
        &out,
        &["--checkpoint", garbage.to_str().unwrap()],
        &["garbage.pth", "not a zip"],
    );

    // A legacy torch.save stream: pickle protocol 2, then the magic number as a long.
    let legacy = dir.join("legacy.pth");
    let mut data = vec![0x80, 0x02, 0x8a, 0x0a];
    data.extend_from_slice(&[0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19]);
    data.extend_from_slice(b".");
    std::fs::write(&legacy, &data).unwrap();
    assert_fails(
        &out,
        &["--checkpoint", legacy.to_str().unwrap()],
        &["legacy.pth", "legacy"],
    );

    let missing = dir.join("missing.pth");
    assert_fails(
        &out,
        &["--checkpoint", missing.to_str().unwrap()],
        &["missing.pth", "not found"],
    );
}

#[test]
fn non_finite_weights_are_refused_unless_allowed() {
    let dir = scratch("nan");
    let out = dir.join("m.onnx");
    let mut ckpt = load_checkpoint(&fixture_checkpoint()).unwrap();
    let key = "block2.0.attn.mamba_g3.Ds";
    ckpt.tensors.get_mut(key).unwrap().data[1] = f32::NAN;
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = ckpt
        .tensors
        .iter()
        .map(|(k, t)| {
            (
                k.clone(),
                t.data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                t.shape.clone(),
            )
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = bytes
        .iter()
        .map(|(k, b, s)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    let path = dir.join("with_nan.safetensors");
    safetensors::tensor::serialize_to_file(views, None, &path).unwrap();

    assert_fails(
        &out,
        &["--checkpoint", path.to_str().unwrap()],
        &["with_nan.safetensors", key],
    );
    let (ok, stderr) = export(
        &out,
        &["--checkpoint", path.to_str().unwrap(), "--allow-nonfinite"],
    );
    assert!(ok, "{stderr}");
    assert!(out.exists());
}
