#!/usr/bin/env bash
# The CUDA DepthwiseConv kernel (plugins/cuda/depthwise_conv.cu) on a GPU machine, in one go:
#   1. builds it with nvcc (scan_common.sh's NVCC and ARCH) into shared libraries: main (as shipped),
#      grid7 (-DGM_DWCONV_MAX_GRID=7: a tiny grid, so every launch runs the grid-stride loop, both
#      layouts), narrow (-DGM_DWCONV_MAX_VEC_BYTES=4: no 8/16-byte loads and stores, both layouts), tile8
#      (-DGM_DWCONV_MAX_TILE_W=8: every plane wider than 8 cut into column tiles, halo columns read
#      from the neighbours), smem8k (-DGM_DWCONV_MAX_SMEM_BYTES=8192: fewer planes per block, shorter
#      row tiles), the block-size variants t1024, t4096 (-DGM_DWCONV_TARGET_OUTPUTS=1024/4096:
#      smaller / larger tiles and plane groups than the shipped 2048; 4096 makes a 56x56 plane one tile),
#      nhwc_seg (-DGM_DWCONV_NHWC_TARGET_THREADS=2^30: channels-last image rows cut into segments of
#      8 columns), and with NHWC_TUNING=1 the channels-last tuning variants nhwc_v4r2
#      (-DGM_DWCONV_NHWC_VEC=4 -DGM_DWCONV_NHWC_ROWS=2: FP32 at 4 channels x 2 rows a thread, as FP16
#      and BF16 are, instead of 2 x 4), nhwc_v2r4 (FP16/BF16 at 2 x 4, as FP32), nhwc_r2 (2 x 2 in
#      every type), nhwc_mb1 (-DGM_DWCONV_NHWC_MIN_BLOCKS=1: no 128-register cap);
#   2. scripts/gpu/dwconv_check.py on main: every dtype/K/activation/InputBias/shape vs a float64
#      reference in both layouts (NCHW and channels_last), misaligned pointers, the C ABI's argument
#      checks, one > 2^32-element node in each layout, and the bandwidth benchmark at tiny's batch-128
#      depthwise-conv shapes, both layouts, next to torch's conv2d + activation (NCHW and channels_last)
#      -> $OUT/dwconv-kernel.json;
#   3. the correctness cases (--quick) on every variant -> $OUT/dwconv-kernel-$v.json, and the
#      benchmark alone on t1024, t4096, tile8, smem8k (NCHW) and the nhwc_* tuning variants (NHWC)
#      -> $OUT/dwconv-kernel-bench-$v.json (to choose the tile size);
#   4. compute-sanitizer memcheck and racecheck (shared memory) on main's --quick cases, this file's
#      kernels only (both layouts) -> $OUT/sanitizer-*.log, one summary line each in $OUT/sanitizer.txt.
# Run from the repository root. Needs: nvcc, torch (CUDA). Env: OUT (default /tmp/gm-dwconv), ARCH
# (default 90), NVCC, SAN (compute-sanitizer), SKIP_VARIANTS=1 (main build only), NHWC_TUNING=1 (the
# nhwc_* tuning variants too), SAN_TOOLS (default "memcheck racecheck").
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
variants=(grid7 narrow tile8 smem8k t1024 t4096 nhwc_seg)
[ "${NHWC_TUNING:-0}" = 1 ] && variants+=(nhwc_v4r2 nhwc_v2r4 nhwc_r2 nhwc_mb1)
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
    nhwc_seg) build nhwc_seg -DGM_DWCONV_NHWC_TARGET_THREADS=1073741824 & ;;
    nhwc_v4r2) build nhwc_v4r2 -DGM_DWCONV_NHWC_VEC=4 -DGM_DWCONV_NHWC_ROWS=2 & ;;
    nhwc_v2r4) build nhwc_v2r4 -DGM_DWCONV_NHWC_VEC16=2 -DGM_DWCONV_NHWC_ROWS16=4 & ;;
    nhwc_r2) build nhwc_r2 -DGM_DWCONV_NHWC_VEC16=2 -DGM_DWCONV_NHWC_ROWS=2 -DGM_DWCONV_NHWC_ROWS16=2 & ;;
    nhwc_mb1) build nhwc_mb1 -DGM_DWCONV_NHWC_MIN_BLOCKS=1 & ;;
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
      echo "== $v build: benchmark (NCHW)"
      python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_$v.so" --bench-only --layouts nchw \
        --out "$OUT/dwconv-kernel-bench-$v.json" || rc=1 ;;
    nhwc_v4r2|nhwc_v2r4|nhwc_r2|nhwc_mb1)
      echo "== $v build: benchmark (NHWC)"
      python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_$v.so" --bench-only --layouts nhwc \
        --out "$OUT/dwconv-kernel-bench-$v.json" || rc=1 ;;
  esac
done
: > "$OUT/sanitizer.txt"
for tool in ${SAN_TOOLS:-memcheck racecheck}; do
  echo "== compute-sanitizer $tool (main build, --quick cases)"
  # Only this file's kernels are instrumented, depthwise_conv_kernel and depthwise_conv_nhwc_kernel
  # (PyTorch's own kernels are not ours to check, and racecheck would judge cuDNN's shared-memory use too).
  "$SAN" --tool "$tool" --kernel-name kns=depthwise_conv_ --error-exitcode 9 \
    python3 scripts/gpu/dwconv_check.py --lib "$B/libgm_dwconv_main.so" --quick > "$OUT/sanitizer-$tool.log" 2>&1
  s=$?
  echo "$tool exit $s: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$OUT/sanitizer-$tool.log" | tr '\n' ' ')" \
    | tee -a "$OUT/sanitizer.txt"
  [ $s -eq 0 ] || rc=1
done
echo "dwconv kernel checks: $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
