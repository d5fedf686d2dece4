#!/usr/bin/env python3
"""How far mixed precision moves GroupMamba-Tiny's logits from FP32, ours against the official model's own
AMP, on the same random-weight model and the same random inputs (H100 or any CUDA GPU).

    python3 scripts/gpu/fp16_agreement.py --official /path/to/GroupMamba --gm-export bin/gm-export \
        --library bin/libgroupmamba_ops.so --n 1000 --out fp16-agreement.json

1. The official `groupmamba_tiny` with its own random initialisation (torch seed --seed), its CUDA scan built
   from the checkout as scripts/gpu/bench_official.py does; its state_dict saved as an official-format .pth.
2. That .pth exported by gm-export, FP32 and `--precision fp16`; both run in onnxruntime-gpu (CUDA EP,
   TF32 off) with our library.
3. --n inputs drawn from N(0, 1) (numpy seed --seed), batches of --batch: official FP32, official AMP (fp16
   autocast, as the official eval.py runs), ours FP32, ours FP16.

Reported per pair (reference first): top-1 agreement, cosine of the logits (min, mean), max abs difference,
and for each top-1 disagreement the reference's margin between its top two logits. Random weights give nearly
tied logits, so the count of flips says how often a margin falls below each path's error; the same count for
the official AMP is the yardstick.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import torch  # first: it loads the CUDA runtime onnxruntime's CUDA EP needs

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402
import bench_ort  # noqa: E402  (its Runner: library registered, CUDA EP with TF32 off, checked active)
from bench_official import load_official  # noqa: E402


def compare(reference, other):
    """Agreement of `other` with `reference`, both (N, classes) float64."""
    top_ref, top_other = reference.argmax(1), other.argmax(1)
    cos = (reference * other).sum(1) / (np.linalg.norm(reference, axis=1) * np.linalg.norm(other, axis=1))
    flips = np.nonzero(top_ref != top_other)[0]
    ordered = np.sort(reference, axis=1)
    margins = ordered[:, -1] - ordered[:, -2]
    return {
        "top1_agree": int((top_ref == top_other).sum()),
        "n": int(len(reference)),
        "cosine_min": float(cos.min()),
        "cosine_mean": float(cos.mean()),
        "max_abs": float(np.abs(reference - other).max()),
        "flip_margins": sorted(float(margins[i]) for i in flips),
        "reference_margin_median": float(np.median(margins)),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--official", required=True, help="checkout of github.com/Amshaker/GroupMamba")
    ap.add_argument("--gm-export", required=True)
    ap.add_argument("--library", required=True, help="libgroupmamba_ops.so built with --features cuda")
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=125)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--build-dir", default="/tmp/gm-official-build")
    ap.add_argument("--work", default="/tmp/gm-agreement")
    ap.add_argument("--fused-ops", action="store_true",
                    help="also export with --fused-ops (FP32 and FP16) and compare those the same way")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.build_dir, exist_ok=True)

    # FP32 means FP32: no TF32 in cuDNN convolutions (on by default in torch) nor in matmuls.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(args.seed)
    model = load_official(args.official, "tiny", "cuda", args.build_dir).cuda().eval()
    pth = os.path.join(args.work, "official-random.pth")
    torch.save(model.state_dict(), pth)
    onnx = {}
    for fused in (False, True) if args.fused_ops else (False,):
        for precision in ("fp32", "fp16"):
            name = f"{'fused_' if fused else ''}{precision}"
            onnx[name] = os.path.join(args.work, f"tiny-{name}.onnx")
            subprocess.run([args.gm_export, "--variant", "tiny", "--checkpoint", pth, "--precision", precision,
                            "--out", onnx[name]] + (["--fused-ops"] if fused else []), check=True)
    runner = bench_ort.Runner(argparse.Namespace(provider="cuda", library=args.library))
    ours = {p: runner.session(path) for p, path in onnx.items()}

    rng = np.random.default_rng(args.seed)
    logits = {k: [] for k in ["official_fp32", "official_amp"] + [f"ours_{p}" for p in onnx]}
    t0 = time.time()
    for start in range(0, args.n, args.batch):
        x = rng.standard_normal((min(args.batch, args.n - start), 3, 224, 224), dtype=np.float32)
        xt = torch.from_numpy(x).cuda()
        with torch.no_grad():
            logits["official_fp32"].append(model(xt).double().cpu().numpy())
            with torch.autocast("cuda", dtype=torch.float16):
                logits["official_amp"].append(model(xt).double().cpu().numpy())
        for p, s in ours.items():
            logits[f"ours_{p}"].append(s.run(["logits"], {"images": x})[0].astype(np.float64))
    logits = {k: np.concatenate(v) for k, v in logits.items()}
    pairs = [("official_fp32", "official_amp"), ("official_fp32", "ours_fp16"), ("ours_fp32", "ours_fp16"),
             ("official_fp32", "ours_fp32")]
    if args.fused_ops:
        pairs += [("official_fp32", "ours_fused_fp16"), ("ours_fused_fp32", "ours_fused_fp16"),
                  ("official_fp32", "ours_fused_fp32")]
    report = {
        "model": "official groupmamba_tiny, random init (torch seed %d), exported by gm-export" % args.seed,
        "inputs": f"{args.n} x N(0,1) 3x224x224, numpy seed {args.seed}",
        "device": torch.cuda.get_device_name(), "torch": torch.__version__, "onnxruntime": ort.__version__,
        "seconds": round(time.time() - t0, 1),
        "pairs": {f"{a}_vs_{b}": compare(logits[a], logits[b]) for a, b in pairs},
    }
    with open(args.out, "w") as f:
        json.dump(report, f, indent=1)
    for name, r in report["pairs"].items():
        print(f"{name:>34}: top-1 {r['top1_agree']}/{r['n']}, cosine min {r['cosine_min']:.7f}, "
              f"max abs {r['max_abs']:.2e}, flip margins {[f'{m:.1e}' for m in r['flip_margins']]}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
