#!/usr/bin/env python3
"""CUDA DepthwiseConv kernel (plugins/cuda/depthwise_conv.cu) on a GPU machine: correctness against a
float64 PyTorch reference, and a bandwidth benchmark on GroupMamba-Tiny's batch-128 depthwise-conv
shapes next to PyTorch's own kernels. Writes one JSON report; exits non-zero if any check failed.

  python3 scripts/gpu/dwconv_check.py --lib build/libgm_dwconv.so --out report.json
  python3 scripts/gpu/dwconv_check.py --out report.json            # builds the library with nvcc first
  python3 scripts/gpu/dwconv_check.py --lib ... --quick            # small cases only (compute-sanitizer)
  python3 scripts/gpu/dwconv_check.py --lib ... --bench-only       # kernel variants: benchmark only

Correctness: T = f32, f16, bf16; K in {1, 3, 5, 7}; activation none, SiLU, GELU; with and without
InputBias; H x W in {1x1, 1x7, 7x1, 3x5, 13x17, 56x56} (and, full run, 6x6, 9x130 and 2x300: column
tiles, 300x3: tall tiles, 28x28, 14x14, 7x7 with tiny's channel counts); odd C; N in {1, 3}; pointers
misaligned on purpose (narrower loads/stores); the C ABI's argument checks; and (full run only) one
node of more than 2^32 elements (64-bit offsets), checked on sampled planes. Inputs are random
normals (X with a per-channel offset), X rounded to T; the reference sees those rounded values, in
float64: F.conv2d(groups=C) of (X + InputBias) zero-padded by K/2, plus B, then the activation
(SiLU v*sigmoid(v), exact GELU v/2*(1 + erf(v/sqrt 2))).
Tolerances: f32: every element within 1e-5 * max |ref| plus the float32 arithmetic's own error,
1.13 (K^2 + 2) u S + 4 u (|acc| + |ref|) with u = 2^-24, S = B + sum |W| |X + InputBias| over the
window (the sum of K^2 + 1 terms and the input-bias add, through an activation of slope <= 1.13, plus
the activation's own few ulps). f16/bf16: every element within 1 ulp of T at the reference value (the
kernel rounds its float32 result once) plus that same slack; `max_ulp` is reported over the elements
with |ref| >= 1% of max |ref| (a correct kernel: about 0.5).

Benchmark: N = 128, K = 3, C x H x W = 64x56x56, 256x56x56, 128x28x28, 512x28x28, 348x14x14,
1392x14x14, 448x7x7, 1792x7x7; f32 and f16; SiLU without InputBias (the Mamba layer's conv) and GELU
with it (the FFN's). Bytes = X read + Y written at T's size (W, B, InputBias left out). Times per
launch from CUDA events around a CUDA graph of many launches (warm-up replay excluded), two ways:
`warm` (the same buffers every launch: small shapes stay in L2) and `cold` (cycling through enough
buffer sets, > 200 MB, that inputs come from device memory). Baseline on the same shapes and bytes:
PyTorch's F.conv2d(groups=C, bias=B) followed by F.silu / F.gelu (GELU case: X + InputBias first),
weights in T, cudnn.benchmark on.
"""
import argparse
import ctypes
import json
import math
import os
import sys
import tempfile

import torch
import torch.nn.functional as F

import kernel_check
from kernel_check import (ABS_SLACK, CUDA_ERROR_INVALID_VALUE, DTYPES, ROOT, judge, offset_view, ptr,
                          time_graph)

ACTIVATIONS = {"none": 0, "silu": 1, "gelu": 2}
SOURCE = os.path.join(ROOT, "plugins", "cuda", "depthwise_conv.cu")
U = 2.0 ** -24
ACT_SLOPE = 1.13  # max |d act / dv| over SiLU (1.0998) and GELU (1.1289)
TINY_SHAPES = ((64, 56), (256, 56), (128, 28), (512, 28), (348, 14), (1392, 14), (448, 7), (1792, 7))


def build_lib(nvcc, flags, out_dir):
    return kernel_check.build_lib(nvcc, flags, out_dir, SOURCE, "libgm_dwconv.so")


def load_lib(path):
    lib = ctypes.CDLL(path)
    f = lib.gm_depthwise_conv_cuda
    f.restype = ctypes.c_int
    f.argtypes = [ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5 + [ctypes.c_int, ctypes.c_void_p]
    return f


def call(fn, code, x, w, b, ib, y, n, c, h, wd, k, act, stream=None):
    if stream is None:
        stream = torch.cuda.current_stream().cuda_stream
    return fn(code, ptr(x), ptr(w), ptr(b), ptr(ib), ptr(y), n, c, h, wd, k, act, ctypes.c_void_p(stream))


def launch(fn, dtype, t, act, y=None):
    n, c, h, wd = t["x"].shape
    k = t["w"].shape[-1]
    if y is None:
        y = torch.empty_like(t["x"])
    rc = call(fn, DTYPES[dtype][0], t["x"], t["w"], t["b"], t.get("ib"), y, n, c, h, wd, k, ACTIVATIONS[act])
    assert rc == 0, f"kernel launch failed: cudaError {rc}"
    return y


def random_case(gen, n, c, h, w, k, dtype, with_ib, misalign=0):
    tdt = DTYPES[dtype][1]
    dev = "cuda"
    x = torch.randn(n, c, h, w, generator=gen, device=dev) * 2.0
    x += torch.randn(1, c, 1, 1, generator=gen, device=dev)  # per-channel offset: the border matters
    t = {"x": x.to(tdt),
         "w": torch.randn(c, 1, k, k, generator=gen, device=dev) / k,
         "b": torch.randn(c, generator=gen, device=dev) * 0.5}
    if with_ib:
        t["ib"] = torch.randn(c, generator=gen, device=dev)
    if misalign:
        t["x"] = offset_view(t["x"], misalign)
    return t


def reference(t, act):
    """float64 on the inputs as the kernel sees them (X already rounded to T), and the float32
    arithmetic's error bound per element (module docstring)."""
    x = t["x"].double()
    c = x.shape[1]
    k = t["w"].shape[-1]
    p = k // 2
    if "ib" in t:
        x = x + t["ib"].double().view(1, c, 1, 1)
    xp = F.pad(x, (p, p, p, p))  # zeros after the input bias: the padding stays zero
    w = t["w"].double()
    b = t["b"].double()
    acc = F.conv2d(xp, w, b, groups=c)
    size = F.conv2d(xp.abs(), w.abs(), b.abs(), groups=c)
    if act == "silu":
        y = acc * torch.sigmoid(acc)
    elif act == "gelu":
        y = 0.5 * acc * (1.0 + torch.erf(acc / math.sqrt(2.0)))
    else:
        y = acc
    cond = ACT_SLOPE * (k * k + 2) * U * size + 4 * U * (acc.abs() + y.abs())
    return y, cond


def run_case(fn, gen, dtype, n, c, h, w, k, act, with_ib, misalign=0, misalign_y=0, extra=None):
    t = random_case(gen, n, c, h, w, k, dtype, with_ib, misalign)
    y = None
    if misalign_y:
        y = offset_view(torch.zeros_like(t["x"]), misalign_y)
    r = judge(launch(fn, dtype, t, act, y), reference(t, act), dtype)
    r.update({"dtype": dtype, "shape": [n, c, h, w], "k": k, "activation": act, "input_bias": with_ib})
    if misalign or misalign_y:
        r.update({"misalign_x": misalign, "misalign_y": misalign_y})
    if extra:
        r.update(extra)
    return r


def correctness(fn, quick, gen):
    cases = []
    small = [(1, 1), (1, 7), (7, 1), (3, 5), (13, 17), (56, 56)]
    acts = list(ACTIVATIONS)
    i = 0
    for dtype in DTYPES:
        for k in (1, 3, 5, 7):
            for h, w in small:
                for n, c in ((1, 3), (3, 5)):
                    for with_ib in (False, True):
                        if quick:
                            # One activation per case, rotating; every (dtype, K, shape) still sees all three.
                            i += 1
                            run_acts = [acts[i % 3]]
                            if (h, w) == (56, 56) and (n, with_ib) != (1, True):
                                continue
                        else:
                            run_acts = acts
                        for act in run_acts:
                            cases.append(run_case(fn, gen, dtype, n, c, h, w, k, act, with_ib))
    if quick:
        more = [(2, 3, 9, 130), (1, 2, 300, 3), (2, 3, 14, 14), (2, 5, 7, 7)]
    else:
        # Column tiles (W > 128), tall planes (row tiles), even sizes, tiny's planes and channel counts.
        more = [(2, 3, 6, 6), (2, 3, 9, 130), (1, 2, 2, 300), (1, 2, 300, 3), (2, 7, 28, 28), (2, 64, 56, 56),
                (2, 348, 14, 14), (3, 448, 7, 7), (1, 3, 64, 64), (1, 3, 33, 256)]
    for dtype in DTYPES:
        for n, c, h, w in more:
            for k in (3, 7) if quick else (1, 3, 5, 7):
                act = acts[(h + w + k) % 3]
                cases.append(run_case(fn, gen, dtype, n, c, h, w, k, act, (h + k) % 2 == 0))
    # Narrower loads and stores: X and/or Y off by 1, 2 or 4 elements.
    for dtype in DTYPES:
        for h, w in ((56, 56), (28, 28), (14, 14)):
            for mx, my in ((1, 0), (2, 0), (4, 0), (0, 1), (0, 2), (1, 3)):
                cases.append(run_case(fn, gen, dtype, 2, 3, h, w, 3, "silu", True, mx, my))
    return cases


def argument_checks(fn):
    """The C ABI's refusals (cudaErrorInvalidValue, nothing launched) and empty calls (0)."""
    x = torch.zeros(1, 2, 3, 3, device="cuda")
    w = torch.ones(2, 1, 3, 3, device="cuda")
    b = torch.zeros(2, device="cuda")
    y = torch.empty_like(x)
    big = (1 << 30) + 1
    checks = [
        ("dtype 3", (3, x, w, b, None, y, 1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("k 2 (even)", (0, x, w, b, None, y, 1, 2, 3, 3, 2, 0), CUDA_ERROR_INVALID_VALUE),
        ("k 9", (0, x, w, b, None, y, 1, 2, 3, 3, 9, 0), CUDA_ERROR_INVALID_VALUE),
        ("k 0", (0, x, w, b, None, y, 1, 2, 3, 3, 0, 0), CUDA_ERROR_INVALID_VALUE),
        ("k -1", (0, x, w, b, None, y, 1, 2, 3, 3, -1, 0), CUDA_ERROR_INVALID_VALUE),
        ("activation 3", (0, x, w, b, None, y, 1, 2, 3, 3, 3, 3), CUDA_ERROR_INVALID_VALUE),
        ("activation -1", (0, x, w, b, None, y, 1, 2, 3, 3, 3, -1), CUDA_ERROR_INVALID_VALUE),
        ("n < 0", (0, x, w, b, None, y, -1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("w < 0", (0, x, w, b, None, y, 1, 2, 3, -3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("null X", (0, None, w, b, None, y, 1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("null W", (0, x, None, b, None, y, 1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("null B", (0, x, w, None, None, y, 1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("null Y", (0, x, w, b, None, None, 1, 2, 3, 3, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("H > 2^30", (0, x, w, b, None, y, 1, 1, big, 1, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("C > 2^30", (0, x, w, b, None, y, 1, big, 1, 1, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("N*C*H*W > 2^63", (0, x, w, b, None, y, 1 << 40, 1 << 20, 1 << 20, 1 << 20, 3, 0), CUDA_ERROR_INVALID_VALUE),
        ("n 0, null pointers", (0, None, None, None, None, None, 0, 2, 3, 3, 3, 0), 0),
        ("h 0, null pointers", (1, None, None, None, None, None, 1, 2, 0, 3, 3, 0), 0),
        ("no InputBias", (0, x, w, b, None, y, 1, 2, 3, 3, 3, 1), 0),
    ]
    out = []
    for name, args, expected in checks:
        rc = call(fn, *args)
        out.append({"check": name, "rc": rc, "expected": expected, "ok": rc == expected})
    torch.cuda.synchronize()
    return out


def huge_case(fn, gen):
    """One node of more than 2^32 elements (f16, C = 64, 56x56, K = 3, GELU, InputBias): the planes
    around the 2^31 and 2^32 element offsets, and the first and last planes, against the reference."""
    c, h, w, k = 64, 56, 56, 3
    plane = h * w
    n = -(-((1 << 32) + (1 << 20)) // (c * plane))
    try:
        x = torch.randn(n, c, h, w, generator=gen, device="cuda", dtype=torch.float16)
        y = torch.empty_like(x)
    except torch.cuda.OutOfMemoryError as e:
        return {"skipped": f"out of GPU memory: {e}", "ok": True}
    wt = torch.randn(c, 1, k, k, generator=gen, device="cuda") / k
    b = torch.randn(c, generator=gen, device="cuda") * 0.5
    ib = torch.randn(c, generator=gen, device="cuda")
    rc = call(fn, 1, x, wt, b, ib, y, n, c, h, w, k, 2)
    torch.cuda.synchronize()
    planes = n * c
    result = {"shape": [n, c, h, w], "elements": n * c * plane, "rc": rc, "ok": rc == 0, "ranges": []}
    xv, yv = x.view(planes, h, w), y.view(planes, h, w)
    for element in (0, 1 << 31, 1 << 32, planes * plane - 1):
        p = element // plane
        lo, hi = max(0, p - 2), min(planes, p + 3)
        ch = torch.arange(lo, hi, device="cuda") % c
        t = {"x": xv[lo:hi].unsqueeze(0), "w": wt[ch], "b": b[ch], "ib": ib[ch]}
        r = judge(yv[lo:hi].unsqueeze(0), reference(t, "gelu"), "f16")
        r["planes"] = [lo, hi]
        result["ranges"].append(r)
        result["ok"] = result["ok"] and r["ok"]
    del x, y, xv, yv
    torch.cuda.empty_cache()
    return result


def bench(fn, dtype, n, c, hw, act, with_ib, gen, k=3):
    tdt = DTYPES[dtype][1]
    el = torch.tensor([], dtype=tdt).element_size()
    nbytes = el * n * c * hw * hw * 2
    sets = max(1, min(16, -(-200_000_000 // nbytes)))
    base = random_case(gen, n, c, hw, hw, k, dtype, with_ib)
    pool = [base] + [{"x": base["x"].clone(), **{key: v for key, v in base.items() if key != "x"}}
                     for _ in range(sets - 1)]
    ys = [torch.empty_like(base["x"]) for _ in range(sets)]
    w_t = base["w"].to(tdt)  # torch's conv takes the weights in the input's type
    b_t = base["b"].to(tdt)
    ib_t = base["ib"].to(tdt).view(1, c, 1, 1) if with_ib else None
    act_fn = F.silu if act == "silu" else F.gelu if act == "gelu" else (lambda v: v)

    def ours(i):
        launch(fn, dtype, pool[i], act, ys[i])

    def torch_conv(i):
        x = pool[i]["x"]
        if ib_t is not None:
            x = x + ib_t
        return act_fn(F.conv2d(x, w_t, b_t, padding=k // 2, groups=c))

    out = {"dtype": dtype, "shape": [n, c, hw, hw], "k": k, "activation": act, "input_bias": with_ib,
           "bytes": nbytes, "cold_sets": sets}
    for name, step in (("ours", ours), ("torch", torch_conv)):
        for mode, m in (("warm", 1), ("cold", sets)):
            try:
                ms = time_graph(step, m)
                out[f"{name}_{mode}_us"] = ms * 1e3
                out[f"{name}_{mode}_tb_per_s"] = nbytes / (ms * 1e-3) / 1e12
            except Exception as e:  # graph capture unavailable: say so, keep the other numbers
                out[f"{name}_{mode}_error"] = repr(e)
    # The benchmark's own launch is checked too (once, on the first set).
    t = pool[0]
    out["check"] = judge(launch(fn, dtype, t, act), reference(t, act), dtype)
    del pool, ys
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lib", help="shared library built from plugins/cuda/depthwise_conv.cu (else built with --nvcc)")
    ap.add_argument("--nvcc", default=os.environ.get("NVCC", "nvcc"))
    ap.add_argument("--nvcc-flag", action="append", default=[], help="extra nvcc flag when building (repeatable)")
    ap.add_argument("--out", help="JSON report")
    ap.add_argument("--quick", action="store_true", help="small correctness cases only (no huge case, no benchmark)")
    ap.add_argument("--bench-only", action="store_true", help="benchmark only (kernel variants)")
    ap.add_argument("--no-huge", action="store_true", help="skip the > 2^32-element case")
    args = ap.parse_args()

    torch.backends.cudnn.benchmark = True
    tmp = None
    lib = args.lib
    if lib is None:
        tmp = tempfile.TemporaryDirectory()
        lib = build_lib(args.nvcc, args.nvcc_flag, tmp.name)
    fn = load_lib(lib)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    report = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "lib": lib,
              "tolerance": {"f32": f"every element <= {ABS_SLACK} * max|ref| + {ACT_SLOPE} (K^2+2) u S"
                                   " + 4 u (|acc| + |ref|), u = 2^-24, S = |B| + sum |W| |X + InputBias|",
                            "f16/bf16": "every element <= 1 ulp of T at ref + the f32 slack"}}
    ok = True
    if not args.bench_only:
        report["arguments"] = argument_checks(fn)
        bad = [c["check"] for c in report["arguments"] if not c["ok"]]
        print(f"argument checks: {len(report['arguments']) - len(bad)}/{len(report['arguments'])} ok",
              f"(failed: {bad})" if bad else "", flush=True)
        ok &= not bad
        cases = correctness(fn, args.quick, gen)
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
        ok &= all(c["ok"] for c in cases)
        if not args.quick and not args.no_huge:
            report["huge"] = huge_case(fn, gen)
            h = report["huge"]
            print("huge:", h.get("skipped") or f"{h['elements']} elements, rc {h['rc']}, "
                  f"max abs {max(r['max_abs'] for r in h['ranges']):.3g}, {'ok' if h['ok'] else 'FAIL'}", flush=True)
            ok &= h["ok"]
    if not args.quick:
        report["bench"] = []
        for dtype in ("f32", "f16"):
            for c, hw in TINY_SHAPES:
                for act, with_ib in (("silu", False), ("gelu", True)):
                    r = bench(fn, dtype, 128, c, hw, act, with_ib, gen)
                    report["bench"].append(r)
                    ok &= r["check"]["ok"]

                    def fmt(name):
                        parts = []
                        for mode in ("warm", "cold"):
                            if f"{name}_{mode}_us" in r:
                                parts.append(f"{mode} {r[f'{name}_{mode}_us']:.1f} us "
                                             f"{r[f'{name}_{mode}_tb_per_s']:.2f} TB/s")
                        return f"{name}: " + ", ".join(parts)
                    print(f"bench {dtype} 128x{c}x{hw}x{hw} K3 {act}{'+ib' if with_ib else ''}: "
                          + "; ".join(fmt(n) for n in ("ours", "torch")), flush=True)
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
