# Sourced by the GPU scripts that run our Rust binaries on onnxruntime-gpu (gm_run_cuda.sh,
# validate_ort_cuda.sh). `use_ort_gpu DIR` takes the wheel staged as /tmp/stage/ort-gpu.part?
# (../shared/gpu/stage-onnxruntime-gpu.sh), unpacks only its libonnxruntime*.so into DIR and exports
# ORT_DYLIB_PATH (the main library) and LD_LIBRARY_PATH (the CUDA runtime, cuBLAS and cuDNN libraries of
# the machine's pip packages, which the CUDA execution provider loads).
use_ort_gpu() {
  local dir=$1 site
  cat /tmp/stage/ort-gpu.part? > "$dir/ort.whl" || return 1
  python3 - "$dir" <<'PY' || return 1
import sys, zipfile
folder = sys.argv[1]
wheel = zipfile.ZipFile(folder + "/ort.whl")
for name in wheel.namelist():
    if name.startswith("onnxruntime/capi/lib") and ".so" in name:
        open(folder + "/" + name.split("/")[-1], "wb").write(wheel.read(name))
PY
  site=$(python3 -c 'import site; print(site.getsitepackages()[0])')
  LD_LIBRARY_PATH=$(find "$site/nvidia" "$site/torch/lib" -name 'lib*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd:)
  export LD_LIBRARY_PATH
  ORT_DYLIB_PATH=$(ls "$dir"/libonnxruntime.so.1.* | head -1)
  export ORT_DYLIB_PATH
  [ -f "$ORT_DYLIB_PATH" ]
}
