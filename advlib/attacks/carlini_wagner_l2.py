"""Carlini-Wagner L2 attack (Carlini & Wagner 2017)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from advlib.attacks import utils
from advlib.attacks.constant_search import ConstantSearch, penalty, still_improving

_TANH_SHRINK = 0.999999  # keeps atanh finite for inputs on the bounds


class CarliniWagnerL2(ConstantSearch):
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
    def _step_fn(self, search, x, labels, const, best, active, numbers, use_tanh, targeted):
        """One Adam step on the whole batch; `search` is (w, m, v, t)."""
        w, m, v, t = search
        low, high, confidence, learning_rate = numbers
        with tf.GradientTape() as tape:
            tape.watch(w)
            x_adv = self._to_input(w, low, high, use_tanh)
            l2 = tf.reduce_sum(tf.square(x_adv - x), tf.range(1, tf.rank(x)))
            hinge, margin = penalty(self.model, x_adv, labels, targeted, confidence, x.dtype)
            loss = l2 + const * hinge
        grad = tape.gradient(loss, w)
        t = t + 1
        step, new_m, new_v = utils.adam_update(grad, m, v, t, learning_rate)
        moving = utils.per_example(active, x)
        # success at the point just evaluated, at the required confidence
        success = (margin > confidence) & active
        improved = success & (l2 < best["distance"])
        search = (
            tf.where(moving, w - step, w),
            tf.where(moving, new_m, m),
            tf.where(moving, new_v, v),
            t,
        )
        best = {
            "distance": tf.where(improved, l2, best["distance"]),
            "x": tf.where(utils.per_example(improved, x), x_adv, best["x"]),
        }
        return search, best, success, loss

    def _minimise(
        self, x, labels, targeted, const, best, *, clip_min, clip_max, max_iterations, **options
    ):
        use_tanh = clip_min is not None and clip_max is not None
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        numbers = (low, high, *(tf.constant(options[k], x.dtype) for k in _SCALARS))
        w0 = self._to_search_space(x, low, high, use_tanh)
        search = (w0, tf.zeros_like(w0), tf.zeros_like(w0), tf.constant(0.0, x.dtype))
        succeeded = tf.zeros([len(x)], tf.bool)
        active, previous = np.ones(len(x), bool), np.full(len(x), np.inf)
        check_every = max(1, max_iterations // 10)
        for iteration in range(max_iterations):
            search, new_best, success, loss = self._step(
                search, x, labels, const, best, tf.constant(active), numbers, use_tanh, targeted
            )
            best.update(new_best)
            succeeded = succeeded | success
            self._count(int(active.sum()), forward=1, backward=1)
            if options["abort_early"] and iteration % check_every == 0:
                active, previous = still_improving(loss.numpy(), previous, active)
                if not active.any():
                    break
        return succeeded.numpy()


_SCALARS = ("confidence", "learning_rate")
