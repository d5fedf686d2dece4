#!/usr/bin/env bash
# The test command (README, CI): installs what the checks need, then runs
#   1. the Rust tests (unit, loader errors, scan fixtures, end-to-end parity with the official model),
#   2. the ONNX reference checker (full_check) on exported models: tiny at 224 and both fixtures.
# Needs ../shared/parity beside the checkout (the official-model fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt

mkdir -p target
# --nocapture: the parity tests print the max abs error of every compared tensor.
cargo test --workspace --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.log

cargo build -q -p gm-converter --bin gm-export
out=target/onnx-check
mkdir -p "$out"
target/debug/gm-export --variant tiny --out "$out/groupmamba_tiny_random.onnx"
for case in custom-64x64 custom-72x100; do
  dir=../shared/parity/$case
  hw=$(python3 -c "import numpy as np; s=np.load('$dir/input.npy').shape; print(s[2], s[3])")
  set -- $hw
  target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth \
    --height "$1" --width "$2" --out "$out/$case.onnx"
done
python3 scripts/check_onnx.py "$out"/*.onnx
echo "all tests passed"
