"""SPSA: a gradient-free attack (Uesato et al. 2018), batched over examples."""

from __future__ import annotations

from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, TARGETABLE, Attack
from advlib.losses import margin_loss

# Model evaluations per call: bounds the memory of the perturbed copies.
_MAX_POINTS = 16384


class SPSA(Attack):
    """Simultaneous Perturbation Stochastic Approximation of the gradient, with Adam.

    The attack sees only the model's logits, never its gradients, so gradient
    masking does not stop it: it is the black-box cross-check of an
    evaluation. Each iteration estimates the gradient of the margin loss from
    `spsa_samples` evaluations at `x +- delta * v` (v a random sign vector,
    drawn in antithetic pairs), takes an Adam step and projects onto the eps
    ball and the input domain. Unlike cleverhans, a batch of any size is
    attacked at once; examples stop changing once their loss falls below
    `early_stop_loss_threshold`. The iterate with the lowest loss is returned.

    Forward passes go through `model.predict_logits`; for a `QNNModelWrapper`
    with an engine that is the exact bit-packed binary network.

    Args (to `generate` / `generate_np`):
        eps: radius of the perturbation ball (default 0.3).
        nb_iter: Adam iterations (default 100).
        learning_rate: Adam's step size (default 0.01).
        delta: size of the finite-difference perturbation (default 0.01).
        spsa_samples: model evaluations per gradient estimate; even (default 128).
        spsa_iters: gradient estimates averaged per iteration (default 1).
        early_stop_loss_threshold: an example stops once its margin loss is
            below this (default None: never). 0 stops at the first success.
        norm: np.inf (default) or 2; `ord` is an alias.
        y, y_target, targeted: as for the gradient attacks.
        clip_min, clip_max: input domain bounds.
        seed: makes the random start and the directions reproducible.

    Example:
        >>> spsa = SPSA(model)
        >>> x_adv = spsa.generate_np(x, eps=0.1, nb_iter=50, clip_min=0., clip_max=1.,
        ...                          early_stop_loss_threshold=0.0, seed=0)
    """

    black_box = True

    shared_params = ("eps", "norm", *TARGETABLE, *DOMAIN, "seed")
    norms = (np.inf, 2)

    def parse_params(
        self,
        nb_iter=100,
        learning_rate=0.01,
        delta=0.01,
        spsa_samples=128,
        spsa_iters=1,
        early_stop_loss_threshold=None,
    ) -> dict[str, Any]:
        number = _checks.check_number
        _checks.check_number("spsa_samples", spsa_samples, low=2, integer=True)
        if spsa_samples % 2:
            raise ValueError(
                f"spsa_samples must be even (the directions come in antithetic "
                f"pairs), got {spsa_samples}."
            )
        threshold = number("early_stop_loss_threshold", early_stop_loss_threshold, allow_none=True)
        return dict(
            nb_iter=int(number("nb_iter", nb_iter, low=0, integer=True)),
            learning_rate=float(number("learning_rate", learning_rate, low=0, low_open=True)),
            delta=float(number("delta", delta, low=0, low_open=True)),
            spsa_samples=int(spsa_samples),
            spsa_iters=int(number("spsa_iters", spsa_iters, low=1, integer=True)),
            early_stop_loss_threshold=None if threshold is None else float(threshold),
        )

    def _generate(self, x, labels, targeted, **options):
        if np.dtype(utils.dtype_of(x)).itemsize < 4:
            # half precision cannot hold Adam's moments; search in float32, return x's dtype
            return ops.cast(
                self._search(ops.cast(x, "float32"), labels, targeted, **options), x.dtype
            )
        return self._search(x, labels, targeted, **options)

    def _search(
        self,
        x,
        labels,
        targeted,
        *,
        eps,
        nb_iter,
        learning_rate,
        delta,
        spsa_samples,
        spsa_iters,
        early_stop_loss_threshold,
        norm,
        clip_min,
        clip_max,
        seed,
    ):
        if eps == 0 or nb_iter == 0:  # no step: the clean input, not the random start
            return x
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        threshold = -np.inf if early_stop_loss_threshold is None else early_stop_loss_threshold
        seed_pair = self._seed_pair(seed)
        eps_t = ops.cast(eps, x.dtype)
        x_adv = utils.clip(
            x + utils.random_lp_vector(ops.shape(x), norm, eps_t, backend.seed(seed_pair), x.dtype),
            low,
            high,
        )
        first, second = ops.zeros_like(x), ops.zeros_like(x)
        best, best_loss = x_adv, self._loss(x_adv, labels, targeted)
        for step in range(nb_iter):
            active = backend.to_numpy(best_loss) >= threshold
            if not active.any():
                break
            # only the examples still running cost model evaluations
            rows = np.flatnonzero(active)
            x_active, labels_active = ops.take(x_adv, rows, axis=0), ops.take(labels, rows, axis=0)
            grad = ops.zeros_like(x_active)
            for repeat in range(spsa_iters):
                grad += self._estimate_gradient(
                    x_active,
                    labels_active,
                    targeted,
                    delta,
                    spsa_samples,
                    seed_pair + [1, step * spsa_iters + repeat],
                    rows,
                    len(active),
                )
            grad = ops.scatter(rows[:, None], grad / spsa_iters, ops.shape(x))
            x_adv, first, second = _adam_step(
                x_adv,
                x,
                grad,
                first,
                second,
                ops.convert_to_tensor(active),
                ops.cast(step + 1, x.dtype),
                ops.cast(learning_rate, x.dtype),
                eps_t,
                low,
                high,
                norm,
            )
            new_loss = self._loss(ops.take(x_adv, rows, axis=0), labels_active, targeted)
            loss = ops.scatter_update(best_loss, rows[:, None], new_loss)
            better = ops.cast(loss < best_loss, x.dtype)
            best = ops.where(utils.per_example(better, x) > 0, x_adv, best)
            best_loss = ops.minimum(loss, best_loss)
        return best

    def _loss(self, points, labels, targeted) -> Any:
        """The margin loss to minimise: negative once the attack has succeeded."""
        logits = ops.concatenate(
            [
                self.model.predict_logits(points[i : i + _MAX_POINTS])
                for i in range(0, int(points.shape[0]), _MAX_POINTS)
            ],
            axis=0,
        )
        self._count(int(points.shape[0]))
        margin = margin_loss(labels=labels, logits=logits)
        return margin if targeted else -margin

    def _estimate_gradient(self, x_adv, labels, targeted, delta, samples, seed_pair, rows, batch):
        """The gradient estimate at each row of `x_adv`; `rows` (shape (n,)) are
        their places in a batch of `batch`, so that an example's directions do not
        depend on which other examples are still running."""
        pairs = samples // 2
        delta = ops.convert_to_tensor(delta, x_adv.dtype)
        seed = backend.seed(seed_pair)
        directions, points = _probe_points(
            x_adv, delta, pairs, seed, ops.convert_to_tensor(rows), batch
        )
        repeated = ops.repeat(labels, 2 * pairs, axis=0)
        loss = ops.reshape(self._loss(points, repeated, targeted), (-1, 2, pairs))
        flat = ops.reshape(directions, (len(rows), pairs, -1))
        return ops.reshape(_combine(flat, loss, delta), ops.shape(x_adv))


@backend.compiled
def _probe_points(x_adv, delta, pairs, seed_pair, rows, batch):
    """Random sign directions (rows, pairs, ...) and the points x +- delta * v."""
    shape = (batch, pairs) + tuple(x_adv.shape[1:])
    every = backend.uniform(shape, seed_pair, -1.0, 1.0, x_adv.dtype)
    directions = ops.sign(ops.take(every, rows, axis=0))
    directions = ops.where(directions == 0, ops.ones_like(directions), directions)
    centre = ops.expand_dims(x_adv, 1)
    points = ops.stack([centre + delta * directions, centre - delta * directions], axis=1)
    return directions, ops.reshape(points, (-1,) + tuple(x_adv.shape[1:]))


@backend.compiled
def _combine(directions, loss, delta):
    """The central-difference estimate, averaged over the antithetic pairs;
    `directions` is (batch, pairs, features)."""
    slope = (loss[:, 0] - loss[:, 1]) / (2 * delta)  # (batch, pairs)
    return ops.mean(slope[:, :, None] * directions, axis=1)


@backend.compiled
def _adam_step(x_adv, x, grad, first, second, active, t, learning_rate, eps, low, high, norm):
    """One Adam descent step on x_adv, projected; inactive examples are left as they are."""
    step, new_first, new_second = utils.adam_update(grad, first, second, t, learning_rate)
    moved = utils.clip(x + utils.clip_eta(x_adv - step - x, norm, eps), low, high)
    keep = utils.per_example(ops.cast(active, x.dtype), x) > 0
    return (
        ops.where(keep, moved, x_adv),
        ops.where(keep, new_first, first),
        ops.where(keep, new_second, second),
    )
