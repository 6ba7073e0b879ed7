"""Compiles the engine's CUDA sources with NVRTC, with or without a GPU. NumPy-free.

CI uses this to prove that every `.cu` file compiles for the architectures the
engine targets; the CuPy backend compiles the same sources at run time.
NVRTC comes from the pip package `nvidia-cuda-nvrtc-cu12` (or a CUDA install).
"""

from __future__ import annotations

import ctypes
import glob
import os
import re

KERNEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kernels")
ARCHITECTURES = ("sm_75", "sm_80", "sm_86", "sm_90")
OPTIONS = ("--std=c++14", "-default-device")
TENSOR_CORE_FILE = "binary_mma.cu"
# files that need a minimum compute capability (m16n8k256 .b1 with .and.popc: sm_80)
MIN_COMPUTE = {TENSOR_CORE_FILE: 80}
_KERNEL = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
    r"(\w+)\s*\("
)


class CompileError(RuntimeError):
    """NVRTC rejected a source; the message holds its log."""


def sources() -> dict[str, str]:
    """{file name: CUDA source} of every kernel file."""
    out = {}
    for path in sorted(glob.glob(os.path.join(KERNEL_DIR, "*.cu"))):
        with open(path) as handle:
            out[os.path.basename(path)] = handle.read()
    return out


def kernel_names(source: str) -> list[str]:
    """The `extern "C" __global__` functions a source defines."""
    return _KERNEL.findall(source)


def architectures_for(file: str, architectures=ARCHITECTURES) -> list[str]:
    """The architectures of `architectures` that a kernel file targets."""
    low = MIN_COMPUTE.get(file, 0)
    return [arch for arch in architectures if int(arch.split("_")[1]) >= low]


def _library_candidates() -> list[str]:
    candidates = []
    try:
        import nvidia.cuda_nvrtc

        for root in nvidia.cuda_nvrtc.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so*")))
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            candidates += sorted(glob.glob(os.path.join(home, "lib64", "libnvrtc.so*")))
    return candidates + ["libnvrtc.so.12", "libnvrtc.so"]


def load_library() -> ctypes.CDLL:
    """The NVRTC shared library; raises OSError naming where it looked."""
    tried = []
    for candidate in _library_candidates():
        if "alt" in os.path.basename(candidate) or "builtins" in os.path.basename(candidate):
            continue
        try:
            return ctypes.CDLL(candidate)
        except OSError:
            tried.append(candidate)
    raise OSError(
        "NVRTC not found (pip install nvidia-cuda-nvrtc-cu12); tried "
        f"{', '.join(tried) or 'nothing'}."
    )


def compile_source(
    source: str, name: str = "kernel.cu", arch: str = "sm_90", library: ctypes.CDLL | None = None
) -> bytes:
    """Compiles CUDA C++ to a cubin for `arch`; raises CompileError with NVRTC's log."""
    nvrtc = library or load_library()
    program = ctypes.c_void_p()
    check = lambda status, what: _check(nvrtc, status, what, program, name, arch)
    check(
        nvrtc.nvrtcCreateProgram(
            ctypes.byref(program), source.encode(), name.encode(), 0, None, None
        ),
        "nvrtcCreateProgram",
    )
    try:
        options = [f"--gpu-architecture={arch}".encode()] + [o.encode() for o in OPTIONS]
        array = (ctypes.c_char_p * len(options))(*options)
        status = nvrtc.nvrtcCompileProgram(program, len(options), array)
        if status != 0:
            raise CompileError(f"{name} does not compile for {arch}:\n{_log(nvrtc, program)}")
        size = ctypes.c_size_t()
        check(nvrtc.nvrtcGetCUBINSize(program, ctypes.byref(size)), "nvrtcGetCUBINSize")
        cubin = ctypes.create_string_buffer(size.value)
        check(nvrtc.nvrtcGetCUBIN(program, cubin), "nvrtcGetCUBIN")
        return cubin.raw
    finally:
        nvrtc.nvrtcDestroyProgram(ctypes.byref(program))


def _log(nvrtc, program) -> str:
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    return log.value.decode(errors="replace")


def _check(nvrtc, status, what, program, name, arch):
    if status != 0:
        nvrtc.nvrtcGetErrorString.restype = ctypes.c_char_p
        message = nvrtc.nvrtcGetErrorString(status).decode()
        raise CompileError(f"{what} failed for {name} ({arch}): {message}")


def compile_all(architectures=ARCHITECTURES) -> dict[str, dict[str, int]]:
    """Compiles every kernel file for every architecture; returns cubin sizes."""
    library = load_library()
    return {
        name: {
            arch: len(compile_source(source, name, arch, library))
            for arch in architectures_for(name, architectures)
        }
        for name, source in sources().items()
    }


if __name__ == "__main__":
    for file_name, sizes in compile_all().items():
        print(file_name, ", ".join(f"{arch}: {size} bytes" for arch, size in sizes.items()))
