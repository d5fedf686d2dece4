//! gm-run on bad input: clear errors naming the file and the expected shape/dtype, non-zero
//! exit, no output file.

use std::path::PathBuf;
use std::process::Command;

use gm_runtime::npy;

mod common;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-run-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn gm_run(
    model: &std::path::Path,
    input: &std::path::Path,
    output: &std::path::Path,
) -> (bool, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gm-run"))
        .args([
            "--model",
            model.to_str().unwrap(),
            "--input",
            input.to_str().unwrap(),
            "--output",
            output.to_str().unwrap(),
            "--backend",
            "tract",
        ])
        .output()
        .unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn runs_a_batch_and_rejects_wrong_shapes_and_dtypes() {
    let dir = scratch("shapes");
    let model = common::fixture_config_model(&dir);
    let output = dir.join("logits.npy");

    let good = dir.join("good.npy");
    npy::write_f32(&good, &[2, 3, 64, 64], &vec![0.1; 2 * 3 * 64 * 64]).unwrap();
    let (ok, stderr) = gm_run(&model, &good, &output);
    assert!(ok, "{stderr}");
    let (shape, _) = npy::read_f32(&output).unwrap();
    assert_eq!(shape, vec![2, 1000]);
    std::fs::remove_file(&output).unwrap();

    let wrong = dir.join("wrong_shape.npy");
    npy::write_f32(&wrong, &[1, 3, 32, 32], &vec![0.1; 3 * 32 * 32]).unwrap();
    let (ok, stderr) = gm_run(&model, &wrong, &output);
    assert!(!ok);
    assert!(
        stderr.contains("wrong_shape.npy") && stderr.contains("[1, 3, 32, 32]"),
        "{stderr}"
    );
    assert!(
        stderr.contains("64, 64"),
        "expected shape must be named: {stderr}"
    );
    assert!(!output.exists());

    // float64 input: the same header layout with `<f8`.
    let f64_file = dir.join("float64.npy");
    let header = "{'descr': '<f8', 'fortran_order': False, 'shape': (1, 3, 64, 64), }";
    let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
    let pad = 64 - (10 + header.len() + 1) % 64;
    let header = format!("{header}{}\n", " ".repeat(pad));
    bytes.extend_from_slice(&(header.len() as u16).to_le_bytes());
    bytes.extend_from_slice(header.as_bytes());
    bytes.extend(std::iter::repeat_n(0u8, 8 * 3 * 64 * 64));
    std::fs::write(&f64_file, bytes).unwrap();
    let (ok, stderr) = gm_run(&model, &f64_file, &output);
    assert!(!ok);
    assert!(
        stderr.contains("float64.npy") && stderr.contains("<f8"),
        "{stderr}"
    );
    assert!(!output.exists());
}
