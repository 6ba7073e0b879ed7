"""Gaussian data augmentation, the training perturbation of randomized smoothing."""

from __future__ import annotations

from typing import Any

from keras import ops

from advlib import _checks, backend


class GaussianAugmentation:
    """Adds N(0, sigma^2 I) noise to each training input, unclipped, as Cohen,
    Rosenfeld & Kolter (2019) train the base classifier of a smoothed one
    (`advlib.certify.SmoothedClassifier` with the same sigma).

    It takes an `AdversarialModel`'s place of an attack: `perturb` has the
    gradient attacks' signature, and ignores the model and labels.
    """

    def __init__(self, model=None):
        self.model = model

    @staticmethod
    def parse(sigma: float = 0.25) -> dict[str, Any]:
        """Checks `sigma` and returns the parameters with their default filled in."""
        _checks.check_number("sigma", sigma, low=0, low_open=True)
        return {"sigma": float(sigma)}

    @staticmethod
    def perturb(x, labels, seed_pair, sigma: float):
        """`x` plus Gaussian noise of standard deviation `sigma`, from `seed_pair`."""
        del labels  # noise is blind to the class
        return x + sigma * backend.normal(ops.shape(x), seed_pair, x.dtype)
