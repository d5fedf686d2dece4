#!/usr/bin/env bash
# The `--scan` modes of GroupMamba-Tiny at 224x224 on ONNX Runtime's CUDA EP (H100), FP32 and FP16, in one go:
# exports custom / portable / function with gm-export, then scripts/gpu/bench_scan_modes.py (size, load time,
# placement, agreement, batch-1 latency, batch-128 throughput) -> $OUT/scan-modes-{fp32,fp16}.json.
# Needs onnxruntime-gpu in $ORTGPU (../shared/gpu/stage-onnxruntime-gpu.sh) and $GM with bin/gm-export and
# bin/libgroupmamba_ops.so (cargo build --release -p gm-ort-library --features cuda). Run from the repository root.
set -uo pipefail
OUT=${OUT:-/tmp/gm-modes}
GM=${GM:-.gpu-stage/gpubench}
ORTGPU=${ORTGPU:-/tmp/ortgpu}
CHUNK=${CHUNK:-16}
W=/tmp/gm-modes-work
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
for p in fp32 fp16; do
  "$GM/gm-export" --variant tiny --precision $p --out "$W/custom-$p.onnx" 2>&1 | tail -1
  "$GM/gm-export" --variant tiny --precision $p --scan portable --scan-chunk "$CHUNK" --out "$W/portable-$p.onnx" 2>&1 | tail -1
  "$GM/gm-export" --variant tiny --precision $p --scan function --scan-chunk "$CHUNK" --out "$W/function-$p.onnx" 2>&1 | tail -1
done
rc=0
for p in fp32 fp16; do
  echo "== $p"
  PYTHONPATH="$ORTGPU" python3 scripts/gpu/bench_scan_modes.py --library "$GM/libgroupmamba_ops.so" \
    --model "custom=$W/custom-$p.onnx:lib" --model "portable=$W/portable-$p.onnx" \
    --model "function-without-library=$W/function-$p.onnx" --model "function-with-library=$W/function-$p.onnx:lib" \
    --out "$OUT/scan-modes-$p.json" 2>&1 | grep -v '^{' || rc=1
done
exit $rc
