#!/usr/bin/env bash
# Nsight Compute on the CUDA SelectiveScan kernel (as shipped, sm_$ARCH, default 90) for a few of tiny's stage shapes
# at batch 128: throughput, occupancy, warp stall reasons -> $OUT/scan-ncu.txt. Run from the repository root
# on a GPU machine with nvcc, ncu and torch. Env: SHAPES (DTYPE:NxCxHxW list), OUT.
set -uo pipefail
OUT=${OUT:-/tmp/gm-scan-profile}
SHAPES=${SHAPES:-f16:128x448x7x7 f32:128x448x7x7 f16:128x348x14x14 f16:128x64x56x56}
B=/tmp/gm-scan-build
mkdir -p "$OUT" "$B"
source scripts/gpu/scan_common.sh
NCU=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
build_scan_lib "$B/libgm_scan_profile.so" -lineinfo || exit 1
"$NCU" --target-processes all -k regex:scan_ --section SpeedOfLight --section LaunchStats --section Occupancy \
  --section WarpStateStats --section SchedulerStats --section MemoryWorkloadAnalysis \
  python3 scripts/gpu/scan_profile.py --lib "$B/libgm_scan_profile.so" $SHAPES > "$OUT/scan-ncu.txt" 2>&1
rc=$?
grep -E "launched|scan_|Duration|DRAM Throughput|Memory Throughput|Achieved Occupancy|Theoretical Occupancy|Issue Slots Busy|No Eligible|Active Warps Per Scheduler|Eligible Warps|Warp Cycles Per Issued|Registers Per|Block Size|Grid Size|Waves Per SM|Stall" "$OUT/scan-ncu.txt" | head -150
exit $rc
