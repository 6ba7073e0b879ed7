"""Builds advlib's unchanged `.cu` files as host C++ against `cuda_shim.h` and
launches their kernels through ctypes, with CuPy's `kernel(grid, block, args)`
convention.

Preprocessing is mechanical and keeps line numbers, so compiler messages point
at the original file:

- each `asm volatile("<PTX instruction>" : outputs : inputs)` becomes a call of
  the shim's emulation of that instruction (an instruction without one fails,
  by name);
- each `__shared__` declaration registers its object, so that it is refilled
  with 0xA5 before every block;
- the shim is included first, and every `extern "C" __global__` kernel is
  exported as `launch_<name>` and `signature_<name>`.

Launches check what a GPU would not: each argument's kind and size against the
kernel's C++ signature (a pointer's element size against the array's dtype, a
scalar's width against the parameter's), that arrays live "on the device" (are
`DeviceArray`s) and are C-contiguous, and CUDA's grid and block limits.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence

import numpy as np

SHIM = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_shim.h")
# Hidden visibility and -Bsymbolic: each library binds to its own kernels and globals,
# so a mutant loaded beside the original never runs the original's code.
FLAGS = (
    "-std=c++14",
    "-O1",
    "-fPIC",
    "-shared",
    "-pthread",
    "-ffp-contract=off",
    "-fvisibility=hidden",
    "-Wl,-Bsymbolic",
    "-Wall",
    "-Wno-unused-function",
    "-Wno-unused-variable",
)
# PTX mnemonic -> the shim's emulation
PTX = {
    "mma.sync.aligned.m16n8k256.row.col.s32.b1.b1.s32.and.popc": "::emu_ptx::mma_m16n8k256_and_popc"
}
_KERNEL = re.compile(
    r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
    r"(\w+)\s*\("
)
_ASM = re.compile(r"asm\s+volatile\s*\((?P<body>.*?)\)\s*;", re.S)
_SHARED = re.compile(r"(__shared__\s+[\w\s]+?\s(\w+)\s*(?:\[[^;]*\])?\s*;)")


class EmulationError(RuntimeError):
    """A kernel that cannot be built, or a launch that a GPU would get wrong."""


def compiler() -> str:
    """The C++ compiler, or "" if none is installed."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or ""


def _operands(text: str) -> list[str]:
    """'"+r"(acc[0]), "r"(a0)' -> ['+:acc[0]', ':a0'] (the constraint's '+' kept)."""
    found = re.findall(r'"([=+]?)\w+"\s*\(([^()]*(?:\([^()]*\))?[^()]*)\)', text)
    return [f"{mode}:{expr.strip()}" for mode, expr in found]


def _translate_asm(match: re.Match) -> str:
    body = match.group("body")
    parts = body.split(":")
    template = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', parts[0])).replace("\\n", "")
    mnemonic = template.split()[0]
    if mnemonic not in PTX:
        raise EmulationError(f"no emulation of the PTX instruction {mnemonic!r}")
    operands = _operands(parts[1]) + (_operands(parts[2]) if len(parts) > 2 else [])
    groups = re.findall(r"\{([^}]*)\}", template)
    args = []
    for index, group in enumerate(groups):
        for token in group.split(","):
            mode, expr = operands[int(token.strip().lstrip("%"))].split(":", 1)
            # the first group is the destination: written through a pointer
            args.append(f"&({expr})" if index == 0 else f"({expr})")
    call = f"{PTX[mnemonic]}({', '.join(args)});"
    return call + "\n" * match.group(0).count("\n")


def preprocess(source: str, path: str) -> str:
    """The host C++ for one `.cu` file (line-preserving)."""
    text = _ASM.sub(_translate_asm, source)
    text = _SHARED.sub(
        lambda m: f"{m.group(1)} ::emu::shared_object(&{m.group(2)}, sizeof {m.group(2)});", text
    )
    names = _KERNEL.findall(source)
    return f'#include "{SHIM}"\n#line 1 "{path}"\n{text}\n' + "".join(
        f"EMU_REGISTER({name})\n" for name in names
    )


def build(source: str, path: str, build_dir: str = None) -> str:
    """Compiles one kernel file to a shared library (cached by content); returns its path."""
    cxx = compiler()
    if not cxx:
        raise EmulationError("no C++ compiler (g++) is installed")
    code = preprocess(source, path)
    with open(SHIM) as handle:
        key = hashlib.sha256((code + handle.read() + cxx + " ".join(FLAGS)).encode()).hexdigest()
    build_dir = build_dir or os.path.join(tempfile.gettempdir(), "advlib-cudaemu")
    os.makedirs(build_dir, exist_ok=True)
    library = os.path.join(build_dir, f"{os.path.basename(path)}.{key[:16]}.so")
    if not os.path.exists(library):
        # per-process names: parallel test workers may build the same file at once
        cpp = f"{library[:-3]}.{os.getpid()}.cpp"
        with open(cpp, "w") as handle:
            handle.write(code)
        temporary = f"{library}.{os.getpid()}.tmp"
        result = subprocess.run([cxx, *FLAGS, cpp, "-o", temporary], capture_output=True, text=True)
        if result.returncode != 0:
            raise EmulationError(
                f"{path} does not build under the CUDA shim:\n{result.stderr[-4000:]}"
            )
        os.replace(temporary, library)
    return library


class DeviceArray(np.ndarray):
    """An array "on the device": the only kind of array a kernel accepts."""

    def get(self) -> np.ndarray:
        return np.array(self, copy=True).view(np.ndarray)


_GRID_LIMITS = (2**31 - 1, 65535, 65535)
_BLOCK_LIMITS = (1024, 1024, 64)


def _dims(value) -> tuple:
    dims = tuple(int(v) for v in (value if isinstance(value, tuple) else (value,)))
    return dims + (1,) * (3 - len(dims))


class Kernel:
    """One emulated kernel, called as CuPy calls a RawKernel: kernel(grid, block, args)."""

    def __init__(self, library: ctypes.CDLL, name: str, file: str):
        self.name, self.file = name, file
        self._launch = getattr(library, f"launch_{name}")
        self._launch.restype = ctypes.c_int
        describe = getattr(library, f"signature_{name}")
        describe.restype = ctypes.c_char_p
        self.signature = describe().decode().split(",")

    def __call__(self, grid, block, args: Sequence) -> None:
        grid, block = _dims(grid), _dims(block)
        where = f"{self.name} ({self.file})"
        for dims, limits, what in ((grid, _GRID_LIMITS, "grid"), (block, _BLOCK_LIMITS, "block")):
            if any(d < 1 or d > limit for d, limit in zip(dims, limits)):
                raise EmulationError(f"{where}: {what} {dims} is outside CUDA's limits {limits}")
        if block[0] * block[1] * block[2] > 1024:
            raise EmulationError(f"{where}: block {block} has more than 1024 threads")
        if len(args) != len(self.signature):
            raise EmulationError(f"{where} takes {len(self.signature)} arguments, got {len(args)}")
        holders = [
            self._argument(code, value, index, where)
            for index, (code, value) in enumerate(zip(self.signature, args))
        ]
        pointers = (ctypes.c_void_p * len(holders))(
            *[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders]
        )
        error = ctypes.create_string_buffer(1024)
        if self._launch(*grid, *block, pointers, error, ctypes.sizeof(error)):
            raise EmulationError(f"{where}: {error.value.decode()}")

    @staticmethod
    def _argument(code: str, value, index: int, where: str):
        kind, size = code[0], int(code[1:])
        if kind == "p":
            if not isinstance(value, DeviceArray):
                raise EmulationError(
                    f"{where}: argument {index} must be a device array, got {type(value).__name__}"
                )
            if not value.flags.c_contiguous:
                raise EmulationError(
                    f"{where}: argument {index} is not C-contiguous; the "
                    "kernel would read a strided view as dense memory"
                )
            if value.dtype.itemsize != size:
                raise EmulationError(
                    f"{where}: argument {index} has dtype {value.dtype}, but "
                    f"the kernel reads {size}-byte elements"
                )
            return ctypes.c_void_p(value.ctypes.data)
        if not isinstance(value, np.generic):
            raise EmulationError(
                f"{where}: scalar argument {index} must be a NumPy scalar "
                f"of a fixed width, got {type(value).__name__}"
            )
        if value.dtype.itemsize != size or (kind == "f") != (value.dtype.kind == "f"):
            raise EmulationError(
                f"{where}: argument {index} is {value.dtype}, but the "
                f"kernel's parameter is a {size}-byte "
                f"{'float' if kind == 'f' else 'integer'}"
            )
        return (ctypes.c_char * size).from_buffer_copy(value.tobytes())


def load(source: str, path: str) -> dict[str, Kernel]:
    """{name: Kernel} of one kernel file."""
    library = ctypes.CDLL(build(source, path))
    return {name: Kernel(library, name, os.path.basename(path)) for name in _KERNEL.findall(source)}
