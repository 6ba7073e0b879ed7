"""The reference implementation of the engine's operations, in NumPy.

Every operation works on integers and bits only, so it is exact; the CUDA
kernels must reproduce it bit for bit.
"""

from __future__ import annotations

import numpy as np

from advlib.qnn.engine.packing import WORD_DTYPE, pack_bits, popcount, unpack_bits, valid_bits_mask

# Words of one (rows, units, words) XOR block: bounds temporary memory.
_BLOCK_WORDS = 2**24


def _row_blocks(rows: int, units: int, words: int):
    step = max(1, _BLOCK_WORDS // max(1, units * words))
    return range(0, rows, step), step


def binary_dot(
    a: np.ndarray, w: np.ndarray, length: int, mask: np.ndarray | None = None
) -> np.ndarray:
    """+-1 dot products from packed bits: K - 2 * popcount(a XOR w); with a mask
    (ternary weights), popcount(M) - 2 * popcount((a XOR w) AND M).

    Args:
        a: (M, words) packed activations.
        w: (N, words) packed weights.
        length: K, the number of true bits per row.
        mask: (N, words) packed, bit 1 where the weight takes part; None: all do.

    Returns:
        (M, N) int32 accumulators.
    """
    out = np.empty((a.shape[0], w.shape[0]), np.int32)
    starts, step = _row_blocks(a.shape[0], w.shape[0], w.shape[1])
    terms = length if mask is None else popcount(mask).sum(axis=-1, dtype=np.int32)
    for start in starts:
        differ = a[start : start + step, None, :] ^ w[None, :, :]
        if mask is not None:
            differ &= mask[None, :, :]
        mismatches = popcount(differ).sum(axis=-1, dtype=np.int32)
        out[start : start + step] = terms - 2 * mismatches
    return out


def bit_planes(x8: np.ndarray) -> np.ndarray:
    """(8, ...) packed bit-planes of uint8 values along the last axis, LSB first."""
    return np.stack([pack_bits((x8 >> b) & 1) for b in range(8)])


def plane_dot(planes: np.ndarray, w: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Exact dot products of 8-bit inputs with +-1 weights, from bit-planes.

    For a plane P and packed weights W (bit 1 = +1):
    sum_i P_i w_i = popcount(P & W) - popcount(P & ~W) = 2 popcount(P & W) - popcount(P);
    the planes add up weighted by 2**b. With a mask M (ternary weights), P & M
    takes the place of P.

    Args:
        planes: (8, M, words) packed planes.
        w: (N, words) packed weights.
        mask: as in `binary_dot`.

    Returns:
        (M, N) int64 accumulators.
    """
    rows = planes.shape[1]
    out = np.zeros((rows, w.shape[0]), np.int64)
    starts, step = _row_blocks(rows, w.shape[0], w.shape[1])
    for bit in range(8):
        plane = planes[bit]
        ones = popcount(plane).sum(axis=-1, dtype=np.int64)[:, None]
        for start in starts:
            block = plane[start : start + step, None, :]
            if mask is None:
                agree = popcount(block & w[None, :, :]).sum(axis=-1, dtype=np.int64)
                count = ones[start : start + step]
            else:
                kept = block & mask[None, :, :]
                agree = popcount(kept & w[None, :, :]).sum(axis=-1, dtype=np.int64)
                count = popcount(kept).sum(axis=-1, dtype=np.int64)
            out[start : start + step] += (2 * agree - count) << bit
    return out


def pad_spatial(words: np.ndarray, pads, fill: np.ndarray) -> np.ndarray:
    """Pads (N, H, W, words) with the word vector `fill` around H and W."""
    (top, bottom), (left, right) = pads
    if not (top or bottom or left or right):
        return words
    n, h, w, c = words.shape
    out = np.empty((n, h + top + bottom, w + left + right, c), words.dtype)
    out[...] = fill
    out[:, top : top + h, left : left + w] = words
    return out


def im2col(words: np.ndarray, kernel, strides) -> np.ndarray:
    """(N, H', W', kh * kw * C) patches of a padded (N, H, W, C) array, in
    (row, column, channel) order, the order of a Keras kernel."""
    kh, kw = kernel
    sh, sw = strides
    windows = np.lib.stride_tricks.sliding_window_view(words, (kh, kw), axis=(1, 2))
    windows = windows[:, ::sh, ::sw]  # (N, H', W', C, kh, kw)
    n, ho, wo = windows.shape[:3]
    return np.ascontiguousarray(windows.transpose(0, 1, 2, 4, 5, 3)).reshape(n, ho, wo, -1)


def threshold_bits(acc: np.ndarray, threshold: np.ndarray, flip: np.ndarray) -> np.ndarray:
    """BatchNorm + sign as integer comparisons: +1 where acc >= threshold,
    or acc <= threshold on channels whose BatchNorm scale is negative."""
    return np.where(flip, acc <= threshold, acc >= threshold)


def max_pool_words(words: np.ndarray, pool, strides, pads) -> np.ndarray:
    """Max-pooling of +-1 values as the bitwise OR of their packed words.

    Padding is -1 (bit 0), the identity of OR, like the -inf of max-pooling.
    """
    padded = pad_spatial(words, pads, np.zeros(words.shape[-1], WORD_DTYPE))
    windows = np.lib.stride_tricks.sliding_window_view(padded, tuple(pool), axis=(1, 2))
    windows = windows[:, :: strides[0], :: strides[1]]
    return np.bitwise_or.reduce(windows.reshape(windows.shape[:4] + (-1,)), axis=-1)


def flatten_words(words: np.ndarray, shape) -> np.ndarray:
    """Re-packs (N, H, W, words of C) bits as (N, words of H*W*C), in Keras's
    (row, column, channel) flattening order."""
    bits = unpack_bits(words, shape[-1])
    return pack_bits(bits.reshape(bits.shape[0], -1))


class NumpyBackend:
    """The reference backend: the primitives `BinaryEngine`'s layer walk drives,
    computed on the CPU with the exact operations above."""

    def __init__(self, spec: dict, arrays: dict[str, np.ndarray]):
        self.spec, self.arrays = spec, arrays

    @staticmethod
    def to_device(x8: np.ndarray) -> np.ndarray:
        return x8

    @staticmethod
    def to_host(values: np.ndarray) -> np.ndarray:
        return values

    @staticmethod
    def flatten(state: np.ndarray, in_shape) -> np.ndarray:
        return flatten_words(state, in_shape)

    @staticmethod
    def max_pool(state: np.ndarray, layer: dict) -> np.ndarray:
        return max_pool_words(state, layer["pool"], layer["strides"], layer["pads"])

    @staticmethod
    def hidden(state: np.ndarray, channels: int) -> np.ndarray:
        return unpack_bits(state, channels)

    def compute(self, index: int, layer: dict, state: np.ndarray) -> np.ndarray:
        """A dense or conv layer: float32 logits if it is the last, else its packed bits."""
        acc = self.accumulate(index, layer, state)
        name = f"layer{index}"
        if layer["output"] == "logits":
            return (
                acc.astype(np.float32) * self.arrays[f"{name}/scale"] + self.arrays[f"{name}/shift"]
            )
        return pack_bits(
            threshold_bits(acc, self.arrays[f"{name}/threshold"], self.arrays[f"{name}/flip"])
        )

    def accumulate(self, index: int, layer: dict, state: np.ndarray) -> np.ndarray:
        """The layer's integer accumulators, before the threshold or the affine map."""
        weights = self.arrays[f"layer{index}/weights"]
        mask = self.arrays.get(f"layer{index}/mask") if layer.get("mask") else None
        first = layer["input"] == "uint8"
        if layer["type"] == "dense":
            rows = state.reshape(len(state), -1)
            if first:
                return plane_dot(bit_planes(rows), weights, mask)
            return binary_dot(rows, weights, layer["in_shape"][0], mask)
        height, width, channels = layer["in_shape"]
        kh, kw = layer["kernel"]
        out_h, out_w, filters = layer["out_shape"]
        n = len(state)
        if first:
            planes = bit_planes(state.reshape(n, height, width, channels))
            zero = np.zeros(planes.shape[-1], planes.dtype)
            columns = np.stack(
                [
                    im2col(pad_spatial(p, layer["pads"], zero), (kh, kw), layer["strides"])
                    for p in planes
                ]
            )
            acc = plane_dot(columns.reshape(8, n * out_h * out_w, -1), weights, mask)
        else:
            fill = (
                valid_bits_mask(channels)
                if layer["pad_value"] > 0
                else np.zeros(state.shape[-1], state.dtype)
            )
            columns = im2col(pad_spatial(state, layer["pads"], fill), (kh, kw), layer["strides"])
            acc = binary_dot(
                columns.reshape(n * out_h * out_w, -1), weights, kh * kw * channels, mask
            )
        return acc.reshape(n, out_h, out_w, filters)
