#!/usr/bin/env python3
"""CPU benchmark of GroupMamba-Tiny at 224x224: ONNX Runtime vs tract (vs the official PyTorch model).

    python3 scripts/bench_cpu.py                       # -> benchmarks/cpu-tiny-224.json
    python3 scripts/bench_cpu.py --official-repo ~/src/GroupMamba   # adds the official model

What it does, all on this machine and in one run:
1. builds `gm-bench` (release) and the custom-op library, and exports GroupMamba-Tiny at 224x224 with
   gm-export (seeded random weights: speed does not depend on the values) into target/bench/;
2. times, for batch 1 and 8 (median of --iters runs after --warmup untimed runs, fixed random input):
   - tract (gm-bench --backend tract: pure Rust, the scan op in-process),
   - ONNX Runtime from Rust (gm-bench --backend ort: the scan op registered in-process), with ONNX
     Runtime's default intra-op threads and with 1 thread; tract with its matrix products on every core and on one thread,
   - ONNX Runtime from Python with libgroupmamba_ops.so (register_custom_ops_library), default threads;
3. with --official-repo PATH (a checkout of github.com/Amshaker/GroupMamba; needs torch, plus whatever
   the official code imports, e.g. timm): the official PyTorch model `groupmamba_tiny()` from
   PATH/classification/models/groupmamba.py on CPU, its CUDA scan module `selective_scan_cuda_core`
   replaced by an exact pure-PyTorch sequential scan (same recurrence, FP32), eval mode, no_grad;
4. writes JSON: machine (CPU, cores, memory, OS), command, versions (git commit, rustc, onnxruntime,
   tract-onnx, torch), every measurement, and latency ratios (ORT/tract; official/ORT and
   official/tract when the official model ran).

This is a benchmark, not a test: numbers depend on the machine; nothing is asserted.
"""

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def sh(cmd, **kw):
    print("+", " ".join(shlex.quote(c) for c in cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, cwd=ROOT, check=True, **kw)


def machine_info():
    info = {"platform": platform.platform(), "machine": platform.machine(), "python": platform.python_version(),
            "logical_cpus": os.cpu_count()}
    try:
        with open("/proc/cpuinfo") as f:
            lines = f.read().splitlines()
        names = [l.split(":", 1)[1].strip() for l in lines if l.startswith("model name")]
        info["cpu"] = names[0] if names else None
        flags = next((l.split(":", 1)[1].split() for l in lines if l.startswith("flags")), [])
        info["simd"] = [f for f in ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
        cores = {(l.split(":", 1)[1].strip()) for l in lines if l.startswith("core id")}
        info["physical_cores_seen"] = len(cores) or None
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            total = next(l for l in f if l.startswith("MemTotal"))
        info["memory_gib"] = round(int(total.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        pass
    try:
        info["cpu_affinity"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    return info


def versions():
    v = {}
    for key, cmd in (("git_commit", ["git", "rev-parse", "HEAD"]), ("rustc", ["rustc", "--version"])):
        try:
            v[key] = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            v[key] = None
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        v["git_dirty"] = bool(dirty)
    except OSError:
        pass
    try:
        lock = open(os.path.join(ROOT, "Cargo.lock")).read().split("[[package]]")
        for name in ("tract-onnx", "ort"):
            entry = next((p for p in lock if f'name = "{name}"\n' in p), None)
            if entry:
                v[name] = entry.split('version = "', 1)[1].split('"', 1)[0]
    except OSError:
        pass
    try:
        import onnxruntime
        v["onnxruntime_python"] = onnxruntime.__version__
    except ImportError:
        v["onnxruntime_python"] = None
    return v


def summarize(name, batch, ms, extra=None):
    ms = sorted(ms)
    med = statistics.median(ms)
    r = {"backend": name, "batch": batch, "iters": len(ms), "median_ms": round(med, 3), "min_ms": round(ms[0], 3),
         "p90_ms": round(ms[min(len(ms) - 1, int(0.9 * len(ms) + 0.999) - 1)], 3),
         "images_per_s": round(batch / med * 1e3, 2)}
    if extra:
        r.update(extra)
    print(f"{name} batch {batch}: median {med:.1f} ms, {r['images_per_s']:.1f} images/s", file=sys.stderr, flush=True)
    return r


def random_input(batch, size):
    import numpy as np
    return np.random.default_rng(0).uniform(-2, 2, (batch, 3, size, size)).astype(np.float32)


def bench_ort_python(model, library, batches, size, iters, warmup):
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = []
    for b in batches:
        x = random_input(b, size)
        for _ in range(warmup):
            session.run(None, {name: x})
        ms = []
        for _ in range(iters):
            t = time.perf_counter()
            session.run(None, {name: x})
            ms.append((time.perf_counter() - t) * 1e3)
        out.append(summarize("ort-python", b, ms, {"runtime": f"onnxruntime {ort.__version__} (Python) + libgroupmamba_ops.so"}))
    return out


def profile_ort_python(model, library, size, runs=5):
    """Where ONNX Runtime spends its time at batch 1: per op type, share of node time
    (onnxruntime's own profiler, `SessionOptions.enable_profiling`)."""
    import onnxruntime as ort
    options = ort.SessionOptions()
    options.register_custom_ops_library(library)
    options.enable_profiling = True
    options.profile_file_prefix = os.path.join(ROOT, "target", "bench", "ort_profile")
    session = ort.InferenceSession(model, sess_options=options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    x = random_input(1, size)
    for _ in range(runs + 1):
        session.run(None, {name: x})
    path = session.end_profiling()
    with open(path) as f:
        events = json.load(f)
    per_op = {}
    for e in events:
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op = e.get("args", {}).get("op_name", "?")
            per_op[op] = per_op.get(op, 0) + e.get("dur", 0)
    total = sum(per_op.values()) or 1
    top = sorted(per_op.items(), key=lambda kv: -kv[1])
    os.remove(path)
    return {"batch": 1, "runs": runs + 1, "note": "share of summed node kernel time (first run included)",
            "share_by_op_type": {op: round(us / total, 4) for op, us in top[:12]}}


def bench_official(repo, batches, size, iters, warmup, threads):
    """The official model on CPU, imported from the user's checkout as scripts/reference.py does, its
    CUDA scan `selective_scan_cuda_core` replaced by reference.py's exact pure-PyTorch scan (the same
    recurrence as a chunked closed form, here in FP32: a fair, vectorised baseline)."""
    import torch
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import reference
    if threads:
        torch.set_num_threads(threads)
    reference.install_pure_scan(torch, torch.float32)
    try:
        import timm  # noqa: F401
    except ImportError:
        reference.install_timm_shim(torch)
    gm = reference.import_official(os.path.abspath(repo), torch)
    model = gm.groupmamba_tiny().eval()
    out = []
    for b in batches:
        x = torch.from_numpy(random_input(b, size))
        with torch.no_grad():
            for _ in range(warmup):
                model(x)
            ms = []
            for _ in range(iters):
                t = time.perf_counter()
                model(x)
                ms.append((time.perf_counter() - t) * 1e3)
        out.append(summarize("official-pytorch", b, ms, {
            "runtime": f"torch {torch.__version__}, {torch.get_num_threads()} threads, official groupmamba_tiny; "
                       f"scan: exact pure-PyTorch chunked closed form (chunks of {reference.CHUNK}) in FP32, "
                       "from scripts/reference.py (the CUDA kernel cannot run on CPU)"}))
    return out, torch.__version__


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=20, help="timed runs per batch (batch 8 uses half, at least 5)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "cpu-tiny-224.json"))
    ap.add_argument("--official-repo", metavar="PATH",
                    help="checkout of github.com/Amshaker/GroupMamba: also time the official PyTorch model on CPU "
                         "(needs torch; its CUDA scan is replaced by an exact pure-PyTorch scan)")
    ap.add_argument("--official-iters", type=int, default=3, help="timed runs of the (slow) official model")
    ap.add_argument("--tract-profile-runs", type=int, default=1,
                    help="profiled tract runs at batch 1 (per-op-type share of node time); 0 to skip")
    ap.add_argument("--skip-build", action="store_true", help="use the binaries already in target/release")
    ap.add_argument("--bin-dir", default=os.path.join(ROOT, "target", "release"),
                    help="folder with gm-export, gm-bench and libgroupmamba_ops.so (default target/release)")
    args = ap.parse_args()

    if not args.skip_build:
        sh(["cargo", "build", "--release", "-p", "gm-runtime", "--bin", "gm-bench"])
        sh(["cargo", "build", "--release", "-p", "gm-ort-library"])
        sh(["cargo", "build", "--release", "-p", "gm-converter", "--bin", "gm-export"])
    bench_dir = os.path.join(ROOT, "target", "bench")
    os.makedirs(bench_dir, exist_ok=True)
    model = os.path.join(bench_dir, f"groupmamba_tiny_{args.size}.onnx")
    sh([os.path.join(args.bin_dir, "gm-export"), "--variant", "tiny", "--height", str(args.size),
        "--width", str(args.size), "--out", model])
    library = os.path.join(args.bin_dir, "libgroupmamba_ops.so")
    gm_bench = os.path.join(args.bin_dir, "gm-bench")

    results = []

    def iters_for(b):
        return args.iters if b == 1 else max(5, args.iters // 2)

    for b in args.batches:
        common = ["--model", model, "--batch", str(b), "--size", str(args.size), "--iters", str(iters_for(b)),
                  "--warmup", str(args.warmup)]
        for extra in (["--backend", "tract"], ["--backend", "tract", "--tract-threads", "1"], ["--backend", "ort"],
                      ["--backend", "ort", "--ort-threads", "1"]):
            out = sh([gm_bench, *common, *extra], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if line.startswith("{"):
                    r = json.loads(line)
                    print(f"{r['backend']} batch {b}: median {r['median_ms']:.1f} ms, {r['images_per_s']:.1f} images/s",
                          file=sys.stderr, flush=True)
                    results.append(r)
    tract_profile = None
    if args.tract_profile_runs > 0:
        out = sh([gm_bench, "--model", model, "--batch", "1", "--size", str(args.size), "--profile-tract",
                  str(args.tract_profile_runs)], capture_output=True, text=True).stdout
        tract_profile = next((json.loads(l) for l in out.splitlines() if l.startswith("{")), None)
        if tract_profile:
            top = dict(list(tract_profile["share_by_op_type"].items())[:12])
            tract_profile["share_by_op_type"] = top
            print("tract time by op type (batch 1):", json.dumps(top), file=sys.stderr)
    profile = None
    try:
        results += bench_ort_python(model, library, args.batches, args.size, args.iters, args.warmup)
        profile = profile_ort_python(model, library, args.size)
        print("ONNX Runtime time by op type (batch 1):", json.dumps(profile["share_by_op_type"]), file=sys.stderr)
    except ImportError:
        print("onnxruntime (Python) not installed: ort-python skipped", file=sys.stderr)

    official = {"ran": False, "how": "--official-repo PATH (checkout of github.com/Amshaker/GroupMamba); torch required"}
    torch_version = None
    if args.official_repo:
        off, torch_version = bench_official(args.official_repo, args.batches, args.size, args.official_iters,
                                            1, None)
        results += off
        official = {"ran": True, "repo": os.path.abspath(args.official_repo)}

    def med(name, b):
        return next((r["median_ms"] for r in results if r["backend"] == name and r["batch"] == b), None)

    ratios = []
    for b in args.batches:
        tract, ort_default, ort_1 = med("tract", b), med("ort-rust", b), med("ort-rust (1 intra-op threads)", b)
        tract_1 = med("tract (1 thread)", b)
        entry = {"batch": b}
        if tract and ort_default:
            entry["ort_over_tract_latency"] = round(ort_default / tract, 3)
            entry["ort_speedup_vs_tract"] = round(tract / ort_default, 2)
        if tract and ort_1:
            entry["ort_1thread_over_tract_latency"] = round(ort_1 / tract, 3)
            entry["ort_1thread_speedup_vs_tract"] = round(tract / ort_1, 2)
        off = med("official-pytorch", b)
        if off:
            if ort_default:
                entry["ort_speedup_vs_official"] = round(off / ort_default, 2)
            if tract:
                entry["tract_speedup_vs_official"] = round(off / tract, 2)
            if tract_1:
                entry["tract_1thread_speedup_vs_official"] = round(off / tract_1, 2)
            if ort_1:
                entry["ort_1thread_speedup_vs_official"] = round(off / ort_1, 2)
        ratios.append(entry)

    v = versions()
    v["torch"] = torch_version
    report = {
        "benchmark": f"GroupMamba-Tiny (random weights) at {args.size}x{args.size}, CPU, FP32",
        "command": " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine_info(),
        "versions": v,
        "model": f"gm-export --variant tiny --height {args.size} --width {args.size} (seeded random weights)",
        "method": f"median over timed runs after {args.warmup} warm-up runs; fixed random input; latency per batch, "
                  "throughput = batch / median latency",
        "official_pytorch": official,
        "results": results,
        "ratios": ratios,
        "ort_profile": profile,
        "tract_profile": tract_profile,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
        f.write("\n")
    print(json.dumps(ratios, indent=1))
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
