//! gm-run: runs an exported GroupMamba model on a `.npy` batch, or (`gm-run classify`) on image
//! files.

#[path = "gm-run/classify_cli.rs"]
mod classify_cli;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use gm_runtime::backend::ort::{self as ort_backend, OrtBackend};
use gm_runtime::backend::ort_cuda::{self, CudaOptions, Device, OrtCudaBackend};
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{check_input_shape, Backend, HostTensor};
use gm_runtime::npy;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendChoice {
    /// ONNX Runtime if a library can be found (ORT_DYLIB_PATH or a Python onnxruntime), else tract.
    Auto,
    /// ONNX Runtime on CPU (ORT_DYLIB_PATH, else the library of an installed Python onnxruntime).
    Ort,
    /// Pure-Rust CPU inference through tract.
    Tract,
}

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Run an exported GroupMamba model",
    after_help = "Image files: gm-run classify IMG… --model M.onnx [--topk 5] [--json] (see gm-run classify --help)"
)]
struct Args {
    /// Exported model (.onnx from gm-export).
    #[arg(long)]
    model: PathBuf,
    /// Input batch: float32 .npy of shape [N, 3, H, W] (already normalised).
    #[arg(long)]
    input: PathBuf,
    /// Where to write the logits (float32 .npy, [N, classes]); written atomically.
    #[arg(long)]
    output: PathBuf,
    #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
    backend: BackendChoice,
    /// `cpu`, or `cuda` / `cuda:N`: ONNX Runtime's CUDA execution provider on GPU N (needs
    /// onnxruntime-gpu's library, e.g. ORT_DYLIB_PATH=…/onnxruntime/capi/libonnxruntime.so.1.x);
    /// falls back to the CPU (ONNX Runtime, then tract) with a notice when no GPU or provider is
    /// available.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// With --device cuda: capture the run as a CUDA graph (ONNX Runtime's `enable_cuda_graph`;
    /// needs every node on the GPU). Pays off when one process runs the same shape many times.
    #[arg(long)]
    cuda_graph: bool,
}

fn main() -> ExitCode {
    // `gm-run classify …` has arguments of its own; anything else is the `.npy` runner.
    let result = if std::env::args_os().nth(1).is_some_and(|a| a == "classify") {
        use clap::Parser as _;
        classify_cli::run(classify_cli::ClassifyArgs::parse_from(
            std::env::args_os().skip(1),
        ))
    } else {
        run().map(|()| ExitCode::SUCCESS)
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gm-run: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if let Some(folder) = args.output.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !folder.is_dir() {
            bail!(
                "--output {}: the folder {} does not exist",
                args.output.display(),
                folder.display()
            );
        }
    }
    let (shape, data) = npy::read_f32(&args.input)?;
    let started = Instant::now();
    let mut backend: Box<dyn Backend> = match args.device {
        Device::Cuda(gpu) => {
            let options = CudaOptions {
                cuda_graph: args.cuda_graph,
            };
            load_cuda(args.backend, gpu, &args.model, options)?
        }
        Device::Cpu if args.cuda_graph => bail!("--cuda-graph needs --device cuda"),
        Device::Cpu => load_cpu(args.backend, &args.model)?,
    };
    let load_s = started.elapsed().as_secs_f64();
    check_input_shape(backend.input_shape(), &shape, &args.input, &args.model)?;
    let started = Instant::now();
    let outputs = backend.run(&HostTensor { shape, data })?;
    let run_s = started.elapsed().as_secs_f64();
    let logits = outputs.first().context("the model produced no output")?;
    npy::write_f32(&args.output, &logits.shape, &logits.data)?;
    eprintln!(
        "gm-run: backend {}: loaded in {:.2} s, ran batch {} in {:.3} s; wrote {} {:?}",
        backend.name(),
        load_s,
        logits.shape.first().copied().unwrap_or(0),
        run_s,
        args.output.display(),
        logits.shape
    );
    Ok(())
}

/// `--device cuda:N`: ONNX Runtime's CUDA execution provider, else (with a notice) the CPU.
fn load_cuda(
    choice: BackendChoice,
    gpu: u32,
    model: &Path,
    options: CudaOptions,
) -> Result<Box<dyn Backend>> {
    if choice == BackendChoice::Tract {
        bail!(
            "--device cuda needs ONNX Runtime (--backend ort or auto); tract runs on the CPU only"
        );
    }
    let why = match ort_backend::runtime() {
        Ok(rt) => match OrtCudaBackend::load(rt, model, gpu, options) {
            Ok(backend) => {
                eprintln!(
                    "gm-run: using {} with the CUDA execution provider on GPU {gpu}",
                    rt.describe()
                );
                if !ort_cuda::scan_runs_on_gpu() {
                    eprintln!(
                        "gm-run: notice: this gm-run was built without the `cuda` feature: \
                         SelectiveScan runs on the CPU (ONNX Runtime copies its tensors to and from the GPU)"
                    );
                }
                return Ok(Box::new(backend));
            }
            Err(e) => e.to_string(),
        },
        Err(e) => format!("ONNX Runtime is not available: {e}"),
    };
    eprintln!(
        "gm-run: notice: --device cuda:{gpu} is not available, running on the CPU instead: {why}"
    );
    load_cpu(choice, model)
}

/// The CPU backends: ONNX Runtime (`ort`), tract, or ONNX Runtime if it can be found else tract (`auto`).
fn load_cpu(choice: BackendChoice, model: &Path) -> Result<Box<dyn Backend>> {
    Ok(match choice {
        BackendChoice::Tract => Box::new(TractBackend::load(model)?),
        BackendChoice::Ort => {
            let rt = ort_backend::runtime().context("--backend ort")?;
            eprintln!("gm-run: using {}", rt.describe());
            Box::new(OrtBackend::load_in(rt, model)?)
        }
        BackendChoice::Auto => match ort_backend::runtime() {
            Ok(rt) => {
                eprintln!("gm-run: --backend auto: using ort, {}", rt.describe());
                Box::new(OrtBackend::load_in(rt, model)?)
            }
            Err(e) => {
                eprintln!(
                    "gm-run: --backend auto: using tract; ONNX Runtime is not available: {e}"
                );
                Box::new(TractBackend::load(model)?)
            }
        },
    })
}
