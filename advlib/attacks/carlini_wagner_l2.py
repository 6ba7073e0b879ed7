"""Carlini-Wagner L2 attack (Carlini & Wagner 2017)."""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from advlib import _checks
from advlib.attacks import utils
from advlib.attacks.base import Attack, refuse_true_class_targets
from advlib.losses import margin_loss

_LARGE_CONST = 1e10
_TANH_SHRINK = 0.999999  # keeps atanh finite for inputs on the bounds


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


def search_in_batches(attack: Any, x, labels, targeted, batch_size, **options):
    """Runs `attack._attack_batch` (a search over the loss constant) on `batch_size`
    examples at a time, all at once when None: the memory of each search grows with
    its batch. Targets equal to the true class are refused first: the search would
    report them as successes at zero distance."""
    if targeted:
        refuse_true_class_targets(labels.numpy(), attack.model.predict_classes(x).numpy())
        attack._count(len(x))
    size = batch_size or len(x)
    return tf.concat(
        [
            attack._attack_batch(x[i : i + size], labels[i : i + size], targeted, **options)
            for i in range(0, len(x), size)
        ],
        0,
    )


class CarliniWagnerL2(Attack):
    """Minimises ||delta||_2^2 + c * f(x + delta), with a per-example c.

    The search runs in tanh space (so the box constraint holds without
    clipping) with Adam, on the margin loss
    f = max(Z_y - max_{j != y} Z_j + confidence, 0) (untargeted) or
    f = max(max_{j != t} Z_j - Z_t + confidence, 0) (targeted). The constant
    c of each example is multiplied by 10 until a first success, then
    bisected. Per example, the successful adversarial example of smallest L2
    norm over all constants is returned; where none succeeded, `x` itself.

    Args (to `generate` / `generate_np`), cleverhans's names and defaults:
        y: true labels (default: the model's predictions).
        y_target: targets, which make the attack targeted.
        batch_size: examples optimised together (default: the whole batch).
            `generate_np` and `run` take it as their own batching argument,
            where None also means all at once.
        confidence (0): required logit margin kappa.
        learning_rate (5e-3): Adam's step size.
        binary_search_steps (5), max_iterations (1000): outer and inner steps.
        abort_early (True): stop an example's inner search once its loss
            stalls (checked every max_iterations // 10 steps).
        initial_const (1e-2): the starting constant c.
        clip_min (0), clip_max (1): the input domain; with either set to None
            the search runs in the input space itself.

    Example:
        >>> cw = CarliniWagnerL2(keras_model)
        >>> result = cw.run(x, y, max_iterations=200)
        >>> result.success_rate, result.l2.mean()
    """

    def __init__(self, model):
        super().__init__(model)
        self._step = tf.function(self._step_fn, reduce_retracing=True)

    def parse_params(
        self,
        y=None,
        y_target=None,
        batch_size=None,
        confidence=0.0,
        learning_rate=5e-3,
        binary_search_steps=5,
        max_iterations=1000,
        abort_early=True,
        initial_const=1e-2,
        clip_min=0.0,
        clip_max=1.0,
    ) -> dict[str, Any]:
        _checks.check_number("batch_size", batch_size, low=1, integer=True, allow_none=True)
        _checks.check_number("confidence", confidence, low=0)
        _checks.check_number("learning_rate", learning_rate, low=0, low_open=True)
        _checks.check_number("binary_search_steps", binary_search_steps, low=1, integer=True)
        _checks.check_number("max_iterations", max_iterations, low=1, integer=True)
        _checks.check_number("initial_const", initial_const, low=0, low_open=True)
        return dict(
            y=y,
            y_target=y_target,
            batch_size=batch_size,
            confidence=confidence,
            learning_rate=learning_rate,
            binary_search_steps=int(binary_search_steps),
            max_iterations=int(max_iterations),
            abort_early=bool(abort_early),
            initial_const=initial_const,
            clip_min=clip_min,
            clip_max=clip_max,
        )

    def _generate(self, x, labels, targeted, *, batch_size, **options):
        return search_in_batches(self, x, labels, targeted, batch_size, **options)

    # -- space changes -------------------------------------------------------
    @staticmethod
    def _to_input(w, low, high, use_tanh):
        if use_tanh:
            return tf.clip_by_value((tf.tanh(w) + 1) / 2 * (high - low) + low, low, high)
        return tf.clip_by_value(w, low, high)

    @staticmethod
    def _to_search_space(x, low, high, use_tanh):
        if use_tanh:
            return tf.atanh(((x - low) / (high - low) * 2 - 1) * _TANH_SHRINK)
        return x

    # -- one Adam step on the whole batch -----------------------------------
    def _step_fn(
        self,
        w,
        m,
        v,
        t,
        x,
        labels,
        const,
        best_l2,
        best_x,
        succeeded,
        active,
        low,
        high,
        confidence,
        learning_rate,
        use_tanh,
        targeted,
    ):
        with tf.GradientTape() as tape:
            tape.watch(w)
            x_adv = self._to_input(w, low, high, use_tanh)
            logits = tf.cast(self.model.get_logits(x_adv), x.dtype)
            axes = tf.range(1, tf.rank(x))
            l2 = tf.reduce_sum(tf.square(x_adv - x), axes)
            # margin_loss is positive once the model leaves `labels`
            margin = margin_loss(labels=labels, logits=logits)
            margin = -margin if targeted else margin
            loss = l2 + const * tf.maximum(confidence - margin, 0)
        grad = tape.gradient(loss, w)
        t = t + 1
        step, new_m, new_v = utils.adam_update(grad, m, v, t, learning_rate)
        new_w = w - step
        broadcast = lambda mask: utils.per_example(mask, x)
        moving = broadcast(active)
        # success at the point just evaluated, at the required confidence
        success = (margin > confidence) & active
        improved = success & (l2 < best_l2)
        return (
            tf.where(moving, new_w, w),
            tf.where(moving, new_m, m),
            tf.where(moving, new_v, v),
            t,
            tf.where(improved, l2, best_l2),
            tf.where(broadcast(improved), x_adv, best_x),
            succeeded | success,
            loss,
        )

    def _attack_batch(
        self,
        x,
        labels,
        targeted,
        *,
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
        use_tanh = clip_min is not None and clip_max is not None
        low, high = utils.bounds_as_tensors(dtype, clip_min, clip_max)
        batch = len(x)
        const, lower, upper = initial_bracket(batch, initial_const)
        best_l2 = tf.fill([batch], tf.constant(np.inf, dtype))
        best_x = x
        w0 = self._to_search_space(x, low, high, use_tanh)
        scalars = [tf.constant(v, dtype) for v in (confidence, learning_rate)]
        check_every = max(1, max_iterations // 10)
        for _ in range(binary_search_steps):
            w, m, v = w0, tf.zeros_like(w0), tf.zeros_like(w0)
            t = tf.constant(0.0, dtype)
            const_t = tf.constant(const, dtype)
            succeeded = tf.zeros([batch], tf.bool)
            active = np.ones(batch, bool)
            previous = np.full(batch, np.inf)
            for iteration in range(max_iterations):
                w, m, v, t, best_l2, best_x, succeeded, loss = self._step(
                    w,
                    m,
                    v,
                    t,
                    x,
                    labels,
                    const_t,
                    best_l2,
                    best_x,
                    succeeded,
                    tf.constant(active),
                    low,
                    high,
                    *scalars,
                    use_tanh,
                    targeted,
                )
                self._count(int(active.sum()), forward=1, backward=1)
                if abort_early and iteration % check_every == 0:
                    active, previous = still_improving(loss.numpy(), previous, active)
                    if not active.any():
                        break
            const, lower, upper = search_constants(succeeded.numpy(), const, lower, upper)
        return best_x
