"""Argument checks shared by the whole library.

Every check raises a ValueError or TypeError whose message names the
parameter, the offending value and what is allowed, so that bad input never
reaches TensorFlow.
"""

from __future__ import annotations

import math
import numbers

import numpy as np


def _show(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_number(
    name: str,
    value,
    *,
    low=None,
    high=None,
    low_open=False,
    high_open=False,
    integer=False,
    allow_none=False,
):
    """Checks that `value` is a real number inside the given bounds."""
    if value is None and allow_none:
        return None
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, kind):
        wanted = "an integer" if integer else "a real number"
        raise TypeError(
            f"{name} must be {wanted}, got {_show(value)} of type {type(value).__name__}."
        )
    # Python integers have no size limit: np.isfinite would overflow on them
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {_show(value)}.")
    bad_low = low is not None and (value <= low if low_open else value < low)
    bad_high = high is not None and (value >= high if high_open else value > high)
    if bad_low or bad_high:
        lo = "-inf" if low is None else f"{low}"
        hi = "inf" if high is None else f"{high}"
        interval = f"{'(' if low_open else '['}{lo}, {hi}{')' if high_open else ']'}"
        raise ValueError(f"{name} must be in {interval}, got {_show(value)}.")
    return value


SEED_MAX = 2**63 - 1  # seeds become int64 pairs for TensorFlow's stateless RNG


def check_seed(seed):
    """None, or an integer in [0, SEED_MAX]."""
    return check_number("seed", seed, low=0, high=SEED_MAX, integer=True, allow_none=True)


def check_choice(name: str, value, allowed):
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {_show(value)}.")
    return value


def check_clip_bounds(clip_min, clip_max):
    check_number("clip_min", clip_min, allow_none=True)
    check_number("clip_max", clip_max, allow_none=True)
    if clip_min is not None and clip_max is not None and clip_min > clip_max:
        raise ValueError(
            f"clip_min must not exceed clip_max, got clip_min={clip_min} and clip_max={clip_max}."
        )


def check_finite_array(name: str, array: np.ndarray):
    if not np.issubdtype(array.dtype, np.floating):
        return
    bad = ~np.isfinite(array)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ValueError(
            f"{name} must contain only finite values; found "
            f"{array[index]} at index {index} "
            f"({int(bad.sum())} non-finite entries in all)."
        )


def _as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a PyTorch tensor, perhaps one that records gradients
        x = x.detach().cpu()
    return x.numpy() if hasattr(x, "numpy") else np.asarray(x)


def check_batch(name: str, x) -> np.ndarray:
    """`x` (NumPy or a tensor) as a NumPy batch: floating point, batch axis first,
    all finite."""
    array = x if isinstance(x, np.ndarray) else _as_numpy(x)
    if not np.issubdtype(array.dtype, np.floating):
        raise TypeError(f"{name} must be a floating-point array, got dtype {array.dtype}.")
    if array.ndim < 2:
        raise ValueError(
            f"{name} must be a batch with the batch first (rank >= 2), got shape {array.shape}."
        )
    check_finite_array(name, array)
    return array


def check_in_range(name: str, array: np.ndarray, clip_min, clip_max, tol=1e-6):
    if array.size == 0:
        return
    if clip_min is not None:
        low = float(array.min())
        if low < clip_min - tol:
            raise ValueError(
                f"{name} has values below clip_min={clip_min} "
                f"(minimum {low}); inputs must lie in "
                f"[clip_min, clip_max] = [{clip_min}, {clip_max}]."
            )
    if clip_max is not None:
        high = float(array.max())
        if high > clip_max + tol:
            raise ValueError(
                f"{name} has values above clip_max={clip_max} "
                f"(maximum {high}); inputs must lie in "
                f"[clip_min, clip_max] = [{clip_min}, {clip_max}]."
            )


def check_labels(name: str, labels, batch_size: int, nb_classes: int) -> np.ndarray:
    """Returns integer class indices from integer or one-hot labels."""
    array = np.asarray(labels)
    if array.ndim == 2 and array.shape == (batch_size, nb_classes) and batch_size > 0:
        if not np.all((array == 0) | (array == 1)) or not np.all(array.sum(axis=1) == 1):
            raise ValueError(
                f"{name} given as a 2-D array must be one-hot with shape "
                f"(batch, nb_classes)=({batch_size}, {nb_classes}); "
                "rows must contain a single 1."
            )
        return array.argmax(axis=1).astype(np.int64)
    if array.ndim != 1 or array.shape[0] != batch_size:
        raise ValueError(
            f"{name} must have shape ({batch_size},) as class indices or "
            f"({batch_size}, {nb_classes}) as one-hot, got shape {array.shape}."
        )
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if np.issubdtype(array.dtype, np.floating) and np.all(array == np.round(array)):
            array = array.astype(np.int64)
        else:
            raise TypeError(f"{name} must hold integer class indices, got dtype {array.dtype}.")
    array = array.astype(np.int64)
    if array.size and (array.min() < 0 or array.max() >= nb_classes):
        bad = array[(array < 0) | (array >= nb_classes)][0]
        raise ValueError(
            f"{name} holds class {bad}, outside the model's classes 0..{nb_classes - 1}."
        )
    return array
