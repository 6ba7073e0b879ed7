"""One mechanism behind FGM, BIM, PGD and MIM: compiled signed-gradient steps.

Each step is a compiled `tf.function` called from a Python loop. That is the
fastest design measured on CPU (a loop inside one `tf.function` and XLA were
both slower; see benchmarks/attack_speed.py). Every number that varies
between calls (eps, step size, bounds, labels, the batch) enters as a tensor,
so none of them retraces the step.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
import tensorflow as tf

from advlib import _checks, losses
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, TARGETABLE, Attack


class _Numbers(NamedTuple):
    """The step's numbers, as tensors of the input's dtype; open bounds are +-inf."""

    eps: tf.Tensor
    eps_iter: tf.Tensor
    low: tf.Tensor
    high: tf.Tensor
    decay: tf.Tensor

    @classmethod
    def of(cls, dtype, eps, eps_iter, clip_min, clip_max, decay_factor) -> _Numbers:
        cast = lambda value: tf.cast(value, dtype)
        low, high = utils.bounds_as_tensors(dtype, clip_min, clip_max)
        decay = cast(0.0 if decay_factor is None else decay_factor)
        return cls(cast(eps), cast(eps_iter), low, high, decay)


class _Rule(NamedTuple):
    """The step's Python choices: each combination is one trace of the step."""

    norm: float
    targeted: bool
    loss_fn: Any
    use_momentum: bool


_PERTURB_DEFAULTS: dict[str, Any] = {
    "norm": np.inf,
    "targeted": False,
    "clip_min": None,
    "clip_max": None,
    "loss_fn": None,
    "rand_init": False,
    "rand_minmax": None,
    "decay_factor": None,
}


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

    shared_params: ClassVar[tuple[str, ...]] = ("norm", *TARGETABLE, *DOMAIN, "seed")

    def parse_params(
        self,
        eps=0.3,
        eps_iter=None,
        nb_iter=10,
        loss_fn=None,
        rand_init=False,
        rand_minmax=None,
        nb_restarts=1,
        decay_factor=None,
    ) -> dict[str, Any]:
        eps = _checks.check_number("eps", eps, low=0)
        eps_iter = eps if eps_iter is None else eps_iter
        rand_minmax = eps if rand_minmax is None else rand_minmax
        return dict(
            eps=eps,
            eps_iter=_checks.check_number("eps_iter", eps_iter, low=0),
            nb_iter=int(_checks.check_number("nb_iter", nb_iter, low=1, integer=True)),
            loss_fn=losses.get(loss_fn),
            rand_init=bool(rand_init),
            rand_minmax=_checks.check_number("rand_minmax", rand_minmax, low=0),
            nb_restarts=int(_checks.check_number("nb_restarts", nb_restarts, low=1, integer=True)),
            decay_factor=_checks.check_number("decay_factor", decay_factor, low=0, allow_none=True),
        )

    # -- compiled pieces ---------------------------------------------------
    def _step_fn(self, x_adv, x, labels, momentum, numbers: _Numbers, rule: _Rule):
        _, grad, _ = self.model.loss_gradient(x_adv, labels, rule.loss_fn, rule.targeted)
        previous_momentum = momentum
        if rule.use_momentum:
            axes = tf.range(1, tf.rank(grad))
            scale = tf.maximum(tf.reduce_mean(tf.abs(grad), axes, keepdims=True), 1e-12)
            momentum = numbers.decay * momentum + grad / scale
            grad = momentum
        moved = x_adv + utils.optimize_linear(grad, numbers.eps_iter, rule.norm)
        moved = x + utils.clip_eta(moved - x, rule.norm, numbers.eps)
        moved = tf.clip_by_value(moved, numbers.low, numbers.high)
        # a NaN or Inf gradient must not poison the example: it keeps its last finite iterate
        finite = utils.finite_rows(moved)
        keep = utils.per_example(finite, x)
        if rule.use_momentum:
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
    def _generate(self, x, labels, targeted, *, eps, norm, loss_fn, seed=None, **options):
        if eps == 0:
            return tf.identity(x)
        numbers, rule = self._settings(x.dtype, eps, norm, targeted, loss_fn, **options)
        seed_pair = self._seed_pair(seed)
        best, fallbacks = None, tf.zeros((), tf.int32)
        nb_iter, nb_restarts = options["nb_iter"], options["nb_restarts"]
        radius = tf.cast(options["rand_minmax"], x.dtype)
        for restart in range(nb_restarts):
            pair = seed_pair + [0, restart]
            x_adv = self._start(x, options["rand_init"], norm, numbers, pair, radius)
            momentum = tf.zeros_like(x) if rule.use_momentum else tf.zeros((), x.dtype)
            for _ in range(nb_iter):
                x_adv, momentum, bad = self._step(x_adv, x, labels, momentum, numbers, rule)
                fallbacks += bad
            self._count(len(x), forward=nb_iter, backward=nb_iter)
            if nb_restarts > 1:
                best = self._keep_most_damaging(best, x_adv, labels, loss_fn, targeted)
        self.nonfinite_fallbacks += int(fallbacks)
        return x_adv if best is None else best[0]

    @staticmethod
    def _settings(
        dtype, eps, norm, targeted, loss_fn, *, eps_iter, clip_min, clip_max, decay_factor, **_
    ) -> tuple[_Numbers, _Rule]:
        numbers = _Numbers.of(dtype, eps, eps_iter, clip_min, clip_max, decay_factor)
        return numbers, _Rule(norm, targeted, loss_fn, decay_factor is not None)

    @staticmethod
    def _start(x, rand_init, norm, numbers: _Numbers, seed_pair, rand_minmax=None):
        if not rand_init:
            return x
        radius = numbers.eps if rand_minmax is None else rand_minmax
        noise = utils.random_lp_vector(tf.shape(x), norm, radius, seed_pair, dtype=x.dtype)
        return tf.clip_by_value(
            x + utils.clip_eta(noise, norm, numbers.eps), numbers.low, numbers.high
        )

    def perturb(self, x, labels, *, nb_iter, seed_pair=None, **settings):
        """Crafts adversarial examples with TensorFlow ops only.

        For use inside compiled code, such as a training step: no NumPy, no
        checks, a graph loop over the same step as `generate`. Numbers may be
        tensors; `labels` may be anything `loss_fn` accepts (a distribution,
        for TRADES's KL). `seed_pair` is an int tensor of shape (2,) for the
        random start.

        Args:
            x: the clean batch.
            labels: what `loss_fn` compares the logits with.
            nb_iter: the number of steps.
            seed_pair: the random start's stateless seed.
            **settings: `eps`, `eps_iter`, and optionally `norm` (np.inf),
                `targeted`, `clip_min`, `clip_max`, `loss_fn`, `rand_init`,
                `rand_minmax`, `decay_factor`, as for `generate`.
        """
        settings = {**_PERTURB_DEFAULTS, **settings}
        norm = utils.normalize_norm(settings.pop("norm"))
        numbers, rule = self._settings(
            x.dtype,
            settings.pop("eps"),
            norm,
            settings.pop("targeted"),
            losses.get(settings.pop("loss_fn")),
            **settings,
        )
        rand_minmax = settings["rand_minmax"]
        rand_minmax = None if rand_minmax is None else tf.cast(rand_minmax, x.dtype)
        x_adv = self._start(x, settings["rand_init"], norm, numbers, seed_pair, rand_minmax)
        momentum = tf.zeros_like(x) if rule.use_momentum else tf.zeros((), x.dtype)

        def step(i, x_adv, momentum):
            x_adv, momentum, _ = self._step_fn(x_adv, x, labels, momentum, numbers, rule)
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
