//! `gm-run classify` end to end on a random-weight export of the fixture config at 64×64
//! (metadata: resize 73, crop 64): directory walking, batching, JSON records, per-file errors
//! with the other files still classified, and agreement with running the model on the
//! library's own preprocessed tensors.

use std::path::{Path, PathBuf};
use std::process::Command;

use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{Backend, HostTensor};
use gm_runtime::classify::{softmax, top_k, ModelInfo};
use gm_runtime::image::{self, DecodeLimits, Preprocessing};

mod common;

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("gm-classify-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A picture with structure, so that different images get different logits.
fn picture(w: u32, h: u32, seed: u32) -> ::image::RgbImage {
    ::image::RgbImage::from_fn(w, h, |x, y| {
        let v =
            |k: u32| ((x * (3 + k + seed) + y * (5 + 2 * k) + (x * y) % (7 + seed)) % 256) as u8;
        ::image::Rgb([v(0), v(1), v(2)])
    })
}

/// A PNG whose header claims `w × h`, with a token IDAT (the pixels are never reached).
fn png_header_only(path: &Path, w: u32, h: u32) {
    fn chunk(kind: &[u8], data: &[u8]) -> Vec<u8> {
        let mut crc_input = kind.to_vec();
        crc_input.extend_from_slice(data);
        let mut c = (data.len() as u32).to_be_bytes().to_vec();
        c.extend_from_slice(&crc_input);
        c.extend_from_slice(&crc32(&crc_input).to_be_bytes());
        c
    }
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 != 0 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    let mut ihdr = w.to_be_bytes().to_vec();
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend(chunk(b"IHDR", &ihdr));
    bytes.extend(chunk(
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    ));
    bytes.extend(chunk(b"IEND", &[]));
    std::fs::write(path, bytes).unwrap();
}

fn classify(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_gm-run"))
        .arg("classify")
        .args(args)
        .output()
        .unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn records(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn classifies_a_folder_reports_bad_files_and_matches_the_library_pipeline() {
    let dir = scratch("e2e");
    let model = common::fixture_config_model(&dir);
    let images = dir.join("images");
    std::fs::create_dir_all(images.join("sub")).unwrap();
    picture(500, 375, 1).save(images.join("a.png")).unwrap();
    picture(90, 200, 2).save(images.join("b.jpg")).unwrap();
    ::image::DynamicImage::ImageRgb8(picture(300, 300, 3))
        .to_luma8()
        .save(images.join("sub/c.png"))
        .unwrap();
    ::image::DynamicImage::ImageRgb8(picture(64, 40, 4))
        .to_rgba8()
        .save(images.join("sub/d.PNG"))
        .unwrap();
    std::fs::write(images.join("notes.txt"), "not walked").unwrap();
    std::fs::write(images.join(".hidden.png"), "not walked").unwrap();
    // Bad files, named explicitly.
    let bad = dir.join("bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("text.jpg"), "hello").unwrap();
    let jpeg = std::fs::read(images.join("b.jpg")).unwrap();
    std::fs::write(bad.join("truncated.jpg"), &jpeg[..jpeg.len() / 2]).unwrap();
    png_header_only(&bad.join("zero.png"), 0, 10);
    png_header_only(&bad.join("huge.png"), 30_000, 20_000);
    std::fs::write(bad.join("empty.webp"), b"").unwrap();

    let model_s = model.to_str().unwrap();
    let images_s = images.to_str().unwrap();
    let base = [
        "--model",
        model_s,
        "--backend",
        "tract",
        "--json",
        "--topk",
        "3",
    ];

    // The folder alone, batches of 3 (a full batch and a partial one).
    let (code, stdout, stderr) = classify(&[&base[..], &["--batch", "3", images_s]].concat());
    assert_eq!(code, 0, "{stderr}");
    let recs = records(&stdout);
    let paths: Vec<&str> = recs.iter().map(|r| r["path"].as_str().unwrap()).collect();
    let expect: Vec<PathBuf> = ["a.png", "b.jpg", "sub/c.png", "sub/d.PNG"]
        .iter()
        .map(|n| images.join(n))
        .collect();
    assert_eq!(
        paths,
        expect
            .iter()
            .map(|p| p.to_str().unwrap())
            .collect::<Vec<_>>(),
        "sorted walk, image extensions only, hidden files skipped"
    );
    for r in &recs {
        let top = r["topk"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        let probs: Vec<f64> = top.iter().map(|t| t["prob"].as_f64().unwrap()).collect();
        assert!(probs.windows(2).all(|w| w[0] >= w[1]) && probs.iter().all(|&p| p > 0.0));
        let i = top[0]["index"].as_u64().unwrap() as usize;
        let names: Vec<&str> = include_str!("../../models/imagenet1k_labels.txt")
            .lines()
            .collect();
        assert_eq!(top[0]["label"].as_str().unwrap(), names[i]);
    }

    // Batch size does not change the results; the library pipeline gives the same top-1.
    let (_, stdout1, _) = classify(&[&base[..], &["--batch", "1", images_s]].concat());
    let recs1 = records(&stdout1);
    let info = ModelInfo::read(&model).unwrap();
    assert_eq!(info.preprocessing, Preprocessing::official([64, 64]));
    assert_eq!(info.preprocessing.resize_shorter_side, 73);
    let mut backend = TractBackend::load(&model).unwrap();
    for (r, (r1, path)) in recs.iter().zip(recs1.iter().zip(&expect)) {
        for (t, t1) in r["topk"]
            .as_array()
            .unwrap()
            .iter()
            .zip(r1["topk"].as_array().unwrap())
        {
            assert_eq!(t["index"], t1["index"]);
            let (p, p1) = (t["prob"].as_f64().unwrap(), t1["prob"].as_f64().unwrap());
            assert!((p - p1).abs() < 1e-6, "batch 3 vs batch 1: {p} vs {p1}");
        }
        let x = image::load(path, &info.preprocessing, &DecodeLimits::default()).unwrap();
        let out = backend
            .run(&HostTensor {
                shape: vec![1, 3, 64, 64],
                data: x,
            })
            .unwrap();
        let want = top_k(&softmax(&out[0].data), 1)[0];
        assert_eq!(r["topk"][0]["index"].as_u64().unwrap() as usize, want);
    }

    // Bad files among good ones: each reported, the good ones still classified, exit status 1.
    let mut args: Vec<String> = base.iter().map(|s| s.to_string()).collect();
    args.push(images.join("a.png").display().to_string());
    for name in [
        "text.jpg",
        "truncated.jpg",
        "zero.png",
        "huge.png",
        "empty.webp",
        "missing.png",
    ] {
        args.push(bad.join(name).display().to_string());
    }
    args.push(images.join("b.jpg").display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = classify(&args);
    assert_eq!(code, 1, "{stderr}");
    let recs = records(&stdout);
    assert_eq!(recs.len(), 8);
    assert!(recs[0]["topk"].is_array() && recs[7]["topk"].is_array());
    for (r, want) in recs[1..7].iter().zip([
        "not a JPEG, PNG or WebP image",
        "truncated",
        "",
        "above the limit of 100 megapixels",
        "empty file",
        "",
    ]) {
        let e = r["error"].as_str().unwrap();
        assert!(
            e.contains(r["path"].as_str().unwrap()) && e.contains(want),
            "{e}"
        );
        assert!(stderr.contains(e), "each error also on stderr: {stderr}");
    }
    assert!(
        stderr.contains("classified 2 image(s), 6 failed"),
        "{stderr}"
    );

    // Text output: the path, then `prob%  label  [index]` lines.
    let (code, stdout, _) = classify(&[
        "--model",
        model_s,
        "--backend",
        "tract",
        "--topk",
        "2",
        images_s,
    ]);
    assert_eq!(code, 0);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4 * 3);
    assert_eq!(lines[0], images.join("a.png").to_str().unwrap());
    assert!(
        lines[1].trim_start().contains("%  ") && lines[1].ends_with(']'),
        "{}",
        lines[1]
    );

    // Usage errors: a model without gm-export's metadata, labels of the wrong length.
    let labels = dir.join("labels.txt");
    std::fs::write(&labels, "one\ntwo\n").unwrap();
    let (code, _, stderr) = classify(&[
        "--model",
        model_s,
        "--labels",
        labels.to_str().unwrap(),
        images_s,
    ]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("2 names, but the model has 1000 classes"),
        "{stderr}"
    );
    let (code, _, stderr) =
        classify(&["--model", images.join("a.png").to_str().unwrap(), images_s]);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("not an ONNX model") || stderr.contains("groupmamba.preprocessing"),
        "{stderr}"
    );
}

#[test]
fn the_npy_runner_is_unchanged() {
    // `gm-run --model … --input … --output …` still parses as before (here: a missing model).
    let o = Command::new(env!("CARGO_BIN_EXE_gm-run"))
        .args([
            "--model",
            "nope.onnx",
            "--input",
            "x.npy",
            "--output",
            "y.npy",
            "--backend",
            "tract",
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("x.npy") || stderr.contains("nope.onnx"),
        "{stderr}"
    );
    let o = Command::new(env!("CARGO_BIN_EXE_gm-run")).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "missing arguments: a usage error");
    assert!(String::from_utf8_lossy(&o.stderr).contains("--model"));
}
