#!/usr/bin/env python3
"""Compiles xtr-pipe's CUDA kernel sources with NVRTC, without a GPU.

MLX's CUDA backend compiles the kernels in src/mlx/gpu/kernels.cc at run time,
so a typo there would only show up on a GPU machine, after its kit is installed.
This script catches it here: it takes every `R"cuda( ... )cuda"` block, wraps
each kernel body in the signature MLX generates for it (`fast::cuda_kernel`:
inputs, their shape/ndim when the body names them, outputs, the template
constants as `constexpr`/`using`), and compiles it for sm_90 with NVRTC.

    python3 -m venv /tmp/nvrtc && /tmp/nvrtc/bin/pip install \\
        nvidia-cuda-nvrtc-cu12 nvidia-cuda-runtime-cu12
    /tmp/nvrtc/bin/python scripts/check-gpu-kernels.py

`Shape` here is a stand-in for MLX's `cuda::std::array<int32_t, 10>`
(indexing is all the kernels use).
"""

import ctypes
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE = os.path.join(HERE, "..", "src", "mlx", "gpu", "kernels.cc")

# kernel name -> (inputs [(name, ctype)], outputs [(name, ctype)], constants)
# for each dtype the kernel is instantiated with.
KERNELS = {
    "kDropout": [
        (
            [("x", t), ("key", "uint32_t")],
            [("y", t)],
            {"T": t, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16", "__half")
    ],
    "kSoftmaxDropout": [
        (
            [("s", t), ("key", "uint32_t")],
            [("y", t)],
            {"T": t, "PER_LANE": 4, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16", "__half")
    ],
    "kSoftmaxDropoutVjp": [
        (
            [("s", t), ("dy", t), ("key", "uint32_t")],
            [("ds", t)],
            {"T": t, "PER_LANE": 4, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16", "__half")
    ],
    "kActDropout": [
        (
            [("a", t), ("g", t), ("key", "uint32_t")],
            [("y", t)],
            {"T": t, "ACT": act, "GATED": gated, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16")
        for act in range(4)
        for gated in (False, True)
    ],
    "kActDropoutVjp": [
        (
            [("a", t), ("g", t), ("dy", t), ("key", "uint32_t")],
            [("da", t), ("dg", t)],
            {"T": t, "ACT": act, "GATED": gated, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16")
        for act in range(4)
        for gated in (False, True)
    ],
    "kAddDropout": [
        (
            [("h", t), ("x", t), ("key", "uint32_t")],
            [("y", t)],
            {"T": t, "THRESHOLD_BITS": 429496729, "SCALE_BITS": 1066285284},
        )
        for t in ("float", "__nv_bfloat16", "__half")
    ],
}

PRELUDE = """
#include <cuda_bf16.h>
#include <cuda_fp16.h>
typedef unsigned int uint32_t;
typedef int int32_t;
struct Shape { int32_t d[10]; __device__ int32_t operator[](int i) const { return d[i]; } };
"""


def nvrtc():
    import nvidia.cuda_nvrtc  # noqa: F401  (pip: nvidia-cuda-nvrtc-cu12)

    base = os.path.dirname(sys.modules["nvidia.cuda_nvrtc"].__path__[0])
    libs = glob.glob(os.path.join(base, "cuda_nvrtc", "lib", "libnvrtc.so*"))
    if not libs:
        sys.exit("libnvrtc not found: pip install nvidia-cuda-nvrtc-cu12")
    include = os.path.join(base, "cuda_runtime", "include")
    if not os.path.isdir(include):
        sys.exit("CUDA headers not found: pip install nvidia-cuda-runtime-cu12")
    return ctypes.CDLL(sorted(libs)[0]), include


def blocks(text):
    found = {}
    for m in re.finditer(r'const char \*const (\w+) = R"cuda\((.*?)\)cuda";', text, re.S):
        found[m.group(1)] = m.group(2)
    return found


def wrap(name, header, body, inputs, outputs, consts):
    params = []
    for n, t in inputs:
        params.append(f"const {t}* {n}")
        if f"{n}_shape" in body:
            params.append(f"const __grid_constant__ Shape {n}_shape")
        if f"{n}_ndim" in body:
            params.append(f"const __grid_constant__ int {n}_ndim")
    params += [f"{t}* {n}" for n, t in outputs]
    def const(k, v):
        if isinstance(v, str):
            return f"using {k} = {v};"
        if isinstance(v, bool):
            return f"constexpr bool {k} = {'true' if v else 'false'};"
        return f"constexpr int {k} = {v};"

    lines = [const(k, v) for k, v in consts.items()]
    return (
        PRELUDE + header + f'extern "C" __global__ void {name}(' + ", ".join(params) + ") {\n"
        + "\n".join(lines) + body + "\n}\n"
    )


def compile_one(lib, include, src, label):
    prog = ctypes.c_void_p()
    rc = lib.nvrtcCreateProgram(ctypes.byref(prog), src.encode(), label.encode(), 0, None, None)
    if rc:
        sys.exit(f"nvrtcCreateProgram failed: {rc}")
    opts = [b"--gpu-architecture=compute_90", b"--std=c++17", f"-I{include}".encode()]
    arr = (ctypes.c_char_p * len(opts))(*opts)
    rc = lib.nvrtcCompileProgram(prog, len(opts), arr)
    size = ctypes.c_size_t()
    lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    lib.nvrtcGetProgramLog(prog, log)
    lib.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace").strip()


def main():
    lib, include = nvrtc()
    found = blocks(open(SOURCE).read())
    header = found.pop("kHeader", "")
    failed = 0
    for name, body in found.items():
        if name not in KERNELS:
            print(f"{name}: no signature in this script; add it to KERNELS")
            failed += 1
            continue
        for inputs, outputs, consts in KERNELS[name]:
            label = f"{name}<" + ",".join(str(v) for v in consts.values() if not isinstance(v, int) or isinstance(v, bool) or v < 10) + ">"
            rc, log = compile_one(lib, include, wrap(name, header, body, inputs, outputs, consts), label)
            print(f"{label}: {'ok' if rc == 0 else 'FAILED'}")
            if log:
                print(log)
            failed += rc != 0
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
