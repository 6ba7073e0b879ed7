"""Reader and writer for the IDX format used by MNIST and Fashion-MNIST.

An IDX file starts with two zero bytes, a type code (0x08 for unsigned
bytes) and the number of dimensions, followed by one big-endian uint32 per
dimension and the raw data in C order. Files may be gzip-compressed.
"""

from __future__ import annotations

import gzip
import math
import os

import numpy as np

_UBYTE = 0x08


def _open(path: str, mode: str):
    return gzip.open(path, mode) if str(path).endswith(".gz") else open(path, mode)


def read_idx(path: str) -> np.ndarray:
    """Reads an unsigned-byte IDX file (optionally `.gz`) into a uint8 array.

    Raises:
        ValueError: if the header is malformed or the data is truncated.
    """
    try:
        with _open(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise ValueError(f"cannot read IDX file {path!r}: {error}") from error
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise ValueError(f"{path!r} is not an IDX file: bad magic number.")
    if raw[2] != _UBYTE:
        raise ValueError(
            f"{path!r} has IDX type code {raw[2]:#04x}; only unsigned bytes (0x08) are supported."
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path!r} is truncated inside its header.")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = math.prod(shape)  # Python integers: a forged header cannot overflow it
    if len(raw) - header != expected:
        raise ValueError(
            f"{path!r} holds {len(raw) - header} data bytes, but its "
            f"header declares shape {shape} ({expected} bytes)."
        )
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def write_idx(path: str, array: np.ndarray) -> None:
    """Writes a uint8 array as an IDX file, gzip-compressed if `path` ends in `.gz`."""
    array = np.ascontiguousarray(array)
    if array.dtype != np.uint8:
        raise TypeError(f"write_idx needs a uint8 array, got dtype {array.dtype}.")
    header = bytes([0, 0, _UBYTE, array.ndim]) + np.asarray(array.shape, ">u4").tobytes()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with _open(path, "wb") as handle:
        handle.write(header + array.tobytes())
