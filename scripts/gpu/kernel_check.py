"""What scripts/gpu/norm_check.py and scripts/gpu/dwconv_check.py share: building a kernel file into a
shared library with nvcc, the element types and their ulps, misaligned copies, the tolerance judgement
(float64 reference value plus the float32 arithmetic's own bound), the report's summary of the argument
checks and the correctness cases, and timing through a CUDA graph."""
import json
import os
import subprocess

import torch

DTYPES = {"f32": (0, torch.float32), "f16": (1, torch.float16), "bf16": (2, torch.bfloat16)}
# Bits of significand after the point: 1 ulp at [1, 2); smallest spacing (subnormals).
ULP = {"f32": (2.0 ** -23, 2.0 ** -149), "f16": (2.0 ** -10, 2.0 ** -24), "bf16": (2.0 ** -7, 2.0 ** -133)}
CUDA_ERROR_INVALID_VALUE = 1
ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
ABS_SLACK = 1e-5  # relative to max |ref|


def build_lib(nvcc, flags, out_dir, source, name):
    """nvcc `source` (a path) into `out_dir`/`name` for this GPU's architecture; returns the path."""
    major, minor = torch.cuda.get_device_capability()
    arch = f"{major}{minor}"
    lib = os.path.join(out_dir, name)
    cmd = [nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-gencode",
           f"arch=compute_{arch},code=sm_{arch}", *flags, source, "-o", lib]
    print("build:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return lib


def ptr(t):
    return None if t is None else t.data_ptr()


def offset_view(src, offset):
    """A copy of src whose data starts `offset` elements past an allocation's start (misaligned)."""
    flat = torch.empty(src.numel() + offset, dtype=src.dtype, device=src.device)
    view = flat[offset:].view(src.shape)
    view.copy_(src)
    return view


def ulp_of(ref, dtype):
    unit, tiny = ULP[dtype]
    a = ref.abs().clamp_min(tiny)
    return torch.maximum(torch.exp2(torch.floor(torch.log2(a))) * unit, torch.full_like(a, tiny))


def judge(y, reference, dtype):
    """Errors of y against the reference (value, float32 bound) and whether they are within the
    tolerance (the calling script's docstring)."""
    ref, cond = reference
    y = y.double()
    err = (y - ref).abs()
    peak = float(ref.abs().max()) if ref.numel() else 0.0
    max_abs = float(err.max()) if err.numel() else 0.0
    finite = bool(torch.isfinite(y).all())
    out = {"max_abs": max_abs, "max_rel": max_abs / max(peak, 1e-30), "max_ref": peak, "finite": finite}
    slack = ABS_SLACK * peak + cond
    if dtype == "f32":
        ok = finite and bool((err <= slack).all())
    else:
        ulp = ulp_of(ref, dtype)
        # In ulps where |ref| >= 1% of the peak (next to zero the absolute slack dominates).
        big = ref.abs() >= 1e-2 * peak
        out["max_ulp"] = float((err / ulp)[big].max()) if bool(big.any()) else 0.0
        ok = finite and bool((err <= ulp + slack).all())
    out["ok"] = ok
    return out


def record_checks(report, arguments, cases):
    """Puts the C ABI's argument checks and the correctness cases (each with dtype, ok, max_rel and, for
    16-bit types, max_ulp) into `report`, with the worst case per dtype; prints a summary line each and
    every failed case. Returns whether all passed."""
    report["arguments"] = arguments
    bad = [c["check"] for c in arguments if not c["ok"]]
    print(f"argument checks: {len(arguments) - len(bad)}/{len(arguments)} ok",
          f"(failed: {bad})" if bad else "", flush=True)
    report["cases"] = cases
    worst = {}
    for c in cases:
        w = worst.setdefault(c["dtype"], {"max_rel": 0.0, "max_ulp": 0.0, "failed": 0, "cases": 0})
        w["max_rel"] = max(w["max_rel"], c["max_rel"])
        w["max_ulp"] = max(w["max_ulp"], c.get("max_ulp", 0.0))
        w["cases"] += 1
        w["failed"] += 0 if c["ok"] else 1
        if not c["ok"]:
            print("FAIL", json.dumps(c), flush=True)
    report["worst"] = worst
    for dtype, w in worst.items():
        print(f"{dtype}: {w['cases']} cases, {w['failed']} failed, max rel (normwise) {w['max_rel']:.3g}"
              + (f", max {w['max_ulp']:.3g} ulp" if dtype != "f32" else ""), flush=True)
    return not bad and all(c["ok"] for c in cases)


def time_graph(step, sets, launches=20, reps=10):
    """Median time per call (ms) of step(i % sets) captured `launches` times in one CUDA graph."""
    launches = max(launches, 2 * sets)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for i in range(3):  # warm-up outside the graph (lazy initialisation, allocator, cudnn.benchmark)
            step(i % sets)
        stream.synchronize()
        with torch.cuda.graph(graph, stream=stream):
            for i in range(launches):
                step(i % sets)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()  # warm-up replay, not timed
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(reps):
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / launches)
    times.sort()
    return times[len(times) // 2]
