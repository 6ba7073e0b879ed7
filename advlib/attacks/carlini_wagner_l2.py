"""Carlini-Wagner L2 attack (Carlini & Wagner 2017)."""

from __future__ import annotations

import numpy as np
from keras import ops

from advlib import backend
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
        self._step = self._compiled(self._steps_fn)

    # -- space changes -------------------------------------------------------
    @staticmethod
    def _to_input(w, low, high, use_tanh):
        if use_tanh:
            return utils.clip((ops.tanh(w) + 1) / 2 * (high - low) + low, low, high)
        return utils.clip(w, low, high)

    @staticmethod
    def _to_search_space(x, low, high, use_tanh):
        if use_tanh:
            return ops.arctanh(((x - low) / (high - low) * 2 - 1) * _TANH_SHRINK)
        return x

    # -- Adam steps on the whole batch ----------------------------------------
    def _steps_fn(self, search, x, labels, const, best, active, numbers, count, use_tanh, targeted):
        """`count` Adam steps in one compiled call, between two abort-early checks
        (which need NumPy): a step's own work on a small model is shorter than the
        dispatch of a call. Returns the search, the best so far, which examples
        succeeded at any of the steps, and the last step's loss."""

        def step(_, state):
            search, best, succeeded, _ = state
            search, best, success, loss = self._step_fn(
                search, x, labels, const, best, active, numbers, use_tanh, targeted
            )
            return search, best, succeeded | success, loss

        none = ops.zeros([ops.shape(x)[0]], "bool")
        loss = ops.zeros([ops.shape(x)[0]], x.dtype)
        return ops.fori_loop(0, count, step, (search, best, none, loss))

    def _step_fn(self, search, x, labels, const, best, active, numbers, use_tanh, targeted):
        """One Adam step on the whole batch; `search` is (w, m, v, t)."""
        w, m, v, t = search
        low, high, confidence, learning_rate = numbers

        def objective(w):
            x_adv = self._to_input(w, low, high, use_tanh)
            l2 = ops.sum(ops.square(x_adv - x), tuple(range(1, len(x.shape))))
            hinge, margin = penalty(self.model, x_adv, labels, targeted, confidence, x.dtype)
            return l2 + const * hinge, (x_adv, l2, margin)

        loss, grad, (x_adv, l2, margin) = backend.value_and_gradient(objective, w)
        t = t + 1
        step, new_m, new_v = utils.adam_update(grad, m, v, t, learning_rate)
        moving = utils.per_example(active, x)
        # success at the point just evaluated, at the required confidence
        success = (margin > confidence) & active
        improved = success & (l2 < best["distance"])
        search = (
            ops.where(moving, w - step, w),
            ops.where(moving, new_m, m),
            ops.where(moving, new_v, v),
            t,
        )
        best = {
            "distance": ops.where(improved, l2, best["distance"]),
            "x": ops.where(utils.per_example(improved, x), x_adv, best["x"]),
        }
        return search, best, success, loss

    def _minimise(
        self, x, labels, targeted, const, best, *, clip_min, clip_max, max_iterations, **options
    ):
        use_tanh = clip_min is not None and clip_max is not None
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        numbers = (low, high, *(ops.convert_to_tensor(options[k], x.dtype) for k in _SCALARS))
        w0 = self._to_search_space(x, low, high, use_tanh)
        search = (w0, ops.zeros_like(w0), ops.zeros_like(w0), ops.convert_to_tensor(0.0, x.dtype))
        succeeded = ops.zeros([len(x)], "bool")
        active, previous = np.ones(len(x), bool), np.full(len(x), np.inf)
        check_every = max(1, max_iterations // 10)
        done = 0
        while done < max_iterations:
            # abort early checks after the steps 0, check_every, 2 * check_every, ...
            if options["abort_early"]:
                end = min(-(-done // check_every) * check_every, max_iterations - 1)
            else:
                end = max_iterations - 1
            count = end - done + 1
            search, new_best, success, loss = self._step(
                search,
                x,
                labels,
                const,
                best,
                ops.convert_to_tensor(active),
                numbers,
                ops.convert_to_tensor(count, "int32"),
                use_tanh,
                targeted,
            )
            best.update(new_best)
            succeeded = succeeded | success
            self._count(int(active.sum()) * count, forward=1, backward=1)
            done = end + 1
            if options["abort_early"] and end % check_every == 0:
                active, previous = still_improving(backend.to_numpy(loss), previous, active)
                if not active.any():
                    break
        return backend.to_numpy(succeeded)


_SCALARS = ("confidence", "learning_rate")
