#!/usr/bin/env python3
"""Function exports (`gm-export --scan function`: the SelectiveScan nodes of the custom-op export plus
the op as a model-local ONNX function) in runtimes with and without our op. Logits must match the
official model's within 1e-4 max abs on each shared fixture, and each runtime must have taken the path
it claims:

  * ONNX Runtime CPU WITHOUT our library: must inline the function. Proof: the graph ONNX Runtime
    saves after basic optimisation (SessionOptions.optimized_model_filepath) has no SelectiveScan node
    left and the body's GatherElements in its place (three per call).
  * ONNX Runtime CPU WITH libgroupmamba_ops.so registered: must run our op. Proof: every SelectiveScan
    node is still in the saved graph, and no GatherElements.
  * OpenVINO CPU, as it is: reported (its ONNX frontend may not inline model-local functions: then the
    model does not load, which is printed, not counted as a failure).
  * OpenVINO CPU after onnx.inliner.inline_local_functions (the workaround for runtimes that do not
    inline): must match.

    python3 scripts/function_parity.py --fixtures ../shared/parity \
        --library target/release/libgroupmamba_ops.so \
        --model custom-64x64=out/custom-64x64-function.onnx [--fp16-model custom-64x64=out/f16.onnx]

--fp16-model: an FP16 function export, run in ONNX Runtime without our library (the body computes in
float32 between casts); its logits must keep cosine >= 0.9999 with the official FP32 logits and the
same top-1. Exit status 1 if anything fails.
"""
import argparse
import collections
import os
import sys
import tempfile

import numpy as np

TOLERANCE = 1e-4
FP16_MIN_COSINE = 0.9999


def ort_run(path, x, library, saved):
    """Runs `path` in ONNX Runtime CPU (our library registered if given); returns the logits and the
    op-type counts of the graph ONNX Runtime saved after basic optimisation."""
    import onnx
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    so.optimized_model_filepath = saved
    if library:
        so.register_custom_ops_library(library)
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    logits = session.run(["logits"], {"images": x})[0]
    counts = collections.Counter(n.op_type for n in onnx.load(saved).graph.node)
    return logits, counts


def openvino_run(path_or_model, x):
    import openvino as ov
    # OpenVINO's CPU plugin may compute in bf16/f16 by default on some processors: ask for f32.
    compiled = ov.Core().compile_model(path_or_model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    out = compiled({"images": x})
    return np.asarray(out[compiled.output("logits")])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixtures", required=True)
    ap.add_argument("--library", required=True, help="libgroupmamba_ops.so")
    ap.add_argument("--model", action="append", required=True, help="CASE=PATH of a function export (FP32)")
    ap.add_argument("--fp16-model", action="append", default=[], help="CASE=PATH of an FP16 function export")
    args = ap.parse_args()

    import onnx
    import onnx.inliner
    import onnxruntime as ort
    import openvino as ov

    library = os.path.abspath(args.library)
    if not os.path.isfile(library):
        print(f"error: {library} does not exist (build it with: cargo build --release -p gm-ort-library)")
        return 2
    print(f"onnxruntime {ort.__version__}, openvino {ov.__version__}, onnx {onnx.__version__}; library {library}")
    failed = 0
    scratch = tempfile.mkdtemp(prefix="gm-function-parity-")

    def report(ok, text):
        nonlocal failed
        failed += not ok
        print(f"{'ok  ' if ok else 'FAIL'} {text}")

    for spec in args.model:
        case, path = spec.split("=", 1)
        x = np.load(os.path.join(args.fixtures, case, "input.npy"))
        ref = np.load(os.path.join(args.fixtures, case, "logits.npy"))
        model = onnx.load(path)
        calls = sum(1 for n in model.graph.node if n.op_type == "SelectiveScan")
        functions = [f"{f.domain}::{f.name} ({len(f.node)} nodes)" for f in model.functions]
        print(f"{case}: {path}: {len(model.graph.node)} nodes, {calls} SelectiveScan, functions {functions}")

        for with_library in (False, True):
            saved = os.path.join(scratch, f"{case}-ort-{'op' if with_library else 'inlined'}.onnx")
            label = "with our library" if with_library else "without our library"
            logits, counts = ort_run(path, x, library if with_library else None, saved)
            err = float(np.abs(logits - ref).max())
            scans, gathers = counts["SelectiveScan"], counts["GatherElements"]
            if with_library:
                path_ok = scans == calls and gathers == 0
                took = "ran our op" if path_ok else "did NOT run our op"
            else:
                path_ok = scans == 0 and gathers == 3 * calls
                took = "inlined the function" if path_ok else "did NOT inline the function as expected"
            report(err <= TOLERANCE and path_ok,
                   f"{case} function export, onnxruntime {ort.__version__} CPU {label}: {took} (optimised graph: "
                   f"{sum(counts.values())} nodes, {scans} SelectiveScan, {gathers} GatherElements); "
                   f"logits max abs err {err:.3e} (tol {TOLERANCE:.0e})")

        try:
            logits = openvino_run(path, x)
        except Exception as e:  # OpenVINO raises RuntimeError subclasses with long reports
            unconverted = [line.strip() for line in str(e).splitlines() if "No conversion rule" in line]
            if unconverted and all("SelectiveScan" in line for line in unconverted):
                print(f"n/a  {case} function export, openvino {ov.__version__} CPU as it is: NOT SUPPORTED, its ONNX "
                      f"frontend does not inline model-local functions ({unconverted[0]})")
            else:
                report(False, f"{case} function export, openvino {ov.__version__} CPU as it is: "
                              f"{str(e).strip().splitlines()[-1]}")
        else:
            err = float(np.abs(logits - ref).max())
            report(err <= TOLERANCE, f"{case} function export, openvino {ov.__version__} CPU as it is: logits max "
                                     f"abs err {err:.3e} (tol {TOLERANCE:.0e})")

        inlined = onnx.inliner.inline_local_functions(model)
        inlined_path = os.path.join(scratch, f"{case}-onnx-inlined.onnx")
        onnx.save(inlined, inlined_path)
        logits = openvino_run(inlined_path, x)
        err = float(np.abs(logits - ref).max())
        left = sum(1 for n in inlined.graph.node if n.op_type == "SelectiveScan")
        report(err <= TOLERANCE and left == 0,
               f"{case} function export after onnx.inliner.inline_local_functions ({len(inlined.graph.node)} nodes, "
               f"{left} SelectiveScan), openvino {ov.__version__} CPU: logits max abs err {err:.3e} "
               f"(tol {TOLERANCE:.0e})")

    for spec in args.fp16_model:
        case, path = spec.split("=", 1)
        x = np.load(os.path.join(args.fixtures, case, "input.npy"))
        ref = np.load(os.path.join(args.fixtures, case, "logits.npy"))
        saved = os.path.join(scratch, f"{case}-fp16-ort-inlined.onnx")
        logits, counts = ort_run(path, x, None, saved)
        a, b = logits.astype(np.float64).ravel(), ref.astype(np.float64).ravel()
        cosine = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
        top1 = int(np.argmax(logits)) == int(np.argmax(ref))
        report(cosine >= FP16_MIN_COSINE and top1 and counts["SelectiveScan"] == 0,
               f"{case} FP16 function export, onnxruntime {ort.__version__} CPU without our library "
               f"({counts['SelectiveScan']} SelectiveScan left): cosine {cosine:.7f} (min {FP16_MIN_COSINE}), "
               f"max abs err {float(np.abs(logits - ref).max()):.2e}, top-1 {'agrees' if top1 else 'DIFFERS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
