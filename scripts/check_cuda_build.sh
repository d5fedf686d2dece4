#!/usr/bin/env bash
# Checks that the CUDA SelectiveScan kernel compiles for the H100 (sm_90) and Jetson Orin (sm_87)
# without a GPU, with nvcc from PyPI (CUDA 13.0, pinned: a newer nvvm makes PTX the 13.0 driver
# rejects). Skips with a clear message when the toolkit cannot be installed. Jetson Xavier (sm_72)
# needs CUDA 12 and is not covered here.
set -uo pipefail
cd "$(dirname "$0")/.."
pkgs=("nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*")
if ! timeout 600 python3 -m pip install -q --disable-pip-version-check "${pkgs[@]}"; then
  echo "SKIP CUDA kernel build check: could not install nvcc 13.0 from PyPI"
  exit 0
fi
cu=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
mkdir -p target/cuda-check
set -e
for arch in 90 87; do
  "$cu/bin/nvcc" -O3 -std=c++17 -Xcompiler -fPIC -I"$cu/include" -c plugins/cuda/selective_scan.cu \
    -gencode "arch=compute_$arch,code=sm_$arch" -o "target/cuda-check/selective_scan_sm$arch.o"
  echo "ok   CUDA kernel compiles for sm_$arch"
done
