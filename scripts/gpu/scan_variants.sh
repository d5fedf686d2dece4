#!/usr/bin/env bash
# Compile-time variants of the CUDA SelectiveScan kernel, compared in one go on a GPU machine: each
# VARIANTS entry NAME=FLAGS is built with nvcc, checked and benchmarked by scripts/gpu/scan_check.py
# (every correctness case vs the Rust CPU reference, the official fixture calls, tiny's stage shapes
# at batch 128) -> $OUT/variant-NAME.json, and run under compute-sanitizer memcheck and racecheck
# (--quick cases; SANITIZE names which) -> $OUT/sanitizer-variants.txt. Run from the repository root; needs nvcc, torch,
# numpy and the reference binary as scripts/gpu/scan_kernel.sh.
set -uo pipefail
OUT=${OUT:-/tmp/gm-scan-variants}
REF=${REF:-.gpu-stage/scan_reference}
FIXTURES=${FIXTURES:-.gpu-stage/parity}
ARCH=${ARCH:-90}
# FLAGS: nvcc flags, commas for spaces (e.g. threads224=-DGM_SCAN_TARGET_THREADS=224,-DGM_SCAN_MAXT7=224).
VARIANTS=${VARIANTS:-"shipped= threads224=-DGM_SCAN_TARGET_THREADS=224 regs64=-DGM_SCAN_REGS7=64"}
SANITIZE=${SANITIZE:-all}  # variant names to run under compute-sanitizer, or "all"
B=/tmp/gm-scan-variants-build
mkdir -p "$OUT" "$B"
export PYTHONUNBUFFERED=1
NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
SAN=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
for v in $VARIANTS; do
  name=${v%%=*}; flags=${v#*=}
  "$NVCC" -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode "arch=compute_$ARCH,code=sm_$ARCH" ${flags//,/ } \
    plugins/cuda/selective_scan.cu -o "$B/libgm_scan_$name.so" && echo "built $name ($flags)" &
done
wait
rc=0
: > "$OUT/sanitizer-variants.txt"
for v in $VARIANTS; do
  name=${v%%=*}
  echo "== $name"
  python3 scripts/gpu/scan_check.py --lib "$B/libgm_scan_$name.so" --reference "$REF" --fixtures "$FIXTURES" \
    --out "$OUT/variant-$name.json" | grep -E "worst|fixtures|bench|PASS|FAIL" || rc=1
  [ "$SANITIZE" = all ] || [[ " $SANITIZE " == *" $name "* ]] || continue
  for tool in memcheck racecheck; do
    "$SAN" --tool $tool --error-exitcode 9 python3 scripts/gpu/scan_check.py --lib "$B/libgm_scan_$name.so" \
      --reference "$REF" --fixtures "$FIXTURES" --quick > "$B/san-$name-$tool.log" 2>&1
    s=$?
    echo "$name $tool exit $s: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$B/san-$name-$tool.log" | tr '\n' ' ')" \
      | tee -a "$OUT/sanitizer-variants.txt"
    [ $s -eq 0 ] || rc=1
  done
done
exit $rc
