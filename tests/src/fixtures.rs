//! The shared official-model fixtures (`../shared/parity/<case>`): loading one, exporting its
//! checkpoint at its input size, and comparing a model's outputs with the official tensors.
//! One harness for every backend's parity test.

use std::path::{Path, PathBuf};

use gm_converter::export::{export, ExportOptions};
use gm_converter::model::emit::ScanMode;
use gm_converter::model::ModelConfig;
use gm_converter::onnx::FloatType;
use gm_runtime::backend::HostTensor;
use gm_runtime::npy;

/// `../shared/parity`, beside the checkout; a missing folder fails loudly, never skips.
pub fn parity_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/parity");
    assert!(
        root.is_dir(),
        "parity fixtures not found at {} (the shared folder must sit beside the checkout)",
        root.display()
    );
    root
}

pub fn max_abs(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// One fixture case: its folder, model config, checkpoint and input.
pub struct Fixture {
    pub case: String,
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub checkpoint: PathBuf,
    pub input: HostTensor,
}

impl Fixture {
    pub fn load(case: &str) -> Self {
        let dir = parity_root().join(case);
        let config = ModelConfig::from_file(&dir.join("config.json")).unwrap();
        let checkpoint = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.extension().is_some_and(|e| e == "pth"))
            .expect("fixture checkpoint");
        let (shape, data) = npy::read_f32(dir.join("input.npy")).unwrap();
        Self {
            case: case.to_string(),
            dir,
            config,
            checkpoint,
            input: HostTensor { shape, data },
        }
    }

    /// Exports the fixture's checkpoint at its input size into a scratch folder named `tag`.
    pub fn export(&self, tag: &str, precision: FloatType, scan: ScanMode, debug: bool) -> PathBuf {
        self.export_with(tag, precision, scan, false, debug)
    }

    /// [`Fixture::export`], choosing also whether the LayerNorms are fused
    /// (`ai.groupmamba::GroupedLayerNorm`, `gm-export --fused-ops`).
    pub fn export_with(
        &self,
        tag: &str,
        precision: FloatType,
        scan: ScanMode,
        fused_ops: bool,
        debug: bool,
    ) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "gm-tests-{}-{}-{tag}",
            std::process::id(),
            self.case
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let out = dir.join("model.onnx");
        let report = export(&ExportOptions {
            config: self.config.clone(),
            checkpoint: Some(self.checkpoint.clone()),
            seed: 0,
            height: self.input.shape[2],
            width: self.input.shape[3],
            debug_outputs: debug,
            allow_nonfinite: false,
            precision,
            scan,
            fused_ops,
            out: out.clone(),
        })
        .unwrap();
        println!(
            "{} ({tag}): exported {} nodes, {} parameters",
            self.case, report.nodes, report.parameters
        );
        out
    }

    /// The official tensor a graph output `name` corresponds to, if the fixture has one.
    pub fn reference(&self, name: &str) -> Option<(Vec<usize>, Vec<f32>)> {
        let file = if name.starts_with("block") {
            self.dir.join("blocks").join(format!("{name}.npy"))
        } else {
            self.dir.join(format!("{name}.npy"))
        };
        file.exists().then(|| npy::read_f32(&file).unwrap())
    }

    /// Compares every output that has an official counterpart (max abs ≤ `tol`), printing each
    /// error; `logits` must come first and at least 15 tensors must be compared (logits, heads,
    /// features, cls token, stem, four stages and the blocks).
    pub fn assert_outputs_match(
        &self,
        label: &str,
        names: &[String],
        outputs: &[HostTensor],
        tol: f32,
    ) {
        assert_eq!(names[0], "logits");
        let case = &self.case;
        let mut compared = 0;
        for (name, value) in names.iter().zip(outputs) {
            let Some((shape, expected)) = self.reference(name) else {
                continue;
            };
            assert_eq!(value.shape, shape, "{case}: shape of {name}");
            let err = max_abs(&value.data, &expected);
            println!("{case} [{label}]: {name:<28} max abs err {err:.3e} (tol {tol:.0e})");
            assert!(
                err <= tol,
                "{case} [{label}]: {name} differs from the official model: max abs {err:e} > {tol:e}"
            );
            compared += 1;
        }
        assert!(
            compared >= 15,
            "{case}: only {compared} tensors had a reference to compare with"
        );
    }
}
