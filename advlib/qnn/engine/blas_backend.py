"""The engine's operations as float32 matrix products on unpacked +-1 values.

Bit-packed popcounts are the right arithmetic on a GPU, but NumPy has no fused
XOR-popcount-sum, so on a CPU a large batch runs faster as a BLAS product of
+-1 (and 0..255 pixel) matrices. The result is still exact: every partial sum
of such a product is an integer of magnitude below 2**24, which float32
represents exactly whatever order BLAS adds in. The constructor refuses
networks where that bound could fail. `tests/test_engine.py` checks the
logits and hidden bits against the packed reference, bit for bit.

This is the backend for evaluating many candidate images at once, as the
verifier's counterexample search does; `NumpyBackend` stays the reference.
"""

from __future__ import annotations

import numpy as np

from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.numpy_backend import threshold_bits

# float32 holds every integer up to 2**24 exactly
_EXACT = 2**24


class BlasBackend:
    """The primitives of `engine.walk` on dense float32 arrays: pixel levels
    before the first layer, +-1 after it."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        self.spec, self.arrays = spec, arrays
        self._weights = {}
        for index, layer in enumerate(spec["layers"]):
            if layer["type"] not in ("dense", "conv"):
                continue
            largest = spec_io.fan_in(layer) * (255 if layer["input"] == "uint8" else 1)
            if largest >= _EXACT:
                raise ValueError(
                    f"layer {index} ({layer['name']!r}) sums up to {largest} "
                    f"per unit, beyond float32's exact integers (2**24); "
                    f"use backend='numpy'."
                )
            values = spec_io.weight_values(layer, arrays, index)
            self._weights[index] = np.ascontiguousarray(values.T, dtype=np.float32)

    @property
    def weight_bytes(self) -> int:
        """Memory of the unpacked float32 weights (32 times the packed words')."""
        return int(sum(w.nbytes for w in self._weights.values()))

    @staticmethod
    def to_device(x8: np.ndarray) -> np.ndarray:
        return x8.astype(np.float32)

    @staticmethod
    def to_host(values: np.ndarray) -> np.ndarray:
        return values

    @staticmethod
    def flatten(state: np.ndarray, in_shape) -> np.ndarray:
        return state.reshape(len(state), -1)

    @staticmethod
    def max_pool(state: np.ndarray, layer: dict) -> np.ndarray:
        # -1 padding is the identity of max over +-1 values
        padded = _pad(state, layer["pads"], -1.0)
        windows = np.lib.stride_tricks.sliding_window_view(
            padded, tuple(layer["pool"]), axis=(1, 2)
        )
        return windows[:, :: layer["strides"][0], :: layer["strides"][1]].max(axis=(-2, -1))

    @staticmethod
    def hidden(state: np.ndarray, channels: int) -> np.ndarray:
        return state > 0

    def compute(self, index: int, layer: dict, state: np.ndarray) -> np.ndarray:
        """A dense or conv layer: float32 logits if it is the last, else +-1 values."""
        acc = self.accumulate(index, layer, state)
        name = f"layer{index}"
        if layer["output"] == "logits":
            return acc * self.arrays[f"{name}/scale"] + self.arrays[f"{name}/shift"]
        bits = threshold_bits(acc, self.arrays[f"{name}/threshold"], self.arrays[f"{name}/flip"])
        return np.where(bits, np.float32(1), np.float32(-1))

    def accumulate(self, index: int, layer: dict, state: np.ndarray) -> np.ndarray:
        """The layer's accumulators: integers, held exactly in float32."""
        weights = self._weights[index]
        if layer["type"] == "dense":
            return state.reshape(len(state), -1) @ weights
        # the first layer pads with pixel level 0; binary layers with +1 or -1
        fill = 0.0 if layer["input"] == "uint8" else (1.0 if layer["pad_value"] > 0 else -1.0)
        padded = _pad(state, layer["pads"], fill)
        kh, kw = layer["kernel"]
        windows = np.lib.stride_tricks.sliding_window_view(padded, (kh, kw), axis=(1, 2))
        windows = windows[:, :: layer["strides"][0], :: layer["strides"][1]]
        n, out_h, out_w = windows.shape[:3]
        # (N, H', W', C, kh, kw) to rows in a Keras kernel's (row, column, channel) order
        columns = windows.transpose(0, 1, 2, 4, 5, 3).reshape(n * out_h * out_w, -1)
        return (columns @ weights).reshape(n, out_h, out_w, -1)


def _pad(state: np.ndarray, pads, fill: float) -> np.ndarray:
    (top, bottom), (left, right) = pads
    if not (top or bottom or left or right):
        return state
    return np.pad(state, ((0, 0), (top, bottom), (left, right), (0, 0)), constant_values=fill)
