#!/usr/bin/env python3
"""Portable exports (`gm-export --scan portable`: standard ONNX operators only) in runtimes that load
no custom operator: ONNX Runtime (CPU, no library registered) and OpenVINO (CPU). Logits must match
the official model's within 1e-4 max abs on each shared fixture.

  python3 scripts/portable_parity.py --fixtures ../shared/parity \
      --model custom-64x64=out/custom-64x64-portable.onnx [--custom-op-model out/custom-64x64.onnx]

With --custom-op-model it also shows what ONNX Runtime does with a custom-op export when our library
is not registered (it must refuse it at load time, naming the op).
"""
import argparse
import os
import sys

import numpy as np

TOLERANCE = 1e-4


def run_onnxruntime(path, x):
    import onnxruntime as ort
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"images": x})[0], f"onnxruntime {ort.__version__} CPU"


def run_openvino(path, x):
    import openvino as ov
    # OpenVINO's CPU plugin may compute in bf16/f16 by default on some processors: ask for f32.
    compiled = ov.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({"images": x})
    return np.asarray(out[compiled.output("logits")]), f"openvino {ov.__version__} CPU"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--model", action="append", required=True, help="CASE=PATH of a portable export")
    ap.add_argument("--custom-op-model", help="a custom-op export, to show ORT refusing it without our library")
    args = ap.parse_args()
    failed = 0
    for spec in args.model:
        case, path = spec.split("=", 1)
        x = np.load(os.path.join(args.fixtures, case, "input.npy"))
        ref = np.load(os.path.join(args.fixtures, case, "logits.npy"))
        for runner in (run_onnxruntime, run_openvino):
            logits, name = runner(path, x)
            err = float(np.abs(logits - ref).max())
            ok = err <= TOLERANCE
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} {case} portable, {name}: logits max abs err {err:.3e} (tol {TOLERANCE:.0e})")
    if args.custom_op_model:
        import onnxruntime as ort
        try:
            ort.InferenceSession(args.custom_op_model, providers=["CPUExecutionProvider"])
            print("FAIL onnxruntime loaded a custom-op export without our library")
            failed += 1
        except Exception as e:  # onnxruntime raises its own exception types
            first = str(e).splitlines()[0]
            print(f"ok   without our library, onnxruntime refuses the custom-op export: {first[:160]}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
