"""EAD, the elastic-net attack (Chen, Sharma, Zhang, Yi & Hsieh, AAAI 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from advlib import _checks
from advlib.attacks import utils
from advlib.attacks.base import Attack
from advlib.attacks.carlini_wagner_l2 import initial_bracket, search_constants, search_in_batches
from advlib.losses import margin_loss

DECISION_RULES = ("EN", "L1")


def shrink(z, x, beta, low, high):
    """ISTA's projected shrinkage-thresholding: z moves towards x by beta
    elementwise (entries within beta of x become x), then into [low, high]."""
    difference = z - x
    shrunk = tf.where(difference > beta, z - beta, tf.where(difference < -beta, z + beta, x))
    return tf.clip_by_value(shrunk, low, high)


class ElasticNetMethod(Attack):
    """EAD: minimises c * f(x') + ||x' - x||_2^2 + beta ||x' - x||_1 with FISTA.

    The smooth part (the Carlini-Wagner margin loss f and the squared L2
    distance) takes gradient steps; the L1 term is handled exactly by
    shrinkage-thresholding, which leaves many entries unchanged (sparse,
    L1-small perturbations). The step size decays as (1 - k / K)^0.5, and a
    Nesterov slack variable accelerates the descent. The constant c of each
    example is searched as in Carlini-Wagner. Per example, the successful point
    with the smallest elastic-net distance (`decision_rule="EN"`) or L1 distance
    ("L1") over all constants is returned; where none succeeded, `x` itself.

    Args (to `generate` / `generate_np`), cleverhans 3's names and defaults:
        beta (1e-2): the L1 weight.
        decision_rule ("EN"): how the best example is chosen, "EN" or "L1".
        confidence (0): required logit margin kappa.
        learning_rate (1e-2): the initial step size.
        binary_search_steps (9), max_iterations (1000): outer and inner steps.
        abort_early (False): stop the inner search once the batch's summed loss
            stalls (checked every max_iterations // 10 steps), as cleverhans and
            Foolbox do; results then depend on which examples share a batch
            (`batch_size`), as theirs do. Off, every example's search is its own.
        initial_const (1e-3): the starting constant c.
        batch_size: examples optimised together (default: the whole batch).
        y, y_target: labels, or targets for a targeted attack.
        clip_min (0), clip_max (1): the input domain.

    Example:
        >>> result = ElasticNetMethod(model).run(x, y, max_iterations=100)
        >>> result.median_norm(1)
    """

    threat_params = ("clip_min", "clip_max")

    def __init__(self, model):
        super().__init__(model)
        self._step = tf.function(self._step_fn, reduce_retracing=True)

    def parse_params(
        self,
        y=None,
        y_target=None,
        beta=1e-2,
        decision_rule="EN",
        batch_size=None,
        confidence=0.0,
        learning_rate=1e-2,
        binary_search_steps=9,
        max_iterations=1000,
        abort_early=False,
        initial_const=1e-3,
        clip_min=0.0,
        clip_max=1.0,
    ) -> dict[str, Any]:
        _checks.check_number("beta", beta, low=0)
        _checks.check_choice("decision_rule", decision_rule, DECISION_RULES)
        _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
        _checks.check_number("confidence", confidence, low=0)
        _checks.check_number("learning_rate", learning_rate, low=0, low_open=True)
        _checks.check_number("binary_search_steps", binary_search_steps, low=1, integer=True)
        _checks.check_number("max_iterations", max_iterations, low=1, integer=True)
        _checks.check_number("initial_const", initial_const, low=0, low_open=True)
        return dict(
            y=y,
            y_target=y_target,
            beta=float(beta),
            decision_rule=decision_rule,
            batch_size=batch_size,
            confidence=float(confidence),
            learning_rate=float(learning_rate),
            binary_search_steps=int(binary_search_steps),
            max_iterations=int(max_iterations),
            abort_early=bool(abort_early),
            initial_const=float(initial_const),
            clip_min=clip_min,
            clip_max=clip_max,
        )

    def _generate(self, x, labels, targeted, *, batch_size, **options):
        return search_in_batches(self, x, labels, targeted, batch_size, **options)

    def _step_fn(
        self,
        state,
        k,
        x,
        labels,
        const,
        low,
        high,
        beta,
        confidence,
        learning_rate,
        en_rule,
        targeted,
    ):
        """One FISTA step of the search's `state` (a dict of batch tensors), then the
        new point's success and distance recorded. Returns the new state and the
        batch's summed loss."""
        axes = tf.range(1, tf.rank(x))
        adversarial, slack = state["adversarial"], state["slack"]
        with tf.GradientTape() as tape:
            tape.watch(slack)
            margin = margin_loss(
                labels=labels, logits=tf.cast(self.model.get_logits(slack), x.dtype)
            )
            margin = -margin if targeted else margin
            smooth = const * tf.maximum(confidence - margin, 0) + tf.reduce_sum(
                tf.square(slack - x), axes
            )
        gradient = tape.gradient(smooth, slack)
        new_adversarial = shrink(slack - learning_rate * gradient, x, beta, low, high)
        margin = margin_loss(
            labels=labels, logits=tf.cast(self.model.get_logits(new_adversarial), x.dtype)
        )
        margin = -margin if targeted else margin
        l1 = tf.reduce_sum(tf.abs(new_adversarial - x), axes)
        l2 = tf.reduce_sum(tf.square(new_adversarial - x), axes)
        distance = l2 + beta * l1 if en_rule else l1
        success = margin > confidence
        improved = success & (distance < state["best_distance"])
        loss = tf.reduce_sum(const * tf.maximum(confidence - margin, 0) + l2 + beta * l1)
        return {
            "adversarial": new_adversarial,
            "slack": new_adversarial + k / (k + 3) * (new_adversarial - adversarial),
            "best_distance": tf.where(improved, distance, state["best_distance"]),
            "best_x": tf.where(utils.per_example(improved, x), new_adversarial, state["best_x"]),
            "succeeded": state["succeeded"] | success,
        }, loss

    def _attack_batch(
        self,
        x,
        labels,
        targeted,
        *,
        beta,
        decision_rule,
        confidence,
        learning_rate,
        binary_search_steps,
        max_iterations,
        abort_early,
        initial_const,
        clip_min,
        clip_max,
    ):
        dtype = x.dtype
        low, high = utils.bounds_as_tensors(dtype, clip_min, clip_max)
        batch = len(x)
        const, lower, upper = initial_bracket(batch, initial_const)
        state = {"best_distance": tf.fill([batch], tf.constant(np.inf, dtype)), "best_x": x}
        scalars = [tf.constant(v, dtype) for v in (beta, confidence)]
        check_every = max(1, max_iterations // 10)
        for _ in range(binary_search_steps):
            state.update(adversarial=x, slack=x, succeeded=tf.zeros([batch], tf.bool))
            const_t = tf.constant(const, dtype)
            previous = np.inf
            for k in range(max_iterations):
                rate = learning_rate * (1 - k / max_iterations) ** 0.5
                state, loss = self._step(
                    state,
                    tf.constant(float(k), dtype),
                    x,
                    labels,
                    const_t,
                    low,
                    high,
                    *scalars,
                    tf.constant(rate, dtype),
                    decision_rule == "EN",
                    targeted,
                )
                self._count(batch, forward=2, backward=1)
                # as cleverhans and Foolbox: the batch's summed loss, every tenth
                if abort_early and k % check_every == 0:
                    loss = float(loss)
                    if loss > previous * 0.9999:
                        break
                    previous = loss
            const, lower, upper = search_constants(state["succeeded"].numpy(), const, lower, upper)
        return state["best_x"]
