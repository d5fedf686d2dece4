//! gm-bench: latency and throughput of an exported model through tract or ONNX Runtime on CPU, or
//! ONNX Runtime's CUDA execution provider (`--backend ort-cuda`: gm-run's GPU path, host batch in
//! and logits out through pre-allocated device buffers, optionally a CUDA graph).
//!
//! Loads the model once per backend, runs `--warmup` untimed batches (at least one: its time is
//! reported as `first_run_s`, it includes per-batch-size preparation), then `--iters` timed ones
//! on a fixed pseudo-random input, and prints one JSON object per (backend, batch) on stdout:
//! median/min/p90/p99 latency in ms and throughput (images/s = batch / median). Used by
//! scripts/bench_cpu.py, which adds machine information and writes benchmarks/*.json.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Parser, ValueEnum};
use gm_runtime::backend::ort::{self as ort_backend, OrtBackend};
use gm_runtime::backend::ort_cuda::{self, CudaOptions, OrtCudaBackend};
use gm_runtime::backend::tract::TractBackend;
use gm_runtime::backend::{Backend, HostTensor};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Which {
    Tract,
    Ort,
    /// ONNX Runtime with the CUDA execution provider (an onnxruntime-gpu library).
    OrtCuda,
}

#[derive(Parser, Debug)]
#[command(version, about = "Benchmark an exported GroupMamba model")]
struct Args {
    /// Exported model (.onnx from gm-export), dynamic batch.
    #[arg(long)]
    model: PathBuf,
    /// Backend(s) to time, in order.
    #[arg(long, value_enum, num_args = 1.., default_values_t = [Which::Tract, Which::Ort])]
    backend: Vec<Which>,
    /// Batch sizes.
    #[arg(long, num_args = 1.., default_values_t = [1usize, 8])]
    batch: Vec<usize>,
    /// Timed runs per (backend, batch).
    #[arg(long, default_value_t = 20)]
    iters: usize,
    /// Untimed runs before timing (at least 1).
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// ONNX Runtime intra-op threads (default: ONNX Runtime's choice, one per physical core).
    #[arg(long)]
    ort_threads: Option<usize>,
    /// tract's threads (default: one per available core): its matrix products, and the images of
    /// a batch; the rest of one image's plan runs on one thread.
    #[arg(long)]
    tract_threads: Option<usize>,
    /// GPU index for --backend ort-cuda.
    #[arg(long, default_value_t = 0)]
    gpu: u32,
    /// --backend ort-cuda: capture each batch size's run as a CUDA graph.
    #[arg(long)]
    cuda_graph: bool,
    /// Input height and width.
    #[arg(long, default_value_t = 224)]
    size: usize,
    /// Instead of timing: run tract this many times at the first --batch, timing every node, and
    /// print each op type's share of the node time (one JSON object).
    #[arg(long)]
    profile_tract: Option<usize>,
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gm-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn input(batch: usize, size: usize) -> HostTensor {
    let len = batch * 3 * size * size;
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let data = (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
        })
        .collect();
    HostTensor {
        shape: vec![batch, 3, size, size],
        data,
    }
}

/// Per-op-type time of tract's optimised plan: (op name, seconds, node evaluations), slowest first.
fn profile_tract(args: &Args, runs: usize) -> Result<Vec<(String, f64, usize)>> {
    use std::collections::HashMap;
    use tract_onnx::prelude::*;
    use tract_onnx::tract_core::plan::eval;

    let plan = TractBackend::load(&args.model)?.runnable(args.batch[0])?;
    let x = input(args.batch[0], args.size);
    let tensor = Tensor::from_shape(&x.shape, &x.data)?;
    let mut per_op: HashMap<String, (f64, usize)> = HashMap::new();
    for _ in 0..runs {
        let mut state = plan.spawn()?;
        state.run_plan_with_eval(
            tvec!(tensor.clone().into()),
            |ctx, op_state, node, inputs| {
                let started = Instant::now();
                let out = eval(ctx, op_state, node, inputs);
                let entry = per_op.entry(node.op().name().to_string()).or_default();
                entry.0 += started.elapsed().as_secs_f64();
                entry.1 += 1;
                out
            },
        )?;
    }
    let mut ops: Vec<(String, f64, usize)> =
        per_op.into_iter().map(|(k, (t, n))| (k, t, n)).collect();
    ops.sort_by(|a, b| b.1.total_cmp(&a.1));
    Ok(ops)
}

fn run() -> Result<()> {
    let args = Args::parse();
    let tract_threads = gm_runtime::backend::tract::set_threads(args.tract_threads);
    if let Some(runs) = args.profile_tract {
        let ops = profile_tract(&args, runs.max(1))?;
        let total: f64 = ops.iter().map(|o| o.1).sum::<f64>().max(1e-12);
        let entries: Vec<String> = ops
            .iter()
            .map(|(op, t, n)| {
                eprintln!(
                    "gm-bench: tract {op:<24} {:5.1}%  {:9.1} ms/run  ({} evals/run)",
                    100.0 * t / total,
                    t * 1e3 / runs as f64,
                    n / runs
                );
                format!("\"{}\": {:.4}", op.replace('"', "'"), t / total)
            })
            .collect();
        println!(
            "{{\"profile\": \"tract\", \"batch\": {}, \"runs\": {runs}, \"node_time_ms_per_run\": {:.1}, \"share_by_op_type\": {{{}}}}}",
            args.batch[0],
            total * 1e3 / runs as f64,
            entries.join(", ")
        );
        return Ok(());
    }
    for which in &args.backend {
        let started = Instant::now();
        let (mut backend, detail): (Box<dyn Backend>, String) = match which {
            Which::Tract => (
                Box::new(TractBackend::load(&args.model)?),
                format!("tract-onnx 0.23.9, {tract_threads} thread(s): matrix products, and the images of a batch"),
            ),
            Which::Ort => {
                let rt = ort_backend::runtime().context("--backend ort")?;
                let backend = OrtBackend::load_with(rt, &args.model, args.ort_threads)?;
                (Box::new(backend), rt.describe())
            }
            Which::OrtCuda => {
                let rt = ort_backend::runtime().context("--backend ort-cuda")?;
                let options = CudaOptions {
                    cuda_graph: args.cuda_graph,
                };
                let backend = OrtCudaBackend::load(rt, &args.model, args.gpu, options)?;
                let graph = if args.cuda_graph { ", CUDA graph" } else { "" };
                let detail = format!(
                    "{}, CUDA EP on GPU {}, {}{graph}",
                    rt.describe(),
                    args.gpu,
                    ort_cuda::scan_placement()
                );
                (Box::new(backend), detail)
            }
        };
        let load_s = started.elapsed().as_secs_f64();
        for &batch in &args.batch {
            let x = input(batch, args.size);
            // The first run includes per-batch-size preparation (tract optimises its plan for
            // each batch size on first use): reported apart as first_run_s.
            let first = Instant::now();
            backend.run(&x)?;
            let first_run_s = first.elapsed().as_secs_f64();
            for _ in 1..args.warmup {
                backend.run(&x)?;
            }
            let mut ms = Vec::with_capacity(args.iters);
            for _ in 0..args.iters {
                let t = Instant::now();
                let out = backend.run(&x)?;
                ms.push(t.elapsed().as_secs_f64() * 1e3);
                std::hint::black_box(out);
            }
            ms.sort_by(f64::total_cmp);
            let median = if ms.len() % 2 == 1 {
                ms[ms.len() / 2]
            } else {
                (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
            };
            let percentile =
                |q: f64| ms[((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1];
            let (p90, p99) = (percentile(0.9), percentile(0.99));
            let name = match which {
                Which::Tract if tract_threads == 1 => "tract (1 thread)".to_string(),
                Which::Tract => "tract".to_string(),
                Which::Ort => match args.ort_threads {
                    Some(n) => format!("ort-rust ({n} intra-op threads)"),
                    None => "ort-rust".to_string(),
                },
                Which::OrtCuda if args.cuda_graph => "ort-rust-cuda-graph".to_string(),
                Which::OrtCuda => "ort-rust-cuda".to_string(),
            };
            println!(
                "{{\"backend\": \"{name}\", \"runtime\": \"{}\", \"batch\": {batch}, \"size\": {}, \
                 \"iters\": {}, \"warmup\": {}, \"median_ms\": {median:.3}, \"min_ms\": {:.3}, \
                 \"p90_ms\": {p90:.3}, \"p99_ms\": {p99:.3}, \"images_per_s\": {:.2}, \"load_s\": {load_s:.3}, \
                 \"first_run_s\": {first_run_s:.3}}}",
                detail.replace('\\', "\\\\").replace('"', "\\\""),
                args.size,
                args.iters,
                args.warmup,
                ms[0],
                batch as f64 / median * 1e3,
            );
            eprintln!(
                "gm-bench: {name} batch {batch}: median {median:.1} ms, {:.1} images/s",
                batch as f64 / median * 1e3
            );
        }
    }
    Ok(())
}
