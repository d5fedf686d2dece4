#!/usr/bin/env python3
"""CUDA DepthwiseConv kernel (plugins/cuda/depthwise_conv.cu) on a GPU machine: correctness against a
float64 PyTorch reference in both layouts (NCHW, and channels_last = 1: X and Y [N, H, W, C]), and a
bandwidth benchmark on GroupMamba-Tiny's batch-128 depthwise-conv shapes next to PyTorch's own kernels.
Writes one JSON report; exits non-zero if any check failed.

  python3 scripts/gpu/dwconv_check.py --lib build/libgm_dwconv.so --out report.json
  python3 scripts/gpu/dwconv_check.py --out report.json            # builds the library with nvcc first
  python3 scripts/gpu/dwconv_check.py --lib ... --quick            # small cases only (compute-sanitizer)
  python3 scripts/gpu/dwconv_check.py --lib ... --bench-only       # kernel variants: benchmark only
  python3 scripts/gpu/dwconv_check.py --lib ... --bench-only --layouts nhwc   # NHWC variants

Correctness: T = f32, f16, bf16; K in {1, 3, 5, 7}; activation none, SiLU, GELU; with and without
InputBias; H x W in {1x1, 1x7, 7x1, 3x5, 13x17, 56x56} (and, full run, 6x6, 9x130 and 2x300: column
tiles, 300x3: tall tiles, 28x28, 14x14, 7x7 with tiny's channel counts); odd C; N in {1, 3}; pointers
misaligned on purpose (narrower loads/stores). Every such case runs twice: NCHW, then the same values
channels-last (X permuted to a contiguous NHWC tensor, Y permuted back and judged against the same
reference; misalignments then apply to the NHWC tensors). Channels-last only: C in {1, 3, 8, 87, 106,
512} (the per-thread channel vector falls back from the widest to 2 and 1) with H x W in {1x1, 1x7, 7x1,
3x5, 56x56}, every dtype and K, activations rotating, InputBias alternating, N 1 or 3; X / Y misaligned
by 1, 2, 4 elements and W by 1, 2 floats (scalar weight loads) on C = 8, 106, 512; and (full run) tiny's
channel counts at batch 3 (GELU + InputBias on the FFN widths, SiLU on the others). The C ABI's argument
checks (channels_last other than 0 or 1 is refused, before the empty-tensor shortcut), and (full run
only) one node of more than 2^32 elements in each layout (64-bit offsets), checked on sampled planes
(NCHW) or whole images (NHWC). Inputs are random normals (X with a per-channel offset), X rounded to T;
the reference sees those rounded values, in float64: F.conv2d(groups=C) of (X + InputBias)
zero-padded by K/2, plus B, then the activation (SiLU v*sigmoid(v), exact GELU v/2*(1 + erf(v/sqrt 2))).
Tolerances (both layouts; the NHWC kernel sums the taps column by column, the NCHW one row by row:
the bound does not depend on the order): f32: every element within 1e-5 * max |ref| plus the float32
arithmetic's own error, 1.13 (K^2 + 2) u S + 4 u (|acc| + |ref|) with u = 2^-24, S = B + sum |W| |X +
InputBias| over the window (the sum of K^2 + 1 terms and the input-bias add, through an activation of
slope <= 1.13, plus the activation's own few ulps). f16/bf16: every element within 1 ulp of T at the
reference value (the kernel rounds its float32 result once) plus that same slack; `max_ulp` is
reported over the elements with |ref| >= 1% of max |ref| (a correct kernel: about 0.5). Each case
records its `layout`.

Benchmark: N = 128, K = 3, C x H x W = 64x56x56, 256x56x56, 128x28x28, 512x28x28, 348x14x14,
1392x14x14, 448x7x7, 1792x7x7 and the FFN widths 512x56x56, 1024x28x28; f32 and f16; SiLU without
InputBias (the Mamba layer's conv) and GELU with it (the FFN's). Bytes = X read + Y written at T's size
(W, B, InputBias left out), the same in both layouts. Times per launch from CUDA events around a CUDA
graph of many launches (warm-up replay excluded), two ways: `warm` (the same buffers every launch:
small shapes stay in L2) and `cold` (cycling through enough buffer sets, > 200 MB, that inputs come
from device memory). Per case: `ours` (NCHW) and `ours_nhwc` (channels_last = 1), and the baselines
`torch` (PyTorch's F.conv2d(groups=C, bias=B) followed by F.silu / F.gelu, GELU case: X + InputBias
first, weights in T, cudnn.benchmark on) and `torch_cl` (the same on channels_last tensors); `check`
and `check_nhwc` judge one launch of each layout. --layouts picks the layouts timed.
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
                          record_checks, time_graph)

ACTIVATIONS = {"none": 0, "silu": 1, "gelu": 2}
SOURCE = os.path.join(ROOT, "plugins", "cuda", "depthwise_conv.cu")
U = 2.0 ** -24
ACT_SLOPE = 1.13  # max |d act / dv| over SiLU (1.0998) and GELU (1.1289)
TINY_SHAPES = ((64, 56), (256, 56), (128, 28), (512, 28), (348, 14), (1392, 14), (448, 7), (1792, 7))
# FFN hidden widths at the first two stages as the channels-last graph feeds them (benchmark only).
FFN_SHAPES = ((512, 56), (1024, 28))


def build_lib(nvcc, flags, out_dir):
    return kernel_check.build_lib(nvcc, flags, out_dir, SOURCE, "libgm_dwconv.so")


def load_lib(path):
    lib = ctypes.CDLL(path)
    f = lib.gm_depthwise_conv_cuda
    f.restype = ctypes.c_int
    f.argtypes = ([ctypes.c_int] + [ctypes.c_void_p] * 5 + [ctypes.c_int64] * 5
                  + [ctypes.c_int, ctypes.c_int, ctypes.c_void_p])
    return f


def call(fn, code, x, w, b, ib, y, n, c, h, wd, k, act, channels_last=0, stream=None):
    if stream is None:
        stream = torch.cuda.current_stream().cuda_stream
    return fn(code, ptr(x), ptr(w), ptr(b), ptr(ib), ptr(y), n, c, h, wd, k, act, channels_last,
              ctypes.c_void_p(stream))


def launch(fn, dtype, t, act, y=None, cl=False):
    """Y of the case `t`: NCHW from t["x"], or (cl) NHWC from t["x_cl"] (the same values, [N, H, W, C])."""
    if cl:
        x = t["x_cl"]
        n, h, wd, c = x.shape
    else:
        x = t["x"]
        n, c, h, wd = x.shape
    k = t["w"].shape[-1]
    if y is None:
        y = torch.empty_like(x)
    rc = call(fn, DTYPES[dtype][0], x, t["w"], t["b"], t.get("ib"), y, n, c, h, wd, k, ACTIVATIONS[act], int(cl))
    assert rc == 0, f"kernel launch failed: cudaError {rc}"
    return y


def to_cl(x, misalign=0):
    """NCHW x as a contiguous NHWC tensor [N, H, W, C] (starting `misalign` elements into its allocation)."""
    xc = x.permute(0, 2, 3, 1).contiguous()
    return offset_view(xc, misalign) if misalign else xc


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


def run_case(fn, gen, dtype, n, c, h, w, k, act, with_ib, misalign=0, misalign_y=0, extra=None, cl=False,
             misalign_w=0):
    """One case against the reference; cl: the same case in channels-last layout (X and Y [N, H, W, C],
    Y compared after permuting back; misalign_x/y then apply to the NHWC tensors). misalign_w: W's data
    starts that many floats into its allocation (the NHWC kernel's scalar weight loads)."""
    t = random_case(gen, n, c, h, w, k, dtype, with_ib, 0 if cl else misalign)
    if misalign_w:
        t["w"] = offset_view(t["w"], misalign_w)
    if cl:
        t["x_cl"] = to_cl(t["x"], misalign)
    xo = t["x_cl"] if cl else t["x"]
    y = None
    if misalign_y:
        y = offset_view(torch.zeros_like(xo), misalign_y)
    y = launch(fn, dtype, t, act, y, cl)
    if cl:
        y = y.permute(0, 3, 1, 2)
    r = judge(y, reference(t, act), dtype)
    r.update({"dtype": dtype, "shape": [n, c, h, w], "k": k, "activation": act, "input_bias": with_ib,
              "layout": "nhwc" if cl else "nchw"})
    if misalign or misalign_y or misalign_w:
        r.update({"misalign_x": misalign, "misalign_y": misalign_y})
    if misalign_w:
        r["misalign_w"] = misalign_w
    if extra:
        r.update(extra)
    return r


def correctness(fn, quick, gen):
    """Every case in both layouts (NCHW, then the same case channels-last), then the NHWC-specific ones."""
    cases = []
    small = [(1, 1), (1, 7), (7, 1), (3, 5), (13, 17), (56, 56)]
    acts = list(ACTIVATIONS)
    layouts = (False, True)
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
                            for cl in layouts:
                                cases.append(run_case(fn, gen, dtype, n, c, h, w, k, act, with_ib, cl=cl))
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
                for cl in layouts:
                    cases.append(run_case(fn, gen, dtype, n, c, h, w, k, act, (h + k) % 2 == 0, cl=cl))
    # Narrower loads and stores: X and/or Y off by 1, 2 or 4 elements.
    for dtype in DTYPES:
        for h, w in ((56, 56), (28, 28), (14, 14)):
            for mx, my in ((1, 0), (2, 0), (4, 0), (0, 1), (0, 2), (1, 3)):
                for cl in layouts:
                    cases.append(run_case(fn, gen, dtype, 2, 3, h, w, 3, "silu", True, mx, my, cl=cl))
    cases += nhwc_cases(fn, quick, gen)
    return cases


def nhwc_cases(fn, quick, gen):
    """Channels-last only: channel counts that pick each vector width (C = 1, 3, 87: one channel a
    thread; 106: two; 8, 512: the widest), with every dtype, K, activation (rotating), InputBias
    (alternating), H x W and N; misaligned X / Y (narrower vectors) and W (scalar weight loads) on
    C = 8, 106, 512; and tiny's channel counts at batch 3. --quick: a third of the first group (56x56
    only with C <= 8), three of the misalignments, not the last group."""
    cases = []
    acts = list(ACTIVATIONS)
    chans = (1, 3, 8, 87, 106, 512)
    shapes = ((1, 1), (1, 7), (7, 1), (3, 5), (56, 56))
    i = 0
    for dtype in DTYPES:
        for k in (1, 3, 5, 7):
            for c in chans:
                for h, w in shapes:
                    i += 1
                    if quick and (i % 3 != 0 or (h, w) == (56, 56) and c > 8):
                        continue
                    n = 1 + 2 * (i % 2)  # 1 or 3
                    if (h, w) == (56, 56) and c == 512:
                        n = 1
                    cases.append(run_case(fn, gen, dtype, n, c, h, w, k, acts[i % 3], i % 4 < 2, cl=True))
    misaligned = ((1, 0, 0), (2, 0, 0), (4, 0, 0), (0, 1, 0), (0, 2, 0), (1, 3, 0), (0, 0, 1), (0, 0, 2))
    for dtype in DTYPES:
        for c, h, w in ((512, 14, 14), (106, 28, 28), (8, 7, 7)):
            for mx, my, mw in misaligned[::3] if quick else misaligned:
                act = acts[(c + mx + my + mw) % 3]
                cases.append(run_case(fn, gen, dtype, 2, c, h, w, 3, act, (mx + mw) % 2 == 0, mx, my, cl=True,
                                      misalign_w=mw))
    if not quick:
        for dtype in DTYPES:
            for c, hw in TINY_SHAPES + ((1024, 28),):
                act, with_ib = ("gelu", True) if c in (256, 512, 1024, 1392, 1792) else ("silu", False)
                cases.append(run_case(fn, gen, dtype, 3, c, hw, hw, 3, act, with_ib, cl=True))
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
        ("channels_last 2", (0, x, w, b, None, y, 1, 2, 3, 3, 3, 0, 2), CUDA_ERROR_INVALID_VALUE),
        ("channels_last -1", (0, x, w, b, None, y, 1, 2, 3, 3, 3, 0, -1), CUDA_ERROR_INVALID_VALUE),
        ("channels_last 2, n 0", (0, None, None, None, None, None, 0, 2, 3, 3, 3, 0, 2), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: k 9", (0, x, w, b, None, y, 1, 2, 3, 3, 9, 0, 1), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: null X", (0, None, w, b, None, y, 1, 2, 3, 3, 3, 0, 1), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: null W", (0, x, None, b, None, y, 1, 2, 3, 3, 3, 0, 1), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: W > 2^30", (0, x, w, b, None, y, 1, 1, 1, big, 3, 0, 1), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: C > 2^30", (0, x, w, b, None, y, 1, big, 1, 1, 3, 0, 1), CUDA_ERROR_INVALID_VALUE),
        ("NHWC: N*C*H*W > 2^63", (0, x, w, b, None, y, 1 << 40, 1 << 20, 1 << 20, 1 << 20, 3, 0, 1),
         CUDA_ERROR_INVALID_VALUE),
        ("NHWC: w 0, null pointers", (2, None, None, None, None, None, 1, 2, 3, 0, 3, 0, 1), 0),
        ("NHWC: no InputBias", (1, x, w, b, None, y, 1, 2, 3, 3, 3, 2, 1), 0),
    ]
    out = []
    for name, args, expected in checks:
        rc = call(fn, *args)
        out.append({"check": name, "rc": rc, "expected": expected, "ok": rc == expected})
    torch.cuda.synchronize()
    return out


def huge_case(fn, gen, cl=False):
    """One node of more than 2^32 elements (f16, C = 64, 56x56, K = 3, GELU, InputBias): the planes
    around the 2^31 and 2^32 element offsets, and the first and last planes, against the reference.
    cl: the same node channels-last ([N, 56, 56, 64]); checked on the whole images around those
    offsets."""
    c, h, w, k = 64, 56, 56, 3
    plane = h * w
    n = -(-((1 << 32) + (1 << 20)) // (c * plane))
    shape = (n, h, w, c) if cl else (n, c, h, w)
    try:
        x = torch.randn(*shape, generator=gen, device="cuda", dtype=torch.float16)
        y = torch.empty_like(x)
    except torch.cuda.OutOfMemoryError as e:
        return {"skipped": f"out of GPU memory: {e}", "ok": True, "layout": "nhwc" if cl else "nchw"}
    wt = torch.randn(c, 1, k, k, generator=gen, device="cuda") / k
    b = torch.randn(c, generator=gen, device="cuda") * 0.5
    ib = torch.randn(c, generator=gen, device="cuda")
    rc = call(fn, 1, x, wt, b, ib, y, n, c, h, w, k, 2, int(cl))
    torch.cuda.synchronize()
    planes = n * c
    result = {"shape": [n, c, h, w], "layout": "nhwc" if cl else "nchw", "elements": n * c * plane, "rc": rc,
              "ok": rc == 0, "ranges": []}
    if cl:
        image = c * plane
        for element in (0, 1 << 31, 1 << 32, n * image - 1):
            lo = max(0, element // image - 1)
            hi = min(n, element // image + 2)
            t = {"x": x[lo:hi].permute(0, 3, 1, 2), "w": wt, "b": b, "ib": ib}
            r = judge(y[lo:hi].permute(0, 3, 1, 2), reference(t, "gelu"), "f16")
            r["images"] = [lo, hi]
            result["ranges"].append(r)
            result["ok"] = result["ok"] and r["ok"]
        del x, y
        torch.cuda.empty_cache()
        return result
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


def bench(fn, dtype, n, c, hw, act, with_ib, gen, k=3, layouts=("nchw", "nhwc")):
    """Times per launch of our kernel and PyTorch's in each layout: `ours`/`torch` NCHW (keys as before),
    `ours_nhwc` (channels_last = 1) and `torch_cl` (PyTorch on channels_last tensors). Same bytes."""
    tdt = DTYPES[dtype][1]
    el = torch.tensor([], dtype=tdt).element_size()
    nbytes = el * n * c * hw * hw * 2
    sets = max(1, min(16, -(-200_000_000 // nbytes)))
    base = random_case(gen, n, c, hw, hw, k, dtype, with_ib)
    pool = [base] + [{"x": base["x"].clone(), **{key: v for key, v in base.items() if key != "x"}}
                     for _ in range(sets - 1)]
    w_t = base["w"].to(tdt)  # torch's conv takes the weights in the input's type
    b_t = base["b"].to(tdt)
    ib_t = base["ib"].to(tdt).view(1, c, 1, 1) if with_ib else None
    act_fn = F.silu if act == "silu" else F.gelu if act == "gelu" else (lambda v: v)

    def torch_step(key, weight):
        def step(i):
            x = pool[i][key]
            if key == "x_cl":
                x = x.permute(0, 3, 1, 2)  # NCHW-shaped view of the NHWC tensor: channels_last memory format
            if ib_t is not None:
                x = x + ib_t
            return act_fn(F.conv2d(x, weight, b_t, padding=k // 2, groups=c))
        return step

    steps = []
    if "nchw" in layouts:
        ys = [torch.empty_like(base["x"]) for _ in range(sets)]
        steps += [("ours", lambda i: launch(fn, dtype, pool[i], act, ys[i])), ("torch", torch_step("x", w_t))]
    if "nhwc" in layouts:
        for t in pool:
            t["x_cl"] = to_cl(t["x"])
        ys_cl = [torch.empty_like(base["x_cl"]) for _ in range(sets)]
        w_cl = w_t.contiguous(memory_format=torch.channels_last)
        steps += [("ours_nhwc", lambda i: launch(fn, dtype, pool[i], act, ys_cl[i], cl=True)),
                  ("torch_cl", torch_step("x_cl", w_cl))]
    out = {"dtype": dtype, "shape": [n, c, hw, hw], "k": k, "activation": act, "input_bias": with_ib,
           "bytes": nbytes, "cold_sets": sets}
    for name, step in steps:
        for mode, m in (("warm", 1), ("cold", sets)):
            try:
                ms = time_graph(step, m)
                out[f"{name}_{mode}_us"] = ms * 1e3
                out[f"{name}_{mode}_tb_per_s"] = nbytes / (ms * 1e-3) / 1e12
            except Exception as e:  # graph capture unavailable: say so, keep the other numbers
                out[f"{name}_{mode}_error"] = repr(e)
    # The benchmark's own launches are checked too (once, on the first set): `check` NCHW, `check_nhwc`.
    t = pool[0]
    ref = reference(t, act)
    if "nchw" in layouts:
        out["check"] = judge(launch(fn, dtype, t, act), ref, dtype)
    if "nhwc" in layouts:
        out["check_nhwc"] = judge(launch(fn, dtype, t, act, cl=True).permute(0, 3, 1, 2), ref, dtype)
    del pool, steps
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
    ap.add_argument("--no-huge", action="store_true", help="skip the > 2^32-element cases")
    ap.add_argument("--layouts", default="nchw,nhwc",
                    help="benchmark layouts, comma-separated: nchw (as before), nhwc (channels_last); default both")
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
        ok &= record_checks(report, argument_checks(fn), correctness(fn, args.quick, gen))
        if not args.quick and not args.no_huge:
            # `huge`: NCHW (as before); `huge_nhwc`: the same node channels-last.
            for key, cl in (("huge", False), ("huge_nhwc", True)):
                report[key] = huge_case(fn, gen, cl)
                h = report[key]
                print(f"{key}:", h.get("skipped") or f"{h['elements']} elements, rc {h['rc']}, "
                      f"max abs {max(r['max_abs'] for r in h['ranges']):.3g}, {'ok' if h['ok'] else 'FAIL'}",
                      flush=True)
                ok &= h["ok"]
    if not args.quick:
        report["bench"] = []
        layouts = tuple(v.strip() for v in args.layouts.split(",") if v.strip())
        for dtype in ("f32", "f16"):
            for c, hw in TINY_SHAPES + FFN_SHAPES:
                for act, with_ib in (("silu", False), ("gelu", True)):
                    r = bench(fn, dtype, 128, c, hw, act, with_ib, gen, layouts=layouts)
                    report["bench"].append(r)
                    ok &= all(r[key]["ok"] for key in ("check", "check_nhwc") if key in r)

                    def fmt(name):
                        parts = []
                        for mode in ("warm", "cold"):
                            if f"{name}_{mode}_us" in r:
                                parts.append(f"{mode} {r[f'{name}_{mode}_us']:.1f} us "
                                             f"{r[f'{name}_{mode}_tb_per_s']:.2f} TB/s")
                        return f"{name}: " + ", ".join(parts)
                    print(f"bench {dtype} 128x{c}x{hw}x{hw} K3 {act}{'+ib' if with_ib else ''}: "
                          + "; ".join(fmt(n) for n in ("ours", "torch", "ours_nhwc", "torch_cl")
                                      if f"{n}_warm_us" in r or f"{n}_warm_error" in r), flush=True)
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
