"""One mechanism behind FGM, BIM, PGD and MIM: compiled signed-gradient steps.

Each step is a compiled `tf.function` called from a Python loop. That is the
fastest design measured on CPU (a loop inside one `tf.function` and XLA were
both slower; see benchmarks/attack_speed.py). Every number that varies
between calls (eps, step size, bounds, labels, the batch) enters as a tensor,
so none of them retraces the step.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from advlib import _checks, losses
from advlib.attacks import utils
from advlib.attacks.base import Attack


def _as_tensors(dtype, eps, eps_iter, clip_min, clip_max, decay_factor):
    """The step's numbers as tensors of the input's dtype; open bounds are +-inf."""
    cast = lambda value: tf.cast(value, dtype)
    return (
        cast(eps),
        cast(eps_iter),
        *utils.bounds_as_tensors(dtype, clip_min, clip_max),
        cast(0.0 if decay_factor is None else decay_factor),
    )


class GradientAttack(Attack, register=False):
    """Iterated steps along the best linear ascent direction, projected.

    Subclasses set `defaults`; the parameters are those of cleverhans:

    Args (to `generate`):
        eps: radius of the perturbation ball.
        eps_iter: step size of each iteration (default: eps).
        nb_iter: number of iterations.
        norm: np.inf, 1 or 2 (`ord` is accepted as an alias).
        y: true labels (integer or one-hot). Default: the model's predictions.
        y_target: target labels; makes the attack targeted.
        targeted: cleverhans 4's flag; with it, `y` holds the targets.
        clip_min, clip_max: bounds of the input domain (None: unbounded).
        loss_fn: per-example loss, `loss_fn(labels=, logits=)`, or "ce"/"cw".
        rand_init: start from a uniform random point in the ball.
        rand_minmax: radius of that random start (default: eps).
        nb_restarts: independent runs; per example the most damaging is kept.
        decay_factor: momentum decay (MIM); None disables momentum.
        seed: makes random starts reproducible.
    """

    def __init__(self, model):
        super().__init__(model)
        self._step = tf.function(self._step_fn, reduce_retracing=True)
        self._score = tf.function(self._score_fn, reduce_retracing=True)

    def parse_params(
        self,
        eps=0.3,
        eps_iter=None,
        nb_iter=10,
        norm=None,
        ord=None,
        y=None,
        y_target=None,
        targeted=False,
        clip_min=None,
        clip_max=None,
        loss_fn=None,
        rand_init=False,
        rand_minmax=None,
        nb_restarts=1,
        decay_factor=None,
        seed=None,
    ) -> dict[str, Any]:
        norm = utils.resolve_norm(norm, ord)
        _checks.check_number("eps", eps, low=0)
        _checks.check_number("nb_iter", nb_iter, low=1, integer=True)
        eps_iter = eps if eps_iter is None else eps_iter
        _checks.check_number("eps_iter", eps_iter, low=0)
        rand_minmax = eps if rand_minmax is None else rand_minmax
        _checks.check_number("rand_minmax", rand_minmax, low=0)
        _checks.check_number("nb_restarts", nb_restarts, low=1, integer=True)
        _checks.check_number("decay_factor", decay_factor, low=0, allow_none=True)
        _checks.check_seed(seed)
        return dict(
            eps=eps,
            eps_iter=eps_iter,
            nb_iter=int(nb_iter),
            norm=norm,
            y=y,
            y_target=y_target,
            targeted=bool(targeted),
            clip_min=clip_min,
            clip_max=clip_max,
            loss_fn=losses.get(loss_fn),
            rand_init=bool(rand_init),
            rand_minmax=rand_minmax,
            nb_restarts=int(nb_restarts),
            decay_factor=decay_factor,
            seed=seed,
        )

    # -- compiled pieces ---------------------------------------------------
    def _step_fn(
        self,
        x_adv,
        x,
        labels,
        momentum,
        eps,
        eps_iter,
        decay,
        clip_min,
        clip_max,
        norm,
        targeted,
        loss_fn,
        use_momentum,
    ):
        _, grad, _ = self.model.loss_gradient(x_adv, labels, loss_fn, targeted)
        previous_momentum = momentum
        if use_momentum:
            axes = tf.range(1, tf.rank(grad))
            scale = tf.maximum(tf.reduce_mean(tf.abs(grad), axes, keepdims=True), 1e-12)
            momentum = decay * momentum + grad / scale
            grad = momentum
        moved = x_adv + utils.optimize_linear(grad, eps_iter, norm)
        moved = tf.clip_by_value(x + utils.clip_eta(moved - x, norm, eps), clip_min, clip_max)
        # a NaN or Inf gradient must not poison the example: it keeps its last finite iterate
        finite = utils.finite_rows(moved)
        keep = utils.per_example(finite, x)
        if use_momentum:
            momentum = tf.where(keep, momentum, previous_momentum)
        return (tf.where(keep, moved, x_adv), momentum, tf.reduce_sum(tf.cast(~finite, tf.int32)))

    def _score_fn(self, x_adv, labels, loss_fn, targeted):
        """Per example: whether the attack succeeded, and its objective."""
        logits = self.model.get_logits(x_adv)
        loss = loss_fn(labels=labels, logits=logits)
        predicted = tf.argmax(logits, axis=-1, output_type=labels.dtype)
        success = tf.equal(predicted, labels) if targeted else tf.not_equal(predicted, labels)
        return success, -loss if targeted else loss

    # -- the attack --------------------------------------------------------
    def _generate(
        self,
        x,
        labels,
        targeted,
        *,
        eps,
        eps_iter,
        nb_iter,
        norm,
        clip_min,
        clip_max,
        loss_fn,
        rand_init,
        rand_minmax,
        nb_restarts,
        decay_factor,
        seed,
    ):
        if eps == 0:
            return tf.identity(x)
        eps_t, eps_iter_t, low, high, decay = _as_tensors(
            x.dtype, eps, eps_iter, clip_min, clip_max, decay_factor
        )
        use_momentum = decay_factor is not None
        seed_pair = self._seed_pair(seed)
        best, fallbacks = None, tf.zeros((), tf.int32)
        for restart in range(nb_restarts):
            x_adv = self._start(
                x,
                rand_init,
                norm,
                eps_t,
                tf.cast(rand_minmax, x.dtype),
                seed_pair + [0, restart],
                low,
                high,
            )
            momentum = tf.zeros_like(x) if use_momentum else tf.zeros((), x.dtype)
            for _ in range(nb_iter):
                x_adv, momentum, bad = self._step(
                    x_adv,
                    x,
                    labels,
                    momentum,
                    eps_t,
                    eps_iter_t,
                    decay,
                    low,
                    high,
                    norm,
                    targeted,
                    loss_fn,
                    use_momentum,
                )
                fallbacks += bad
            self._count(len(x), forward=nb_iter, backward=nb_iter)
            if nb_restarts > 1:
                best = self._keep_most_damaging(best, x_adv, labels, loss_fn, targeted)
        self.nonfinite_fallbacks += int(fallbacks)
        return x_adv if best is None else best[0]

    @staticmethod
    def _start(x, rand_init, norm, eps, rand_minmax, seed_pair, low, high):
        if not rand_init:
            return x
        noise = utils.random_lp_vector(tf.shape(x), norm, rand_minmax, seed_pair, dtype=x.dtype)
        return tf.clip_by_value(x + utils.clip_eta(noise, norm, eps), low, high)

    def perturb(
        self,
        x,
        labels,
        *,
        eps,
        eps_iter,
        nb_iter,
        norm=np.inf,
        targeted=False,
        clip_min=None,
        clip_max=None,
        loss_fn=None,
        rand_init=False,
        rand_minmax=None,
        decay_factor=None,
        seed_pair=None,
    ):
        """Crafts adversarial examples with TensorFlow ops only.

        For use inside compiled code, such as a training step: no NumPy, no
        checks, a graph loop over the same step as `generate`. Numbers may be
        tensors; `labels` may be anything `loss_fn` accepts (a distribution,
        for TRADES's KL). `seed_pair` is an int tensor of shape (2,) for the
        random start.
        """
        eps, eps_iter, low, high, decay = _as_tensors(
            x.dtype, eps, eps_iter, clip_min, clip_max, decay_factor
        )
        use_momentum = decay_factor is not None
        rand_minmax = eps if rand_minmax is None else tf.cast(rand_minmax, x.dtype)
        x_adv = self._start(x, rand_init, norm, eps, rand_minmax, seed_pair, low, high)
        momentum = tf.zeros_like(x) if use_momentum else tf.zeros((), x.dtype)
        norm, loss_fn = utils.normalize_norm(norm), losses.get(loss_fn)

        def step(i, x_adv, momentum):
            x_adv, momentum, _ = self._step_fn(
                x_adv,
                x,
                labels,
                momentum,
                eps,
                eps_iter,
                decay,
                low,
                high,
                norm,
                targeted,
                loss_fn,
                use_momentum,
            )
            return i + 1, x_adv, momentum

        _, x_adv, _ = tf.while_loop(
            lambda i, *_: i < nb_iter, step, [tf.constant(0), x_adv, momentum]
        )
        return tf.stop_gradient(x_adv)

    def _keep_most_damaging(self, best, x_adv, labels, loss_fn, targeted):
        success, loss = self._score(x_adv, labels, loss_fn, targeted)
        self._count(len(x_adv))
        if best is None:
            return x_adv, success, loss
        best_x, best_success, best_loss = best
        better = (success & ~best_success) | ((success == best_success) & (loss > best_loss))
        mask = tf.reshape(better, [-1] + [1] * (x_adv.shape.rank - 1))
        return (
            tf.where(mask, x_adv, best_x),
            tf.where(better, success, best_success),
            tf.where(better, loss, best_loss),
        )
