"""Momentum Iterative Method (Dong et al. 2018)."""

from __future__ import annotations

from advlib.attacks.base import DOMAIN, TARGETABLE
from advlib.attacks.gradient import GradientAttack


class MomentumIterativeMethod(GradientAttack):
    """BIM with an accumulated, L1-normalised gradient.

    Each step adds the gradient divided by its mean absolute value to a
    momentum `g <- decay_factor * g + grad / mean|grad|` and steps along `g`.

    Args (to `generate` / `generate_np`):
        eps (0.3), eps_iter (0.06), nb_iter (10): radius, step and steps.
        decay_factor (1.0): momentum decay.
        norm, y, y_target, targeted, clip_min, clip_max, loss_fn: as in
            `ProjectedGradientDescent`.

    Example:
        >>> mim = MomentumIterativeMethod(keras_model)
        >>> x_adv = mim.generate_np(x, eps=0.1, eps_iter=0.01, decay_factor=1.0)
    """

    shared_params = ("norm", *TARGETABLE, *DOMAIN)
    defaults = dict(eps_iter=0.06, decay_factor=1.0)
    fixed = dict(rand_init=False, rand_minmax=None, nb_restarts=1)
