#!/usr/bin/env python3
"""CUDA GroupedLayerNorm kernel (plugins/cuda/layer_norm.cu) on a GPU machine: correctness against a
float64 PyTorch reference, and a bandwidth benchmark on GroupMamba-Tiny's batch-128 norm shapes next
to PyTorch's own kernels. Writes one JSON report; exits non-zero if any check failed.

  python3 scripts/gpu/norm_check.py --lib build/libgm_norm.so --out report.json
  python3 scripts/gpu/norm_check.py --out report.json            # builds the library with nvcc first
  python3 scripts/gpu/norm_check.py --lib ... --quick            # small cases only (compute-sanitizer)
  python3 scripts/gpu/norm_check.py --lib ... --bench-only       # kernel variants: benchmark only

Correctness: T = f32, f16, bf16; no Gate, Gate, SiLU(Gate); d in {1, 3, 16, 32, 87, 112, 448, 1024};
groups 1 and 4; rows 1, 7, 1000 and a large count (65537, fewer for wide rows: at most 2^25 elements);
pointers misaligned on purpose (narrower loads); the C ABI's argument checks; and (full run only) one
node of more than 2^32 elements (64-bit offsets), checked on sampled rows. Inputs are random normals
with a per-row offset (a mean far from 0 tests the two-pass variance), rounded to T; the reference
sees those rounded values, in float64.
Tolerances: f32: every element within 1e-5 * max |ref| plus the float32 arithmetic's own error,
8 u (|x| + |mu|) / sigma * |scale| * |gate| with u = 2^-24 (x - mu in float32 loses the low bits of x and
mu, and 1/sigma amplifies that: a group of 3 values offset far from 0 with nearly equal values is
ill-conditioned in any float32 LayerNorm, PyTorch's included). f16/bf16: every element within 1 ulp
of T at the reference value (the kernel rounds its float32 result once) plus that same slack; `max_ulp` is reported over the elements with
|ref| >= 1% of max |ref| (a correct kernel: about 0.5).

Benchmark: rows = 128*3136 (C=64), 128*784 (C=128), 128*196 (C=348), 128*49 (C=448); groups 1 without
Gate and groups 4 with SiLU(Gate); f32 and f16. Bytes = X (+ Gate) read + Y written at T's size
(Scale and Bias, C floats, left out). Times per launch from CUDA events around a CUDA graph of many
launches (warm-up replay excluded), two ways: `warm` (the same buffers every launch: the small shapes
stay in L2) and `cold` (cycling through enough buffer sets, > 200 MB, that inputs come from device
memory). Baselines on the same shapes and bytes: torch.nn.functional.layer_norm (one kernel; groups 1
with the affine, groups 4 on the [rows, 4, d] view without it) and, for groups 4, the unfused chain
the op replaces (layer_norm, affine, SiLU, product).
"""
import argparse
import ctypes
import json
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

import kernel_check
from kernel_check import (ABS_SLACK, CUDA_ERROR_INVALID_VALUE, DTYPES, ROOT, judge, offset_view, ptr,
                          record_checks, time_graph)

SOURCE = os.path.join(ROOT, "plugins", "cuda", "layer_norm.cu")
# float32 rounding of x − μ, in units of u = 2^-24 of |x| + |μ| (times 1/σ, scale and gate): see `judge`.
F32_ARITHMETIC_ULPS = 8


def build_lib(nvcc, flags, out_dir):
    return kernel_check.build_lib(nvcc, flags, out_dir, SOURCE, "libgm_norm.so")


def load_lib(path):
    lib = ctypes.CDLL(path)
    f = lib.gm_grouped_layer_norm_cuda
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 3 + [
        ctypes.c_float, ctypes.c_int, ctypes.c_void_p]
    return f


def call(fn, code, x, scale, bias, gate, y, rows, channels, groups, eps, silu, stream=None):
    if stream is None:
        stream = torch.cuda.current_stream().cuda_stream
    return fn(code, ptr(x), ptr(scale), ptr(bias), ptr(gate), ptr(y), rows, channels, groups, eps, silu,
              ctypes.c_void_p(stream))


def launch(fn, dtype, t, groups, eps, silu, y=None):
    rows, channels = t["x"].shape
    if y is None:
        y = torch.empty_like(t["x"])
    rc = call(fn, DTYPES[dtype][0], t["x"], t["scale"], t["bias"], t.get("gate"), y, rows, channels, groups,
              eps, silu)
    assert rc == 0, f"kernel launch failed: cudaError {rc}"
    return y


def random_case(gen, rows, channels, dtype, gated, misalign=0, misalign_params=0):
    tdt = DTYPES[dtype][1]
    dev = "cuda"
    x = torch.randn(rows, channels, generator=gen, device=dev) * 2.0
    x += torch.randn(rows, 1, generator=gen, device=dev) * 4.0  # per-row offset: mean far from 0
    t = {"x": x.to(tdt),
         "scale": torch.randn(channels, generator=gen, device=dev) * 0.5 + 1.0,
         "bias": torch.randn(channels, generator=gen, device=dev) * 0.5}
    if gated:
        t["gate"] = (torch.randn(rows, channels, generator=gen, device=dev) * 2.0).to(tdt)
    if misalign:
        for k in ("x", "gate"):
            if k in t:
                t[k] = offset_view(t[k], misalign)
    if misalign_params:
        for k in ("scale", "bias"):
            t[k] = offset_view(t[k], misalign_params)
    return t


def reference(t, groups, eps, silu):
    """float64 on the inputs as the kernel sees them (already rounded to T), and the float32
    arithmetic's error bound per element (see `judge`)."""
    x = t["x"].double()
    rows, channels = x.shape
    d = channels // groups
    xg = x.view(rows, groups, d)
    mean = xg.mean(-1, keepdim=True)
    var = ((xg - mean) ** 2).mean(-1, keepdim=True)
    rstd = 1.0 / torch.sqrt(var + eps)
    scale = t["scale"].double()
    y = ((xg - mean) * rstd).view(rows, channels) * scale + t["bias"].double()
    # x − μ in float32 carries the rounding of x and μ: a few u·(|x| + |μ|), amplified by 1/σ.
    cond = ((xg.abs() + mean.abs()) * rstd).view(rows, channels) * scale.abs()
    if "gate" in t:
        g = t["gate"].double()
        factor = g * torch.sigmoid(g) if silu else g
        y = y * factor
        cond = cond * factor.abs()
    return y, F32_ARITHMETIC_ULPS * 2.0 ** -24 * cond


def correctness(fn, quick, gen):
    cases = []
    widths = [1, 3, 16, 87, 112, 1024] if quick else [1, 3, 16, 32, 87, 112, 448, 1024]
    row_counts = [1, 7] if quick else [1, 7, 1000, 65537]
    eps = 1e-5
    for dtype in DTYPES:
        for d in widths:
            for groups in (1, 4):
                channels = d * groups
                for rows in row_counts:
                    rows = min(rows, max(1000, (1 << 25) // channels))
                    for gated, silu in ((False, 0), (True, 0), (True, 1)):
                        t = random_case(gen, rows, channels, dtype, gated)
                        r = judge(launch(fn, dtype, t, groups, eps, silu), reference(t, groups, eps, silu), dtype)
                        r.update({"dtype": dtype, "rows": rows, "channels": channels, "groups": groups, "d": d,
                                  "gate": "silu" if silu else ("gate" if gated else "none")})
                        cases.append(r)
    # Narrower loads: pointers off by one element (scalar loads), by 4 elements (8-byte loads in the
    # 2-byte types), Scale/Bias off by one float.
    for dtype in DTYPES:
        for d in (16, 112, 448):
            for misalign, misalign_params in ((1, 0), (4, 0), (0, 1)):
                groups, rows = 4, 9
                t = random_case(gen, rows, d * groups, dtype, True, misalign, misalign_params)
                r = judge(launch(fn, dtype, t, groups, eps, 1), reference(t, groups, eps, 1), dtype)
                r.update({"dtype": dtype, "rows": rows, "channels": d * groups, "groups": groups, "d": d,
                          "gate": "silu", "misalign": misalign, "misalign_params": misalign_params})
                cases.append(r)
    # epsilon = 0 and a large epsilon (the attribute reaches the kernel).
    for eps_case in (0.0, 0.5):
        t = random_case(gen, 5, 64, "f32", False)
        r = judge(launch(fn, "f32", t, 2, eps_case, 0), reference(t, 2, eps_case, 0), "f32")
        r.update({"dtype": "f32", "rows": 5, "channels": 64, "groups": 2, "d": 32, "gate": "none",
                  "epsilon": eps_case})
        cases.append(r)
    return cases


def argument_checks(fn):
    """The C ABI's refusals (cudaErrorInvalidValue, nothing launched) and empty calls (0)."""
    x = torch.zeros(2, 8, device="cuda")
    s = torch.ones(8, device="cuda")
    y = torch.empty_like(x)
    nan = float("nan")
    checks = [
        ("dtype 3", (3, x, s, s, None, y, 2, 8, 1, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("groups 0", (0, x, s, s, None, y, 2, 8, 0, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("C % groups", (0, x, s, s, None, y, 2, 8, 3, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("d > 1024", (0, x, s, s, None, y, 1, 1025, 1, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("rows < 0", (0, x, s, s, None, y, -1, 8, 1, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("epsilon < 0", (0, x, s, s, None, y, 2, 8, 1, -1.0, 0), CUDA_ERROR_INVALID_VALUE),
        ("epsilon NaN", (0, x, s, s, None, y, 2, 8, 1, nan, 0), CUDA_ERROR_INVALID_VALUE),
        ("epsilon inf", (0, x, s, s, None, y, 2, 8, 1, float("inf"), 0), CUDA_ERROR_INVALID_VALUE),
        ("gate_silu 2", (0, x, s, s, None, y, 2, 8, 1, 1e-5, 2), CUDA_ERROR_INVALID_VALUE),
        ("null X", (0, None, s, s, None, y, 2, 8, 1, 1e-5, 0), CUDA_ERROR_INVALID_VALUE),
        ("rows 0, null pointers", (0, None, None, None, None, None, 0, 8, 1, 1e-5, 0), 0),
        ("channels 0, null pointers", (0, None, None, None, None, None, 5, 0, 1, 1e-5, 0), 0),
    ]
    out = []
    for name, args, expected in checks:
        rc = call(fn, *args)
        out.append({"check": name, "rc": rc, "expected": expected, "ok": rc == expected})
    torch.cuda.synchronize()
    return out


def huge_case(fn, gen):
    """One node of more than 2^32 elements (f16, C = 448, 4 groups, SiLU gate): rows around the
    2^31 and 2^32 element offsets, and the first and last rows, against the reference."""
    channels, groups = 448, 4
    rows = -(-((1 << 32) + 4096) // channels)
    try:
        x = torch.randn(rows, channels, generator=gen, device="cuda", dtype=torch.float16)
        gate = torch.randn(rows, channels, generator=gen, device="cuda", dtype=torch.float16)
        y = torch.empty_like(x)
    except torch.cuda.OutOfMemoryError as e:
        return {"skipped": f"out of GPU memory: {e}", "ok": True}
    scale = torch.randn(channels, generator=gen, device="cuda") * 0.5 + 1.0
    bias = torch.randn(channels, generator=gen, device="cuda") * 0.5
    rc = call(fn, 1, x, scale, bias, gate, y, rows, channels, groups, 1e-5, 1)
    torch.cuda.synchronize()
    picks = []
    for element in (0, 1 << 31, 1 << 32, rows * channels):
        r = element // channels
        picks.append((max(0, r - 64), min(rows, r + 64)))
    result = {"rows": rows, "elements": rows * channels, "rc": rc, "ok": rc == 0, "ranges": []}
    for lo, hi in picks:
        t = {"x": x[lo:hi], "scale": scale, "bias": bias, "gate": gate[lo:hi]}
        r = judge(y[lo:hi], reference(t, groups, 1e-5, 1), "f16")
        r["rows"] = [lo, hi]
        result["ranges"].append(r)
        result["ok"] = result["ok"] and r["ok"]
    del x, gate, y
    torch.cuda.empty_cache()
    return result


def bench(fn, dtype, rows, channels, groups, gated, gen):
    tdt = DTYPES[dtype][1]
    el = torch.tensor([], dtype=tdt).element_size()
    silu = 1 if gated else 0
    nbytes = el * rows * channels * (3 if gated else 2)
    sets = max(1, min(16, -(-200_000_000 // nbytes)))
    base = random_case(gen, rows, channels, dtype, gated)
    pool = [base] + [{k: v.clone() for k, v in base.items()} for _ in range(sets - 1)]
    ys = [torch.empty_like(base["x"]) for _ in range(sets)]
    d = channels // groups
    w_t = base["scale"].to(tdt)  # torch's layer_norm takes the affine in the input's type
    b_t = base["bias"].to(tdt)

    def ours(i):
        launch(fn, dtype, pool[i], groups, 1e-5, silu, ys[i])

    def torch_ln(i):
        x = pool[i]["x"]
        if groups == 1:
            F.layer_norm(x, (channels,), w_t, b_t, 1e-5)
        else:
            F.layer_norm(x.view(rows, groups, d), (d,), None, None, 1e-5)

    def torch_unfused(i):
        x = pool[i]["x"]
        y = F.layer_norm(x.view(rows, groups, d), (d,), None, None, 1e-5).view(rows, channels) * w_t + b_t
        if gated:
            y = y * F.silu(pool[i]["gate"])
        return y

    out = {"dtype": dtype, "rows": rows, "channels": channels, "groups": groups,
           "gate": "silu" if gated else "none", "bytes": nbytes, "cold_sets": sets}
    candidates = [("ours", ours), ("torch_layer_norm", torch_ln)]
    if groups > 1:
        candidates.append(("torch_unfused", torch_unfused))
    for name, step in candidates:
        for mode, n in (("warm", 1), ("cold", sets)):
            try:
                ms = time_graph(step, n)
                out[f"{name}_{mode}_us"] = ms * 1e3
                out[f"{name}_{mode}_tb_per_s"] = nbytes / (ms * 1e-3) / 1e12
            except Exception as e:  # graph capture unavailable: say so, keep the other numbers
                out[f"{name}_{mode}_error"] = repr(e)
    # The benchmark's own launch is checked too (once, on the first set).
    t = pool[0]
    out["check"] = judge(launch(fn, dtype, t, groups, 1e-5, silu), reference(t, groups, 1e-5, silu), dtype)
    del pool, ys
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="shared library built from plugins/cuda/layer_norm.cu (else built with --nvcc)")
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    ap.add_argument("--nvcc-flag", action="append", default=[], help="extra nvcc flag when building (repeatable)")
    ap.add_argument("--out", help="JSON report")
    ap.add_argument("--quick", action="store_true", help="small correctness cases only (no huge case, no benchmark)")
    ap.add_argument("--bench-only", action="store_true", help="benchmark only (kernel variants)")
    ap.add_argument("--no-huge", action="store_true", help="skip the > 2^32-element case")
    args = ap.parse_args()

    tmp = None
    lib = args.lib
    if lib is None:
        tmp = tempfile.TemporaryDirectory()
        lib = build_lib(args.nvcc, args.nvcc_flag, tmp.name)
    fn = load_lib(lib)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "lib": lib,
              "tolerance": {"f32": f"every element <= {ABS_SLACK} * max|ref| + {F32_ARITHMETIC_ULPS} u (|x|+|mu|)/sigma |scale| |gate|",
                            "f16/bf16": "every element <= 1 ulp of T at ref + the f32 slack"}}
    ok = True
    if not args.bench_only:
        ok &= record_checks(report, argument_checks(fn), correctness(fn, args.quick, gen))
        if not args.quick and not args.no_huge:
            report["huge"] = huge_case(fn, gen)
            h = report["huge"]
            print("huge:", h.get("skipped") or f"{h['elements']} elements, rc {h['rc']}, "
                  f"max abs {max(r['max_abs'] for r in h['ranges']):.3g}, {'ok' if h['ok'] else 'FAIL'}", flush=True)
            ok &= h["ok"]
    if not args.quick:
        report["bench"] = []
        for dtype in ("f32", "f16"):
            for rows, channels in ((128 * 3136, 64), (128 * 784, 128), (128 * 196, 348), (128 * 49, 448)):
                for groups, gated in ((1, False), (4, True)):
                    r = bench(fn, dtype, rows, channels, groups, gated, gen)
                    report["bench"].append(r)
                    ok &= r["check"]["ok"]

                    def fmt(name):
                        parts = []
                        for mode in ("warm", "cold"):
                            if f"{name}_{mode}_us" in r:
                                parts.append(f"{mode} {r[f'{name}_{mode}_us']:.1f} us "
                                             f"{r[f'{name}_{mode}_tb_per_s']:.2f} TB/s")
                        return f"{name}: " + ", ".join(parts)
                    names = ["ours", "torch_layer_norm"] + (["torch_unfused"] if groups > 1 else [])
                    print(f"bench {dtype} {rows}x{channels} g{groups} gate={r['gate']}: "
                          + "; ".join(fmt(n) for n in names), flush=True)
    report["pass"] = bool(ok)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    print("PASS" if ok else "FAIL")
    if tmp is not None:
        tmp.cleanup()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
