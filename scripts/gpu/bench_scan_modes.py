#!/usr/bin/env python3
"""The `--scan` modes of one model on ONNX Runtime's CUDA execution provider: file size, session load
time, node placement, agreement with the custom-op export, batch-1 latency and batch-128 throughput.

    python3 scripts/gpu/bench_scan_modes.py --library libgroupmamba_ops.so \
        --model custom=tiny.onnx:lib --model portable=tiny-portable.onnx \
        --model function-without-library=tiny-function.onnx --model function-with-library=tiny-function.onnx:lib \
        --out scan-modes.json

`NAME=PATH[:lib][:KEY=VALUE...]`: `:lib` registers our custom-op library (built with --features cuda) in
that session; without it the session has no library (a portable export needs none; a function export
then runs its body). Each `:KEY=VALUE` is a CUDA execution provider option of that model's sessions (e.g.
`:prefer_nhwc=1`), recorded in its entry. The first model is the baseline of the ratios. Timing as scripts/gpu/bench_ort.py: input and
output bound once in GPU memory (I/O binding), warm-up excluded, median and p99 of synchronous runs.
Placement: the share of nodes ONNX Runtime assigned to the CUDA EP (ORT's profiler), and whether a
session with `session.disable_cpu_ep_fallback=1` is accepted.
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bench_ort  # noqa: E402  (torch first: it loads the CUDA runtime the EP needs)
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402


def runner(provider, library, ep_options):
    return bench_ort.Runner(argparse.Namespace(provider=provider, library=library, ep_option=ep_options))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--library", required=True, help="libgroupmamba_ops.so built with --features cuda")
    ap.add_argument("--model", action="append", required=True, metavar="NAME=PATH[:lib][:KEY=VALUE...]")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batches", default="1,128")
    ap.add_argument("--provider", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run without a GPU")
    ap.add_argument("--out", required=True)
    ap.add_argument("--cuda-graph", action="store_true",
                    help="also time each batch in a session with enable_cuda_graph (one session per batch)")
    args = ap.parse_args()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    batches = [int(b) for b in args.batches.split(",")]
    report = {"onnxruntime": ort.__version__, "device": bench_ort.torch.cuda.get_device_name()
              if (bench_ort.torch is not None and args.provider == "cuda") else None, "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "method": "CUDA EP, TF32 off, I/O binding (input/output in GPU memory), warm-up excluded; "
                        "load = InferenceSession construction (wall clock)", "models": []}
    x = np.random.default_rng(1).standard_normal((2, 3, args.size, args.size), dtype=np.float32)
    baseline = None
    for spec in args.model:
        name, rest = spec.split("=", 1)
        path, *flags = rest.split(":")
        unknown = [f for f in flags if f != "lib" and "=" not in f]
        if unknown:
            sys.exit(f"--model {spec}: unknown flag(s) {unknown} (expected lib or KEY=VALUE)")
        library = args.library if "lib" in flags else None
        ep_options = [f for f in flags if "=" in f]
        entry = {"name": name, "path": os.path.basename(path), "library_registered": bool(library),
                 "file_mb": round(os.path.getsize(path) / 2**20, 2)}
        if ep_options:
            entry["ep_options"] = dict(kv.split("=", 1) for kv in ep_options)
        r = runner(args.provider, library, ep_options)
        t = time.perf_counter()
        try:
            s = r.session(path)
        except Exception as e:  # noqa: BLE001
            entry["error"] = f"session refused: {str(e)[:400]}"
            print(json.dumps(entry), flush=True)
            report["models"].append(entry)
            continue
        entry["load_s"] = round(time.perf_counter() - t, 3)
        y = s.run(None, {s.get_inputs()[0].name: x})[0]
        if baseline is None:
            baseline = (name, y)
        else:
            entry["max_abs_vs_" + baseline[0]] = float(np.abs(y - baseline[1]).max())
        entry["placement"] = bench_ort.placement(r, path, out_dir)
        entry["bench"] = [bench_ort.bench_one(r, s, b, bench_ort.iters_for(b, 1.0), 10, args.size) for b in batches]
        del s
        if args.cuda_graph and r.cuda:
            entry["bench_cuda_graph"] = [bench_ort.bench_cuda_graph(r, path, b, args.size) for b in batches]
        print(json.dumps(entry), flush=True)
        report["models"].append(entry)
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    base = report["models"][0] if report["models"] and "bench" in report["models"][0] else None
    if base:
        for m in report["models"][1:]:
            if "bench" not in m:
                continue
            m["latency_over_" + base["name"]] = {
                str(b["batch"]): round(b["median_ms"] / bb["median_ms"], 3)
                for b, bb in zip(m["bench"], base["bench"])}
            if "bench_cuda_graph" in m and "bench_cuda_graph" in base:
                m["cuda_graph_latency_over_" + base["name"]] = {
                    str(b["batch"]): round(b["median_ms"] / bb["median_ms"], 3)
                    for b, bb in zip(m["bench_cuda_graph"], base["bench_cuda_graph"])
                    if "median_ms" in b and "median_ms" in bb}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    base_name = base["name"] if base else "(no baseline)"
    for m in report["models"]:
        if "bench" in m:
            print(f"{m['name']:>26}: load {m['load_s']:.2f} s, " + ", ".join(
                f"batch {b['batch']} {b['median_ms']:.2f} ms ({b['img_per_s']:.0f} img/s)" for b in m["bench"]),
                m.get("latency_over_" + base_name, ""), flush=True)
            if "bench_cuda_graph" in m:
                print(f"{'(CUDA graph)':>26}: " + ", ".join(
                    f"batch {b['batch']} {b['median_ms']:.2f} ms ({b['img_per_s']:.0f} img/s)" if "median_ms" in b
                    else f"batch {b['batch']}: {b['error'][:120]}" for b in m["bench_cuda_graph"]),
                    m.get("cuda_graph_latency_over_" + base_name, ""), flush=True)
        else:
            print(f"{m['name']:>26}: {m.get('error')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
