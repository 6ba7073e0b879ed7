"""FMN, the Fast Minimum-Norm attack (Pintor, Roli, Brendel & Biggio, NeurIPS 2021)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack, refuse_true_class_targets
from advlib.losses import margin_loss

FMN_NORMS = (0, 1, 2, np.inf)


def project_l0_ball(delta, eps):
    """Keeps, per example, the `eps` (a count) entries of largest magnitude; of
    equal ones, those of lower index."""
    flat = utils.flatten(delta)
    # each entry's place in its example's order by magnitude: the permutation's inverse
    rank = ops.argsort(backend.descending_order(ops.abs(flat)), axis=1)
    keep = ops.cast(rank, flat.dtype) < eps[:, None]
    return ops.reshape(ops.where(keep, flat, ops.zeros_like(flat)), ops.shape(delta))


def project_onto_ball(delta, eps, norm):
    """The projection of each example's `delta` onto its `norm` ball of radius
    `eps` (a per-example vector; inf leaves the example as it is)."""
    if norm == 0:
        return project_l0_ball(delta, eps)
    finite = ops.isfinite(eps)
    radius = utils.per_example(ops.where(finite, eps, ops.zeros_like(eps)), delta)
    projected = (
        utils.clip_eta(delta, norm, radius)
        if norm != 1
        else utils.project_l1_ball(delta, ops.where(finite, eps, ops.zeros_like(eps))[:, None])
    )
    return ops.where(utils.per_example(finite, delta), projected, delta)


class FMN(Attack):
    """The Fast Minimum-Norm attack: normalised gradient steps on the logit
    margin, projected onto an L_p ball whose radius eps adapts per example.

    While an example is not adversarial, eps grows (first to the linearised
    distance to the boundary, then by a factor 1 + gamma); once it is, eps
    shrinks to min((1 - gamma) eps, the smallest adversarial norm found). Step
    size alpha and gamma decay with a cosine schedule. Per example, the
    adversarial point of smallest norm is returned (`x` itself where none was
    found). Each step costs one forward and one backward pass.

    Args (to `generate` / `generate_np`), the paper's names and Foolbox's defaults:
        norm (np.inf): 0, 1, 2 or np.inf (`ord` is an alias). L0 counts changed
            input entries.
        steps (100): optimisation steps.
        alpha_init (1.0), alpha_final (alpha_init / 100): the step size.
        gamma_init (0.05), gamma_final (0.001): eps's relative change.
        y: true labels (default: the model's predictions).
        y_target: targets, which make the attack targeted.
        clip_min (0), clip_max (1): the input domain.

    Example:
        >>> result = FMN(model).run(x, y, norm=2, steps=100)
        >>> result.median_norm(2), result.success_at([0.5, 1.0], norm=2)
    """

    threat_params = ("norm", "clip_min", "clip_max")

    def __init__(self, model):
        super().__init__(model)
        self._step = self._compiled(self._step_fn)

    shared_params = ("norm", "y", "y_target", *DOMAIN)
    norms = FMN_NORMS[::-1]
    defaults = dict(clip_min=0.0, clip_max=1.0)

    def parse_params(
        self, steps=100, alpha_init=1.0, alpha_final=None, gamma_init=0.05, gamma_final=0.001
    ) -> dict[str, Any]:
        number = _checks.check_number
        alpha_init = number("alpha_init", alpha_init, low=0, low_open=True)
        alpha_final = alpha_init / 100 if alpha_final is None else alpha_final
        gamma_init = number("gamma_init", gamma_init, low=0, high=1, high_open=True)
        return dict(
            steps=int(number("steps", steps, low=1, integer=True)),
            alpha_init=float(alpha_init),
            alpha_final=float(number("alpha_final", alpha_final, low=0, high=alpha_init)),
            gamma_init=float(gamma_init),
            gamma_final=float(number("gamma_final", gamma_final, low=0, high=gamma_init)),
        )

    def _generate(
        self,
        x,
        labels,
        targeted,
        *,
        norm,
        steps,
        alpha_init,
        alpha_final,
        gamma_init,
        gamma_final,
        clip_min,
        clip_max,
    ):
        if targeted:
            refuse_true_class_targets(
                backend.to_numpy(labels), backend.to_numpy(self.model.predict_classes(x))
            )
            self._count(len(x))
        dtype = x.dtype
        low, high = utils.bounds_as_tensors(dtype, clip_min, clip_max)
        batch = len(x)
        # the largest perturbation the domain allows bounds eps
        worst = utils.lp_norm(ops.maximum(x - low, high - x), norm)
        worst = ops.where(ops.isfinite(worst), worst, ops.convert_to_tensor(np.inf, dtype))
        epsilon = ops.full((batch,), 1.0 if norm == 0 else np.inf, dtype)
        state = (
            ops.zeros_like(x),
            epsilon,
            ops.full((batch,), np.inf, dtype),
            x,
            ops.zeros([batch], "bool"),
        )
        for i in range(steps):
            cosine = (1 + math.cos(math.pi * i / steps)) / 2
            alpha = alpha_final + (alpha_init - alpha_final) * cosine
            gamma = gamma_final + (gamma_init - gamma_final) * cosine
            state = self._step(
                x,
                labels,
                *state,
                worst,
                low,
                high,
                ops.convert_to_tensor(alpha, dtype),
                ops.convert_to_tensor(gamma, dtype),
                norm,
                targeted,
            )
        self._count(batch, forward=steps, backward=steps)
        return state[3]

    def _step_fn(
        self,
        x,
        labels,
        delta,
        epsilon,
        best_norm,
        best_adv,
        found,
        worst,
        low,
        high,
        alpha,
        gamma,
        norm,
        targeted,
    ):
        point = x + delta

        def objective(delta):
            logits = ops.cast(self.model.get_logits(x + delta), x.dtype)
            # ascending `loss` moves towards the goal; it is positive once reached
            loss = margin_loss(labels=labels, logits=logits)
            return (-loss if targeted else loss), logits

        loss, gradient, logits = backend.value_and_gradient(objective, delta)
        # entries at a bound of the domain cannot move out of it (the clip undoes
        # it): dropping them keeps the step and the boundary estimate usable
        blocked = ((point <= low) & (gradient < 0)) | ((point >= high) & (gradient > 0))
        gradient = ops.where(blocked, ops.zeros_like(gradient), gradient)
        predicted = ops.cast(ops.argmax(logits, axis=-1), labels.dtype)
        adversarial = ops.equal(predicted, labels) if targeted else ops.not_equal(predicted, labels)
        size = utils.lp_norm(delta, norm)
        better = adversarial & (size < best_norm)
        best_norm = ops.where(better, size, best_norm)
        best_adv = ops.where(utils.per_example(better, x), point, best_adv)
        found = found | adversarial
        epsilon = self._adapt_epsilon(
            epsilon, adversarial, found, best_norm, size, loss, gradient, gamma, norm
        )
        epsilon = ops.minimum(epsilon, worst)
        length = utils.per_example(ops.maximum(utils.lp_norm(gradient, 2), 1e-12), x)
        delta = project_onto_ball(delta + alpha * gradient / length, epsilon, norm)
        delta = utils.clip(x + delta, low, high) - x
        return delta, epsilon, best_norm, best_adv, found

    @staticmethod
    def _adapt_epsilon(epsilon, adversarial, found, best_norm, size, loss, gradient, gamma, norm):
        if norm == 0:  # a count: move by at least one entry
            shrunk = ops.minimum(
                ops.minimum(epsilon - 1, ops.floor(epsilon * (1 - gamma))), best_norm
            )
            grown = ops.maximum(epsilon + 1, ops.floor(epsilon * (1 + gamma)))
            return ops.maximum(ops.where(adversarial, shrunk, grown), 0.0)
        # before the first success, jump to the linearised distance to the boundary,
        # and grow by at least 1 + gamma: where the linearisation is exact the jump
        # lands on the boundary itself, where the model may still predict the label
        dual = utils.DUAL_NORMS[norm]
        gradient_norm = ops.maximum(utils.lp_norm(gradient, dual), 1e-12)
        to_boundary = ops.maximum(size + ops.abs(loss) / gradient_norm, size * (1 + gamma))
        return ops.where(
            adversarial,
            ops.minimum(epsilon * (1 - gamma), best_norm),
            ops.where(found, epsilon * (1 + gamma), to_boundary),
        )
