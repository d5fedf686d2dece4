#!/usr/bin/env bash
# gm-validate with ONNX Runtime's CUDA EP, on the GPU machine (results: benchmarks/validate-h100/):
#   1. the custom-64x64 fixture's FP16 export on ort-cuda against the official FP32 tensors;
#   2. tiny (random weights) FP32 on ort-cuda against the same model on tract, seeded input, batch 2;
#   3. tiny FP16 on ort-cuda against tiny FP32 on tract (FP16 defaults: cosine-based).
#
# Staged beforehand in $G (default .gpu-stage/gmv; carried to the machine):
#   gm-validate.xz   stripped `cargo build -p gm-runtime --features cuda --bin gm-validate` (the scan's
#                    CUDA kernel in-process), xz-compressed to fit the transfer limit
#   gm-export.xz     stripped gm-export
#   c64_fp16.onnx    gm-export --config ../shared/parity/custom-64x64/config.json --checkpoint …pth
#                    --height 64 --width 64 --precision fp16 --debug-outputs
#   custom-64x64/    the fixture's .npy files (input.npy, NAME.npy, blocks/)
# and onnxruntime-gpu 1.31.1 as /tmp/stage/ort-gpu.part* (../shared/gpu/stage-onnxruntime-gpu.sh; only its
# libonnxruntime*.so files are used, through ORT_DYLIB_PATH). CUDA_BACKEND=ort-cpu runs the same on a CPU
# machine (a dry run).
set -u
G=${G:-.gpu-stage/gmv}
CUDA_BACKEND=${CUDA_BACKEND:-ort-cuda}
W=/tmp/gmv-work; mkdir -p "$W"; OUT=${OUT:-/tmp/gmv-out}; mkdir -p "$OUT"
for f in gm-validate gm-export; do xz -dkc "$G/$f.xz" > "$W/$f"; chmod +x "$W/$f"; done
if [ "$CUDA_BACKEND" = ort-cuda ]; then
  nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
  source scripts/gpu/ort_gpu_libs.sh
  use_ort_gpu "$W" || { echo "onnxruntime-gpu is not staged in /tmp/stage"; exit 1; }
fi
"$W/gm-export" --variant tiny --debug-outputs --out "$W/t32.onnx" | tail -1
"$W/gm-export" --variant tiny --debug-outputs --precision fp16 --out "$W/t16.onnx" | tail -1
echo "== 1. FP16 fixture export on $CUDA_BACKEND against the official tensors"
"$W/gm-validate" --model "$G/c64_fp16.onnx" --reference "$G/custom-64x64" --backend "$CUDA_BACKEND" \
  --keep-going --json "$OUT/fixture_fp16.json" > "$OUT/fixture_fp16.txt"; echo "exit $?"
echo "== 2. tiny FP32: $CUDA_BACKEND vs tract"
"$W/gm-validate" --model "$W/t32.onnx" --compare-backends "$CUDA_BACKEND,tract" --seed 0 --batch 2 \
  --keep-going --json "$OUT/tiny_fp32.json" > "$OUT/tiny_fp32.txt"; echo "exit $?"
echo "== 3. tiny FP16 on $CUDA_BACKEND vs FP32 on tract"
"$W/gm-validate" --model "$W/t16.onnx" --compare-backends "$CUDA_BACKEND,tract" --model-b "$W/t32.onnx" \
  --seed 0 --batch 2 --keep-going --json "$OUT/tiny_fp16.json" > "$OUT/tiny_fp16.txt"; echo "exit $?"
grep -h -E "^(ort|tract).*(PASS|FAIL|SKIPPED|ERROR)" "$OUT"/*.txt
