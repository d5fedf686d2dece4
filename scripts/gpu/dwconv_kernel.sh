#!/usr/bin/env bash
# The CUDA DepthwiseConv kernel (plugins/cuda/depthwise_conv.cu) on a GPU machine, in one go:
#   1. builds it with nvcc (scan_common.sh's NVCC and ARCH) into shared libraries: main (as shipped),
#      grid7 (-DGM_DWCONV_MAX_GRID=7: a tiny grid, so every launch runs the grid-stride loop),
#      narrow (-DGM_DWCONV_MAX_VEC_BYTES=4: no 8/16-byte loads and stores), tile8
#      (-DGM_DWCONV_MAX_TILE_W=8: every plane wider than 8 cut into column tiles, halo columns read
#      from the neighbours), smem8k (-DGM_DWCONV_MAX_SMEM_BYTES=8192: fewer planes per block, shorter
#      row tiles), and the block-size variants t1024, t4096 (-DGM_DWCONV_TARGET_OUTPUTS=1024/4096:
#      smaller / larger tiles and plane groups than the shipped 2048; 4096 makes a 56x56 plane one tile);
#   2. scripts/gpu/dwconv_check.py on main: every dtype/K/activation/InputBias/shape vs a float64
#      reference, misaligned pointers, the C ABI's argument checks, one > 2^32-element node, and the
#      bandwidth benchmark at tiny's batch-128 depthwise-conv shapes next to torch's conv2d + activation
#      -> $OUT/dwconv-kernel.json;
#   3. the correctness cases (--quick) on every variant -> $OUT/dwconv-kernel-$v.json, and the
#      benchmark alone on t1024, t4096, tile8, smem8k -> $OUT/dwconv-kernel-bench-$v.json (to choose the tile size);
#   4. compute-sanitizer memcheck and racecheck (shared memory) on main's --quick cases, this kernel
#      only -> $OUT/sanitizer-*.log, one summary line each in $OUT/sanitizer.txt.
# Run from the repository root. Needs: nvcc, torch (CUDA). Env: OUT (default /tmp/gm-dwconv), ARCH
# (default 90), NVCC, SAN (compute-sanitizer), SKIP_VARIANTS=1 (main build only), SAN_TOOLS (default
# "memcheck racecheck").
set -uo pipefail
OUT=${OUT:-/tmp/gm-dwconv}
B=/tmp/gm-dwconv-build
mkdir -p "$OUT" "$B"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source scripts/gpu/scan_common.sh
"$NVCC" --version | tail -1

build() {  # name, extra flags...
  local name=$1; shift
  "$NVCC" -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode "arch=compute_$ARCH,code=sm_$ARCH" "$@" \
    plugins/cuda/depthwise_conv.cu -o "$B/libgm_dwconv_$name.so" && echo "built $name ($*)"
}
variants=(grid7 narrow tile8 smem8k t1024 t4096)
[ "${SKIP_VARIANTS:-0}" = 1 ] && variants=()
build main &
for v in "${variants[@]}"; do
  case $v in
    grid7) build grid7 -DGM_DWCONV_MAX_GRID=7 & ;;
    narrow) build narrow -DGM_DWCONV_MAX_VEC_BYTES=4 & ;;
    tile8) build tile8 -DGM_DWCONV_MAX_TILE_W=8 & ;;
    smem8k) build smem8k -DGM_DWCONV_MAX_SMEM_BYTES=8192 & ;;
    t1024) build t1024 -DGM_DWCONV_TARGET_OUTPUTS=1024 & ;;
    t4096) build t4096 -DGM_DWCONV_TARGET_OUTPUTS=4096 & ;;
  esac
done
wait
rc=0
echo "== main build: correctness + benchmark"
python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_main.so" --out "$OUT/dwconv-kernel.json" || rc=1
for v in "${variants[@]}"; do
  echo "== $v build: correctness"
  python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_$v.so" --quick --out "$OUT/dwconv-kernel-$v.json" || rc=1
  case $v in
    t1024|t4096|tile8|smem8k)
      echo "== $v build: benchmark"
      python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_$v.so" --bench-only \
        --out "$OUT/dwconv-kernel-bench-$v.json" || rc=1 ;;
  esac
done
: > "$OUT/sanitizer.txt"
for tool in ${SAN_TOOLS:-memcheck racecheck}; do
  echo "== compute-sanitizer $tool (main build, --quick cases)"
  # Only this kernel is instrumented (PyTorch's own kernels are not ours to check, and racecheck
  # would judge cuDNN's shared-memory use too).
  "$SAN" --tool "$tool" --kernel-name kns=depthwise_conv_kernel --error-exitcode 9 \
    python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_main.so" --quick > "$OUT/sanitizer-$tool.log" 2>&1
  s=$?
  echo "$tool exit $s: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$OUT/sanitizer-$tool.log" | tr '\n' ' ')" \
    | tee -a "$OUT/sanitizer.txt"
  [ $s -eq 0 ] || rc=1
done
echo "dwconv kernel checks: $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
