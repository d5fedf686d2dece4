#!/usr/bin/env bash
# Checks, without a GPU, that the CUDA kernels (plugins/cuda: SelectiveScan, GroupedLayerNorm,
# DepthwiseConv) compile for the H100 (sm_90), Jetson Orin (sm_87) and Jetson Xavier (sm_72).
# sm_90/sm_87: nvcc from PyPI
# (CUDA 13.0, pinned: a newer nvvm makes PTX the 13.0 driver rejects). sm_72: CUDA 13 dropped it, so
# NVRTC and ptxas of CUDA 12.9 from PyPI compile the device code (scripts/nvrtc_compile.py, every
# file and kernel instantiation); on a Xavier itself, build with its own nvcc: GM_CUDA_ARCHS=72
# cargo build --features cuda. Skips with a clear message when a toolkit cannot be installed.
set -uo pipefail
cd "$(dirname "$0")/.."
mkdir -p target/cuda-check
pkgs=("nvidia-cuda-nvcc==13.0.*" "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*")
if timeout 600 python3 -m pip install -q --disable-pip-version-check "${pkgs[@]}"; then
  cu=$(python3 -c "import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], 'cu13'))")
  for src in selective_scan layer_norm depthwise_conv; do
    for arch in 90 87; do
      "$cu/bin/nvcc" -O3 -std=c++17 -Xcompiler -fPIC -I"$cu/include" -c "plugins/cuda/$src.cu" \
        -gencode "arch=compute_$arch,code=sm_$arch" -o "target/cuda-check/${src}_sm$arch.o" || exit 1
      echo "ok   CUDA kernel $src.cu compiles for sm_$arch"
    done
  done
else
  echo "SKIP CUDA kernel build check for sm_90/sm_87: could not install nvcc 13.0 from PyPI"
fi

cu12=target/cuda-check/cu12
pkgs12=("nvidia-cuda-nvrtc-cu12==12.9.*" "nvidia-cuda-nvcc-cu12==12.9.*" "nvidia-cuda-runtime-cu12==12.9.*")
if [ -x "$cu12/nvidia/cuda_nvcc/bin/ptxas" ] || timeout 600 python3 -m pip install -q --disable-pip-version-check \
    --upgrade --target "$cu12" "${pkgs12[@]}"; then
  chmod +x "$cu12/nvidia/cuda_nvcc/bin/ptxas"
  python3 scripts/nvrtc_compile.py --nvrtc "$cu12/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" \
    --ptxas "$cu12/nvidia/cuda_nvcc/bin/ptxas" --include "$cu12/nvidia/cuda_runtime/include" \
    --arch 72 --out target/cuda-check || exit 1
else
  echo "SKIP CUDA kernel build check for sm_72: could not install NVRTC 12.9 from PyPI"
fi
