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
# FLAGS: nvcc flags, commas for spaces (e.g. threads224=-DGM_SCAN_TARGET_THREADS=224,-DGM_SCAN_MAXT7=224).
VARIANTS=${VARIANTS:-"shipped= threads224=-DGM_SCAN_TARGET_THREADS=224 regs64=-DGM_SCAN_REGS7=64 k14=-DGM_SCAN_K28=0"}
SANITIZE=${SANITIZE:-all}  # variant names to run under compute-sanitizer, or "all"
B=/tmp/gm-scan-variants-build
mkdir -p "$OUT" "$B"
export PYTHONUNBUFFERED=1
source scripts/gpu/scan_common.sh
for v in $VARIANTS; do
  name=${v%%=*}; flags=${v#*=}
  build_scan_lib "$B/libgm_scan_$name.so" ${flags//,/ } && echo "built $name ($flags)" &
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
  sanitize_scan_lib "$B/libgm_scan_$name.so" "$B/san-$name" "$OUT/sanitizer-variants.txt" "$name" || rc=1
done
exit $rc
