"""EAD, the elastic-net attack (Chen, Sharma, Zhang, Yi & Hsieh, AAAI 2018)."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.constant_search import ConstantSearch, penalty

DECISION_RULES = ("EN", "L1")


def shrink(z, x, beta, low, high):
    """ISTA's projected shrinkage-thresholding: z moves towards x by beta
    elementwise (entries within beta of x become x), then into [low, high]."""
    difference = z - x
    shrunk = ops.where(difference > beta, z - beta, ops.where(difference < -beta, z + beta, x))
    return utils.clip(shrunk, low, high)


class ElasticNetMethod(ConstantSearch):
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
        self._step = self._compiled(self._step_fn)

    defaults = dict(
        ConstantSearch.defaults,
        learning_rate=1e-2,
        binary_search_steps=9,
        abort_early=False,
        initial_const=1e-3,
    )

    def parse_params(self, beta=1e-2, decision_rule="EN", **params) -> dict[str, Any]:
        return dict(
            super().parse_params(**params),
            beta=float(_checks.check_number("beta", beta, low=0)),
            decision_rule=_checks.check_choice("decision_rule", decision_rule, DECISION_RULES),
        )

    def _step_fn(self, state, k, x, labels, const, numbers, en_rule, targeted):
        """One FISTA step of the search's `state` (a dict of batch tensors), then the
        new point's success and distance recorded. Returns the new state and the
        batch's summed loss."""
        low, high, beta, confidence, learning_rate = numbers
        axes = tuple(range(1, len(x.shape)))
        adversarial, slack = state["adversarial"], state["slack"]

        def smooth(slack):
            hinge, _ = penalty(self.model, slack, labels, targeted, confidence, x.dtype)
            return const * hinge + ops.sum(ops.square(slack - x), axes), None

        _, gradient, _ = backend.value_and_gradient(smooth, slack)
        new_adversarial = shrink(slack - learning_rate * gradient, x, beta, low, high)
        hinge, margin = penalty(self.model, new_adversarial, labels, targeted, confidence, x.dtype)
        l1 = ops.sum(ops.abs(new_adversarial - x), axes)
        l2 = ops.sum(ops.square(new_adversarial - x), axes)
        distance = l2 + beta * l1 if en_rule else l1
        success = margin > confidence
        improved = success & (distance < state["distance"])
        loss = ops.sum(const * hinge + l2 + beta * l1)
        return {
            "adversarial": new_adversarial,
            "slack": new_adversarial + k / (k + 3) * (new_adversarial - adversarial),
            "distance": ops.where(improved, distance, state["distance"]),
            "x": ops.where(utils.per_example(improved, x), new_adversarial, state["x"]),
            "succeeded": state["succeeded"] | success,
        }, loss

    def _minimise(
        self, x, labels, targeted, const, best, *, clip_min, clip_max, max_iterations, **options
    ):
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        scalars = [ops.convert_to_tensor(options[k], x.dtype) for k in ("beta", "confidence")]
        state = dict(best, adversarial=x, slack=x, succeeded=ops.zeros([len(x)], "bool"))
        check_every = max(1, max_iterations // 10)
        previous = np.inf
        for k in range(max_iterations):
            rate = options["learning_rate"] * (1 - k / max_iterations) ** 0.5
            numbers = (low, high, *scalars, ops.convert_to_tensor(rate, x.dtype))
            state, loss = self._step(
                state,
                ops.convert_to_tensor(float(k), x.dtype),
                x,
                labels,
                const,
                numbers,
                options["decision_rule"] == "EN",
                targeted,
            )
            self._count(len(x), forward=2, backward=1)
            # as cleverhans and Foolbox: the batch's summed loss, every tenth
            if options["abort_early"] and k % check_every == 0:
                loss = float(loss)
                if loss > previous * 0.9999:
                    break
                previous = loss
        best.update(distance=state["distance"], x=state["x"])
        return backend.to_numpy(state["succeeded"])
