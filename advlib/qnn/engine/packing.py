"""Bit packing for the binary engine. NumPy only.

Convention (shared with the CUDA kernels):
- A binary value +1 is bit 1 and -1 is bit 0; a real value x packs as
  bit 1 exactly when x >= 0, as `ste_sign` decides.
- Bits run along the last axis. Element i sits in word i // 32, at bit
  i % 32 counted from the least significant bit. Words are uint32.
- When the axis length is not a multiple of 32, the unused high bits of the
  last word are 0, in activations and weights alike. They then match in
  every XOR and count nothing, so a dot product over K true elements is
  exactly K - 2 * popcount(a XOR w).
"""

from __future__ import annotations

import numpy as np

WORD_BITS = 32
WORD_DTYPE = np.uint32


def words_for(length: int) -> int:
    """Number of uint32 words that hold `length` bits."""
    return -(-int(length) // WORD_BITS)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """Packs a boolean array along its last axis into uint32 words."""
    bits = np.asarray(bits, dtype=bool)
    length = bits.shape[-1]
    padded = words_for(length) * WORD_BITS
    if padded != length:
        pad = np.zeros(bits.shape[:-1] + (padded - length,), bool)
        bits = np.concatenate([bits, pad], axis=-1)
    packed = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(packed).view("<u4").astype(WORD_DTYPE, copy=False)


def unpack_bits(words: np.ndarray, length: int) -> np.ndarray:
    """Inverse of `pack_bits`: the first `length` bits along the last axis."""
    words = np.ascontiguousarray(np.asarray(words, dtype=WORD_DTYPE)).astype("<u4", copy=False)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return bits[..., :length].astype(bool)


def pack_signs(values: np.ndarray) -> np.ndarray:
    """Packs the signs of real values: bit 1 where value >= 0."""
    return pack_bits(np.asarray(values) >= 0)


def valid_bits_mask(length: int) -> np.ndarray:
    """The words of `length` one-bits, unused bits zero: a +1 vector, packed."""
    return pack_bits(np.ones(length, bool))


def popcount(words: np.ndarray) -> np.ndarray:
    """Bits set in each word."""
    return np.bitwise_count(words)
