#!/usr/bin/env bash
# The CUDA SelectiveScan kernel on a GPU machine, in one go (issue: CUDA kernel verified on an H100):
#   1. builds plugins/cuda/selective_scan.cu with nvcc into three shared libraries:
#      main (as shipped: bulk copies on sm_90), cp.async (per-thread copies, the sm_87 path) and
#      sync (-DGM_SCAN_SYNC_COPIES: plain loads/stores, the path sm_72 compiles to);
#   2. scripts/gpu/scan_check.py on the main build: every dtype/direction/odd size vs the Rust CPU
#      reference, the shared fixtures' official scan calls, and the bandwidth benchmark on tiny's four
#      stage shapes at batch 128 -> $OUT/scan-kernel.json;
#   3. the correctness cases (--quick) on the cp.async and sync builds -> $OUT/scan-kernel-{cp-async,sync}.json;
#   4. compute-sanitizer memcheck and racecheck on the main build's --quick cases -> $OUT/sanitizer.txt.
# Run from the repository root. Needs: nvcc, torch (CUDA), numpy, and the CPU reference binary
#   cargo build --release -p gm-runtime --example scan_reference   (x86-64; copy it to the GPU machine)
# Env: OUT (default /tmp/gm-scan), REF (reference binary, default .gpu-stage/scan_reference),
#      FIXTURES (shared parity folder, default .gpu-stage/parity), ARCH (default 90).
set -uo pipefail
OUT=${OUT:-/tmp/gm-scan}
REF=${REF:-.gpu-stage/scan_reference}
FIXTURES=${FIXTURES:-.gpu-stage/parity}
B=/tmp/gm-scan-build
mkdir -p "$OUT" "$B"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader
source scripts/gpu/scan_common.sh
"$NVCC" --version | tail -1

build() {  # name, extra flags...
  local name=$1; shift
  build_scan_lib "$B/libgm_scan_$name.so" "$@" && echo "built $name ($*)"
}
build main &
build cp-async -DGM_SCAN_BULK=0 &
build sync -DGM_SCAN_BULK=0 -DGM_SCAN_SYNC_COPIES=1 &
wait
rc=0
echo "== main build: correctness + benchmark"
python3 scripts/gpu/scan_check.py --lib "$B/libgm_scan_main.so" --reference "$REF" --fixtures "$FIXTURES" \
  --out "$OUT/scan-kernel.json" || rc=1
for v in cp-async sync; do
  echo "== $v build: correctness"
  python3 scripts/gpu/scan_check.py --lib "$B/libgm_scan_$v.so" --reference "$REF" --fixtures "$FIXTURES" \
    --quick --out "$OUT/scan-kernel-$v.json" || rc=1
done
echo "== compute-sanitizer (main build, --quick cases)"
: > "$OUT/sanitizer.txt"
sanitize_scan_lib "$B/libgm_scan_main.so" "$OUT/sanitizer" "$OUT/sanitizer.txt" || rc=1
echo "scan kernel checks: $([ $rc -eq 0 ] && echo PASS || echo FAIL)"
exit $rc
