#!/usr/bin/env bash
# The ONNX Runtime GPU check and benchmark, on the GPU machine, from the repository root, in one go:
#   1. exports (gm-export): both parity fixtures (FP32, FP16) and tiny at 224 with random weights (FP32, FP16);
#   2. scripts/gpu/bench_ort.py with onnxruntime-gpu + libgroupmamba_ops.so (--features cuda): parity, FP16
#      agreement, node placement, throughput/latency, kernel profile -> $OUT/ort-cuda.json;
#   3. gm-run --device cuda (ORT_DYLIB_PATH = onnxruntime-gpu's library) on a fixture, and its CPU fallback
#      with no GPU visible;
#   4. scripts/gpu/bench_official.py: the official PyTorch model, same machine, same run -> $OUT/official.json.
#
# Needs: onnxruntime-gpu installed in $ORTGPU (../shared/gpu/stage-onnxruntime-gpu.sh does it), and $GM with
#   bin/{gm-export,gm-run,libgroupmamba_ops.so}  (cargo build --release -p gm-ort-library --features cuda;
#                                                 cargo build -p gm-runtime --features cuda --bin gm-run; gm-export)
#   fixtures/ref.pth, fixtures/custom-64x64/{input,logits}.npy+config.json, fixtures/custom-72x100/…
#   GroupMamba/ (official checkout, for step 4), whl/ (its extra wheels: timm, einops)
# Env: OUT (results folder), GM (default .gpu-stage), ORTGPU (default /tmp/ortgpu), OFFICIAL_TIMEOUT (s; ≤ 20 skips step 4),
#      EXPORT_ARGS (extra gm-export arguments for every export, e.g. --fused-ops), GM_RUN=0 (skips step 3).
set -uo pipefail
OUT=${OUT:-/tmp/gm-out}
GM=${GM:-.gpu-stage}
ORTGPU=${ORTGPU:-/tmp/ortgpu}
# The official CUDA scan's build folder: an earlier background build
#   (setsid python3 scripts/gpu/bench_official.py --official … --build-dir DIR --build-only > DIR.log &)
# is waited for (up to 150 s) before the timings and reused by step 4.
OFFICIAL_BUILD_DIR=${OFFICIAL_BUILD_DIR:-/tmp/gm-official-build}
DEADLINE=${DEADLINE:-560}   # step 4 gets what is left of this many seconds (the device's call limit is 600)
EXPORT_ARGS=${EXPORT_ARGS:-}
W=/tmp/gm-work
mkdir -p "$OUT" "$W"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

echo "== exports"
t0=$(date +%s)
for c in "custom-64x64 64 64" "custom-72x100 72 100"; do
  set -- $c
  mkdir -p "$W/$1"
  cp "$GM/fixtures/$1"/*.npy "$W/$1/"
  for p in fp32 fp16; do
    "$GM/bin/gm-export" --config "$GM/fixtures/$1/config.json" --checkpoint "$GM/fixtures/ref.pth" \
      --height "$2" --width "$3" --precision $p $EXPORT_ARGS --out "$W/$1/model-$p.onnx" 2>&1 | tail -1
  done
done
for p in fp32 fp16; do
  "$GM/bin/gm-export" --variant tiny --precision $p $EXPORT_ARGS --out "$W/tiny-$p.onnx" 2>&1 | grep -v warning | tail -1
done
echo "exports took $(( $(date +%s) - t0 )) s"

if [ -f "$OFFICIAL_BUILD_DIR.log" ]; then
  for _ in $(seq 150); do grep -q "official scan built\|Error\|error:" "$OFFICIAL_BUILD_DIR.log" && break; sleep 1; done
  echo "official scan background build: $(tail -c 300 "$OFFICIAL_BUILD_DIR.log")"
fi

echo "== onnxruntime-gpu + libgroupmamba_ops.so"
PYTHONPATH="$ORTGPU" timeout "${ORT_TIMEOUT:-330}" python3 scripts/gpu/bench_ort.py --library "$GM/bin/libgroupmamba_ops.so" \
  --fixture "$W/custom-64x64" --fixture "$W/custom-72x100" \
  --tiny-fp32 "$W/tiny-fp32.onnx" --tiny-fp16 "$W/tiny-fp16.onnx" --profile \
  --out "$OUT/ort-cuda.json" 2>&1 | grep -v "^\s*$"

if [ "${GM_RUN:-1}" = 1 ]; then
echo "== gm-run --device cuda"
SP=$(python3 -c 'import site; print(site.getsitepackages()[0])')
LD_LIBRARY_PATH=$(find "$SP/nvidia" "$SP/torch/lib" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
export LD_LIBRARY_PATH
export ORT_DYLIB_PATH=$(ls "$ORTGPU"/onnxruntime/capi/libonnxruntime.so.1.* | head -1)
f=$W/custom-72x100
"$GM/bin/gm-run" --model "$f/model-fp32.onnx" --input "$f/input.npy" --output "$W/gmrun.npy" --device cuda
python3 -c "import numpy as n; d=abs(n.load('$W/gmrun.npy')-n.load('$f/logits.npy')).max(); print('gm-run --device cuda fixture custom-72x100 max abs vs official', d, 'PASS' if d <= 1e-4 else 'FAIL')"
python3 -c "import numpy as n; n.save('$W/rand8.npy', n.random.default_rng(0).standard_normal((8,3,224,224), dtype=n.float32))"
"$GM/bin/gm-run" --model "$W/tiny-fp16.onnx" --input "$W/rand8.npy" --output "$W/gmrun16.npy" --device cuda:0
echo "-- no GPU visible: expect the CPU fallback notice"
CUDA_VISIBLE_DEVICES= "$GM/bin/gm-run" --model "$f/model-fp32.onnx" --input "$f/input.npy" --output "$W/gmrun-cpu.npy" --device cuda
python3 -c "import numpy as n; print('fallback max abs vs official', abs(n.load('$W/gmrun-cpu.npy')-n.load('$f/logits.npy')).max())"
fi

OFFICIAL_TIMEOUT=${OFFICIAL_TIMEOUT:-$(( DEADLINE - SECONDS ))}
if [ "$OFFICIAL_TIMEOUT" -gt 20 ]; then
  echo "== official PyTorch model (timeout ${OFFICIAL_TIMEOUT}s)"
  python3 -m pip install -q --no-index --no-deps --target /tmp/site "$GM"/whl/*.whl && export PYTHONPATH=/tmp/site
  timeout "$OFFICIAL_TIMEOUT" python3 scripts/gpu/bench_official.py --official "$GM/GroupMamba" --variant tiny \
    --build-dir "$OFFICIAL_BUILD_DIR" \
    --batches "${OFFICIAL_BATCHES:-1,128}" --iters "${OFFICIAL_ITERS:-10}" --out "$OUT/official.json" 2>&1 | tail -25
  echo "official exit: ${PIPESTATUS[0]}"
fi
