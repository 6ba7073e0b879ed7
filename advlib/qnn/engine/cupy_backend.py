"""The GPU fast path: the engine's layers as CUDA kernels loaded through CuPy.

The kernels live beside this file as `.cu` sources (see `kernels/`). They
reproduce `numpy_backend` bit for bit: the same packing, integer
accumulators, integer thresholds, and float logits rounded without FMA.
Dense layers use tensor cores (`mma.sync ... .b1 ... .and.popc`) on compute
capability 8.0 and newer, CUDA cores otherwise; convolutions run as implicit
GEMMs on CUDA cores.

The CuPy surface is kept small, and each call was checked against CuPy's own
source (13 and 14): `cuda.runtime.getDeviceCount`, `cuda.Device().compute_capability`,
`RawModule(code=, options=)` and `get_function`, kernel launches
`kernel(grid, block, args)`, `asarray`, `empty(shape, dtype)`, `zeros(shape, dtype)`,
`ascontiguousarray(a, dtype=None)`, and the ndarray's `shape`, `dtype`, `reshape`
and `get`. Packing, unpacking and flattening are kernels of our own (CuPy's
`packbits` / `unpackbits` refuse `axis`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from advlib import _checks
from advlib.qnn.engine import nvrtc
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.packing import words_for

GEMM_KERNELS = ("auto", "cuda", "tensor")
_TILE = 64


def available() -> tuple[bool, str]:
    """(True, "") if CuPy and a CUDA device are usable, else (False, why)."""
    try:
        import cupy
    except ImportError as error:
        return False, f"CuPy is not installed ({error})"
    try:
        if cupy.cuda.runtime.getDeviceCount() < 1:
            return False, "no CUDA device"
    except Exception as error:  # no driver, no device
        return False, f"no usable CUDA device ({type(error).__name__}: {error})"
    return True, ""


def _ints(*values) -> tuple:
    """Kernel arguments as the 32-bit integers the CUDA signatures declare."""
    return tuple(np.int32(v) for v in values)


class Kernels:
    """The kernels of the `.cu` files, by function name, each file compiled on first use.

    The tensor-core file (`nvrtc.MIN_COMPUTE`) is compiled only on GPUs that
    support it, so older GPUs never compile it and run the CUDA-core kernels.
    """

    def __init__(self):
        import cupy

        self.cupy = cupy
        self.compute_capability = int(cupy.cuda.Device().compute_capability)  # "90" -> 90
        self.sources = nvrtc.sources()
        self.files = {
            name: file
            for file, source in self.sources.items()
            for name in nvrtc.kernel_names(source)
        }
        self._modules: dict[str, Any] = {}  # cupy.RawModule, by file
        self._cache: dict[str, Any] = {}  # cupy.RawKernel, by name

    def supports(self, file: str) -> bool:
        return self.compute_capability >= nvrtc.MIN_COMPUTE.get(file, 0)

    def __getitem__(self, name: str):
        if name not in self._cache:
            if name not in self.files:
                raise KeyError(f"no kernel named {name!r} in {sorted(self.sources)}")
            file = self.files[name]
            if not self.supports(file):
                raise RuntimeError(
                    f"kernel {name!r} ({file}) needs compute capability "
                    f"{nvrtc.MIN_COMPUTE[file] / 10:.1f}; this GPU has "
                    f"{self.compute_capability / 10:.1f}."
                )
            if file not in self._modules:
                self._modules[file] = self.cupy.RawModule(
                    code=self.sources[file], options=nvrtc.OPTIONS
                )
            self._cache[name] = self._modules[file].get_function(name)
        return self._cache[name]


def ternary_pairs(layer: dict, weights: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """A ternary layer's weights t in {-1, 0, +1} as 2N rows of +-1 weights, a over
    b, with a + b = 2 t: a is +1 where w is +1 or masked out, b is +1 where w is +1
    and kept. So the +-1 kernels compute the layer, and its accumulator is half
    the sum of a unit's two. Bits past the fan-in stay 0, as the kernels expect.
    """
    valid = spec_io.pack_like_weights(layer, np.ones((len(weights), spec_io.fan_in(layer)), bool))
    return np.concatenate([(weights | ~mask) & valid, weights & mask])


class CupyBackend:
    """Runs an exported network on the GPU; weights stay on the device.

    Without `spec` and `arrays`, it offers the kernels alone (`gemm`, `conv`,
    `pack_signs`, ...), as the benchmarks and tests use them.
    """

    def __init__(
        self,
        spec: dict | None = None,
        arrays: dict[str, np.ndarray] | None = None,
        gemm: str = "auto",
    ):
        _checks.check_choice("gemm", gemm, GEMM_KERNELS)
        ok, why = available()
        if not ok:
            raise RuntimeError(f"the CuPy backend needs a GPU: {why}.")
        self.kernels = Kernels()
        self.cp = self.kernels.cupy
        tensor_ok = self.kernels.supports(nvrtc.TENSOR_CORE_FILE)
        if gemm == "tensor" and not tensor_ok:
            raise ValueError(
                f"gemm='tensor' needs binary tensor cores (compute capability "
                f"8.0 or newer); this GPU has "
                f"{self.kernels.compute_capability / 10:.1f}. Use 'cuda' or 'auto'."
            )
        self.use_tensor_cores = gemm == "tensor" or (gemm == "auto" and tensor_ok)
        self.spec = spec
        arrays = arrays or {}
        # a ternary layer's masks live on the device inside its +-1 pairs (`ternary_pairs`)
        self.device = {
            name: self.cp.asarray(value)
            for name, value in arrays.items()
            if not name.endswith("/mask")
        }
        for index, layer in enumerate(spec["layers"] if spec else []):
            if layer.get("mask"):
                name = f"layer{index}"
                self.device[f"{name}/weights"] = self.cp.asarray(
                    ternary_pairs(layer, arrays[f"{name}/weights"], arrays[f"{name}/mask"])
                )
        self.weight_ones = {}
        for name, value in self.device.items():
            if name.endswith("/weights"):
                self.weight_ones[name] = self.row_popcounts(value)

    # -- primitives (also used by the GPU tests) ------------------------------------
    # Every array reaches a kernel through cp.ascontiguousarray: kernels index raw
    # memory, and a strided view would be read as if it were dense.
    def row_popcounts(self, rows):
        cp = self.cp
        rows = cp.ascontiguousarray(rows)
        out = cp.empty(rows.shape[0], cp.int32)
        count, words = rows.shape
        self.kernels["row_popcounts"](
            ((count + 255) // 256,), (256,), (rows, out, np.int32(count), np.int32(words))
        )
        return out

    def pack_signs(self, x):
        """Packs floats along the last axis: bit 1 where x >= 0."""
        return self._pack(x, np.float32, "pack_signs", ())

    def bit_planes(self, x8):
        """(8, ...) bit-planes of uint8 values, packed along the last axis."""
        return self._pack(x8, np.uint8, "pack_bit_planes", (8,))

    def _pack(self, x, dtype, kernel, leading):
        cp = self.cp
        x = cp.ascontiguousarray(x, dtype=dtype)
        rows, length = int(np.prod(x.shape[:-1])), x.shape[-1]
        words = words_for(length)
        out = cp.empty(leading + x.shape[:-1] + (words,), cp.uint32)
        self.kernels[kernel](
            ((rows * words + 255) // 256,),
            (256,),
            (x, out, np.int64(rows), np.int32(length), np.int32(words)),
        )
        return out

    def gemm(self, a, b, length, planes=1, epilogue=("int",), b_ones=None, tensor_cores=None):
        """Dense layer: a (planes, M, words) or (M, words) against b (N, words)."""
        cp = self.cp
        a, b = cp.ascontiguousarray(a), cp.ascontiguousarray(b)
        m, words = a.shape[-2], a.shape[-1]
        n = b.shape[0]
        out, extra = self._epilogue_output(m, n, epilogue)
        tensor = self.use_tensor_cores if tensor_cores is None else tensor_cores
        if tensor and planes == 1:
            a_ones = self.row_popcounts(a)
            b_ones = self.row_popcounts(b) if b_ones is None else b_ones
            grid = ((m + 15) // 16, (n + 31) // 32)
            self.kernels[f"mma_{epilogue[0]}"](
                grid,
                (128,),
                (
                    a,
                    b,
                    a_ones,
                    b_ones,
                    out,
                    *_ints(m, n, words, length),
                    *extra,
                ),
            )
        else:
            grid = ((m + _TILE - 1) // _TILE, (n + _TILE - 1) // _TILE)
            self.kernels[f"gemm_{epilogue[0]}"](
                grid,
                (256,),
                (
                    a,
                    b,
                    out,
                    *_ints(m, n, words, length, planes),
                    *extra,
                ),
            )
        return out

    def conv(self, x, b, layer, planes=1, epilogue=("int",)):
        """Convolution: x (planes, n, H, W, words) or (n, H, W, words) as an implicit GEMM."""
        height, width, channels = layer["in_shape"]
        out_h, out_w, _ = layer["out_shape"]
        filters = b.shape[0]  # a ternary layer's pairs: twice the layer's filters
        images = x.shape[-4]
        m = images * out_h * out_w
        out, extra = self._epilogue_output(m, filters, epilogue)
        (top, _), (left, _) = layer["pads"]
        grid = ((m + _TILE - 1) // _TILE, (filters + _TILE - 1) // _TILE)
        self.kernels[f"conv_{epilogue[0]}"](
            grid,
            (256,),
            (
                self.cp.ascontiguousarray(x),
                self.cp.ascontiguousarray(b),
                *_ints(images, height, width, x.shape[-1], channels, out_h, out_w),
                *_ints(*layer["kernel"], *layer["strides"], top, left),
                *_ints(1 if layer.get("pad_value", 0) > 0 else 0, filters, planes),
                out,
                *extra,
            ),
        )
        return out

    def max_pool(self, x, layer):
        cp = self.cp
        n, height, width, words = x.shape
        out_h, out_w, _ = layer["out_shape"]
        out = cp.empty((n, out_h, out_w, words), cp.uint32)
        total = out.size
        (top, _), (left, _) = layer["pads"]
        self.kernels["max_pool_words"](
            ((total + 255) // 256,),
            (256,),
            (
                cp.ascontiguousarray(x),
                out,
                *_ints(n, height, width, words, out_h, out_w),
                *_ints(*layer["pool"], *layer["strides"], top, left),
            ),
        )
        return out

    def _epilogue_output(self, m, n, epilogue):
        cp = self.cp
        kind = epilogue[0]
        if kind == "int":
            return cp.empty((m, n), cp.int32), ()
        if kind == "logits":
            return cp.empty((m, n), cp.float32), (epilogue[1], epilogue[2])
        out_words = words_for(n)
        return (
            cp.zeros((m, out_words), cp.uint32),
            (epilogue[1], epilogue[2], np.int32(out_words)),
        )

    def threshold_pairs(self, acc, threshold, flip):
        """A ternary layer's packed bits from the (M, 2N) accumulators of its pairs."""
        rows, units = acc.shape[0], acc.shape[1] // 2
        out_words = words_for(units)
        out = self.cp.empty((rows, out_words), self.cp.uint32)
        self.kernels["threshold_pairs"](
            ((rows * out_words + 255) // 256,),
            (256,),
            (
                self.cp.ascontiguousarray(acc),
                out,
                threshold,
                flip,
                np.int64(rows),
                *_ints(units, out_words),
            ),
        )
        return out

    def unpack(self, words, length):
        """Packed rows (..., words) to booleans (..., length), on the device as uint8."""
        cp = self.cp
        words = cp.ascontiguousarray(words)
        rows = int(np.prod(words.shape[:-1]))
        out = cp.empty(words.shape[:-1] + (length,), cp.uint8)
        self.kernels["unpack_words"](
            ((rows * length + 255) // 256,),
            (256,),
            (words, out, np.int64(rows), np.int32(length), np.int32(words.shape[-1])),
        )
        return out

    def flatten(self, state, in_shape):
        """Keras's Flatten of packed maps (n, H, W, words of C): (n, words of H*W*C)."""
        cp = self.cp
        state = cp.ascontiguousarray(state)
        n, pixels, channels = state.shape[0], in_shape[0] * in_shape[1], in_shape[2]
        out_words = words_for(pixels * channels)
        out = cp.empty((n, out_words), cp.uint32)
        self.kernels["flatten_words"](
            ((n * out_words + 255) // 256,),
            (256,),
            (
                state,
                out,
                *_ints(n, pixels, channels, state.shape[-1], out_words),
            ),
        )
        return out

    # -- the primitives of the engine's layer walk ---------------------------------
    def to_device(self, x8: np.ndarray):
        return self.cp.asarray(x8)

    @staticmethod
    def to_host(values) -> np.ndarray:
        return values.get()

    def hidden(self, state, channels: int) -> np.ndarray:
        return self.unpack(state, channels).get().astype(bool)

    def compute(self, index: int, layer: dict, state):
        """A dense or conv layer with its epilogue fused: the last layer's float32
        logits, else its packed bits in the layout the next layer reads."""
        name = f"layer{index}"
        weights = self.device[f"{name}/weights"]
        epilogue: tuple
        if layer["output"] == "logits":
            epilogue = ("logits", self.device[f"{name}/scale"], self.device[f"{name}/shift"])
        else:
            epilogue = ("bits", self.device[f"{name}/threshold"], self.device[f"{name}/flip"])
        pairs = bool(layer.get("mask"))
        if pairs:  # ternary: 2N units of +-1 weights, added up after the product
            thresholds = epilogue[1:]
            epilogue = ("int",)
        first = layer["input"] == "uint8"
        if layer["type"] == "dense":
            rows = self.bit_planes(state) if first else state.reshape(len(state), -1)
            out = self.gemm(
                rows,
                weights,
                layer["in_shape"][0],
                planes=8 if first else 1,
                epilogue=epilogue,
                b_ones=self.weight_ones[f"{name}/weights"],
            )
        else:
            out = self.conv(
                self.bit_planes(state) if first else state,
                weights,
                layer,
                planes=8 if first else 1,
                epilogue=epilogue,
            )
        if pairs:
            out = self.threshold_pairs(out, *thresholds)
        *positions, units = layer["out_shape"]
        last = units if layer["output"] == "logits" else words_for(units)
        return out.reshape((len(state), *positions, last))
