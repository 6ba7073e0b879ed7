"""Iterative attacks: BIM (Kurakin et al. 2016) and PGD (Madry et al. 2017)."""

from __future__ import annotations

import numpy as np

from advlib.attacks.gradient import GradientAttack


class ProjectedGradientDescent(GradientAttack):
    """Projected gradient ascent from a random start in the eps-ball.

    Every step moves `eps_iter` along the best ascent direction for `norm`,
    then projects back onto the `norm` ball of radius `eps` around `x`
    (exactly, for L1 too) and onto `[clip_min, clip_max]`.

    Args (to `generate` / `generate_np`):
        eps (0.3), eps_iter (0.05), nb_iter (10): radius, step and steps.
        norm: np.inf (default), 1 or 2; `ord` is an alias.
        y, y_target, targeted: labels as in `FastGradientMethod`.
        clip_min, clip_max: input domain bounds.
        loss_fn: `loss_fn(labels=, logits=)`, or "ce" (default) / "cw".
        rand_init (True): start uniformly in the ball of radius `rand_minmax`.
        rand_minmax: radius of the random start (default eps).
        nb_restarts (1): per example, the most damaging restart is kept.
        seed: makes the random starts reproducible for a given batch.

    Example:
        >>> pgd = ProjectedGradientDescent(keras_model)
        >>> x_adv = pgd.generate_np(x, eps=0.1, eps_iter=0.01, nb_iter=40,
        ...                         clip_min=0.0, clip_max=1.0, seed=0)
    """

    _defaults = dict(eps=0.3, eps_iter=0.05, nb_iter=10, rand_init=True)


class MadryEtAl(ProjectedGradientDescent):
    """PGD with a random start, under the name of Madry et al. (2017)."""


class BasicIterativeMethod(ProjectedGradientDescent):
    """PGD started at `x` itself (no random start), after Kurakin et al. (2016)."""

    _defaults = dict(eps=0.3, eps_iter=0.05, nb_iter=10, rand_init=False)
