"""What every decider of the verifier shares: the exported network as sparse
+-1 layers with their thresholds, and the ball as a box of 8-bit pixel levels
(or of their grid values, for a network with a `SteppedInput`)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sparse

from advlib.qnn.engine import BinaryEngine
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.engine import eight_bit_levels


class NetworkEncoding:
    """The exported network as sparse integer layers, built once per engine.

    Args:
        engine: a `BinaryEngine` or the path of an exported `.npz`.
    """

    def __init__(self, engine: BinaryEngine | str):
        self.engine = BinaryEngine.load(engine) if isinstance(engine, str) else engine
        if not isinstance(self.engine, BinaryEngine):
            raise TypeError(
                f"engine must be a BinaryEngine or the path of an exported .npz, "
                f"got {type(engine).__name__}."
            )
        self.spec, self.arrays = self.engine.spec, self.engine.arrays
        # what the first layer reads of each 8-bit level (None: the level itself)
        self.input_levels = self.engine.input_levels
        # the same integers on float32 BLAS: fast for the search's large batches
        self.fast_engine = self.engine.on_blas()
        self.layers = [
            self._prepare(index, layer) for index, layer in enumerate(self.spec["layers"])
        ]
        last = self.spec["layers"][-1]
        index = len(self.spec["layers"]) - 1
        self.scale = self.arrays[f"layer{index}/scale"].astype(np.float64)
        self.shift = self.arrays[f"layer{index}/shift"].astype(np.float64)
        length = spec_io.fan_in(last)
        bound = length * (255 if last["input"] == "uint8" else 1)
        # float32 rounding of acc * scale + shift, with room to spare
        self.tolerance = 1e-5 * (np.abs(self.scale).max() * bound + np.abs(self.shift).max()) + 1e-9

    def _signs(self, index, layer) -> np.ndarray:
        """(units, fan-in) weights of -1, 0 (masked out) and +1, in the engine's
        (row, column, channel) order."""
        return spec_io.weight_values(layer, self.arrays, index).astype(np.float64)

    def _prepare(self, index, layer) -> dict:
        kind = layer["type"]
        prepared = {"layer": layer, "index": index}
        if kind in ("dense", "conv"):
            signs = self._signs(index, layer)
            if kind == "dense":
                prepared["matrix"] = sparse.csr_matrix(signs)
            else:
                prepared["matrix"], prepared["pad"] = self._conv_matrix(layer, signs)
            # the signs' positive and negative parts, for interval bounds
            prepared["positive"] = prepared["matrix"].maximum(0).tocsr()
            prepared["negative"] = prepared["matrix"].minimum(0).tocsr()
            if layer["output"] == "bits":
                # per output unit: (pixel, filter) order for convolutions
                repeats = 1 if kind == "dense" else layer["out_shape"][0] * layer["out_shape"][1]
                prepared["threshold"] = np.tile(
                    self.arrays[f"layer{index}/threshold"].astype(np.float64), repeats
                )
                prepared["flip"] = np.tile(self.arrays[f"layer{index}/flip"].astype(bool), repeats)
        elif kind == "maxpool":
            prepared["windows"] = self._windows(layer, layer["pool"])
        return prepared

    @staticmethod
    def _windows(layer, size):
        """(out pixels, taps) indices of input pixels per window; -1 for padding."""
        height, width = layer["in_shape"][:2]
        (top, _), (left, _) = layer["pads"]
        out_h, out_w = layer["out_shape"][:2]
        rows = np.arange(out_h)[:, None] * layer["strides"][0] - top + np.arange(size[0])
        cols = np.arange(out_w)[:, None] * layer["strides"][1] - left + np.arange(size[1])
        r = rows[:, None, :, None]
        c = cols[None, :, None, :]
        inside = (r >= 0) & (r < height) & (c >= 0) & (c < width)
        index = np.where(inside, r * width + c, -1)
        return index.reshape(out_h * out_w, size[0] * size[1])

    def _conv_matrix(self, layer, signs):
        """The convolution as a sparse matrix from inputs (plus one padding input,
        last) to outputs (pixel, filter)."""
        channels = layer["in_shape"][-1]
        windows = self._windows(layer, layer["kernel"])  # (P, taps)
        pixels, taps = windows.shape
        filters = signs.shape[0]
        pad_column = layer["in_shape"][0] * layer["in_shape"][1] * channels
        tap_channel = np.arange(taps * channels)
        source = np.where(
            windows[:, tap_channel // channels] >= 0,
            windows[:, tap_channel // channels] * channels + tap_channel % channels,
            pad_column,
        )  # (P, taps * C)
        rows = (
            np.arange(pixels)[:, None, None] * filters + np.arange(filters)[None, :, None]
        )  # (P, F, 1)
        rows = np.broadcast_to(rows, (pixels, filters, taps * channels))
        cols = np.broadcast_to(source[:, None, :], rows.shape)
        vals = np.broadcast_to(signs[None], rows.shape)
        matrix = sparse.csr_matrix(
            (vals.ravel(), (rows.ravel(), cols.ravel())), shape=(pixels * filters, pad_column + 1)
        )
        matrix.eliminate_zeros()  # a masked-out weight is no term of its unit
        pad = 0.0 if layer["input"] == "uint8" else (1.0 if layer["pad_value"] > 0 else -1.0)
        return matrix, pad

    # -- one example ---------------------------------------------------------------------
    @staticmethod
    def input_box(x: np.ndarray, eps: float):
        """Per pixel: the lowest and highest level the engine's quantization gives
        inside [x - eps, x + eps] and [0, 1]."""
        quantize = lambda v: eight_bit_levels(v).astype(np.int64)
        x = x.astype(np.float32)
        return (
            quantize(np.maximum(x - np.float32(eps), 0)),
            quantize(np.minimum(x + np.float32(eps), 1)),
        )

    def level_box(self, x: np.ndarray, eps: float):
        """Per input: the lowest and highest value the first layer reads inside the
        ball: the 8-bit levels of `input_box`, or, for a network with a
        `SteppedInput`, their grid values (every value between the two is read
        at some level in between: the grid's steps are 0 or 1)."""
        low, high = self.input_box(x, eps)
        if self.input_levels is None:
            return low, high
        return self.input_levels[low].astype(np.int64), self.input_levels[high].astype(np.int64)

    def levels_of(self, images: np.ndarray) -> np.ndarray:
        """The values the first layer reads of `images`, flattened per image."""
        levels = eight_bit_levels(images.reshape(len(images), -1)).astype(np.int64)
        return levels if self.input_levels is None else self.input_levels[levels].astype(np.int64)

    def image_at_levels(self, x: np.ndarray, levels: np.ndarray, eps: float) -> np.ndarray:
        """An image within eps of `x` at which the first layer reads `levels` (each
        inside the box of `level_box`); for levels of shape (n, pixels), n images."""
        flat = x.reshape(-1).astype(np.float32)
        low, high = self.input_box(flat, eps)
        if self.input_levels is not None:
            # each grid value's first 8-bit level in the box
            levels = np.maximum(np.searchsorted(self.input_levels, levels, side="left"), low)
        image = np.where(
            levels == low,
            np.maximum(flat - np.float32(eps), 0),
            np.where(
                levels == high,
                np.minimum(flat + np.float32(eps), 1),
                levels.astype(np.float32) / np.float32(255),
            ),
        )
        return image.astype(np.float32).reshape(levels.shape[:-1] + x.shape)
