//! gm-validate: checks that an exported GroupMamba model computes what the official PyTorch model
//! computes, tensor by tensor, and names the first tensor where it does not.
//!
//! Exit status: 0 when every compared tensor is within tolerance on every backend that ran;
//! 1 when a tensor is out of tolerance (the report names the first one); 2 on any other error
//! (unreadable files, a backend that cannot load the model, bad options).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gm_runtime::backend::ort::{self as ort_backend, OrtBackend};
use gm_runtime::backend::ort_cuda::{self, OrtCudaBackend};
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{check_input_shape, Backend, HostTensor};
use gm_runtime::npy;
use gm_runtime::validate::report::{BackendReport, Report};
use gm_runtime::validate::tolerance::{Metric, Overrides, Tolerances};
use gm_runtime::validate::{self, ModelInfo, Reference};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// Pure-Rust CPU inference (tract).
    Tract,
    /// ONNX Runtime on CPU.
    OrtCpu,
    /// ONNX Runtime with the CUDA execution provider (onnxruntime-gpu).
    OrtCuda,
    /// Every backend available here; unavailable ones are reported as skipped.
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tract,
    OrtCpu,
    OrtCuda,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Tract => "tract",
            Kind::OrtCpu => "ort-cpu",
            Kind::OrtCuda => "ort-cuda",
        }
    }

    fn parse(s: &str) -> Result<Self> {
        Ok(match s.trim() {
            "tract" => Kind::Tract,
            "ort-cpu" | "ort" => Kind::OrtCpu,
            "ort-cuda" => Kind::OrtCuda,
            other => {
                bail!("--compare-backends: unknown backend `{other}` (tract, ort-cpu, ort-cuda)")
            }
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum MetricArg {
    /// Elementwise |a − r| ≤ atol + rtol·|r| (numpy allclose).
    MaxAbs,
    /// Cosine similarity ≥ --min-cosine, plus the elementwise bound.
    Cosine,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Validate an exported GroupMamba model against reference tensors (the official model's, \
             from scripts/reference.py, or a fixture directory) or against another backend",
    after_help = "Exit status: 0 all tensors within tolerance; 1 a tensor out of tolerance \
                  (the first one is named); 2 other errors."
)]
struct Args {
    /// Exported model (.onnx from gm-export; --debug-outputs gives per-block localisation).
    #[arg(long)]
    model: PathBuf,
    /// Reference: a .npz from scripts/reference.py, or a directory of .npy files (input.npy,
    /// NAME.npy, blocks/NAME.npy) as in ../shared/parity.
    #[arg(long, required_unless_present = "compare_backends")]
    reference: Option<PathBuf>,
    /// Backend(s) to validate.
    #[arg(long, value_enum, default_value_t = BackendArg::All)]
    backend: BackendArg,
    /// Compare two backends with each other instead of with a reference: `A,B` runs the model on
    /// A and on B (B with --model-b when given) and judges A against B.
    #[arg(long, value_name = "A,B", conflicts_with_all = ["reference", "backend"])]
    compare_backends: Option<String>,
    /// The model B runs with --compare-backends (e.g. the FP32 export when --model is FP16).
    #[arg(long, requires = "compare_backends")]
    model_b: Option<PathBuf>,
    /// Model input (.npy, [N, 3, H, W] float32, normalised). Default: the reference's input;
    /// with --compare-backends, a seeded standard-normal batch.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Seed of the random input of --compare-backends.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Batch size of the random input of --compare-backends.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Absolute tolerance for every tensor (replaces the precision's defaults).
    #[arg(long)]
    atol: Option<f64>,
    /// Relative tolerance for every tensor (replaces the precision's defaults).
    #[arg(long)]
    rtol: Option<f64>,
    /// Metric for every tensor (default: max-abs for FP32 models, cosine for FP16).
    #[arg(long, value_enum)]
    metric: Option<MetricArg>,
    /// Minimum cosine similarity of the cosine metric.
    #[arg(long)]
    min_cosine: Option<f64>,
    /// Compare every tensor instead of stopping at the first divergence.
    #[arg(long)]
    keep_going: bool,
    /// Print the error profile along the scan of every group's output (by default only of those
    /// out of tolerance; the JSON report always has them).
    #[arg(long)]
    profiles: bool,
    /// CUDA device of ort-cuda.
    #[arg(long, default_value_t = 0)]
    device_id: u32,
    /// Also write the report as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("gm-validate: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// Why a backend produced no outputs.
enum Failure {
    /// The runtime is not installed here, or has no such device.
    Unavailable(String),
    /// The runtime is there but did not load the model (e.g. an FP16 model on ONNX Runtime's
    /// CPU provider, which has no FP16 scan kernel; or a CUDA session without a GPU).
    Load(anyhow::Error),
    /// The model loaded but did not run on this input.
    Run(anyhow::Error),
}

fn open(
    kind: Kind,
    model: &Path,
    device_id: u32,
) -> Result<(Box<dyn Backend>, Option<String>), Failure> {
    match kind {
        Kind::Tract => TractBackend::load(model)
            .map(|b| (Box::new(b) as Box<dyn Backend>, None))
            .map_err(|e| Failure::Load(e.into())),
        Kind::OrtCpu => {
            let rt = ort_backend::runtime().map_err(|e| Failure::Unavailable(e.to_string()))?;
            let desc = format!("ONNX Runtime {}, CPU", rt.library.version);
            OrtBackend::load_in(rt, model)
                .map(|b| (Box::new(b) as Box<dyn Backend>, Some(desc)))
                .map_err(|e| Failure::Load(e.into()))
        }
        Kind::OrtCuda => {
            use ort::ep::{ExecutionProvider, CUDA};
            let rt = ort_backend::runtime().map_err(|e| Failure::Unavailable(e.to_string()))?;
            if !CUDA::is_available().unwrap_or(false) {
                return Err(Failure::Unavailable(format!(
                    "ONNX Runtime {} ({}) has no CUDA execution provider: a CPU build; point \
                     ORT_DYLIB_PATH at onnxruntime-gpu's library",
                    rt.library.version,
                    rt.library.path.display()
                )));
            }
            let desc = format!(
                "ONNX Runtime {}, CUDA EP on GPU {device_id}, {}",
                rt.library.version,
                ort_cuda::scan_placement()
            );
            OrtCudaBackend::load(rt, model, device_id, Default::default())
                .map(|b| (Box::new(b) as Box<dyn Backend>, Some(desc)))
                .map_err(|e| Failure::Load(e.into()))
        }
    }
}

/// Loads and runs `model` on `kind`: the report shell (timings, runtime) and the outputs.
fn execute(
    kind: Kind,
    model: &Path,
    input: &HostTensor,
    input_path: &Path,
    device_id: u32,
) -> Result<(BackendReport, Vec<String>, Vec<HostTensor>), Failure> {
    let started = Instant::now();
    let (mut backend, runtime) = open(kind, model, device_id)?;
    let load_s = started.elapsed().as_secs_f64();
    check_input_shape(backend.input_shape(), &input.shape, input_path, model)
        .map_err(|e| Failure::Run(e.into()))?;
    let started = Instant::now();
    let outputs = backend.run(input).map_err(|e| Failure::Run(e.into()))?;
    let run_s = started.elapsed().as_secs_f64();
    let mut shell = BackendReport::skipped(kind.name(), String::new());
    shell.runtime = runtime;
    shell.load_s = load_s;
    shell.run_s = run_s;
    Ok((shell, backend.output_names().to_vec(), outputs))
}

/// The error of a backend that must run (`--compare-backends`).
fn required(kind: Kind, role: &str, failure: Failure) -> anyhow::Error {
    match failure {
        Failure::Unavailable(why) => {
            anyhow::anyhow!("backend {} ({role}) is not available: {why}", kind.name())
        }
        Failure::Load(e) | Failure::Run(e) => {
            e.context(format!("backend {} ({role})", kind.name()))
        }
    }
}

fn overrides(args: &Args) -> Overrides {
    Overrides {
        metric: args.metric.map(|m| match m {
            MetricArg::MaxAbs => Metric::MaxAbs,
            MetricArg::Cosine => Metric::Cosine,
        }),
        atol: args.atol,
        rtol: args.rtol,
        min_cosine: args.min_cosine,
    }
}

fn check_options(args: &Args) -> Result<()> {
    for (name, v) in [("--atol", args.atol), ("--rtol", args.rtol)] {
        if let Some(v) = v {
            if v.is_nan() || v < 0.0 {
                bail!("{name} {v}: must be a number ≥ 0");
            }
        }
    }
    if let Some(c) = args.min_cosine {
        if !(-1.0..=1.0).contains(&c) {
            bail!("--min-cosine {c}: must be between -1 and 1");
        }
    }
    if args.batch == 0 {
        bail!("--batch 0: must be at least 1");
    }
    if let Some(json) = &args.json {
        if let Some(folder) = json.parent().filter(|p| !p.as_os_str().is_empty()) {
            if !folder.is_dir() {
                bail!(
                    "--json {}: the folder {} does not exist",
                    json.display(),
                    folder.display()
                );
            }
        }
    }
    Ok(())
}

fn run() -> Result<bool> {
    let args = Args::parse();
    check_options(&args)?;
    let info = ModelInfo::read(&args.model)?;
    let report = if let Some(pair) = &args.compare_backends {
        compare_backends(&args, &info, pair)?
    } else {
        against_reference(&args, &info)?
    };
    print!("{}", report.to_text(args.profiles));
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report.to_json())?;
        std::fs::write(path, text + "\n").with_context(|| format!("--json {}", path.display()))?;
        eprintln!("gm-validate: wrote {}", path.display());
    }
    let ran = report.backends.iter().any(|b| {
        matches!(
            b.outcome,
            validate::report::Outcome::Pass | validate::report::Outcome::Fail { .. }
        )
    });
    if !ran {
        bail!("no backend could run the model (see above)");
    }
    if report
        .backends
        .iter()
        .any(|b| matches!(b.outcome, validate::report::Outcome::Error(_)))
    {
        bail!("a backend failed to run the model (see above)");
    }
    Ok(report.passed())
}

fn against_reference(args: &Args, info: &ModelInfo) -> Result<Report> {
    let reference_path = args.reference.as_ref().expect("clap requires --reference");
    let reference = Reference::load(reference_path)?;
    let (input, input_path) = match &args.input {
        Some(p) => {
            let (shape, data) = npy::read_f32(p)?;
            (HostTensor { shape, data }, p.clone())
        }
        None => {
            let shown = if reference_path.is_dir() {
                reference_path.join("input.npy")
            } else {
                PathBuf::from(format!("{}:input.npy", reference_path.display()))
            };
            (reference.require_input()?.clone(), shown)
        }
    };
    let (precision, source) = info.precision();
    let tolerances = Tolerances::defaults(precision, source).with_overrides(overrides(args));
    let kinds: Vec<Kind> = match args.backend {
        BackendArg::Tract => vec![Kind::Tract],
        BackendArg::OrtCpu => vec![Kind::OrtCpu],
        BackendArg::OrtCuda => vec![Kind::OrtCuda],
        BackendArg::All => vec![Kind::Tract, Kind::OrtCpu, Kind::OrtCuda],
    };
    let explicit = args.backend != BackendArg::All;
    let mut backends = vec![];
    let mut names_seen: Option<Vec<String>> = None;
    for kind in kinds {
        let result = execute(kind, &args.model, &input, &input_path, args.device_id);
        let b = match result {
            Ok((shell, names, outputs)) => {
                let mut b = validate::compare_outputs(
                    kind.name(),
                    &names,
                    &outputs,
                    &reference.tensors,
                    &tolerances,
                    args.keep_going,
                )?;
                b.runtime = shell.runtime;
                b.load_s = shell.load_s;
                b.run_s = shell.run_s;
                names_seen.get_or_insert(names);
                b
            }
            Err(Failure::Unavailable(why)) if !explicit => BackendReport::skipped(kind.name(), why),
            Err(Failure::Unavailable(why)) => {
                bail!("--backend {}: not available: {why}", kind.name())
            }
            Err(Failure::Load(e)) if !explicit => {
                BackendReport::skipped(kind.name(), format!("cannot load the model here: {e:#}"))
            }
            Err(Failure::Load(e)) | Err(Failure::Run(e)) => {
                BackendReport::error(kind.name(), format!("{e:#}"))
            }
        };
        backends.push(b);
    }
    let reference_only = names_seen
        .map(|n| validate::reference_only(&n, &reference.tensors))
        .unwrap_or_default();
    Ok(Report {
        model: args.model.clone(),
        model_info: vec![info.describe()],
        reference: reference.describe(),
        reference_only,
        tolerances,
        backends,
    })
}

fn compare_backends(args: &Args, info: &ModelInfo, pair: &str) -> Result<Report> {
    let kinds = pair
        .split(',')
        .map(Kind::parse)
        .collect::<Result<Vec<_>>>()?;
    let [a, b] = kinds[..] else {
        bail!("--compare-backends {pair}: expected two backends, e.g. ort-cuda,tract");
    };
    let model_b = args.model_b.clone().unwrap_or_else(|| args.model.clone());
    let info_b = ModelInfo::read(&model_b)?;
    let (input, input_path, input_desc) = match &args.input {
        Some(p) => {
            let (shape, data) = npy::read_f32(p)?;
            let desc = format!("input {} {:?}", p.display(), shape);
            (HostTensor { shape, data }, p.clone(), desc)
        }
        None => {
            // The model's declared input size, batch from --batch.
            let (probe, _) = open(Kind::Tract, &args.model, args.device_id)
                .map_err(|f| required(Kind::Tract, "input shape", f))?;
            let shape = probe
                .input_shape()
                .iter()
                .enumerate()
                .map(|(i, d)| match d {
                    gm_runtime::backend::InputDim::Fixed(n) => Ok(*n),
                    gm_runtime::backend::InputDim::Dynamic(_) if i == 0 => Ok(args.batch),
                    gm_runtime::backend::InputDim::Dynamic(s) => {
                        bail!("the model's input dimension {i} is dynamic ({s}): give --input")
                    }
                })
                .collect::<Result<Vec<_>>>()?;
            let desc = format!(
                "seeded standard-normal input {:?} (seed {})",
                shape, args.seed
            );
            (
                validate::seeded_normal(&shape, args.seed),
                PathBuf::from("(random input)"),
                desc,
            )
        }
    };
    let (pa, sa) = info.precision();
    let (pb, sb) = info_b.precision();
    let precision = pa.max(pb);
    let origin = if sa == sb {
        sa.replace("the model's", "the models'")
    } else {
        format!("A: {sa}; B: {sb}")
    };
    let source = if pa == pb {
        format!("both models {}, {origin}", pa.name())
    } else {
        format!(
            "A is {}, B is {}: judged as the lower precision; {origin}",
            pa.name(),
            pb.name()
        )
    };
    let tolerances = Tolerances::defaults(precision, source).with_overrides(overrides(args));

    let (shell_b, names_b, outputs_b) = execute(b, &model_b, &input, &input_path, args.device_id)
        .map_err(|f| required(b, "B", f))?;
    let reference: std::collections::BTreeMap<String, HostTensor> =
        names_b.iter().cloned().zip(outputs_b).collect();
    let (shell_a, names_a, outputs_a) =
        execute(a, &args.model, &input, &input_path, args.device_id)
            .map_err(|f| required(a, "A", f))?;
    let mut report_a = validate::compare_outputs(
        &format!("{} vs {}", a.name(), b.name()),
        &names_a,
        &outputs_a,
        &reference,
        &tolerances,
        args.keep_going,
    )?;
    report_a.runtime = shell_a.runtime;
    report_a.load_s = shell_a.load_s;
    report_a.run_s = shell_a.run_s;
    let reference_only = validate::reference_only(&names_a, &reference);
    Ok(Report {
        model: args.model.clone(),
        model_info: vec![
            format!("A = {} on this model: {}", a.name(), info.describe()),
            format!(
                "B = {} on {}: {} (loaded in {:.2} s, ran in {:.3} s)",
                b.name(),
                model_b.display(),
                info_b.describe(),
                shell_b.load_s,
                shell_b.run_s
            ),
        ],
        reference: format!("the outputs of backend B ({}), {input_desc}", b.name()),
        reference_only,
        tolerances,
        backends: vec![report_a],
    })
}
