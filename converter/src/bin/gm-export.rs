//! gm-export: GroupMamba checkpoint → ONNX with the selective scan as a custom operator.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Parser;
use gm_converter::export::{export, ExportError, ExportOptions};
use gm_converter::model::emit::ScanMode;
use gm_converter::model::params::expected_tensors;
use gm_converter::model::{GroupMamba, ModelConfig};
use gm_converter::onnx::FloatType;
use gm_converter::weights::{load_checkpoint, WeightsError};

#[derive(Parser, Debug)]
#[command(
    version,
    about = "Export a GroupMamba model to ONNX (selective scan as a custom op, a model-local function or standard ops)"
)]
struct Args {
    /// Official configuration.
    #[arg(long, value_parser = ["tiny", "small", "base"], required_unless_present = "config", conflicts_with = "config")]
    variant: Option<String>,
    /// JSON config (stem_hidden_dim, embed_dims, depths, mlp_ratios, num_classes), for other sizes.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Official .pth (flat or nested state_dict) or .safetensors. Without it: seeded random weights.
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Seed of the random weights used when no checkpoint is given.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[arg(long, default_value_t = 224)]
    height: usize,
    #[arg(long, default_value_t = 224)]
    width: usize,
    /// Output file (written atomically).
    #[arg(long)]
    out: PathBuf,
    /// Also output intermediate tensors (stem, every block, stages, features), named as the
    /// official modules, for localising differences.
    #[arg(long)]
    debug_outputs: bool,
    /// Export even if the checkpoint contains NaN or Inf values.
    #[arg(long)]
    allow_nonfinite: bool,
    /// fp16: weights and activations in FP16 (input and output stay FP32; LayerNorm statistics,
    /// the scan's state and its per-channel parameters stay FP32).
    #[arg(long, value_parser = ["fp32", "fp16"], default_value = "fp32")]
    precision: String,
    /// How the selective scan is written. `custom`: one ai.groupmamba::SelectiveScan node per
    /// layer; fastest, needs our op in the runtime (tract via gm-run, ONNX Runtime with
    /// libgroupmamba_ops.so). `function`: the same graph plus the op as a model-local ONNX
    /// function, one file for runtimes with and without our op: with it they run the op (custom-op
    /// speed), without it a runtime that inlines functions (ONNX Runtime) runs the function's
    /// generic standard-op body (about 1.6x the custom op's CPU latency; OpenVINO does not inline).
    /// `portable`: standard ONNX operators only, static shapes; for runtimes that can neither load
    /// our op nor inline functions (TensorRT without plugin, OpenVINO, ORT Mobile).
    #[arg(long, value_parser = ["custom", "function", "portable"], default_value = "custom")]
    scan: String,
    /// Chunk length of the closed form of the portable scan and of the function's body.
    #[arg(long, default_value_t = DEFAULT_CHUNK)]
    scan_chunk: usize,
    /// Fused operators for GPUs: every LayerNorm as one ai.groupmamba::GroupedLayerNorm (SS2D's
    /// out_norm with its affine and SiLU gate fused in, the per-group projections as
    /// block-diagonal MatMuls on channels-last tokens) and every depthwise convolution with its
    /// biases and SiLU/GELU as one channels-last ai.groupmamba::DepthwiseConv on the preceding
    /// Linear's tokens: fewer and faster kernels on
    /// ONNX Runtime's CUDA EP with libgroupmamba_ops.so. Runs on CPUs too (tract, ONNX Runtime
    /// with our library), but 2.3-3.6x slower there than the standard graph. Needs --scan custom.
    #[arg(long)]
    fused_ops: bool,
}

/// Portable-scan chunk length (see benchmarks/).
const DEFAULT_CHUNK: usize = 16;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gm-export: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args = Args::parse();
    if args.scan_chunk == 0 {
        anyhow::bail!("--scan-chunk 0: the chunk length must be at least 1");
    }
    let config = match (&args.variant, &args.config) {
        (Some(v), _) => ModelConfig::variant(v)?,
        (None, Some(path)) => ModelConfig::from_file(path)?,
        (None, None) => unreachable!("clap requires --variant or --config"),
    };
    if args.checkpoint.is_none() {
        eprintln!(
            "gm-export: warning: no --checkpoint given: using seeded random weights (seed {}); \
             the model's metadata records groupmamba.checkpoint = random",
            args.seed
        );
    }
    let opts = ExportOptions {
        config,
        checkpoint: args.checkpoint.clone(),
        seed: args.seed,
        height: args.height,
        width: args.width,
        debug_outputs: args.debug_outputs,
        allow_nonfinite: args.allow_nonfinite,
        scan: match args.scan.as_str() {
            "portable" => ScanMode::Portable {
                chunk: args.scan_chunk,
            },
            "function" => ScanMode::Function {
                chunk: args.scan_chunk,
            },
            _ => ScanMode::CustomOp,
        },
        fused_ops: args.fused_ops,
        precision: if args.precision == "fp16" {
            FloatType::F16
        } else {
            FloatType::F32
        },
        out: args.out.clone(),
    };
    let report = match export(&opts) {
        Ok(r) => r,
        Err(ExportError::Weights(e @ WeightsError::Mismatch(_))) => {
            let hint = args.checkpoint.as_deref().and_then(matching_variant);
            let hint = hint.map_or(String::new(), |v| {
                format!("\nhint: this checkpoint matches --variant {v}")
            });
            return Err(anyhow::anyhow!("{e}{hint}"));
        }
        Err(e) => return Err(e).context(format!("exporting {}", args.out.display())),
    };
    println!(
        "exported {} {} ({} parameters, {} state_dict keys) at {}x{} from {}: {} nodes, {:.1} MB -> {} in {:.2} s",
        opts.config.variant,
        args.precision,
        thousands(report.parameters),
        report.state_dict_keys,
        args.height,
        args.width,
        report.weights_source,
        report.nodes,
        report.bytes as f64 / 1e6,
        report.out.display(),
        report.seconds
    );
    if !report.debug_outputs.is_empty() {
        println!("debug outputs: {}", report.debug_outputs.len());
    }
    Ok(())
}

/// Which official variant a mismatching checkpoint would fit, if any.
fn matching_variant(path: &std::path::Path) -> Option<&'static str> {
    let ckpt = load_checkpoint(path).ok()?;
    ["tiny", "small", "base"].into_iter().find(|v| {
        let model = GroupMamba::new(ModelConfig::variant(v).expect("bundled variant"));
        ckpt.validate(&expected_tensors(&model.params().specs), true)
            .is_ok()
    })
}

fn thousands(n: usize) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, ch) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
