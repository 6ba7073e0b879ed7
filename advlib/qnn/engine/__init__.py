"""The bit-packed binary inference engine. Imports NumPy only, never TensorFlow."""

from advlib.qnn.engine.engine import BACKENDS, BinaryEngine
from advlib.qnn.engine.packing import (
    WORD_BITS,
    pack_bits,
    pack_signs,
    popcount,
    unpack_bits,
    words_for,
)

__all__ = [
    "BACKENDS",
    "BinaryEngine",
    "WORD_BITS",
    "pack_bits",
    "pack_signs",
    "popcount",
    "unpack_bits",
    "words_for",
]
