"""Adversarial training in ordinary Keras scripts.

Example:
    >>> from advlib.training import AdversarialModel, RobustnessCallback
    >>> robust = AdversarialModel.from_recipe("fast", model, eps=0.1)
    >>> robust.compile(optimizer="adam")
    >>> robust.fit(x, y, epochs=10, callbacks=[RobustnessCallback(x_val, y_val, eps=0.1)])
"""

from advlib.training.adversarial_model import AdversarialModel, kl_divergence
from advlib.training.callbacks import (
    CatastrophicOverfittingWarning,
    EpsilonRamp,
    RobustnessCallback,
)
from advlib.training.noise import GaussianAugmentation
from advlib.training.recipes import RECIPES, Recipe

__all__ = [
    "AdversarialModel",
    "CatastrophicOverfittingWarning",
    "EpsilonRamp",
    "GaussianAugmentation",
    "RECIPES",
    "Recipe",
    "RobustnessCallback",
    "kl_divergence",
]
