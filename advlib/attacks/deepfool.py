"""DeepFool (Moosavi-Dezfooli, Fawzi & Frossard 2016): a minimum-norm attack by
repeated steps onto the nearest linearised decision boundary."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack

_OWN_CLASS = 1e10  # f_y - f_y is no boundary
_PAST_BOUNDARY = 1e-4  # each step lands this far beyond the linearised boundary


class DeepFool(Attack):
    """DeepFool: from the input, step onto the nearest linearised boundary among
    the `nb_candidate` most likely classes, until the class changes.

    At each step, with f_k - f_y the logit differences of the candidates and
    w_k their gradients, the nearest boundary in `norm` is
    k* = argmin |f_k - f_y| / ||w_k||_dual, and the step is the smallest one that
    crosses its linearisation (L2: along w; L-inf: along sign(w)). The steps
    accumulate into r, and the adversarial example is x + (1 + overshoot) r,
    clipped to the input domain. Untargeted only. Each step runs only on the
    examples not yet adversarial, as one forward and one backward pass over a
    copy of each example per candidate (every candidate's gradient at once).

    Args (to `generate` / `generate_np`), cleverhans 3's names and defaults:
        nb_candidate (10): the most likely classes (by the clean logits) whose
            boundaries are considered, the label's included (at most all classes).
        overshoot (0.02): the accumulated step is scaled by 1 + overshoot.
        max_iter (50): steps at most.
        norm (2): 2 or np.inf (`ord` is an alias).
        y: true labels (default: the model's predictions).
        clip_min (0), clip_max (1): the input domain.

    Example:
        >>> result = DeepFool(model).run(x, y)
        >>> result.median_norm(2), result.success_at([0.5, 1.0, 2.0])
    """

    threat_params = ("norm", "clip_min", "clip_max")

    def __init__(self, model):
        super().__init__(model)
        self._step = self._compiled(self._step_fn)

    shared_params = ("norm", "y", *DOMAIN)
    norms = (2, np.inf)
    defaults = dict(clip_min=0.0, clip_max=1.0)

    def parse_params(self, nb_candidate=10, overshoot=0.02, max_iter=50) -> dict[str, Any]:
        return dict(
            nb_candidate=int(
                _checks.check_number("nb_candidate", nb_candidate, low=2, integer=True)
            ),
            overshoot=float(_checks.check_number("overshoot", overshoot, low=0)),
            max_iter=int(_checks.check_number("max_iter", max_iter, low=1, integer=True)),
        )

    def _generate(
        self, x, labels, targeted, *, nb_candidate, overshoot, max_iter, norm, clip_min, clip_max
    ):
        del targeted  # untargeted only: parse refuses y_target
        nb_candidate = min(nb_candidate, self.model.nb_classes)
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        candidates = self._candidates(x, labels, nb_candidate)
        overshoot = ops.convert_to_tensor(overshoot, x.dtype)
        total = ops.zeros_like(x)
        active = np.arange(len(x))
        for _ in range(max_iter):
            # only the examples still classified as their label take a step
            rows = backend.padded_rows(active)
            pick = lambda t: ops.take(t, rows, axis=0)
            updated, still = self._step(
                pick(x), pick(total), pick(labels), pick(candidates), low, high, overshoot, norm
            )
            self._count(len(active), forward=nb_candidate, backward=nb_candidate)
            still = backend.to_numpy(still)[: active.size]
            total = ops.scatter_update(total, active[:, None], updated[: active.size])
            active = active[still]
            if not active.size:
                break
        return utils.clip(x + (1 + overshoot) * total, low, high)

    def _candidates(self, x, labels, count):
        """Per example, the label first, then the `count` - 1 most likely other classes."""
        self._count(len(x))
        logits = ops.cast(self.model.predict_logits(x), "float32")
        own = ops.cast(ops.one_hot(ops.cast(labels, "int32"), logits.shape[1]), "bool")
        _, others = ops.top_k(ops.where(own, -np.inf, logits), k=count - 1)
        return ops.concatenate([ops.cast(labels[:, None], "int32"), ops.cast(others, "int32")], 1)

    def _step_fn(self, x, total, labels, candidates, low, high, overshoot, norm):
        """One DeepFool step for a batch of examples: those still classified as their
        label at x + (1 + overshoot) total move to their nearest linearised boundary.
        Returns the new accumulated steps and which examples moved."""
        x_adv = utils.clip(x + (1 + overshoot) * total, low, high)
        count = candidates.shape[1]
        # one copy of each example per candidate: one backward pass of the
        # batch x candidates copies gives every candidate's gradient
        copies = ops.repeat(x_adv, count, axis=0)

        def difference_of_copies(copies):
            all_logits = ops.cast(self.model.get_logits(copies), x.dtype)
            picked = utils.take_rows(all_logits, ops.reshape(candidates, (-1,)))
            own = utils.take_rows(all_logits, ops.repeat(labels, count, axis=0))
            return picked - own, all_logits

        difference, gradient, all_logits = backend.value_and_gradient(difference_of_copies, copies)
        logits = all_logits[::count]
        difference = ops.reshape(difference, (-1, count))
        flat_gradient = ops.reshape(gradient, (-1, count, int(np.prod(x.shape[1:]))))
        is_own = ops.arange(count)[None, :] == 0
        difference = ops.where(is_own, ops.convert_to_tensor(_OWN_CLASS, x.dtype), difference)
        _, _, f, w = utils.nearest_linear_boundary(difference, flat_gradient, norm)
        size = ops.abs(f) + _PAST_BOUNDARY
        if norm == np.inf:
            step = utils.per_example(size / (ops.sum(ops.abs(w), axis=1) + 1e-12), w) * ops.sign(w)
        else:
            step = utils.per_example(size / (ops.sum(ops.square(w), axis=1) + 1e-12), w) * w
        moving = ops.equal(ops.cast(ops.argmax(logits, axis=-1), labels.dtype), labels)
        total = ops.where(
            utils.per_example(moving, x), total + ops.reshape(step, ops.shape(x)), total
        )
        return total, moving
