"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020): minimum-norm
adversarial examples by projections onto linearised decision boundaries."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import tensorflow as tf

from advlib import _checks
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack

_NO_ADVERSARIAL = 1e10
_TARGET_SEED_STRIDE = 1000


def _first_reaching(levels, need):
    """Per row, the first column where the nondecreasing `levels` reach `need`
    (the number of columns if none does)."""
    return tf.reduce_sum(tf.cast(levels < need[:, None], tf.int32), axis=1)


def project_onto_hyperplane(
    points: tf.Tensor, w: tf.Tensor, b: tf.Tensor, low: tf.Tensor, high: tf.Tensor, norm: float
) -> tf.Tensor:
    """The smallest step d (in `norm`) with w . (p + d) = b and low <= p + d <= high.

    Each coordinate moves towards the hyperplane by m_i in [0, room_i], its
    room to the box bound in that direction, and contributes |w_i| m_i:
    L-inf moves every coordinate by min(r, room_i), L2 by min(t |w_i|, room_i),
    L1 fills the coordinates of largest |w_i| first. Sorting the breakpoints
    gives the exact r, t or fill. Where the box cannot reach the hyperplane,
    every coordinate moves to its bound.

    Args:
        points: (batch, features).
        w: the hyperplanes' normals, (batch, features).
        b: their offsets, (batch,).
        low: the box's lower bound, broadcastable to `points`.
        high: its upper bound.
        norm: np.inf, 2 or 1.

    Returns:
        The step d, shaped like `points`.
    """
    dtype = points.dtype
    need = b - tf.reduce_sum(w * points, axis=1)  # signed distance in w-units
    direction = tf.sign(w) * tf.sign(need)[:, None]
    room = tf.where(direction > 0, high - points, points - low)
    room = tf.where(tf.abs(w) > 0, tf.maximum(room, 0.0), tf.zeros_like(room))
    size = tf.abs(w)
    target = tf.abs(need)
    if norm == 1:
        order = tf.argsort(size, axis=1, direction="DESCENDING")
        ranked_size, ranked_room = (tf.gather(t, order, batch_dims=1) for t in (size, room))
        filled = tf.cumsum(ranked_size * ranked_room, axis=1)
        before = filled - ranked_size * ranked_room
        last = _first_reaching(filled, target)
        partial = tf.math.divide_no_nan(target[:, None] - before, ranked_size)
        columns = tf.range(tf.shape(points)[1])[None, :]
        moves = tf.where(
            columns < last[:, None],
            ranked_room,
            tf.where(columns == last[:, None], tf.clip_by_value(partial, 0.0, ranked_room), 0.0),
        )
        inverse = tf.argsort(order, axis=1)
        move = tf.gather(moves, inverse, batch_dims=1)
        return direction * move
    # L-inf: m_i = min(r, room_i), breakpoints room_i; L2: m_i = min(t |w_i|, room_i),
    # breakpoints room_i / |w_i|, slope w_i^2 per unit of t
    scale = tf.ones_like(size) if norm == np.inf else size
    breakpoints = tf.math.divide_no_nan(room, scale)
    breakpoints = tf.where(size > 0, breakpoints, tf.zeros_like(breakpoints))
    order = tf.argsort(breakpoints, axis=1)
    ranked = tf.gather(breakpoints, order, batch_dims=1)
    slope = tf.gather(size * scale, order, batch_dims=1)  # d(contribution)/d(level)
    saturated = tf.cumsum(slope * ranked, axis=1)  # those already at their room
    remaining = tf.cumsum(slope, axis=1, reverse=True)  # those still moving
    reached = saturated + ranked * (remaining - slope)  # g at each breakpoint
    k = _first_reaching(reached, target)
    features = tf.shape(points)[1]
    index = tf.minimum(k, features - 1)[:, None]
    done = tf.gather(saturated - slope * ranked, index, batch_dims=1)[:, 0]
    moving = tf.gather(remaining, index, batch_dims=1)[:, 0]
    level = tf.math.divide_no_nan(target - done, moving)
    level = tf.where(k >= features, tf.reduce_max(breakpoints, axis=1), level)
    move = tf.minimum(level[:, None] * scale, room)
    return tf.cast(direction * move, dtype)


class _Numbers(NamedTuple):
    """A run's numbers, as tensors of the input's dtype."""

    low: tf.Tensor
    high: tf.Tensor
    alpha_max: tf.Tensor
    eta: tf.Tensor
    beta: tf.Tensor


class FAB(Attack):
    """The Fast Adaptive Boundary attack: the smallest perturbation it can find.

    Each step linearises the decision boundary nearest in `norm` (the class
    j != y minimising |f_j - f_y| / ||grad(f_j - f_y)||_dual), projects both the
    current point and the original input onto it (within the input domain),
    and moves to a mix of the two, biased towards the original input; after a
    success it steps back towards the input by `beta`. Per example, the
    adversarial example of smallest norm is kept.

    FAB is a minimum-norm attack: `eps` sets the radius of the random starts
    of restarts after the first, and an example counts as broken (and leaves
    the later restarts) only within `eps`. The returned perturbation is the
    smallest found, which may exceed `eps`; where none was found, `x` itself.

    Args (to `generate` / `generate_np`):
        eps: see above (default 0.3).
        norm: np.inf (default), 2 or 1; `ord` is an alias.
        nb_iter: steps per restart (default 100).
        nb_restarts: runs on the examples not yet broken within eps; the
            first starts at x, the others at random points (default 1).
        alpha_max: the largest weight of the projected original (0.1).
        eta: overshoot of the projections (1.05).
        beta: backward step after a success (0.9).
        y: the true labels (default: the model's predictions).
        clip_min, clip_max: input domain bounds (default [0, 1]: FAB's
            projections need a bounded domain).
        seed: makes the random starts reproducible.

    Example:
        >>> x_adv = FAB(keras_model).generate_np(x, y=y, eps=0.1, norm=2)
    """

    def __init__(self, model):
        super().__init__(model)
        self._iterate = tf.function(self._iterate_fn, reduce_retracing=True)

    shared_params = ("eps", "norm", "y", *DOMAIN, "seed")
    defaults = dict(clip_min=0.0, clip_max=1.0)
    needs_bounds = "FAB, whose projections need a bounded input domain"

    def parse_params(
        self, nb_iter=100, nb_restarts=1, alpha_max=0.1, eta=1.05, beta=0.9
    ) -> dict[str, Any]:
        number = _checks.check_number
        return dict(
            nb_iter=int(number("nb_iter", nb_iter, low=1, integer=True)),
            nb_restarts=int(number("nb_restarts", nb_restarts, low=1, integer=True)),
            alpha_max=float(number("alpha_max", alpha_max, low=0, high=1)),
            eta=float(number("eta", eta, low=1)),
            beta=float(number("beta", beta, low=0, high=1)),
        )

    # -- the attack -------------------------------------------------------------------
    def _generate(self, x, labels, targeted, *, seed, **options):
        return self._attack(x, labels, None, self._seed_pair(seed), **options)[0]

    def _attack(self, x, labels, targets, seed_pair, *, eps, nb_restarts, **run):
        """Restarts on the examples not broken within eps.

        Returns:
            (x_adv, broken): the smallest adversarial examples (x where none),
            and which examples were broken within eps.
        """
        correct = self.model.predict_classes(x).numpy() == labels.numpy()
        self._count(len(x))
        out, best = x, np.full(len(x), np.inf)
        for restart in range(nb_restarts):
            rows = np.flatnonzero(correct & ~(best <= eps))
            if rows.size == 0:
                break
            pick = lambda t: None if t is None else tf.gather(t, rows)
            start = (restart > 0, seed_pair + [restart, 0])
            x_adv, norms = self._single_run(
                pick(x), pick(labels), pick(targets), *start, eps, **run
            )
            norms = norms.numpy()
            better = norms < best[rows]
            update = rows[better]
            out = tf.tensor_scatter_nd_update(out, update[:, None], tf.boolean_mask(x_adv, better))
            best[update] = norms[better]
        return out, correct & (best <= eps)

    def _single_run(
        self, x, labels, targets, random_start, seed_pair, eps, *, norm, nb_iter, **step
    ):
        clip_min, clip_max = step.pop("clip_min"), step.pop("clip_max")
        low, high = utils.bounds_as_tensors(x.dtype, clip_min, clip_max)
        current = x
        if random_start:
            if norm == np.inf:
                noise = tf.random.stateless_uniform(
                    tf.shape(x), seed_pair, -1.0, 1.0, dtype=x.dtype
                )
            else:
                noise = tf.random.stateless_normal(tf.shape(x), seed_pair, dtype=x.dtype)
            noise = noise / utils.per_example(utils.lp_norm(noise, norm) + 1e-12, x)
            current = tf.clip_by_value(x + 0.5 * eps * noise, low, high)
        best = tf.fill([len(x)], tf.constant(_NO_ADVERSARIAL, x.dtype))
        numbers = _Numbers(
            low, high, *(tf.constant(step[k], x.dtype) for k in _Numbers._fields[2:])
        )
        problem = (x, labels, targets)
        x_adv, best = self._iterate(
            (current, x, best), problem, numbers, norm, tf.constant(nb_iter)
        )
        self._count(
            len(x),
            forward=2 * nb_iter,
            backward=nb_iter * (1 if targets is not None else self.model.nb_classes),
        )
        return x_adv, best

    # -- compiled step ----------------------------------------------------------------------
    def _boundary(self, point, labels, targets):
        """f_j - f_y and its gradient, for the nearest boundary's candidates:
        every class j (untargeted; j = y gets an infinite difference) or the target."""
        with tf.GradientTape() as tape:
            tape.watch(point)
            logits = tf.cast(self.model.get_logits(point), point.dtype)
            own = tf.gather(logits, labels, batch_dims=1)[:, None]
            difference = (
                logits - own
                if targets is None
                else tf.gather(logits, targets, batch_dims=1)[:, None] - own
            )
        # a model that cuts its input off has a zero gradient, not a missing one
        zero = tf.UnconnectedGradients.ZERO
        if targets is not None:
            return difference, tape.gradient(difference, point, unconnected_gradients=zero)[:, None]
        gradient = tape.batch_jacobian(difference, point, unconnected_gradients=zero)
        is_own = tf.one_hot(labels, tf.shape(logits)[1], on_value=True, off_value=False)
        return tf.where(is_own, tf.constant(_NO_ADVERSARIAL, point.dtype), difference), gradient

    def _iterate_fn(self, state, problem, numbers: _Numbers, norm, nb_iter):
        """All the steps of one run in one compiled loop; `state` is (the current
        point, the best adversarial point, its norm), `problem` (x, labels, targets)."""
        for _ in tf.range(nb_iter):
            state = self._step_fn(state, problem, numbers, norm)
        return state[1:]

    def _step_fn(self, state, problem, numbers: _Numbers, norm):
        (current, x_adv, best), (x, labels, targets) = state, problem
        low, high, alpha_max, eta, beta = numbers
        batch = tf.shape(x)[0]
        difference, gradient = self._boundary(current, labels, targets)
        flat_gradient = tf.reshape(gradient, [batch, tf.shape(difference)[1], -1])
        _, _, nearest_difference, w = utils.nearest_linear_boundary(difference, flat_gradient, norm)
        flat_current = tf.reshape(current, [batch, -1])
        flat_x = tf.reshape(x, [batch, -1])
        b = -nearest_difference + tf.reduce_sum(w * flat_current, 1)
        flat_low = tf.broadcast_to(low, tf.shape(flat_x))
        flat_high = tf.broadcast_to(high, tf.shape(flat_x))
        step_current = project_onto_hyperplane(flat_current, w, b, flat_low, flat_high, norm)
        step_x = project_onto_hyperplane(flat_x, w, b, flat_low, flat_high, norm)
        size_current = tf.maximum(utils.lp_norm(step_current, norm), 1e-8)
        size_x = tf.maximum(utils.lp_norm(step_x, norm), 1e-8)
        alpha = tf.clip_by_value(size_current / (size_current + size_x), 0.0, alpha_max)
        alpha = utils.per_example(alpha, x)
        moved = (current + eta * tf.reshape(step_current, tf.shape(x))) * (1 - alpha) + (
            x + eta * tf.reshape(step_x, tf.shape(x))
        ) * alpha
        moved = tf.clip_by_value(moved, low, high)
        predicted = tf.argmax(self.model.get_logits(moved), axis=-1, output_type=labels.dtype)
        adversarial = tf.not_equal(predicted, labels) & utils.finite_rows(moved)
        size = utils.lp_norm(moved - x, norm)
        better = adversarial & (size < best)
        x_adv = tf.where(utils.per_example(better, x), moved, x_adv)
        best = tf.where(better, size, best)
        # after a success, step back towards the input
        moved = tf.where(utils.per_example(adversarial, x), x + (moved - x) * beta, moved)
        moved = tf.where(utils.per_example(utils.finite_rows(moved), x), moved, current)
        return moved, x_adv, best


class FABT(FAB):
    """FAB-T: FAB towards each of the top other classes, AutoAttack's version.

    For k = 2 .. `n_target_classes` + 1, the examples not yet broken within
    eps are attacked on the boundary with their k-th most likely class (by
    the clean logits): one gradient per step instead of one per class.

    Args (to `generate` / `generate_np`):
        n_target_classes: how many target classes to try (default 9).
        eps, norm, nb_iter, nb_restarts, alpha_max, eta, beta, y, clip_min,
        clip_max, seed: as for `FAB`.

    Example:
        >>> x_adv = FABT(keras_model).generate_np(x, y=y, eps=0.1)
    """

    def parse_params(self, n_target_classes=9, **params) -> dict[str, Any]:
        parsed = super().parse_params(**params)
        parsed["n_target_classes"] = int(
            _checks.check_number("n_target_classes", n_target_classes, low=1, integer=True)
        )
        return parsed

    def _generate(self, x, labels, targeted, *, seed, n_target_classes, eps, **options):
        ranked = tf.argsort(self.model.predict_logits(x), axis=-1, direction="DESCENDING")
        self._count(len(x))
        seed_pair = self._seed_pair(seed)
        out, open_ = x, np.ones(len(x), bool)
        best = np.full(len(x), np.inf)
        for k in range(1, min(n_target_classes, self.model.nb_classes - 1) + 1):
            rows = np.flatnonzero(open_)
            if rows.size == 0:
                break
            pick = lambda t: tf.gather(t, rows)
            x_adv, broken = self._attack(
                pick(x),
                pick(labels),
                tf.cast(pick(ranked)[:, k], labels.dtype),
                seed_pair + [0, _TARGET_SEED_STRIDE * k],
                eps=eps,
                **options,
            )
            norms = utils.lp_norm(x_adv - pick(x), options["norm"]).numpy()
            changed = np.any((x_adv != pick(x)).numpy().reshape(len(rows), -1), axis=1)
            better = changed & (norms < best[rows])
            out = tf.tensor_scatter_nd_update(
                out, rows[better][:, None], tf.boolean_mask(x_adv, better)
            )
            best[rows[better]] = norms[better]
            open_[rows[broken]] = False
        return out
