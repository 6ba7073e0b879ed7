"""Confidence intervals for proportions, shared by the harness and certification.

Example:
    >>> from advlib.stats import proportion, wilson_interval
    >>> wilson_interval(90, 100)
    [0.8256..., 0.9447...]
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["clopper_pearson_lower", "proportion", "wilson_interval"]


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> list[float]:
    """The Wilson score interval of a proportion.

    Args:
        successes: the count of successes.
        n: the count of trials; with none the interval is [0, 1].
        z: the normal quantile; the default gives a 95% interval.

    Returns:
        [low, high], clipped to [0, 1].
    """
    if n == 0:
        return [0.0, 1.0]
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return [max(0.0, centre - half), min(1.0, centre + half)]


def proportion(mask: np.ndarray) -> dict:
    """The share of True entries of `mask`, with its count and 95% Wilson interval.

    Returns:
        {"value", "count", "n", "ci95"}; the value is 0 for an empty mask.
    """
    k, n = int(mask.sum()), int(mask.size)
    return {"value": k / n if n else 0.0, "count": k, "n": n, "ci95": wilson_interval(k, n)}


def clopper_pearson_lower(successes: ArrayLike, trials: ArrayLike, alpha: float) -> np.ndarray:
    """The one-sided (1 - alpha) Clopper-Pearson lower bound of a binomial proportion.

    Args:
        successes: counts k, an array or a number.
        trials: counts n, broadcastable with `successes`.
        alpha: the bound fails with probability at most alpha.

    Returns:
        The alpha quantile of Beta(k, n - k + 1), and 0 where k = 0.
    """
    from scipy.stats import beta

    k = np.asarray(successes, np.float64)
    n = np.asarray(trials, np.float64)
    with np.errstate(invalid="ignore"):
        bound = beta.ppf(alpha, k, n - k + 1)
    return np.where(k > 0, bound, 0.0)
