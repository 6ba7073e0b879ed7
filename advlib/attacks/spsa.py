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
        learning_rate = ops.cast(learning_rate, x.dtype)
        for step in range(nb_iter):
            active = backend.to_numpy(best_loss) >= threshold
            if not active.any():
                break
            # only the examples still running cost model evaluations
            rows = ops.convert_to_tensor(np.flatnonzero(active))
            grad = self._estimate_gradient(
                x_adv,
                labels,
                targeted,
                delta,
                spsa_samples,
                [seed_pair + [1, step * spsa_iters + repeat] for repeat in range(spsa_iters)],
                rows,
            )
            x_adv, first, second, moved = _adam_step(
                x_adv,
                x,
                grad,
                first,
                second,
                ops.convert_to_tensor(active),
                rows,
                ops.cast(step + 1, x.dtype),
                learning_rate,
                eps_t,
                low,
                high,
                norm,
            )
            best, best_loss = _keep_best(
                best, best_loss, x_adv, self._logits(moved), labels, rows, targeted
            )
        return best

    def _logits(self, points) -> Any:
        """The model's logits, `_MAX_POINTS` points at a time; counted."""
        count = int(points.shape[0])
        self._count(count)
        if count <= _MAX_POINTS:
            return self.model.predict_logits(points)
        return ops.concatenate(
            [
                self.model.predict_logits(points[i : i + _MAX_POINTS])
                for i in range(0, count, _MAX_POINTS)
            ],
            axis=0,
        )

    def _loss(self, points, labels, targeted) -> Any:
        """The margin loss to minimise: negative once the attack has succeeded."""
        return _objective(self._logits(points), labels, targeted)

    def _estimate_gradient(self, x_adv, labels, targeted, delta, samples, seed_pairs, rows):
        """The gradient estimate at the `rows` of `x_adv` (zero at the other rows),
        averaged over one estimate per seed pair in `seed_pairs`. An example's
        directions depend on its row and the seed only, not on which other
        examples are still running."""
        pairs = samples // 2
        delta = ops.convert_to_tensor(delta, x_adv.dtype)
        rows = ops.convert_to_tensor(rows)
        estimates = []
        for seed_pair in seed_pairs:
            directions, points = _probe_points(x_adv, rows, delta, backend.seed(seed_pair), pairs)
            estimates.append(
                _estimate(directions, self._logits(points), labels, rows, delta, targeted)
            )
        if len(estimates) == 1:
            return estimates[0]
        return ops.mean(ops.stack(estimates), axis=0)


@backend.compiled
def _objective(logits, labels, targeted):
    margin = margin_loss(labels=labels, logits=logits)
    return margin if targeted else -margin


@backend.compiled
def _probe_points(x_adv, rows, delta, seed_pair, pairs):
    """Random sign directions (rows, pairs, ...) and the points x +- delta * v, for
    the `rows` of `x_adv`; the directions are drawn for the whole batch, so that
    a row's directions do not depend on the other rows."""
    shape = (ops.shape(x_adv)[0], pairs) + tuple(x_adv.shape[1:])
    every = backend.uniform(shape, seed_pair, -1.0, 1.0, x_adv.dtype)
    directions = ops.sign(ops.take(every, rows, axis=0))
    directions = ops.where(directions == 0, ops.ones_like(directions), directions)
    centre = ops.expand_dims(ops.take(x_adv, rows, axis=0), 1)
    points = ops.stack([centre + delta * directions, centre - delta * directions], axis=1)
    return directions, ops.reshape(points, (-1,) + tuple(x_adv.shape[1:]))


@backend.compiled
def _estimate(directions, logits, labels, rows, delta, targeted):
    """The central-difference estimate from the probes' logits, averaged over the
    antithetic pairs, scattered into a zero gradient shaped like the batch."""
    count, pairs = ops.shape(directions)[0], ops.shape(directions)[1]
    repeated = ops.repeat(ops.take(labels, rows, axis=0), 2 * pairs, axis=0)
    loss = ops.reshape(_objective(logits, repeated, targeted), (-1, 2, pairs))
    slope = (loss[:, 0] - loss[:, 1]) / (2 * delta)  # (rows, pairs)
    flat = ops.reshape(directions, (count, pairs, -1))
    estimate = ops.reshape(ops.mean(slope[:, :, None] * flat, axis=1), ops.shape(directions[:, 0]))
    batch = (ops.shape(labels)[0],) + tuple(directions.shape[2:])
    return ops.scatter(ops.expand_dims(rows, 1), estimate, batch)


@backend.compiled
def _keep_best(best, best_loss, x_adv, logits, labels, rows, targeted):
    """The best iterate and loss per example, after the `rows` moved to `x_adv`."""
    new_loss = _objective(logits, ops.take(labels, rows, axis=0), targeted)
    loss = ops.scatter_update(best_loss, ops.expand_dims(rows, 1), new_loss)
    better = utils.per_example(loss < best_loss, x_adv)
    return ops.where(better, x_adv, best), ops.minimum(loss, best_loss)


@backend.compiled
def _adam_step(x_adv, x, grad, first, second, active, rows, t, learning_rate, eps, low, high, norm):
    """One Adam descent step on the `active` rows of x_adv (whose indices are
    `rows`), projected; the other rows are left as they are. Also returns the
    moved rows, for their loss."""
    step, new_first, new_second = utils.adam_update(grad, first, second, t, learning_rate)
    moved = utils.clip(x + utils.clip_eta(x_adv - step - x, norm, eps), low, high)
    keep = utils.per_example(active, x)
    return (
        ops.where(keep, moved, x_adv),
        ops.where(keep, new_first, first),
        ops.where(keep, new_second, second),
        ops.take(moved, rows, axis=0),
    )
