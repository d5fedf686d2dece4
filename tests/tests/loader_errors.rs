//! Checkpoint loader: round trips through the torch-format writer and safetensors, and the errors
//! for every kind of broken file.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use gm_converter::tensor::Tensor;
use gm_converter::weights::{
    load_checkpoint, Checkpoint, CheckpointFormat, ExpectedTensor, WeightsError,
};
use gm_tests::pth_writer::{
    legacy_torch_header, write_dict, write_nested, write_state_dict, PthTensor, StateDict, Storage,
    Value,
};
use sha2::{Digest, Sha256};

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("gm-loader-{}-{tag}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn ramp(n: usize, scale: f32) -> Vec<f32> {
    (0..n)
        .map(|i| (i as f32 - n as f32 / 3.0) * scale)
        .collect()
}

/// A small state dict shaped like a GroupMamba stem: conv, BatchNorm (with its int64
/// `num_batches_tracked`), a projection.
fn small_state_dict() -> StateDict {
    let mut sd = StateDict::new();
    sd.push_f32("patch_embed1.conv.0.weight", &[4, 3, 3, 3], ramp(108, 0.01))
        .push_f32(
            "patch_embed1.conv.1.weight",
            &[4],
            vec![1.0, 1.5, -0.5, 2.0],
        )
        .push_f32(
            "patch_embed1.conv.1.running_var",
            &[4],
            vec![0.1, 0.2, 0.3, 0.4],
        )
        .push_i64("patch_embed1.conv.1.num_batches_tracked", &[], vec![12345])
        .push_f32("patch_embed1.proj.weight", &[8, 4, 3, 3], ramp(288, -0.002))
        .push_f32("patch_embed1.proj.bias", &[8], ramp(8, 0.5))
        .push_f32("attn.skip_scale", &[1], vec![0.75]);
    sd
}

fn small_expected() -> Vec<ExpectedTensor> {
    vec![
        ExpectedTensor::required("patch_embed1.conv.0.weight", &[4, 3, 3, 3]),
        ExpectedTensor::required("patch_embed1.conv.1.weight", &[4]),
        ExpectedTensor::required("patch_embed1.conv.1.running_var", &[4]),
        ExpectedTensor::optional("patch_embed1.conv.1.num_batches_tracked", &[]),
        ExpectedTensor::required("patch_embed1.proj.weight", &[8, 4, 3, 3]),
        ExpectedTensor::required("patch_embed1.proj.bias", &[8]),
        ExpectedTensor::required("attn.skip_scale", &[1]),
    ]
}

/// What the loader should produce for a written tensor.
fn as_f32(t: &PthTensor) -> Tensor {
    let get = |i: usize| -> f32 {
        match &t.storage {
            Storage::F32(v) => v[i],
            Storage::I64(v) => v[i] as f32,
        }
    };
    let numel: usize = t.shape.iter().product();
    let mut data = Vec::with_capacity(numel);
    let mut index = vec![0usize; t.shape.len()];
    for _ in 0..numel {
        let pos = t.offset
            + index
                .iter()
                .zip(&t.stride)
                .map(|(i, s)| i * s)
                .sum::<usize>();
        data.push(get(pos));
        for k in (0..index.len()).rev() {
            index[k] += 1;
            if index[k] < t.shape[k] {
                break;
            }
            index[k] = 0;
        }
    }
    Tensor::new(t.shape.clone(), data)
}

fn assert_same(ckpt: &Checkpoint, sd: &StateDict) {
    assert_eq!(ckpt.tensors.len(), sd.entries.len(), "tensor count");
    for (name, t) in &sd.entries {
        let got = ckpt
            .tensors
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing after load"));
        assert_eq!(got, &as_f32(t), "{name}");
    }
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn load_err(path: &Path) -> (WeightsError, String) {
    match load_checkpoint(path) {
        Ok(c) => panic!(
            "{} loaded ({} tensors), expected an error",
            path.display(),
            c.tensors.len()
        ),
        Err(e) => {
            let text = e.to_string();
            (e, text)
        }
    }
}

#[test]
fn flat_pth_round_trip() {
    let dir = TempDir::new("flat");
    let path = dir.path("flat.pth");
    let mut sd = small_state_dict();
    // Strided and offset views, as torch writes for transposed / sliced tensors.
    let storage = Storage::F32((0..24).map(|i| i as f32).collect());
    sd.push(
        "view.transposed",
        PthTensor::view(storage.clone(), 0, &[6, 4], &[1, 6]),
    )
    .push("view.offset", PthTensor::view(storage, 5, &[2, 3], &[6, 2]))
    .push("view.long", PthTensor::i64(&[3], vec![-2, 0, 1 << 40]));
    write_state_dict(&path, &sd).unwrap();

    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.format, CheckpointFormat::Pth);
    assert_eq!(ckpt.nested_key, None);
    assert_eq!(ckpt.stripped_prefix, None);
    assert_eq!(ckpt.path, path);
    assert_eq!(ckpt.sha256, sha256_hex(&path));
    assert_same(&ckpt, &sd);
    let nbt = &ckpt.tensors["patch_embed1.conv.1.num_batches_tracked"];
    assert_eq!(
        (nbt.shape.as_slice(), nbt.data.as_slice()),
        (&[][..], &[12345.0][..])
    );
    assert_eq!(
        ckpt.tensors["view.offset"].data,
        [5.0, 7.0, 9.0, 11.0, 13.0, 15.0]
    );
}

#[test]
fn truncated_pth_is_reported() {
    let dir = TempDir::new("trunc");
    let good = dir.path("good.pth");
    write_state_dict(&good, &small_state_dict()).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let cut = dir.path("cut.pth");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let (err, text) = load_err(&cut);
    assert!(matches!(err, WeightsError::Truncated { .. }), "{err:?}");
    assert!(text.contains(&cut.display().to_string()), "{text}");
    assert!(text.contains("truncated"), "{text}");
    assert!(text.contains("not a complete zip"), "{text}");

    // Losing only the last bytes (inside the end-of-central-directory record) is still truncation.
    std::fs::write(&cut, &bytes[..bytes.len() - 5]).unwrap();
    let (err, _) = load_err(&cut);
    assert!(matches!(err, WeightsError::Truncated { .. }), "{err:?}");
}

#[test]
fn random_bytes_are_not_a_checkpoint() {
    let dir = TempDir::new("random");
    let path = dir.path("noise.pth");
    // A fixed pseudo-random stream (xorshift), so the test is deterministic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let bytes: Vec<u8> = (0..4096)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    std::fs::write(&path, bytes).unwrap();
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::UnknownFormat { .. }), "{err:?}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not a zip archive"), "{text}");
}

#[test]
fn empty_file_is_reported() {
    let dir = TempDir::new("empty");
    let path = dir.path("empty.pth");
    std::fs::write(&path, b"").unwrap();
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::Empty { .. }), "{err:?}");
    assert!(text.contains("empty.pth"), "{text}");
}

#[test]
fn legacy_torch_file_is_reported() {
    let dir = TempDir::new("legacy");
    let path = dir.path("old.pth");
    let mut bytes = legacy_torch_header();
    bytes.extend_from_slice(&[0u8; 256]);
    std::fs::write(&path, bytes).unwrap();
    let (err, text) = load_err(&path);
    assert!(
        matches!(err, WeightsError::LegacyTorchFormat { .. }),
        "{err:?}"
    );
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("legacy torch.save format"), "{text}");
    assert!(
        text.contains("_use_new_zipfile_serialization=True") && text.contains("safetensors"),
        "{text}"
    );
}

#[test]
fn missing_file_names_the_path() {
    let dir = TempDir::new("missing");
    let path = dir.path("does-not-exist.pth");
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::NotFound { .. }), "{err:?}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("not found"), "{text}");
}

#[test]
fn nested_checkpoints_load() {
    let dir = TempDir::new("nested");
    let sd = small_state_dict();
    for key in ["model", "model_ema", "state_dict"] {
        let path = dir.path(&format!("nested_{key}.pth"));
        write_nested(&path, key, &sd).unwrap();
        let ckpt = load_checkpoint(&path).unwrap();
        assert_eq!(ckpt.nested_key.as_deref(), Some(key));
        assert_eq!(ckpt.stripped_prefix, None);
        assert_same(&ckpt, &sd);
        ckpt.validate(&small_expected(), false).unwrap();
    }
}

#[test]
fn model_ema_is_preferred_over_model() {
    let dir = TempDir::new("ema");
    let path = dir.path("train.pth");
    let sd = small_state_dict();
    let mut ema = small_state_dict();
    ema.entries[5].1 = PthTensor::f32(&[8], vec![9.0; 8]);
    write_dict(
        &path,
        &[
            ("model", Value::StateDict(sd)),
            ("model_ema", Value::StateDict(ema.clone())),
            ("epoch", Value::Int(299)),
            ("max_accuracy", Value::Float(82.5)),
            ("arch", Value::Str("groupmamba_tiny".into())),
            ("scaler", Value::None),
        ],
    )
    .unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.nested_key.as_deref(), Some("model_ema"));
    assert_same(&ckpt, &ema);
}

#[test]
fn module_prefix_is_stripped() {
    let dir = TempDir::new("module");
    let sd = small_state_dict();
    let prefixed = sd.with_prefix("module.");

    let flat = dir.path("ddp.pth");
    write_state_dict(&flat, &prefixed).unwrap();
    let ckpt = load_checkpoint(&flat).unwrap();
    assert_eq!(ckpt.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(ckpt.nested_key, None);
    assert_same(&ckpt, &sd);

    let nested = dir.path("ddp_nested.pth");
    write_nested(&nested, "model", &prefixed).unwrap();
    let ckpt = load_checkpoint(&nested).unwrap();
    assert_eq!(ckpt.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(ckpt.nested_key.as_deref(), Some("model"));
    ckpt.validate(&small_expected(), false).unwrap();
}

#[test]
fn nested_under_an_unknown_key_lists_what_was_tried() {
    let dir = TempDir::new("unknown-key");
    let path = dir.path("odd.pth");
    write_dict(
        &path,
        &[
            ("weights", Value::StateDict(small_state_dict())),
            ("model", Value::Str("not a dict".into())),
            ("epoch", Value::Int(3)),
        ],
    )
    .unwrap();
    let (err, text) = load_err(&path);
    match &err {
        WeightsError::NoTensors { tried, .. } => assert_eq!(tried.len(), 3),
        other => panic!("{other:?}"),
    }
    assert!(text.contains("no tensors found in"), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    for key in [
        "model_ema (absent)",
        "model (a str, not a dict)",
        "state_dict (absent)",
    ] {
        assert!(text.contains(key), "{key}: {text}");
    }
    // The top-level keys are listed so the user can see where the weights are.
    assert!(text.contains("weights (dict of"), "{text}");
    assert!(text.contains("epoch (int)"), "{text}");
}

#[test]
fn zip_without_pickle_is_reported() {
    use std::io::Write;
    let dir = TempDir::new("nopkl");
    let path = dir.path("other.pth");
    let mut zip = zip::ZipWriter::new(std::fs::File::create(&path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("readme.txt", opts).unwrap();
    zip.write_all(b"hello").unwrap();
    zip.finish().unwrap();
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::NoPickle { .. }), "{err:?}");
    assert!(text.contains("readme.txt"), "{text}");
}

/// A zip holding only `<stem>/data.pkl` with the given pickle bytes.
fn zip_with_pickle(path: &Path, pickle: &[u8]) {
    use std::io::Write;
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let opts =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    zip.start_file("bad/data.pkl", opts).unwrap();
    zip.write_all(pickle).unwrap();
    zip.finish().unwrap();
}

#[test]
fn corrupt_pickle_is_reported() {
    let dir = TempDir::new("badpkl");
    let path = dir.path("bad.pth");
    zip_with_pickle(&path, &[0x80, 0x02, b'}', 0xff]);
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::Pickle { .. }), "{err:?}");
    assert!(
        text.contains("bad/data.pkl") && text.contains("bad.pth"),
        "{text}"
    );
    assert!(!text.contains('\n'), "one line, no backtrace: {text}");

    // Protocol 4 (torch.save(..., pickle_protocol=4)) starts with a FRAME opcode candle lacks.
    let mut p4 = vec![0x80, 0x04, 0x95];
    p4.extend_from_slice(&3u64.to_le_bytes());
    p4.extend_from_slice(&[b'}', 0x94, b'.']);
    zip_with_pickle(&path, &p4);
    let (_, text) = load_err(&path);
    assert!(text.contains("protocol newer than 2"), "{text}");

    // A full training checkpoint with a yacs CfgNode config: candle's pickle machine cannot
    // apply SETITEMS to the rebuilt object and gives up on the whole file.
    let mut cfg = vec![0x80, 0x02, b'}', b'(', b'X', 6, 0, 0, 0];
    cfg.extend_from_slice(b"config");
    cfg.extend_from_slice(b"cyacs.config\nCfgNode\n)\x81");
    cfg.extend_from_slice(&[
        b'(', b'X', 2, 0, 0, 0, b'L', b'R', b'K', 1, b'u', b'u', b'.',
    ]);
    zip_with_pickle(&path, &cfg);
    let (err, text) = load_err(&path);
    assert!(matches!(err, WeightsError::Pickle { .. }), "{err:?}");
    assert!(text.contains("full training checkpoint"), "{text}");
}

fn safetensors_bytes(entries: &[(&str, safetensors::Dtype, Vec<usize>, Vec<u8>)]) -> Vec<u8> {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = entries
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.to_string(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn safetensors_round_trip() {
    use safetensors::Dtype;
    let dir = TempDir::new("st");
    let w = ramp(24, 0.125);
    let w_bytes: Vec<u8> = w.iter().flat_map(|x| x.to_le_bytes()).collect();
    let h: Vec<u8> = [0.5f32, -1.25, 3.0]
        .iter()
        .flat_map(|x| half::f16::from_f32(*x).to_bits().to_le_bytes())
        .collect();
    let entries = vec![
        ("module.a.weight", Dtype::F32, vec![2, 3, 4], w_bytes),
        ("module.a.half", Dtype::F16, vec![3], h),
        (
            "module.bn.num_batches_tracked",
            Dtype::I64,
            vec![],
            7i64.to_le_bytes().to_vec(),
        ),
    ];
    let bytes = safetensors_bytes(&entries);

    let path = dir.path("w.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.format, CheckpointFormat::Safetensors);
    assert_eq!(ckpt.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(ckpt.nested_key, None);
    assert_eq!(ckpt.sha256, sha256_hex(&path));
    assert_eq!(ckpt.tensors.len(), 3);
    assert_eq!(
        ckpt.tensors["a.weight"],
        Tensor::new(vec![2, 3, 4], w.clone())
    );
    assert_eq!(ckpt.tensors["a.half"].data, [0.5, -1.25, 3.0]);
    assert_eq!(
        ckpt.tensors["bn.num_batches_tracked"],
        Tensor::new(vec![], vec![7.0])
    );

    // Recognised by content whatever the extension.
    let misnamed = dir.path("w.pth");
    std::fs::write(&misnamed, &bytes).unwrap();
    assert_eq!(
        load_checkpoint(&misnamed).unwrap().format,
        CheckpointFormat::Safetensors
    );

    // A broken .safetensors says so.
    let broken = dir.path("broken.safetensors");
    std::fs::write(&broken, &bytes[..bytes.len() - 10]).unwrap();
    let (err, text) = load_err(&broken);
    assert!(matches!(err, WeightsError::Safetensors { .. }), "{err:?}");
    assert!(text.contains("broken.safetensors"), "{text}");
}

#[test]
fn nan_fails_validation_unless_allowed() {
    let dir = TempDir::new("nan");
    let path = dir.path("nan.pth");
    let mut sd = small_state_dict();
    let mut bias = ramp(8, 0.5);
    bias[2] = f32::NAN;
    bias[6] = f32::INFINITY;
    sd.entries[5].1 = PthTensor::f32(&[8], bias);
    write_state_dict(&path, &sd).unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    assert!(ckpt.tensors["patch_embed1.proj.bias"].data[2].is_nan());

    let err = ckpt.validate(&small_expected(), false).unwrap_err();
    let text = err.to_string();
    let WeightsError::Mismatch(report) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(report.non_finite.len(), 1);
    assert_eq!(report.non_finite[0].name, "patch_embed1.proj.bias");
    assert_eq!((report.non_finite[0].nan, report.non_finite[0].inf), (1, 1));
    assert!(text.contains("nan.pth"), "{text}");
    assert!(
        text.contains("patch_embed1.proj.bias: 1 NaN and 1 Inf of 8 values"),
        "{text}"
    );

    ckpt.validate(&small_expected(), true).unwrap();
}

#[test]
fn key_problems_are_reported_together() {
    let dir = TempDir::new("keys");
    let path = dir.path("other.pth");
    let mut sd = small_state_dict();
    sd.entries
        .retain(|(n, _)| n != "patch_embed1.proj.bias" && n != "attn.skip_scale");
    sd.entries[0].1 = PthTensor::f32(&[4, 3, 7, 7], ramp(588, 0.001));
    sd.push_f32("dist_head.weight", &[2, 8], ramp(16, 1.0))
        .push_f32("dist_head.bias", &[2], vec![0.0, 1.0]);
    write_state_dict(&path, &sd).unwrap();
    let ckpt = load_checkpoint(&path).unwrap();
    let err = ckpt.validate(&small_expected(), false).unwrap_err();
    let text = err.to_string();
    let WeightsError::Mismatch(report) = &err else {
        panic!("{err:?}")
    };
    assert_eq!(
        text.lines().next().unwrap(),
        format!(
            "checkpoint {} does not match the model: 2 missing, 2 unexpected, 1 mis-shaped key(s)",
            path.display()
        )
    );
    let missing: Vec<&str> = report.missing.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(missing, ["patch_embed1.proj.bias", "attn.skip_scale"]);
    let unexpected: Vec<&str> = report.unexpected.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(unexpected, ["dist_head.bias", "dist_head.weight"]);
    assert_eq!(report.mis_shaped[0].name, "patch_embed1.conv.0.weight");
    assert_eq!(report.mis_shaped[0].found, vec![4, 3, 7, 7]);
    assert!(report.looks_like_other_model_size());
    assert!(text.contains("hint: this looks like a checkpoint of a different model size"));
    assert!(text.contains(
        "mis-shaped: patch_embed1.conv.0.weight: expected [4, 3, 3, 3], found [4, 3, 7, 7]"
    ));
}

/// The parity fixture, wherever the shared folder is relative to this checkout.
fn fixture() -> Option<PathBuf> {
    let name = "parity/custom-64x64/groupmamba_custom_32-64-128-256_d1-1-2-1_ref.pth";
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    [
        root.join("shared").join(name),
        root.join("../shared").join(name),
    ]
    .into_iter()
    .find(|p| p.exists())
}

#[test]
fn real_fixture_loads() {
    let Some(path) = fixture() else {
        eprintln!("parity fixture not found; skipping");
        return;
    };
    let ckpt = load_checkpoint(&path).unwrap();
    assert_eq!(ckpt.format, CheckpointFormat::Pth);
    assert_eq!(ckpt.nested_key, None);
    assert_eq!(ckpt.stripped_prefix, None);
    assert_eq!(
        ckpt.sha256,
        "03e53540a4582541e609381562fbc71f755997e27fc312d31c3c63c57df5f671"
    );
    assert_eq!(ckpt.tensors.len(), 412);
    assert_eq!(
        ckpt.tensors["patch_embed1.conv.0.weight"].shape,
        [16, 3, 7, 7]
    );
    assert_eq!(
        ckpt.tensors["block1.0.attn.mamba_g1.x_proj_weight"].shape,
        [1, 3, 8]
    );
    let nbt: Vec<&String> = ckpt
        .tensors
        .keys()
        .filter(|k| k.ends_with("num_batches_tracked"))
        .collect();
    assert_eq!(nbt.len(), 3);
    for k in nbt {
        assert!(ckpt.tensors[k].shape.is_empty(), "{k}");
    }
    // Learnable parameters = everything but the BatchNorm buffers.
    let buffers: usize = ckpt
        .tensors
        .iter()
        .filter(|(k, _)| {
            k.ends_with("running_mean")
                || k.ends_with("running_var")
                || k.ends_with("num_batches_tracked")
        })
        .map(|(_, t)| t.numel())
        .sum();
    assert_eq!(ckpt.num_values() - buffers, 2_683_196);
    for (k, t) in &ckpt.tensors {
        assert!(t.data.iter().all(|v| v.is_finite()), "{k}");
    }
    // Strict validation against its own keys passes.
    let expected: Vec<ExpectedTensor> = ckpt
        .tensors
        .iter()
        .map(|(k, t)| ExpectedTensor::required(k.clone(), &t.shape))
        .collect();
    ckpt.validate(&expected, false).unwrap();
}

#[test]
fn writer_reproduces_the_real_fixture() {
    let Some(path) = fixture() else {
        eprintln!("parity fixture not found; skipping");
        return;
    };
    let original = load_checkpoint(&path).unwrap();
    let mut sd = StateDict::new();
    for (k, t) in &original.tensors {
        if k.ends_with("num_batches_tracked") {
            sd.push_i64(
                k.clone(),
                &t.shape,
                t.data.iter().map(|&v| v as i64).collect(),
            );
        } else {
            sd.push_f32(k.clone(), &t.shape, t.data.clone());
        }
    }
    let dir = TempDir::new("rewrite");
    let copy = dir.path("copy.pth");
    write_nested(&copy, "model", &sd.with_prefix("module.")).unwrap();
    let again = load_checkpoint(&copy).unwrap();
    assert_eq!(again.nested_key.as_deref(), Some("model"));
    assert_eq!(again.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(again.tensors, original.tensors);
}

/// candle's own high-level reader accepts the writer's files too (flat, and nested with its key),
/// and shows the gotcha the loader guards against: a nested file read without its key silently
/// yields no tensors.
#[test]
fn candle_reads_the_writer_output() {
    let dir = TempDir::new("candle");
    let mut sd = small_state_dict();
    // candle reads contiguous views with an offset and transposed (Fortran-order) ones, but
    // refuses other strided views ("cannot retrieve non-contiguous tensors"); the loader reads all.
    let storage = Storage::F32((0..24).map(|i| i as f32).collect());
    sd.push(
        "view.offset",
        PthTensor::view(storage.clone(), 5, &[2, 3], &[3, 1]),
    )
    .push(
        "view.transposed",
        PthTensor::view(storage, 0, &[6, 4], &[1, 6]),
    );
    let flat = dir.path("flat.pth");
    write_state_dict(&flat, &sd).unwrap();
    let nested = dir.path("nested.pth");
    write_nested(&nested, "model", &sd).unwrap();

    let check = |tensors: Vec<(String, candle_core::Tensor)>| {
        assert_eq!(tensors.len(), sd.entries.len());
        for (name, t) in tensors {
            let want = as_f32(&sd.entries.iter().find(|(n, _)| *n == name).unwrap().1);
            assert_eq!(t.dims(), want.shape.as_slice(), "{name}");
            let got: Vec<f32> = t
                .to_dtype(candle_core::DType::F32)
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1()
                .unwrap();
            assert_eq!(got, want.data, "{name}");
        }
    };
    check(candle_core::pickle::read_all(&flat).unwrap());
    check(candle_core::pickle::read_all_with_key(&nested, Some("model")).unwrap());
    assert!(candle_core::pickle::read_all(&nested).unwrap().is_empty());
}
