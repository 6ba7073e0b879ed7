"""Named adversarial-training recipes with the papers' defaults."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from advlib import _checks


@dataclasses.dataclass(frozen=True)
class Recipe:
    """How a training step crafts its adversarial examples and mixes the loss.

    Attributes:
        name: the preset's name.
        attack: "fgsm" or "pgd", the paper's name for the inner maximisation
            (both run as `ProjectedGradientDescent`, FGSM with one step), or
            "gaussian": Gaussian noise instead of an attack.
        nb_iter: attack steps.
        eps_iter_fraction: step size as a fraction of eps (the harness's
            protocols use the same name).
        rand_init: start from a uniform random point in the eps-ball.
        adv_ratio: weight of the adversarial loss; 1 - adv_ratio goes to the
            clean loss.
        trades_beta: if set, TRADES: clean CE + beta * KL(clean || adversarial),
            with the inner attack maximising that KL.
        rand_radius: radius of the random start, as a multiple of eps.
    """

    name: str
    attack: str
    nb_iter: int
    eps_iter_fraction: float
    rand_init: bool
    adv_ratio: float
    trades_beta: float | None = None
    rand_radius: float = 1.0
    reference: str = ""

    def attack_params(self, eps: float, norm=np.inf) -> dict[str, Any]:
        """The attack's parameters for radius `eps` in `norm`, with the recipe's step."""
        return dict(
            eps=eps,
            eps_iter=self.eps_iter_fraction * eps,
            nb_iter=self.nb_iter,
            norm=norm,
            rand_init=self.rand_init,
            rand_minmax=self.rand_radius * eps,
        )


RECIPES: dict[str, Recipe] = {
    "goodfellow": Recipe(
        "goodfellow",
        "fgsm",
        1,
        1.0,
        False,
        0.5,
        reference="Goodfellow, Shlens & Szegedy 2015: FGSM examples, loss 0.5 clean + 0.5 "
        "adversarial.",
    ),
    "madry": Recipe(
        "madry",
        "pgd",
        7,
        2.5 / 7,
        True,
        1.0,
        reference="Madry et al. 2018: PGD-k from a random start, step 2.5 eps / k, "
        "adversarial loss only (k = 7 here; pass nb_iter to change it).",
    ),
    "fast": Recipe(
        "fast",
        "fgsm",
        1,
        1.25,
        True,
        1.0,
        reference="Wong, Rice & Kolter 2020: FGSM from a uniform random start, step "
        "1.25 eps, adversarial loss only.",
    ),
    "trades": Recipe(
        "trades",
        "pgd",
        10,
        0.25,
        True,
        1.0,
        trades_beta=6.0,
        rand_radius=0.01,
        reference="Zhang et al. 2019: CE(clean) + beta KL(clean || adversarial), beta = 6, "
        "the inner PGD (10 steps of eps / 4, from a start within 0.01 eps) "
        "maximising the KL.",
    ),
    "gaussian": Recipe(
        "gaussian",
        "gaussian",
        0,
        0.0,
        False,
        1.0,
        reference="Cohen, Rosenfeld & Kolter 2019: Gaussian data augmentation with the "
        "smoothing's sigma, noisy loss only; certify with "
        "advlib.certify.SmoothedClassifier.",
    ),
}


def get(name_or_recipe, **overrides) -> Recipe:
    """A preset by name, with fields overridden (e.g. nb_iter=10 for PGD-10)."""
    recipe = name_or_recipe
    if not isinstance(recipe, Recipe):
        recipe = RECIPES[_checks.check_choice("recipe", recipe, sorted(RECIPES))]
    return dataclasses.replace(recipe, **overrides) if overrides else recipe
