#!/usr/bin/env python3
"""Compiles the device code of plugins/cuda/selective_scan.cu with NVRTC to PTX, then to a cubin
with ptxas, for GPUs that the installed nvcc no longer targets (sm_72, Jetson Xavier: CUDA 13
dropped it; NVRTC and ptxas of CUDA 12.9 from PyPI still have it).

    python3 scripts/nvrtc_compile.py --nvrtc LIBNVRTC --ptxas PTXAS --include DIR --arch 72 --out DIR

Every kernel instantiation the host launcher uses is requested by name (NVRTC compiles templates
only when asked), so the cubin holds the same kernels as an nvcc build. Exits non-zero with NVRTC's
log when compilation fails. Needs no GPU.
"""

import argparse
import ctypes
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
SOURCE = os.path.join(ROOT, "plugins", "cuda", "selective_scan.cu")
TYPES = ("float", "__half", "__nv_bfloat16")
# The kernels gm_selective_scan_cuda launches: the staged kernel for segments of 7 and 14 steps and
# whole planes (0) in every type, of 28 steps in the 2-byte types (GM_SCAN_K28), and v1.
KERNELS = (
    [f"scan_staged_kernel<{t}, {k}>" for t in TYPES for k in (7, 14, 0)]
    + [f"scan_staged_kernel<{t}, 28>" for t in TYPES[1:]]
    + [f"selective_scan_kernel<{t}>" for t in TYPES]
)


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


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nvrtc", required=True, help="path of libnvrtc.so")
    ap.add_argument("--ptxas", required=True, help="path of ptxas (same CUDA major version)")
    ap.add_argument("--include", action="append", default=[], help="include folder with cuda_fp16.h (repeatable)")
    ap.add_argument("--arch", default="72", help="compute capability without the dot (default 72)")
    ap.add_argument("--out", required=True, help="folder for the .ptx and .cubin")
    args = ap.parse_args()

    nvrtc = ctypes.CDLL(args.nvrtc)
    major, minor = ctypes.c_int(), ctypes.c_int()
    check(nvrtc, nvrtc.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    with open(SOURCE, "rb") as f:
        src = f.read()
    prog = ctypes.c_void_p()
    check(nvrtc, nvrtc.nvrtcCreateProgram(ctypes.byref(prog), src, b"selective_scan.cu", 0, None, None),
          "nvrtcCreateProgram")
    for name in KERNELS:
        check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, f"&{name}".encode()), f"nvrtcAddNameExpression {name}")
    opts = [f"--gpu-architecture=compute_{args.arch}", "-std=c++17", "-default-device", "-DNDEBUG"]
    opts += [f"-I{d}" for d in args.include]
    c_opts = (ctypes.c_char_p * len(opts))(*[o.encode() for o in opts])
    status = nvrtc.nvrtcCompileProgram(prog, len(opts), c_opts)
    check(nvrtc, status, "compile (" + " ".join(opts) + ")", prog)

    size = ctypes.c_size_t()
    check(nvrtc, nvrtc.nvrtcGetPTXSize(prog, ctypes.byref(size)), "nvrtcGetPTXSize")
    ptx = ctypes.create_string_buffer(size.value)
    check(nvrtc, nvrtc.nvrtcGetPTX(prog, ptx), "nvrtcGetPTX")
    os.makedirs(args.out, exist_ok=True)
    ptx_path = os.path.join(args.out, f"selective_scan_sm{args.arch}.ptx")
    with open(ptx_path, "wb") as f:
        f.write(ptx.value)
    cubin = os.path.join(args.out, f"selective_scan_sm{args.arch}.cubin")
    subprocess.run([args.ptxas, f"-arch=sm_{args.arch}", "-O3", ptx_path, "-o", cubin], check=True)
    entries = sum(1 for line in ptx.value.decode().splitlines() if ".entry " in line)
    print(f"ok   CUDA kernel compiles for sm_{args.arch} with NVRTC {major.value}.{minor.value} + ptxas "
          f"({entries} kernels, {os.path.getsize(cubin)} byte cubin)")


if __name__ == "__main__":
    main()
