"""The seed advlib uses where the caller gave none."""

from __future__ import annotations

import numpy as np

DRAWN_SEED_MAX = 2**31 - 1


def draw_seed() -> int:
    """A seed drawn from NumPy's global generator.

    `keras.utils.set_random_seed(s)` seeds that generator (with Python's and
    TensorFlow's), so a script that seeds the Keras way gets the same draws on
    every run, while successive draws within one run still differ.
    """
    return int(np.random.randint(0, DRAWN_SEED_MAX))


def seed_or_draw(seed) -> int:
    """`seed` itself, or a drawn one when it is None."""
    return draw_seed() if seed is None else int(seed)
