"""`BinaryEngine`: runs an exported binary network on packed bits. NumPy only."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from advlib import _checks
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.blas_backend import BlasBackend
from advlib.qnn.engine.numpy_backend import NumpyBackend

BACKENDS = ("numpy", "blas", "cupy", "auto")


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

    def __init__(
        self, spec: dict, arrays: dict[str, np.ndarray], backend: str = "numpy", gemm: str = "auto"
    ):
        _checks.check_choice("backend", backend, BACKENDS)
        spec_io.validate(spec, arrays)
        self.spec = spec
        self.arrays = arrays
        self.input_shape = tuple(spec["input_shape"])
        self.input_levels = input_levels(spec, arrays)
        self._gpu: Any = None
        self._backend: Any
        if backend in ("cupy", "auto"):
            from advlib.qnn.engine import cupy_backend

            usable, why = cupy_backend.available()
            if usable:
                self._gpu = cupy_backend.CupyBackend(spec, arrays, gemm=gemm)
            elif backend == "cupy":
                raise RuntimeError(f"backend='cupy' needs CuPy and a GPU: {why}.")
            else:
                warnings.warn(
                    f"BinaryEngine: {why}; falling back to the NumPy backend.",
                    RuntimeWarning,
                    stacklevel=2,
                )
        if self._gpu is not None:
            self._backend, self.backend = self._gpu, "cupy"
        elif backend == "blas":
            self._backend, self.backend = BlasBackend(spec, arrays), "blas"
        else:
            self._backend, self.backend = NumpyBackend(spec, arrays), "numpy"

    @classmethod
    def load(cls, path: str, backend: str = "numpy", gemm: str = "auto") -> BinaryEngine:
        """Reads an exported `.npz`; raises ValueError if it is corrupt or inconsistent.

        Args:
            backend: "numpy" (the reference, on packed bits), "blas" (the same
                integers as float32 matrix products: faster on a CPU for large
                batches), "cupy" (CUDA kernels; needs a GPU), or "auto": CuPy
                when a GPU is usable, else NumPy with a notice.
            gemm: for the CuPy backend, "tensor" (binary tensor cores), "cuda"
                (CUDA cores) or "auto" (tensor cores from compute capability 8.0).
        """
        spec, arrays = spec_io.load(path)
        return cls(spec, arrays, backend=backend, gemm=gemm)

    def on_blas(self) -> BinaryEngine:
        """The same network on the BLAS backend, for many predictions on a CPU:
        bit-exact with the packed reference and several times faster (the
        reference digits CNN: 0.09 s against 0.50 s for 360 digits). This engine
        itself where it already runs elsewhere than the NumPy reference, or where
        BLAS could not be exact (sums beyond float32's integers)."""
        if self.backend != "numpy":
            return self
        try:
            return BinaryEngine(self.spec, self.arrays, backend="blas")
        except ValueError:
            return self

    @property
    def nb_classes(self) -> int:
        """The number of classes: the last layer's width."""
        return int(self.spec["layers"][-1]["out_shape"][-1])

    def predict(self, x, batch_size: int = 1000) -> np.ndarray:
        """Logits (float32) for images `x` in [0, 1] of shape (n,) + input_shape."""
        x = self._check_input(x)
        chunks = [
            self._forward(x[i : i + batch_size], keep_hidden=False)[0]
            for i in range(0, len(x), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.zeros((0, self.nb_classes), np.float32)

    def predict_classes(self, x, batch_size: int = 1000) -> np.ndarray:
        """The predicted classes of images `x` in [0, 1], computed in batches."""
        return self.predict(x, batch_size).argmax(axis=1)

    def hidden_bits(self, x) -> list[np.ndarray]:
        """Each thresholded layer's +-1 outputs as booleans (True = +1), after
        any pooling that follows it: the values the next layer sees."""
        return self.forward(x)[1]

    def forward(self, x) -> tuple[np.ndarray, list[np.ndarray]]:
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

    def _forward(
        self, x: np.ndarray, keep_hidden: bool = True
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        x8 = eight_bit_levels(x)
        if self.input_levels is not None:  # SteppedInput's grid
            x8 = self.input_levels[x8]
        return walk(self.spec, self._backend, x8, keep_hidden)


def eight_bit_levels(x: np.ndarray) -> np.ndarray:
    """`Uint8Input`'s levels of inputs in [0, 1]: round(clip(x, 0, 1) * 255) in float32,
    rounding half to even, as uint8."""
    return np.round(np.clip(np.asarray(x, np.float32), 0, 1) * np.float32(255)).astype(np.uint8)


def input_levels(spec: dict, arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The value the first layer reads for each 8-bit level, (256,) uint8, where the
    network quantizes its inputs more coarsely (`SteppedInput`); None where it reads
    the levels themselves."""
    for index, layer in enumerate(spec["layers"]):
        if layer.get("input") == "uint8":
            return arrays[f"layer{index}/levels"] if layer.get("input_levels") else None
    return None


def walk(
    spec: dict, backend, x8: np.ndarray, keep_hidden: bool
) -> tuple[np.ndarray, list[np.ndarray]]:
    """The one pass over an exported network's layers.

    `backend` (`NumpyBackend`, `BlasBackend` or `CupyBackend`) supplies the primitives:
    `compute` (a dense or conv layer: packed bits, or the last layer's
    logits), `max_pool`, `flatten` of packed maps, `hidden` (packed bits to
    booleans on the host) and the transfers. So the order of operations, and
    with it the bit-exactness contract, lives here once.

    Returns:
        (logits, hidden): NumPy float32 logits and, if `keep_hidden`, each
        thresholded layer's bits after any pooling that follows it.
    """
    hidden: list = []
    state, raw = backend.to_device(x8), True
    for index, layer in enumerate(spec["layers"]):
        kind = layer["type"]
        if kind == "flatten":
            # before the first compute layer the state is raw pixels, after it packed bits
            state = (
                state.reshape(len(state), -1) if raw else backend.flatten(state, layer["in_shape"])
            )
        elif kind == "maxpool":
            state = backend.max_pool(state, layer)
            if keep_hidden:
                hidden[-1] = backend.hidden(state, layer["out_shape"][-1])
        else:
            state, raw = backend.compute(index, layer, state), False
            if layer["output"] == "logits":
                return backend.to_host(state), hidden
            if keep_hidden:
                hidden.append(backend.hidden(state, layer["out_shape"][-1]))
    raise AssertionError("validated specs end in a logits layer")
