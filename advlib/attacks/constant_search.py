"""The search over the loss constant that Carlini-Wagner L2 and EAD share.

Both minimise a distance plus `c` times a hinge on the logit margin, with one
constant `c` per example: multiplied by 10 until a first success, then
bisected (Carlini & Wagner 2017). Per example, the successful point of smallest
distance over all constants is returned; where none succeeded, `x` itself.
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks.base import DOMAIN, Attack, refuse_true_class_targets
from advlib.losses import margin_loss

_LARGE_CONST = 1e10


def initial_bracket(batch: int, initial_const: float):
    """The per-example constant search's start: (const, lower, upper)."""
    return np.full(batch, float(initial_const)), np.zeros(batch), np.full(batch, _LARGE_CONST)


def still_improving(loss, previous, active):
    """Abort-early's check, per example so that batching never changes a result:
    an example stays active while its loss fell by more than 0.01% since the last
    check. Returns the new (active, previous)."""
    active = active & ~(loss > previous * 0.9999)
    return active, np.where(active, loss, previous)


def search_constants(succeeded, const, lower, upper):
    """One step of the per-example search over the loss constant c (Carlini &
    Wagner; EAD likewise): bisect once a success brackets c, else multiply by 10.
    Returns the new (const, lower, upper)."""
    upper = np.where(succeeded, np.minimum(upper, const), upper)
    lower = np.where(succeeded, lower, np.maximum(lower, const))
    bracketed = upper < _LARGE_CONST / 10
    return np.where(bracketed, (lower + upper) / 2, const * 10), lower, upper


def penalty(model, x_adv, labels, targeted, confidence, dtype):
    """The hinge `max(confidence - margin, 0)` and the margin itself, which is
    positive once the model leaves `labels` (reaches them, when targeted)."""
    margin = margin_loss(labels=labels, logits=ops.cast(model.get_logits(x_adv), dtype))
    margin = -margin if targeted else margin
    return ops.maximum(confidence - margin, 0), margin


class ConstantSearch(Attack, register=False):
    """Minimises distance + c * hinge(margin) with a searched per-example `c`.

    Subclasses implement `_minimise`, the inner search at fixed constants.

    Args (to `generate` / `generate_np`):
        y, y_target: labels, or targets for a targeted attack.
        batch_size: examples optimised together (default: the whole batch).
            `generate_np` and `run` take it as their own batching argument,
            where None also means all at once.
        confidence: required logit margin kappa.
        learning_rate: the step size of the inner search.
        binary_search_steps, max_iterations: outer and inner steps.
        abort_early: stop the inner search once its loss stalls (checked
            every max_iterations // 10 steps).
        initial_const: the starting constant c.
        clip_min, clip_max: the input domain (default [0, 1]).
    """

    shared_params = ("y", "y_target", *DOMAIN)
    defaults: ClassVar[dict[str, Any]] = dict(clip_min=0.0, clip_max=1.0)

    def parse_params(
        self,
        batch_size=None,
        confidence=0.0,
        learning_rate=5e-3,
        binary_search_steps=5,
        max_iterations=1000,
        abort_early=True,
        initial_const=1e-2,
    ) -> dict[str, Any]:
        number = _checks.check_number
        return dict(
            batch_size=number("batch_size", batch_size, low=1, integer=True, allow_none=True),
            confidence=float(number("confidence", confidence, low=0)),
            learning_rate=float(number("learning_rate", learning_rate, low=0, low_open=True)),
            binary_search_steps=int(
                number("binary_search_steps", binary_search_steps, low=1, integer=True)
            ),
            max_iterations=int(number("max_iterations", max_iterations, low=1, integer=True)),
            abort_early=bool(abort_early),
            initial_const=float(number("initial_const", initial_const, low=0, low_open=True)),
        )

    def _generate(self, x, labels, targeted, *, batch_size, **options):
        """Searches `batch_size` examples at a time (all at once when None): the
        memory of each search grows with its batch. Targets equal to the true
        class are refused first: the search would report them as successes at
        zero distance."""
        if targeted:
            refuse_true_class_targets(
                backend.to_numpy(labels), backend.to_numpy(self.model.predict_classes(x))
            )
            self._count(len(x))
        size = batch_size or len(x)
        return ops.concatenate(
            [
                self._search(x[i : i + size], labels[i : i + size], targeted, **options)
                for i in range(0, len(x), size)
            ],
            0,
        )

    def _search(self, x, labels, targeted, *, binary_search_steps, initial_const, **options):
        const, lower, upper = initial_bracket(len(x), initial_const)
        best = {"distance": ops.full((len(x),), np.inf, x.dtype), "x": x}
        for _ in range(binary_search_steps):
            const_t = ops.convert_to_tensor(const, x.dtype)
            succeeded = self._minimise(x, labels, targeted, const_t, best, **options)
            const, lower, upper = search_constants(succeeded, const, lower, upper)
        return best["x"]

    @abc.abstractmethod
    def _minimise(self, x, labels, targeted, const, best, **options) -> np.ndarray:
        """The inner search at the constants `const`: updates `best` (the
        smallest `distance` of a success so far, and its point `x`) and returns
        which examples succeeded."""
