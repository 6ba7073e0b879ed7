"""One mechanism behind FGM, BIM, PGD and MIM: compiled signed-gradient steps.

Each step is a compiled function (`advlib.backend.compiled`: a `tf.function`,
a `jax.jit`, or eager PyTorch) called from a Python loop. On TensorFlow that is
the fastest design measured on CPU (a loop inside one `tf.function` and XLA
were both slower; see benchmarks/attack_speed.py). Every number that varies
between calls (eps, step size, bounds, labels, the batch) enters as a tensor,
so none of them recompiles the step.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import numpy as np
from keras import ops

from advlib import _checks, backend, losses
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, TARGETABLE, Attack


class _Numbers(NamedTuple):
    """The step's numbers, as tensors of the input's dtype; open bounds are +-inf."""

    eps: Any
    eps_iter: Any
    low: Any
    high: Any
    decay: Any

    @classmethod
    def of(cls, dtype, eps, eps_iter, clip_min, clip_max, decay_factor) -> _Numbers:
        cast = lambda value: ops.cast(value, dtype)
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
        self._step = self._compiled(self._step_fn)
        self._score = self._compiled(self._score_fn)

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
            axes = tuple(range(1, len(grad.shape)))
            scale = ops.maximum(ops.mean(ops.abs(grad), axes, keepdims=True), 1e-12)
            momentum = numbers.decay * momentum + grad / scale
            grad = momentum
        moved = x_adv + utils.optimize_linear(grad, numbers.eps_iter, rule.norm)
        moved = x + utils.clip_eta(moved - x, rule.norm, numbers.eps)
        moved = utils.clip(moved, numbers.low, numbers.high)
        # a NaN or Inf gradient must not poison the example: it keeps its last finite iterate
        finite = utils.finite_rows(moved)
        keep = utils.per_example(finite, x)
        if rule.use_momentum:
            momentum = ops.where(keep, momentum, previous_momentum)
        bad = ops.sum(ops.cast(ops.logical_not(finite), "int32"))
        return ops.where(keep, moved, x_adv), momentum, bad

    def _score_fn(self, x_adv, labels, loss_fn, targeted):
        """Per example: whether the attack succeeded, and its objective."""
        logits = self.model.get_logits(x_adv)
        loss = loss_fn(labels=labels, logits=logits)
        predicted = ops.cast(ops.argmax(logits, axis=-1), labels.dtype)
        success = ops.equal(predicted, labels) if targeted else ops.not_equal(predicted, labels)
        return success, -loss if targeted else loss

    # -- the attack --------------------------------------------------------
    def _generate(self, x, labels, targeted, *, eps, norm, loss_fn, seed=None, **options):
        if eps == 0:
            return x
        dtype = utils.dtype_of(x)
        numbers, rule = self._settings(dtype, eps, norm, targeted, loss_fn, **options)
        seed_pair = self._seed_pair(seed)
        best, fallbacks = None, ops.zeros((), "int32")
        nb_iter, nb_restarts = options["nb_iter"], options["nb_restarts"]
        radius = ops.cast(options["rand_minmax"], dtype)
        for restart in range(nb_restarts):
            pair = backend.seed(seed_pair + [0, restart])
            x_adv = self._start(x, options["rand_init"], norm, numbers, pair, radius)
            momentum = ops.zeros_like(x) if rule.use_momentum else ops.zeros((), dtype)
            for _ in range(nb_iter):
                x_adv, momentum, bad = self._step(x_adv, x, labels, momentum, numbers, rule)
                fallbacks = fallbacks + bad
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
        noise = utils.random_lp_vector(ops.shape(x), norm, radius, seed_pair, utils.dtype_of(x))
        return utils.clip(x + utils.clip_eta(noise, norm, numbers.eps), numbers.low, numbers.high)

    def perturb(self, x, labels, *, nb_iter, seed_pair=None, **settings):
        """Crafts adversarial examples with `keras.ops` only.

        For use inside compiled code, such as a training step: no NumPy, no
        checks, a compiled loop over the same step as `generate`. Numbers may be
        tensors; `labels` may be anything `loss_fn` accepts (a distribution,
        for TRADES's KL). `seed_pair` is a stateless seed (an int tensor of
        shape (2,)) for the random start.

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
        dtype = utils.dtype_of(x)
        numbers, rule = self._settings(
            dtype,
            settings.pop("eps"),
            norm,
            settings.pop("targeted"),
            losses.get(settings.pop("loss_fn")),
            **settings,
        )
        rand_minmax = settings["rand_minmax"]
        rand_minmax = None if rand_minmax is None else ops.cast(rand_minmax, dtype)
        x_adv = self._start(x, settings["rand_init"], norm, numbers, seed_pair, rand_minmax)
        momentum = ops.zeros_like(x) if rule.use_momentum else ops.zeros((), dtype)

        def step(_, state):
            x_adv, momentum = state
            x_adv, momentum, _ = self._step_fn(x_adv, x, labels, momentum, numbers, rule)
            return x_adv, momentum

        x_adv, _ = ops.fori_loop(0, nb_iter, step, (x_adv, momentum))
        return ops.stop_gradient(x_adv)

    def _keep_most_damaging(self, best, x_adv, labels, loss_fn, targeted):
        success, loss = self._score(x_adv, labels, loss_fn, targeted)
        self._count(len(x_adv))
        if best is None:
            return x_adv, success, loss
        best_x, best_success, best_loss = best
        better = ops.logical_or(
            ops.logical_and(success, ops.logical_not(best_success)),
            ops.logical_and(ops.equal(success, best_success), loss > best_loss),
        )
        return (
            ops.where(utils.per_example(better, x_adv), x_adv, best_x),
            ops.where(better, success, best_success),
            ops.where(better, loss, best_loss),
        )
