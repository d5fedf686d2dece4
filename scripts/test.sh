#!/usr/bin/env bash
# The test command (README, CI): installs what the checks need, then runs
#   1. the Rust tests (unit, loader errors, scan fixtures, end-to-end parity with the official model),
#   2. the ONNX reference checker (full_check) on exported models: tiny at 224 and both fixtures (custom
#      op, portable, function; FP16 function),
#   3. the custom-op library libgroupmamba_ops.so in Python onnxruntime: both fixtures' logits (newest
#      onnxruntime from requirements-test.txt), and loading in the oldest supported wheel (1.19.2);
#      the portable exports in ONNX Runtime and OpenVINO; the function exports (--scan function) in
#      ONNX Runtime with our library (op used) and without (function inlined), newest and 1.19.2, and
#      in OpenVINO (reported; after onnx.inliner checked).
#   4. gm-run classify: its image preprocessing against PIL + torchvision (scripts/preprocess_parity.py).
# ONNX Runtime is required (GM_REQUIRE_ORT=1): the Rust ORT tests fail instead of skipping without it.
# Needs ../shared/parity beside the checkout (the official-model fixtures).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -r scripts/requirements-test.txt

mkdir -p target
# One build, once: every artifact is built for the whole workspace (one feature resolution, so the test
# build below reuses it instead of compiling a second variant), without incremental caches (CI builds
# once; they only cost disk).
export CARGO_INCREMENTAL=0
# The custom-op library must exist before the tests: a Rust test loads it with with_operator_library.
cargo build -q --workspace --lib --bins --examples
# --nocapture: the parity tests print the max abs error of every compared tensor.
export GM_REQUIRE_ORT=1
cargo test --workspace --no-fail-fast -- --nocapture 2>&1 | tee target/test-output.log

out=target/onnx-check
mkdir -p "$out"
target/debug/gm-export --variant tiny --out "$out/groupmamba_tiny_random.onnx"
for case in custom-64x64 custom-72x100; do
  dir=../shared/parity/$case
  hw=$(python3 -c "import numpy as np; s=np.load('$dir/input.npy').shape; print(s[2], s[3])")
  set -- $hw
  target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth \
    --height "$1" --width "$2" --out "$out/$case.onnx"
  target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth \
    --height "$1" --width "$2" --scan portable --out "$out/$case-portable.onnx"
  target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth \
    --height "$1" --width "$2" --scan function --out "$out/$case-function.onnx"
done
dir=../shared/parity/custom-64x64
target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth --height 64 --width 64 \
  --scan function --precision fp16 --out "$out/custom-64x64-function-fp16.onnx"
target/debug/gm-export --config "$dir/config.json" --checkpoint "$dir"/*.pth --height 64 --width 64 \
  --scan portable --precision fp16 --out "$out/custom-64x64-portable-fp16.onnx"
python3 scripts/check_onnx.py "$out"/*.onnx

# The custom-op library through Python onnxruntime.
lib=target/debug/libgroupmamba_ops.so
models=(--model custom-64x64="$out/custom-64x64.onnx" --model custom-72x100="$out/custom-72x100.onnx")
python3 scripts/ort_python_parity.py --library "$lib" "${models[@]}"
# The oldest wheel the library supports, in its own folder (its own numpy too, as pip resolves it).
old=target/ort-1.19.2
if [ ! -d "$old/onnxruntime" ]; then
  python3 -m pip install -q --disable-pip-version-check --target "$old" onnxruntime==1.19.2
fi
PYTHONPATH="$old" python3 scripts/ort_python_parity.py --library "$lib" "${models[@]}"
# The portable exports in runtimes with no custom op loaded: ONNX Runtime CPU and OpenVINO.
python3 scripts/portable_parity.py --fixtures ../shared/parity \
  --model custom-64x64="$out/custom-64x64-portable.onnx" \
  --model custom-72x100="$out/custom-72x100-portable.onnx" \
  --custom-op-model "$out/custom-64x64.onnx"
# The function exports: ONNX Runtime with our library (must run the op) and without it (must inline the
# function), newest and oldest wheel; OpenVINO as it is (reported) and after onnx.inliner.
function_models=(--model custom-64x64="$out/custom-64x64-function.onnx"
  --model custom-72x100="$out/custom-72x100-function.onnx")
python3 scripts/function_parity.py --fixtures ../shared/parity --library "$lib" "${function_models[@]}" \
  --fp16-model custom-64x64="$out/custom-64x64-function-fp16.onnx"
PYTHONPATH="$old" python3 scripts/function_parity.py --fixtures ../shared/parity --library "$lib" \
  "${function_models[@]}"

# gm-run classify's image preprocessing against PIL + torchvision's evaluation transform (max abs
# difference per image, tolerance 1e-2), and its top-1 on the fixture checkpoints' models. Pillow is
# pinned: 13.0 changed the order of its resampling passes for some sizes, which we follow.
python3 -m pip install -q --disable-pip-version-check pillow==13.0.0
python3 scripts/preprocess_parity.py --model "$out/custom-64x64.onnx" --model "$out/custom-72x100.onnx"
# The CUDA kernel compiles for sm_90 and sm_87 (no GPU needed; skipped if nvcc cannot be installed).
scripts/check_cuda_build.sh
echo "all tests passed"
