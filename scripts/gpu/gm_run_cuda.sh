#!/usr/bin/env bash
# gm-run's GPU path on a GPU machine, in one go (results: benchmarks/h100-gm-run-cuda/):
#   1. parity: the custom-72x100 fixture exported from its checkpoint, run by `gm-run --device cuda`
#      with and without --cuda-graph, logits against the official model's (max abs, tolerance 1e-4);
#   2. speed: `gm-bench --backend ort-cuda` (host batch in, logits out, through gm-run's pre-allocated
#      device buffers) on tiny FP32 and FP16 at batch 1 and 128, with and without CUDA graphs
#      -> $OUT/gm-bench-cuda.jsonl.
# Staged beforehand in $G (default .gpu-stage/gmrun; carried to the machine): gm-run.xz, gm-bench.xz
# (stripped `cargo build --release -p gm-runtime --features cuda`, xz-compressed), gm-export.xz, and
# custom-72x100/ (config.json, the .pth, input.npy, logits.npy); onnxruntime-gpu 1.31.1 as
# /tmp/stage/ort-gpu.part* (../shared/gpu/stage-onnxruntime-gpu.sh; only its libonnxruntime*.so are used).
# Env: EXPORT_ARGS, extra gm-export arguments for every export (e.g. --fused-ops).
set -u
EXPORT_ARGS=${EXPORT_ARGS:-}
G=${G:-.gpu-stage/gmrun}
W=/tmp/gmrun-work; mkdir -p "$W"; OUT=${OUT:-/tmp/gmrun-out}; mkdir -p "$OUT"
for f in gm-run gm-bench gm-export; do xz -dkc "$G/$f.xz" > "$W/$f"; chmod +x "$W/$f"; done
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source scripts/gpu/ort_gpu_libs.sh
use_ort_gpu "$W" || { echo "onnxruntime-gpu is not staged in /tmp/stage"; exit 1; }
rc=0
F=$G/custom-72x100
echo "== 1. parity, custom-72x100 fixture (FP32 export), gm-run --device cuda"
"$W/gm-export" --config "$F/config.json" --checkpoint "$F"/*.pth --height 72 --width 100 $EXPORT_ARGS --out "$W/c72.onnx" | tail -1
for graph in "" "--cuda-graph"; do
  # A time limit per step and each log in $OUT: a hang shows where it is (an earlier version, copying
  # through ort's helper sessions, hung here with nothing printed).
  timeout 120 "$W/gm-run" --model "$W/c72.onnx" --input "$F/input.npy" --output "$W/logits.npy" \
    --device cuda $graph > "$OUT/gm-run-cuda${graph:+-graph}.log" 2>&1 || { echo "gm-run exit $? (log in $OUT)"; rc=1; }
  tail -3 "$OUT/gm-run-cuda${graph:+-graph}.log"
  python3 - "$W/logits.npy" "$F/logits.npy" "${graph:-no graph}" <<'PY' || rc=1
import sys, numpy as np
got, ref = np.load(sys.argv[1]), np.load(sys.argv[2])
err = float(np.abs(got - ref).max())
print(f"{'ok  ' if err <= 1e-4 else 'FAIL'} gm-run --device cuda ({sys.argv[3]}): logits max abs err {err:.2e} vs official (tol 1e-4)")
sys.exit(0 if err <= 1e-4 else 1)
PY
done
echo "== 2. gm-bench --backend ort-cuda, tiny@224"
: > "$OUT/gm-bench-cuda.jsonl"
for p in fp32 fp16; do
  "$W/gm-export" --variant tiny --precision $p $EXPORT_ARGS --out "$W/tiny-$p.onnx" | tail -1
  for graph in "" "--cuda-graph"; do
    for b in 1 128; do  # one process per batch: a CUDA graph per shape, and clean timings
      iters=$([ $b = 1 ] && echo 200 || echo 30)
      timeout 200 "$W/gm-bench" --model "$W/tiny-$p.onnx" --backend ort-cuda $graph --batch $b --iters $iters --warmup 5 \
        2>/dev/null | sed "s/^{/{\"precision\": \"$p\", \"export_args\": \"$EXPORT_ARGS\", /" | tee -a "$OUT/gm-bench-cuda.jsonl" || rc=1
    done
  done
done
exit $rc
