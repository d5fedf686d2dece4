# Sourced by the CUDA scan-kernel scripts in this folder (scan_kernel.sh, scan_variants.sh,
# scan_profile.sh): one nvcc command line for the kernel and one compute-sanitizer check, so that
# every variant is built and checked the same way. Run from the repository root.
# Env: ARCH (default 90), NVCC, SAN (compute-sanitizer); REF and FIXTURES as scan_check.py's
# --reference and --fixtures (the callers set defaults).
ARCH=${ARCH:-90}
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
SAN=${SAN:-$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)}

# build_scan_lib LIB [NVCC_FLAGS...]: plugins/cuda/selective_scan.cu as a shared library for sm_$ARCH.
build_scan_lib() {
  local lib=$1; shift
  "$NVCC" -O3 -std=c++17 -shared -Xcompiler -fPIC -gencode "arch=compute_$ARCH,code=sm_$ARCH" "$@" \
    plugins/cuda/selective_scan.cu -o "$lib"
}

# sanitize_scan_lib LIB LOG_PREFIX SUMMARY [LABEL]: compute-sanitizer memcheck and racecheck on
# scan_check.py's --quick cases; each tool's output to LOG_PREFIX-TOOL.log and one line
# ("[LABEL ]TOOL exit N: summary") appended to SUMMARY and printed. Fails if either tool did.
sanitize_scan_lib() {
  local lib=$1 log=$2 summary=$3 label=${4:+$4 } tool s failed=0
  for tool in memcheck racecheck; do
    "$SAN" --tool $tool --error-exitcode 9 python3 scripts/gpu/scan_check.py --lib "$lib" \
      --reference "$REF" --fixtures "$FIXTURES" --quick > "$log-$tool.log" 2>&1
    s=$?
    echo "$label$tool exit $s: $(grep -E "ERROR SUMMARY|RACECHECK SUMMARY|PASS|FAIL" "$log-$tool.log" | tr '\n' ' ')" \
      | tee -a "$summary"
    [ $s -eq 0 ] || failed=1
  done
  return $failed
}
