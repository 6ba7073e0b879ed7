"""Momentum Iterative Method (Dong et al. 2018)."""

from __future__ import annotations

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

    def parse_params(
        self,
        eps=0.3,
        eps_iter=0.06,
        nb_iter=10,
        norm=None,
        ord=None,
        y=None,
        y_target=None,
        targeted=False,
        clip_min=None,
        clip_max=None,
        loss_fn=None,
        decay_factor=1.0,
    ):
        return super().parse_params(
            eps=eps,
            eps_iter=eps_iter,
            nb_iter=nb_iter,
            norm=norm,
            ord=ord,
            y=y,
            y_target=y_target,
            targeted=targeted,
            clip_min=clip_min,
            clip_max=clip_max,
            loss_fn=loss_fn,
            decay_factor=decay_factor,
        )
