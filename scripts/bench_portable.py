#!/usr/bin/env python3
"""Portable scan export vs custom-op export, GroupMamba-Tiny at 224x224 on CPU: model file size,
ONNX Runtime session load time and batch-1 latency (ORT CPU with our library for the custom-op model,
without any library for the portable one), and tract latency (gm-bench). Also picks the portable chunk
length by measurement (the fastest ORT latency among --chunks).

With --function it also measures the function export (`--scan function`) in ORT without our library
(the function's body inlined) and with it (our op); tract is not timed for it (tract runs our op, as
for the custom-op export).

    python3 scripts/bench_portable.py            # -> benchmarks/portable-cpu-tiny-224.json
    python3 scripts/bench_portable.py --function --chunks 16 --out target/bench/function-cpu-tiny-224.json

A benchmark, not a test: run it on a quiet machine; nothing is asserted.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from bench_cpu import machine_info, versions  # noqa: E402  (shared machine/version report)


def sh(cmd):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True, text=True).stdout


def ort_session(path, library):
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    if library:
        so.register_custom_ops_library(library)
    t0 = time.perf_counter()
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s, time.perf_counter() - t0


def ort_latency_ms(session, iters, warmup):
    x = np.random.default_rng(0).standard_normal((1, 3, 224, 224), dtype=np.float32)
    for _ in range(warmup):
        session.run(["logits"], {"images": x})
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        session.run(["logits"], {"images": x})
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", default="8,16,32")
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "portable-cpu-tiny-224.json"))
    ap.add_argument("--function", action="store_true", help="also the function export, without and with our library")
    args = ap.parse_args()
    sh(["cargo", "build", "--release", "-q", "-p", "gm-converter", "-p", "gm-runtime", "-p", "gm-ort-library"])
    library = os.path.join(ROOT, "target", "release", "libgroupmamba_ops.so")
    out_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    # (name, export file, gm-export flags, our library registered in ORT, time tract)
    variants = [("custom", "custom", [], True, True)]
    if args.function:
        function = ["--scan", "function"]
        variants += [("function-without-library", "function", function, False, False),
                     ("function-with-library", "function", function, True, False)]
    variants += [(f"portable-{c}", f"portable-{c}", ["--scan", "portable", "--scan-chunk", c], False, True)
                 for c in args.chunks.split(",")]
    results = []
    exported = set()
    for name, file, flags, with_library, time_tract in variants:
        path = os.path.join(out_dir, f"tiny_224_{file}.onnx")
        if file not in exported:
            sh(["target/release/gm-export", "--variant", "tiny", "--out", path] + flags)
            exported.add(file)
        import onnx
        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        session, load_s = ort_session(path, library if with_library else None)
        ort_ms = ort_latency_ms(session, args.iters, args.warmup)
        r = {"export": name, "file_bytes": os.path.getsize(path), "nodes": nodes, "ort_library": with_library,
             "ort_load_s": load_s, "ort_cpu_1thread_batch1_ms": ort_ms}
        if time_tract:
            tract = json.loads(sh(["target/release/gm-bench", "--model", path, "--backend", "tract", "--batch", "1",
                                   "--iters", str(max(3, args.iters // 2)), "--warmup", "1"]).splitlines()[0])
            r.update({"tract_batch1_ms": tract["median_ms"], "tract_load_s": tract.get("load_s"),
                      "tract_first_run_s": tract.get("first_run_s")})
        results.append(r)
        print(json.dumps(r), flush=True)
    custom = results[0]
    for r in results[1:]:
        r["ort_ratio_vs_custom"] = r["ort_cpu_1thread_batch1_ms"] / custom["ort_cpu_1thread_batch1_ms"]
        if "tract_batch1_ms" in r:
            r["tract_ratio_vs_custom"] = r["tract_batch1_ms"] / custom["tract_batch1_ms"]
    best = min((r for r in results if r["export"].startswith("portable")), key=lambda r: r["ort_cpu_1thread_batch1_ms"])
    compared = "portable and function" if args.function else "portable"
    report = {"benchmark": f"{compared} vs custom-op export, GroupMamba-Tiny 224x224, CPU, FP32, batch 1",
              "command": " ".join([sys.executable] + sys.argv), "machine": machine_info(), "versions": versions(),
              "results": results, "fastest_portable": best["export"],
              "targets": {"cpu_latency_ratio_max": 2.0, "load_s_max": 2.0}}
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    print(f"fastest portable: {best['export']} ({best['ort_ratio_vs_custom']:.2f}x the custom op on ORT CPU)")


if __name__ == "__main__":
    main()
