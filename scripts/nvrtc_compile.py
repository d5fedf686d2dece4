#!/usr/bin/env python3
"""Compiles the device code of the CUDA kernels in plugins/cuda (selective_scan.cu, layer_norm.cu,
depthwise_conv.cu) with NVRTC to PTX, then to a cubin with ptxas, for GPUs that the installed nvcc no longer targets
(sm_72, Jetson Xavier: CUDA 13 dropped it; NVRTC and ptxas of CUDA 12.9 from PyPI still have it).

    python3 scripts/nvrtc_compile.py --nvrtc LIBNVRTC --ptxas PTXAS --include DIR --arch 72 --out DIR

Every kernel instantiation a file's host launcher uses is requested by name (NVRTC compiles templates
only when asked), so each cubin holds the same kernels as an nvcc build. --source picks one file
(default: all). Exits non-zero with NVRTC's log when compilation fails. Needs no GPU.
"""

import argparse
import ctypes
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
CUDA_DIR = os.path.join(ROOT, "plugins", "cuda")
TYPES = ("float", "__half", "__nv_bfloat16")
# The kernels gm_selective_scan_cuda launches: the staged kernel for segments of 7 and 14 steps and
# whole planes (0) in every type, of 28 steps in the 2-byte types (GM_SCAN_K28), and v1.
SCAN_KERNELS = (
    [f"scan_staged_kernel<{t}, {k}>" for t in TYPES for k in (7, 14, 0)]
    + [f"scan_staged_kernel<{t}, 28>" for t in TYPES[1:]]
    + [f"selective_scan_kernel<{t}>" for t in TYPES]
)
# The kernels gm_grouped_layer_norm_cuda launches (launch_norm_vec / launch_norm_per): V = 1 and 4
# elements per load in every type, 8 in the 2-byte types; PER = 4, 8, 16, 32 values per lane, PER ≥ V.
NORM_KERNELS = [
    f"grouped_layer_norm_kernel<{t}, {v}, {per}>"
    for t in TYPES
    for v in ((1, 4) if t == "float" else (1, 4, 8))
    for per in (4, 8, 16, 32)
    if per >= v
]
# The kernels gm_depthwise_conv_cuda launches (launch_conv_k, and launch_nhwc_k for channels_last):
# K = 1, 3, 5, 7 in every type (the load width, and for NHWC the activation, are switches inside the
# kernel, not template parameters).
DWCONV_KERNELS = [f"{kernel}<{t}, {k}>" for kernel in ("depthwise_conv_kernel", "depthwise_conv_nhwc_kernel")
                  for t in TYPES for k in (1, 3, 5, 7)]
# name -> (file in plugins/cuda, kernel instantiations)
SOURCES = {
    "selective_scan": ("selective_scan.cu", SCAN_KERNELS),
    "layer_norm": ("layer_norm.cu", NORM_KERNELS),
    "depthwise_conv": ("depthwise_conv.cu", DWCONV_KERNELS),
}


def check(nvrtc, status, what, prog=None):
    if status == 0:
        return
    nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
    msg = nvrtc.nvrtcGetErrorString(status).decode()
    log = ""
    if prog is not None:
        size = ctypes.c_size_t()
        nvrtc.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
        buf = ctypes.create_string_buffer(size.value)
        nvrtc.nvrtcGetProgramLog(prog, buf)
        log = buf.value.decode(errors="replace")
    sys.exit(f"NVRTC {what} failed: {msg}\n{log}")


def compile_source(nvrtc, version, name, args):
    """NVRTC → PTX → ptxas → cubin for one file of SOURCES; prints one `ok` line."""
    file_name, kernels = SOURCES[name]
    with open(os.path.join(CUDA_DIR, file_name), "rb") as f:
        src = f.read()
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, file_name.encode(), 0, None, None),
          "nvrtcCreateProgram")
    for kernel in kernels:
        check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, f"&{kernel}".encode()), f"nvrtcAddNameExpression {kernel}")
    opts = [f"--gpu-architecture=compute_{args.arch}", "-std=c++17", "-default-device", "-DNDEBUG"]
    # CUDA_DIR: the kernels' own headers (element_io.cuh), then the toolkit's.
    opts += [f"-I{d}" for d in [CUDA_DIR] + args.include]
    c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), c_opts)
    check(nvrtc, status, f"compile of {file_name} (" + " ".join(opts) + ")", prog)

    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    nvrtc.nvrtcDestroyProgram(ctypes.byref(prog))
    os.makedirs(args.out, exist_ok=True)
    ptx_path = os.path.join(args.out, f"{name}_sm{args.arch}.ptx")
    with open(ptx_path, "wb") as f:
        f.write(ptx.value)
    cubin = os.path.join(args.out, f"{name}_sm{args.arch}.cubin")
    subprocess.run([args.ptxas, f"-arch=sm_{args.arch}", "-O3", ptx_path, "-o", cubin], check=True)
    entries = sum(1 for line in ptx.value.decode().splitlines() if ".entry " in line)
    if entries < len(kernels):
        sys.exit(f"{file_name}: PTX holds {entries} kernels, {len(kernels)} were requested")
    print(f"ok   CUDA kernel {file_name} compiles for sm_{args.arch} with NVRTC {version} + ptxas "
          f"({entries} kernels, {os.path.getsize(cubin)} byte cubin)")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvrtc", required=True, help="path of libnvrtc.so")
    ap.add_argument("--ptxas", required=True, help="path of ptxas (same CUDA major version)")
    ap.add_argument("--include", action="append", default=[], help="include folder with cuda_fp16.h (repeatable)")
    ap.add_argument("--arch", default="72", help="compute capability without the dot (default 72)")
    ap.add_argument("--out", required=True, help="folder for the .ptx and .cubin files")
    ap.add_argument("--source", choices=sorted(SOURCES), action="append",
                    help="compile only this file (repeatable; default: all)")
    args = ap.parse_args()

    nvrtc = ctypes.CDLL(args.nvrtc)
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(nvrtc, nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    for name in args.source or SOURCES:
        compile_source(nvrtc, f"{major.value}.{minor.value}", name, args)


if __name__ == "__main__":
    main()
