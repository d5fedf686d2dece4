#!/usr/bin/env python3
"""Throughput and latency of the *official* GroupMamba PyTorch model on a GPU, for comparison with
our exported model in the same run. Imports the model from a user-supplied checkout of
github.com/Amshaker/GroupMamba (nothing of it is copied into this repository).

  python3 scripts/gpu/bench_official.py --official /path/to/GroupMamba --variant tiny --out official.json

The official scan is the CUDA extension `selective_scan_cuda_core` built from the checkout's
kernels/selective_scan (VMamba's kernel). It is compiled here with torch's cpp_extension; CUDA 13's CUB
lacks cub::LaneId and cub::CTA_SYNC, which that code uses, so a small compatibility header is
force-included. With --scan pure the CUDA extension is replaced by an exact pure-PyTorch sequential
scan (slow; for machines where the extension cannot be built).
Timing: CUDA events, warm-up excluded; FP32 and AMP (fp16 autocast, as the official eval.py runs).
"""
import argparse
import json
import os
import sys
import tempfile
import time

import torch

COMPAT_HEADER = r"""
#pragma once
// CUDA 13's CUB dropped these two helpers; the official kernel's backward pass still calls them.
#include <cub/cub.cuh>
namespace cub {
__device__ __forceinline__ unsigned int LaneId() {
  unsigned int id;
  asm volatile("mov.u32 %0, %%laneid;" : "=r"(id));
  return id;
}
__device__ __forceinline__ void CTA_SYNC() { __syncthreads(); }
}  // namespace cub
"""


def build_official_scan(checkout, build_dir):
    from torch.utils.cpp_extension import load
    src = os.path.join(checkout, "kernels", "selective_scan", "csrc", "selective_scan")
    compat = os.path.join(build_dir, "cub_compat.h")
    # Rewrite only when it differs: a fresh mtime would make ninja rebuild a finished --build-dir.
    if not os.path.exists(compat) or open(compat).read() != COMPAT_HEADER:
        with open(compat, "w") as f:
            f.write(COMPAT_HEADER)
    major, minor = torch.cuda.get_device_capability()
    return load(
        name="selective_scan_cuda_core",
        sources=[os.path.join(src, "cus", n) for n in
                 ("selective_scan.cpp", "selective_scan_core_fwd.cu", "selective_scan_core_bwd.cu")],
        extra_include_paths=[src],
        extra_cflags=["-O3", "-std=c++17"],
        extra_cuda_cflags=["-O3", "-std=c++17", "-include", compat,
                           "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                           "-U__CUDA_NO_BFLOAT16_OPERATORS__", "-U__CUDA_NO_BFLOAT16_CONVERSIONS__",
                           "-U__CUDA_NO_BFLOAT162_OPERATORS__", "-U__CUDA_NO_BFLOAT162_CONVERSIONS__",
                           "--expt-relaxed-constexpr", "--expt-extended-lambda", "--use_fast_math",
                           f"-gencode=arch=compute_{major}{minor},code=sm_{major}{minor}", "--threads", "8"],
        build_directory=build_dir, verbose=False)


class PureScan:
    """Exact sequential scan with the official kernel's call signature (forward only)."""

    @staticmethod
    def fwd(u, delta, A, B, C, D, delta_bias, delta_softplus, nrows):
        dt = delta.float() + delta_bias.float()[None, :, None]
        dt = torch.where(dt > 20, dt, torch.log1p(torch.exp(dt))) if delta_softplus else dt
        a = torch.exp(dt * A.float()[None, :, :1])
        b = dt * B.float()[:, 0, :1] * u.float()
        h = torch.zeros_like(u[..., 0], dtype=torch.float32)
        ys = []
        for t in range(u.shape[-1]):
            h = a[..., t] * h + b[..., t]
            ys.append(h)
        y = torch.stack(ys, -1) * C.float()[:, 0, :1] + D.float()[None, :, None] * u.float()
        return y.to(u.dtype), None


def load_official(checkout, variant, scan, build_dir):
    models = os.path.join(checkout, "classification", "models")
    if scan == "cuda":
        sys.modules["selective_scan_cuda_core"] = build_official_scan(checkout, build_dir)
    else:
        sys.modules["selective_scan_cuda_core"] = PureScan
    sys.path.insert(0, models)
    import groupmamba  # noqa: E402  (the official module)
    return getattr(groupmamba, f"groupmamba_{variant}")()


def timed(fn, iters, warmup):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(iters):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        fn()
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e))
    times.sort()
    return times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--official", required=True, help="checkout of github.com/Amshaker/GroupMamba")
    ap.add_argument("--variant", default="tiny", choices=["tiny", "small", "base"])
    ap.add_argument("--scan", default="cuda", choices=["cuda", "pure"])
    ap.add_argument("--batches", default="1,8,32,128")
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--out")
    ap.add_argument("--build-dir", help="where the CUDA scan is built (kept: a later run with the same folder reuses it)")
    ap.add_argument("--build-only", action="store_true", help="build the CUDA scan into --build-dir and exit")
    args = ap.parse_args()
    if args.build_dir:
        os.makedirs(args.build_dir, exist_ok=True)
    build_dir = args.build_dir or tempfile.mkdtemp(prefix="gm-official-")
    if args.build_only:
        t0 = time.time()
        build_official_scan(args.official, build_dir)
        print(f"official scan built in {time.time() - t0:.0f} s in {build_dir}", flush=True)
        return
    t0 = time.time()
    model = load_official(args.official, args.variant, args.scan, build_dir).cuda().eval()
    build_s = time.time() - t0
    report = {"model": f"official groupmamba_{args.variant}", "scan": args.scan, "device": torch.cuda.get_device_name(),
              "torch": torch.__version__, "build_s": build_s, "results": []}
    for amp in (False, True):
        for b in [int(x) for x in args.batches.split(",")]:
            x = torch.randn(b, 3, 224, 224, device="cuda")

            def run():
                with torch.no_grad(), torch.autocast("cuda", dtype=torch.float16, enabled=amp):
                    model(x)
            times = timed(run, args.iters if b > 1 else 3 * args.iters, 5)
            med = times[len(times) // 2]
            r = {"precision": "amp-fp16" if amp else "fp32", "batch": b, "median_ms": med,
                 "p99_ms": times[min(len(times) - 1, int(0.99 * len(times)))], "img_per_s": b / med * 1e3}
            report["results"].append(r)
            print(f"official {args.variant} {r['precision']} batch {b}: {med:.2f} ms, {r['img_per_s']:.0f} img/s", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
