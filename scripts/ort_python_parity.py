#!/usr/bin/env python3
"""Runs exported GroupMamba models in Python onnxruntime with the custom-op library and compares
the logits with the official model's (the shared parity fixtures).

    python3 scripts/ort_python_parity.py --library target/debug/libgroupmamba_ops.so \
        --model custom-64x64=target/ort-check/custom-64x64.onnx \
        --model custom-72x100=target/ort-check/custom-72x100.onnx

Each --model is CASE=PATH: PATH is loaded with `SessionOptions.register_custom_ops_library`, run on
<fixtures>/CASE/input.npy, and its first output compared with <fixtures>/CASE/logits.npy. Prints the
onnxruntime version and the max abs error of each case; exits 1 if any exceeds --tol (1e-4), 2 on a
usage or load error.
"""

import argparse
import os
import sys

import numpy as np


def main() -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--library", required=True, help="path to libgroupmamba_ops.so")
    parser.add_argument("--model", action="append", default=[], metavar="CASE=PATH", help="exported model of a fixture case")
    parser.add_argument("--fixtures", default=os.path.join(here, "..", "..", "shared", "parity"), help="parity fixtures root")
    parser.add_argument("--tol", type=float, default=1e-4, help="max abs error allowed on the logits")
    parser.add_argument("--load-only", action="store_true", help="only check that the library registers and the models load")
    args = parser.parse_args()

    import onnxruntime as ort

    library = os.path.abspath(args.library)
    print(f"onnxruntime {ort.__version__} from {os.path.dirname(ort.__file__)}")
    print(f"custom-op library {library}")
    if not os.path.isfile(library):
        print(f"error: {library} does not exist (build it with: cargo build -p gm-ort-library)", file=sys.stderr)
        return 2
    if not args.model:
        print("error: no --model CASE=PATH given", file=sys.stderr)
        return 2

    failed = []
    for item in args.model:
        case, sep, path = item.partition("=")
        if not sep:
            print(f"error: --model {item!r} is not CASE=PATH", file=sys.stderr)
            return 2
        options = ort.SessionOptions()
        options.register_custom_ops_library(library)
        try:
            session = ort.InferenceSession(path, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            print(f"error: {case}: cannot load {path} with the library: {e}", file=sys.stderr)
            return 2
        if args.load_only:
            print(f"{case}: loaded {path} (inputs {[i.name for i in session.get_inputs()]})")
            continue
        fixture = os.path.join(args.fixtures, case)
        images = np.load(os.path.join(fixture, "input.npy"))
        expected = np.load(os.path.join(fixture, "logits.npy"))
        name = session.get_inputs()[0].name
        logits = session.run(None, {name: images})[0]
        if logits.shape != expected.shape:
            print(f"{case}: logits shape {logits.shape}, expected {expected.shape}")
            failed.append(case)
            continue
        err = float(np.max(np.abs(logits.astype(np.float64) - expected.astype(np.float64))))
        ok = err <= args.tol
        print(f"{case}: logits max abs err {err:.3e} (tol {args.tol:.0e}) {'ok' if ok else 'FAIL'}")
        if not ok:
            failed.append(case)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
