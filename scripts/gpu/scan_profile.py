#!/usr/bin/env python3
"""Launches the CUDA SelectiveScan kernel once per shape (G = 4, directions 0..3), for a profiler
(ncu) to capture: `python3 scripts/gpu/scan_profile.py --lib libgm_scan.so f16:128x448x7x7 f32:128x64x56x56`."""
import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import scan_check  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lib", required=True)
    ap.add_argument("shapes", nargs="+", metavar="DTYPE:NxCxHxW")
    args = ap.parse_args()
    fn = scan_check.load_lib(args.lib)
    rng = np.random.default_rng(0)
    for spec in args.shapes:
        dtype, dims = spec.split(":")
        n, c, h, w = (int(v) for v in dims.split("x"))
        tdt = scan_check.DTYPES[dtype][1]
        case = scan_check.random_case(rng, n, c, 4, h, w)
        dev = {k: torch.from_numpy(v).cuda().to(torch.float32 if k in ("A", "D", "delta_bias") else tdt)
               for k, v in case.items()}
        scan_check.launch(fn, dtype, dev, [0, 1, 2, 3])
        torch.cuda.synchronize()
        print("launched", spec, flush=True)


if __name__ == "__main__":
    main()
