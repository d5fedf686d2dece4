#!/usr/bin/env bash
# The `--scan` modes of GroupMamba-Tiny at 224x224 on ONNX Runtime's CUDA EP (H100), FP32 and FP16, in one go:
# exports custom / portable / function with gm-export, then scripts/gpu/bench_scan_modes.py (size, load time,
# placement, agreement, batch-1 latency, batch-128 throughput) -> $OUT/scan-modes-{fp32,fp16}.json.
# Needs onnxruntime-gpu in $ORTGPU (../shared/gpu/stage-onnxruntime-gpu.sh) and $GM with bin/gm-export and
# bin/libgroupmamba_ops.so (cargo build --release -p gm-ort-library --features cuda). Run from the repository root.
# Env: PRECISIONS (default "fp32 fp16"); CHUNKS, the portable chunk lengths to compare (default 16; the
# first is also the function body's); FUNCTION=0 leaves the function export out; CUDA_GRAPH=1 also times
# every model with ORT's CUDA graphs (bench_scan_modes.py --cuda-graph); CUSTOM_EP_OPTIONS, e.g.
# "prefer_nhwc=1 fuse_conv_bias=1", adds the custom export once more per option, run with that CUDA EP option.
# FUSED=1 adds the custom export with --fused-ops (ai.groupmamba::GroupedLayerNorm, DepthwiseConv) as fused-ops;
# CHUNKS="" FUNCTION=0 FUSED=1 compares just the two custom exports. FUSED_BEFORE="BINARY ARGS…" adds the
# export of another gm-export binary with those arguments as fused-before (an A/B of a fused form in one run);
# FUSED_BETWEEN="BINARY ARGS…" likewise as fused-between (a third point, e.g. one change of two);
# FUSED_EP_OPTIONS, e.g. "prefer_nhwc=1", adds the --fused-ops export once more per CUDA EP option.
set -uo pipefail
OUT=${OUT:-/tmp/gm-modes}
GM=${GM:-.gpu-stage/gpubench}
ORTGPU=${ORTGPU:-/tmp/ortgpu}
PRECISIONS=${PRECISIONS:-fp32 fp16}
CHUNKS=${CHUNKS-16}   # empty: no portable export
FUNCTION=${FUNCTION:-1}
FUSED=${FUSED:-0}
CUDA_GRAPH=${CUDA_GRAPH:-0}
CUSTOM_EP_OPTIONS=${CUSTOM_EP_OPTIONS:-}
# PORTABLE_BEFORE: another gm-export binary (e.g. main before a change); its portable export (first chunk
# length) is added as portable-before, for an A/B in the same run.
PORTABLE_BEFORE=${PORTABLE_BEFORE:-}
W=/tmp/gm-modes-work
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
first_chunk=${CHUNKS%% *}
rc=0
for p in $PRECISIONS; do
  "$GM/gm-export" --variant tiny --precision $p --out "$W/custom-$p.onnx" 2>&1 | tail -1
  models=(--model "custom=$W/custom-$p.onnx:lib")
  for o in $CUSTOM_EP_OPTIONS; do
    models+=(--model "custom-${o%%=*}=$W/custom-$p.onnx:lib:$o")
  done
  for c in $CHUNKS; do
    "$GM/gm-export" --variant tiny --precision $p --scan portable --scan-chunk "$c" --out "$W/portable-$c-$p.onnx" 2>&1 | tail -1
    name=portable; [ "$c" = "$first_chunk" ] || name=portable-chunk$c
    models+=(--model "$name=$W/portable-$c-$p.onnx")
  done
  if [ -n "$PORTABLE_BEFORE" ]; then
    "$PORTABLE_BEFORE" --variant tiny --precision $p --scan portable --scan-chunk "$first_chunk" --out "$W/portable-before-$p.onnx" 2>&1 | tail -1
    models+=(--model "portable-before=$W/portable-before-$p.onnx")
  fi
  if [ "$FUNCTION" = 1 ]; then
    "$GM/gm-export" --variant tiny --precision $p --scan function --scan-chunk "$first_chunk" --out "$W/function-$p.onnx" 2>&1 | tail -1
    models+=(--model "function-without-library=$W/function-$p.onnx" --model "function-with-library=$W/function-$p.onnx:lib")
  fi
  if [ "$FUSED" = 1 ]; then
    "$GM/gm-export" --variant tiny --precision $p --fused-ops --out "$W/fused-$p.onnx" 2>&1 | tail -1
    models+=(--model "fused-ops=$W/fused-$p.onnx:lib")
    for o in ${FUSED_EP_OPTIONS:-}; do
      models+=(--model "fused-ops-${o%%=*}=$W/fused-$p.onnx:lib:$o")
    done
  fi
  for point in before between; do  # FUSED_BEFORE, FUSED_BETWEEN: "BINARY ARGS…"
    cmd=FUSED_${point^^}
    [ -n "${!cmd:-}" ] || continue
    ${!cmd} --variant tiny --precision $p --out "$W/fused-$point-$p.onnx" 2>&1 | tail -1
    models+=(--model "fused-$point=$W/fused-$point-$p.onnx:lib")
  done
  extra=(); [ "$CUDA_GRAPH" = 1 ] && extra=(--cuda-graph)
  echo "== $p"
  PYTHONPATH="$ORTGPU" python3 scripts/gpu/bench_scan_modes.py --library "$GM/libgroupmamba_ops.so" \
    "${models[@]}" "${extra[@]}" --out "$OUT/scan-modes-$p.json" > "$W/bench-$p.log" 2>&1 || rc=1
  grep -v -e '^{' -e 'No registered plugin EP' "$W/bench-$p.log"
done
exit $rc
