"""`BinaryEngine`: runs an exported binary network on packed bits. NumPy only."""

from __future__ import annotations

import sys
from typing import Dict, List, Tuple

import numpy as np

from advlib.qnn.engine import numpy_backend as ops
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.packing import pack_bits, unpack_bits, valid_bits_mask

BACKENDS = ("numpy", "cupy", "auto")


class BinaryEngine:
    """Exact inference of a binarized network with XNOR / popcount arithmetic.

    Load a network written by `advlib.qnn.export`:

    >>> engine = BinaryEngine.load("model.npz")
    >>> logits = engine.predict(x)            # x: float images in [0, 1]
    >>> classes = engine.predict_classes(x)

    Hidden layers compute integer accumulators from packed bits and compare
    them with per-channel integer thresholds (BatchNorm + sign folded); the
    8-bit first layer is computed exactly from bit-planes; only the last
    layer's affine transform is in floating point.
    """

    def __init__(self, spec: Dict, arrays: Dict[str, np.ndarray], backend: str = "numpy",
                 gemm: str = "auto"):
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {backend!r}.")
        spec_io.validate(spec, arrays)
        self.spec = spec
        self.arrays = arrays
        self.input_shape = tuple(spec["input_shape"])
        self._gpu = None
        if backend in ("cupy", "auto"):
            from advlib.qnn.engine import cupy_backend
            usable, why = cupy_backend.available()
            if usable:
                self._gpu = cupy_backend.CupyBackend(spec, arrays, gemm=gemm)
            elif backend == "cupy":
                raise RuntimeError(f"backend='cupy' needs CuPy and a GPU: {why}.")
            else:
                print(f"BinaryEngine: {why}; falling back to the NumPy backend.",
                      file=sys.stderr)
        self.backend = "numpy" if self._gpu is None else "cupy"

    @classmethod
    def load(cls, path: str, backend: str = "numpy", gemm: str = "auto") -> "BinaryEngine":
        """Reads an exported `.npz`; raises ValueError if it is corrupt or inconsistent.

        Args:
            backend: "numpy" (the reference), "cupy" (CUDA kernels; needs a GPU),
                or "auto": CuPy when a GPU is usable, else NumPy with a notice.
            gemm: for the CuPy backend, "tensor" (binary tensor cores), "cuda"
                (CUDA cores) or "auto" (tensor cores from compute capability 8.0).
        """
        spec, arrays = spec_io.load(path)
        return cls(spec, arrays, backend=backend, gemm=gemm)

    @property
    def nb_classes(self) -> int:
        return int(self.spec["layers"][-1]["out_shape"][-1])

    def predict(self, x, batch_size: int = 1000) -> np.ndarray:
        """Logits (float32) for images `x` in [0, 1] of shape (n,) + input_shape."""
        x = self._check_input(x)
        chunks = [self._forward(x[i:i + batch_size], keep_hidden=False)[0]
                  for i in range(0, len(x), batch_size)]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)

    def predict_classes(self, x, batch_size: int = 1000) -> np.ndarray:
        return self.predict(x, batch_size).argmax(axis=1)

    def hidden_bits(self, x) -> List[np.ndarray]:
        """Each thresholded layer's +-1 outputs as booleans (True = +1), after
        any pooling that follows it: the values the next layer sees."""
        return self.forward(x)[1]

    def forward(self, x) -> Tuple[np.ndarray, List[np.ndarray]]:
        """(logits, hidden bits) for one batch, in a single pass."""
        return self._forward(self._check_input(x))

    # -- internals -----------------------------------------------------------
    def _check_input(self, x) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != len(self.input_shape) + 1 or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(f"x must have shape (n,) + {self.input_shape}, got {x.shape}.")
        if not np.issubdtype(x.dtype, np.number):
            raise TypeError(f"x must be numeric, got dtype {x.dtype}.")
        if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
            raise ValueError("x must contain only finite values; found NaN or Inf.")
        return x

    def _forward(self, x: np.ndarray, keep_hidden: bool = True
                 ) -> Tuple[np.ndarray, List[np.ndarray]]:
        # Uint8Input: round(clip(x, 0, 1) * 255) in float32, rounding half to even
        x8 = np.round(np.clip(x.astype(np.float32), 0, 1) * np.float32(255)).astype(np.uint8)
        if self._gpu is not None:
            return self._gpu.forward(x8, keep_hidden=keep_hidden)
        state, hidden = x8, []
        layers = self.spec["layers"]
        for index, layer in enumerate(layers):
            kind = layer["type"]
            if kind == "flatten":
                # before the first layer the state is raw uint8 pixels, after it packed bits
                state = (state.reshape(len(state), -1) if state.dtype == np.uint8
                         else ops.flatten_words(state, layer["in_shape"]))
            elif kind == "maxpool":
                state = ops.max_pool_words(state, layer["pool"], layer["strides"], layer["pads"])
                hidden[-1] = unpack_bits(state, layer["out_shape"][-1])
            else:
                acc = self._accumulate(index, layer, state)
                if layer["output"] == "logits":
                    a = self.arrays
                    logits = acc.astype(np.float32) * a[f"layer{index}/scale"] + \
                        a[f"layer{index}/shift"]
                    return logits, hidden
                bits = ops.threshold_bits(acc, self.arrays[f"layer{index}/threshold"],
                                          self.arrays[f"layer{index}/flip"])
                hidden.append(bits)
                state = pack_bits(bits)
        raise AssertionError("validated specs end in a logits layer")

    def _accumulate(self, index: int, layer: Dict, state: np.ndarray) -> np.ndarray:
        weights = self.arrays[f"layer{index}/weights"]
        first = layer["input"] == "uint8"
        if layer["type"] == "dense":
            rows = state.reshape(len(state), -1)
            if first:
                return ops.plane_dot(ops.bit_planes(rows), weights)
            return ops.binary_dot(rows, weights, layer["in_shape"][0])
        height, width, channels = layer["in_shape"]
        kh, kw = layer["kernel"]
        out_h, out_w, filters = layer["out_shape"]
        n = len(state)
        if first:
            planes = ops.bit_planes(state.reshape(n, height, width, channels))
            zero = np.zeros(planes.shape[-1], planes.dtype)
            columns = np.stack([ops.im2col(ops.pad_spatial(p, layer["pads"], zero),
                                           (kh, kw), layer["strides"]) for p in planes])
            acc = ops.plane_dot(columns.reshape(8, n * out_h * out_w, -1), weights)
        else:
            fill = (valid_bits_mask(channels) if layer["pad_value"] > 0
                    else np.zeros(state.shape[-1], state.dtype))
            columns = ops.im2col(ops.pad_spatial(state, layer["pads"], fill), (kh, kw),
                                 layer["strides"])
            acc = ops.binary_dot(columns.reshape(n * out_h * out_w, -1), weights,
                                 kh * kw * channels)
        return acc.reshape(n, out_h, out_w, filters)
