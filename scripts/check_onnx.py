#!/usr/bin/env python3
"""Validates exported models with the ONNX reference checker (full_check=True: schema, types and
shape inference, including the body of a model-local function at each call site) and prints a
one-line summary per file. Also checks that the portable scan's cumulative sums run in float32 in
every export, FP16 ones included (the scan state is float32 whatever the model's precision).
Exit code 1 if any model fails."""
import sys

import onnx


def main(paths):
    failed = 0
    for path in paths:
        model = onnx.load(path)
        try:
            onnx.checker.check_model(model, full_check=True)
        except Exception as e:  # the checker raises several exception types
            print(f"FAIL {path}: {e}")
            failed += 1
            continue
        inferred = onnx.shape_inference.infer_shapes(model)
        types = {v.name: v.type.tensor_type.elem_type
                 for v in list(inferred.graph.value_info) + list(inferred.graph.input)}
        low = [n.name for n in inferred.graph.node
               if n.op_type == "CumSum" and types.get(n.input[0]) != onnx.TensorProto.FLOAT]
        if low:
            print(f"FAIL {path}: {len(low)} CumSum node(s) not in float32 (scan state must be f32): {low[:3]}")
            failed += 1
            continue
        domains = {o.domain or "ai.onnx": o.version for o in model.opset_import}
        custom = sum(1 for n in model.graph.node if n.domain)
        functions = "".join(
            f", function {f.domain}::{f.name} ({len(f.node)} nodes)" for f in model.functions
        )
        print(
            f"ok   {path}: ir_version {model.ir_version}, opsets {domains}, "
            f"{len(model.graph.node)} nodes ({custom} custom), "
            f"{len(model.graph.initializer)} initializers{functions}"
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
