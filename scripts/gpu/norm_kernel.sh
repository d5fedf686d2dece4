#!/usr/bin/env bash
# The CUDA GroupedLayerNorm kernel (plugins/cuda/layer_norm.cu) on a GPU machine, in one go:
#   1. builds it with nvcc (scan_common.sh's NVCC and ARCH) into shared libraries: main (as shipped),
#      grid7 (-DGM_NORM_MAX_GRID=7: a tiny grid, so every launch runs the grid-stride loop),
#      narrow (-DGM_NORM_MAX_VEC_BYTES=4: no 8/16-byte vectors), and the team-size variants pl4, pl16
#      (-DGM_NORM_MIN_PER_LANE=4/16: larger / smaller teams than the shipped 8);
#   2. scripts/gpu/norm_check.py on main: every dtype/gate/width/group count/row count vs a float64
#      reference, the C ABI's argument checks, one > 2^32-element node, and the bandwidth benchmark
#      at tiny's batch-128 norm shapes next to torch's layer_norm -> $OUT/norm-kernel.json;
#   3. the correctness cases (--quick) on grid7, narrow, pl4, pl16 -> $OUT/norm-kernel-$v.json, and the
#      benchmark alone on pl4, pl16 -> $OUT/norm-kernel-bench-$v.json (to choose the team size);
#   4. compute-sanitizer memcheck on main's --quick cases -> $OUT/sanitizer.txt.
# Run from the repository root. Needs: nvcc, torch (CUDA). Env: OUT (default /tmp/gm-norm), ARCH
# (default 90), NVCC, SAN (compute-sanitizer), SKIP_VARIANTS=1 (main build only).
set -uo pipefail
OUT=${OUT:-/tmp/gm-norm}
B=/tmp/gm-norm-build
mkdir -p "$OUT" "$B"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source scripts/gpu/scan_common.sh
"$NVCC" --version | tail -1

build() {  # name, extra flags...
  local name=$1; shift
  "$NVCC" -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode "arch=compute_$ARCH,code=sm_$ARCH" "$@" \
    plugins/cuda/layer_norm.cu -o "$B/libgm_norm_$name.so" && echo "built $name ($*)"
}
variants=(grid7 narrow pl4 pl16)
[ "${SKIP_VARIANTS:-0}" = 1 ] && variants=()
build main &
for v in "${variants[@]}"; do
  case $v in
    grid7) build grid7 -DGM_NORM_MAX_GRID=7 & ;;
    narrow) build narrow -DGM_NORM_MAX_VEC_BYTES=4 & ;;
    pl4) build pl4 -DGM_NORM_MIN_PER_LANE=4 & ;;
    pl16) build pl16 -DGM_NORM_MIN_PER_LANE=16 & ;;
  esac
done
wait
rc=0
echo "== main build: correctness + benchmark"
python3 scripts/gpu/norm_check.py --lib "$B/libgm_norm_main.so" --out "$OUT/norm-kernel.json" || rc=1
for v in "${variants[@]}"; do
  echo "== $v build: correctness"
  python3 scripts/gpu/norm_check.py --lib "$B/libgm_norm_$v.so" --quick --out "$OUT/norm-kernel-$v.json" || rc=1
  case $v in
    pl4|pl16)
      echo "== $v build: benchmark"
      python3 scripts/gpu/norm_check.py --lib "$B/libgm_norm_$v.so" --bench-only \
        --out "$OUT/norm-kernel-bench-$v.json" || rc=1 ;;
  esac
done
echo "== compute-sanitizer memcheck (main build, --quick cases)"
"$SAN" --tool memcheck --error-exitcode 9 python3 scripts/gpu/norm_check.py --lib "$B/libgm_norm_main.so" \
  --quick > "$OUT/sanitizer-memcheck.log" 2>&1
s=$?
echo "memcheck exit $s: $(grep -E "ERROR SUMMARY|PASS|FAIL" "$OUT/sanitizer-memcheck.log" | tr '\n' ' ')" \
  | tee "$OUT/sanitizer.txt"
[ $s -eq 0 ] || rc=1
echo "norm kernel checks: $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
