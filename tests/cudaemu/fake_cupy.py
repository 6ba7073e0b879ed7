"""A stand-in for the few parts of CuPy that `cupy_backend.py` uses, with CuPy's
semantics (checked against CuPy 13 / 14 source), backed by NumPy and by the
emulated kernels. Anything else is missing on purpose: a backend that starts to
use another CuPy function fails here until that function is checked and added.

- `empty` fills its memory with 0xA5, so outputs that a kernel never writes show.
- `packbits` / `unpackbits` raise NotImplementedError when given `axis`, as
  CuPy's do (`cupy/_binary/packing.py`).
- `RawModule(code=..., options=...)` builds the source with the emulator and
  records which sources were compiled.
"""

from __future__ import annotations

import os
import types

import numpy as np

from cudaemu import emulator
from cudaemu.emulator import DeviceArray


def make(compute_capability: int = 90) -> types.ModuleType:
    """A fresh fake `cupy` module reporting the given compute capability."""
    cupy = types.ModuleType("cupy")
    cupy.ndarray = DeviceArray
    for name in ("uint8", "uint32", "int32", "int64", "float32", "bool_"):
        setattr(cupy, name, getattr(np, name))
    cupy.compiled: list[str] = []  # the sources RawModule compiled, in order

    def asarray(a, dtype=None):
        if isinstance(a, DeviceArray) and (dtype is None or a.dtype == dtype):
            return a
        return np.array(a, dtype=dtype, copy=True).view(DeviceArray)

    def ascontiguousarray(a, dtype=None):
        if (
            isinstance(a, DeviceArray)
            and a.flags.c_contiguous
            and (dtype is None or a.dtype == np.dtype(dtype))
        ):
            return a
        return np.ascontiguousarray(a, dtype=dtype).view(DeviceArray)

    def empty(shape, dtype=float):
        dtype = np.dtype(dtype)
        shape = (shape,) if np.isscalar(shape) else tuple(shape)
        count = int(np.prod(shape, dtype=np.int64))
        garbage = np.full(count * dtype.itemsize, 0xA5, np.uint8)
        return garbage.view(dtype).reshape(shape).view(DeviceArray)

    def zeros(shape, dtype=float):
        return np.zeros(shape, dtype).view(DeviceArray)

    def packbits(a, axis=None, bitorder="big"):
        if axis is not None:
            raise NotImplementedError("axis option is not supported yet")
        return np.packbits(np.asarray(a).ravel(), bitorder=bitorder).view(DeviceArray)

    def unpackbits(a, axis=None, count=None, bitorder="big"):
        if axis is not None:
            raise NotImplementedError("axis option is not supported yet")
        if count is not None:
            raise NotImplementedError("count option is not supported yet")
        return np.unpackbits(np.asarray(a).ravel(), bitorder=bitorder).view(DeviceArray)

    class RawModule:
        def __init__(self, code=None, *, options=(), name_expressions=None, **unused):
            from advlib.qnn.engine import nvrtc

            name = next((n for n, s in nvrtc.sources().items() if s == code), "kernel.cu")
            cupy.compiled.append(name)
            self._kernels = emulator.load(code, os.path.join(nvrtc.KERNEL_DIR, name))

        def get_function(self, name):
            if name not in self._kernels:
                raise AttributeError(f"no function {name!r} in this module")
            return self._kernels[name]

    class Device:
        def __init__(self, device=None):
            self.compute_capability = str(compute_capability)  # CuPy gives a string

    runtime = types.SimpleNamespace(getDeviceCount=lambda: 1)
    cupy.cuda = types.SimpleNamespace(Device=Device, runtime=runtime)
    for function in (asarray, ascontiguousarray, empty, zeros, packbits, unpackbits):
        setattr(cupy, function.__name__, function)
    cupy.RawModule = RawModule
    return cupy
