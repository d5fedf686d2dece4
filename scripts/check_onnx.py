#!/usr/bin/env python3
"""Validates exported models with the ONNX reference checker (full_check=True: schema, types and
shape inference, including the body of a model-local function at each call site) and prints a
one-line summary per file. Exit code 1 if any model fails."""
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
