"""FAB, the Fast Adaptive Boundary attack (Croce & Hein 2020): minimum-norm
adversarial examples by projections onto linearised decision boundaries."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, Attack

_NO_ADVERSARIAL = 1e10
_TARGET_SEED_STRIDE = 1000


def _first_reaching(levels, need):
    """Per row, the first column where the nondecreasing `levels` reach `need`
    (the number of columns if none does)."""
    return ops.sum(ops.cast(levels < need[:, None], "int32"), axis=1)


def project_onto_hyperplane(points: Any, w: Any, b: Any, low: Any, high: Any, norm: float) -> Any:
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
    need = b - ops.sum(w * points, axis=1)  # signed distance in w-units
    direction = ops.sign(w) * ops.sign(need)[:, None]
    room = ops.where(direction > 0, high - points, points - low)
    room = ops.where(ops.abs(w) > 0, ops.maximum(room, 0.0), ops.zeros_like(room))
    size = ops.abs(w)
    target = ops.abs(need)
    if norm == 1:
        order = backend.descending_order(size)
        ranked_size, ranked_room = (ops.take_along_axis(t, order, axis=1) for t in (size, room))
        filled = ops.cumsum(ranked_size * ranked_room, axis=1)
        before = filled - ranked_size * ranked_room
        last = _first_reaching(filled, target)
        partial = ops.divide_no_nan(target[:, None] - before, ranked_size)
        columns = ops.arange(ops.shape(points)[1])[None, :]
        moves = ops.where(
            columns < last[:, None],
            ranked_room,
            ops.where(columns == last[:, None], utils.clip(partial, 0.0, ranked_room), 0.0),
        )
        inverse = ops.argsort(order, axis=1)
        move = ops.take_along_axis(moves, inverse, axis=1)
        return direction * move
    # L-inf: m_i = min(r, room_i), breakpoints room_i; L2: m_i = min(t |w_i|, room_i),
    # breakpoints room_i / |w_i|, slope w_i^2 per unit of t
    scale = ops.ones_like(size) if norm == np.inf else size
    breakpoints = ops.divide_no_nan(room, scale)
    breakpoints = ops.where(size > 0, breakpoints, ops.zeros_like(breakpoints))
    order = ops.argsort(breakpoints, axis=1)
    ranked = ops.take_along_axis(breakpoints, order, axis=1)
    slope = ops.take_along_axis(size * scale, order, axis=1)  # d(contribution)/d(level)
    saturated = ops.cumsum(slope * ranked, axis=1)  # those already at their room
    remaining = ops.flip(ops.cumsum(ops.flip(slope, 1), axis=1), 1)  # those still moving
    reached = saturated + ranked * (remaining - slope)  # g at each breakpoint
    k = _first_reaching(reached, target)
    features = ops.shape(points)[1]
    index = ops.minimum(k, features - 1)[:, None]
    done = ops.take_along_axis(saturated - slope * ranked, index, axis=1)[:, 0]
    moving = ops.take_along_axis(remaining, index, axis=1)[:, 0]
    level = ops.divide_no_nan(target - done, moving)
    level = ops.where(k >= features, ops.max(breakpoints, axis=1), level)
    move = ops.minimum(level[:, None] * scale, room)
    return ops.cast(direction * move, dtype)


class _Numbers(NamedTuple):
    """A run's numbers, as tensors of the input's dtype."""

    low: Any
    high: Any
    alpha_max: Any
    eta: Any
    beta: Any


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
        self._iterate = self._compiled(self._iterate_fn)

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
        correct = backend.to_numpy(self.model.predict_classes(x)) == backend.to_numpy(labels)
        self._count(len(x))
        out, best = x, np.full(len(x), np.inf)
        for restart in range(nb_restarts):
            rows = np.flatnonzero(correct & ~(best <= eps))
            if rows.size == 0:
                break
            pick = lambda t: None if t is None else ops.take(t, rows, axis=0)
            start = (restart > 0, backend.seed(seed_pair + [restart, 0]))
            x_adv, norms = self._single_run(
                pick(x), pick(labels), pick(targets), *start, eps, **run
            )
            norms = backend.to_numpy(norms)
            better = norms < best[rows]
            update = rows[better]
            out = ops.scatter_update(
                out, update[:, None], ops.take(x_adv, np.flatnonzero(better), 0)
            )
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
                noise = backend.uniform(ops.shape(x), seed_pair, -1.0, 1.0, x.dtype)
            else:
                noise = backend.normal(ops.shape(x), seed_pair, x.dtype)
            noise = noise / utils.per_example(utils.lp_norm(noise, norm) + 1e-12, x)
            current = utils.clip(x + 0.5 * eps * noise, low, high)
        best = ops.full((len(x),), _NO_ADVERSARIAL, x.dtype)
        numbers = _Numbers(
            low, high, *(ops.convert_to_tensor(step[k], x.dtype) for k in _Numbers._fields[2:])
        )
        problem = (x, labels, targets)
        x_adv, best = self._iterate(
            (current, x, best), problem, numbers, norm, ops.convert_to_tensor(nb_iter)
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
        count = 1
        if targets is None:
            # one copy of each example per class: one backward pass over the copies
            # gives every class's gradient (the Jacobian)
            classes = count = self.model.nb_classes
            labels = ops.repeat(labels, classes, axis=0)
            targets = ops.tile(ops.arange(classes), [ops.shape(point)[0]])
            point = ops.repeat(point, classes, axis=0)

        def difference(point):
            logits = ops.cast(self.model.get_logits(point), point.dtype)
            return utils.take_rows(logits, targets) - utils.take_rows(logits, labels), None

        difference, gradient, _ = backend.value_and_gradient(difference, point)
        difference = ops.reshape(difference, (-1, count))
        gradient = ops.reshape(gradient, (-1, count) + tuple(point.shape[1:]))
        # an example's own class is no boundary
        own = ops.reshape(ops.equal(ops.cast(targets, labels.dtype), labels), (-1, count))
        return ops.where(own, _NO_ADVERSARIAL, difference), gradient

    def _iterate_fn(self, state, problem, numbers: _Numbers, norm, nb_iter):
        """All the steps of one run in one compiled loop; `state` is (the current
        point, the best adversarial point, its norm), `problem` (x, labels, targets)."""
        step = lambda _, state: self._step_fn(state, problem, numbers, norm)
        return ops.fori_loop(0, nb_iter, step, state)[1:]

    def _step_fn(self, state, problem, numbers: _Numbers, norm):
        (current, x_adv, best), (x, labels, targets) = state, problem
        low, high, alpha_max, eta, beta = numbers
        difference, gradient = self._boundary(current, labels, targets)
        features = int(np.prod(x.shape[1:]))
        flat_gradient = ops.reshape(gradient, (-1, difference.shape[1], features))
        _, _, nearest_difference, w = utils.nearest_linear_boundary(difference, flat_gradient, norm)
        flat_current, flat_x = utils.flatten(current), utils.flatten(x)
        b = -nearest_difference + ops.sum(w * flat_current, 1)
        flat_low = ops.broadcast_to(low, ops.shape(flat_x))
        flat_high = ops.broadcast_to(high, ops.shape(flat_x))
        step_current = project_onto_hyperplane(flat_current, w, b, flat_low, flat_high, norm)
        step_x = project_onto_hyperplane(flat_x, w, b, flat_low, flat_high, norm)
        size_current = ops.maximum(utils.lp_norm(step_current, norm), 1e-8)
        size_x = ops.maximum(utils.lp_norm(step_x, norm), 1e-8)
        alpha = utils.clip(size_current / (size_current + size_x), 0.0, alpha_max)
        alpha = utils.per_example(alpha, x)
        moved = (current + eta * ops.reshape(step_current, ops.shape(x))) * (1 - alpha) + (
            x + eta * ops.reshape(step_x, ops.shape(x))
        ) * alpha
        moved = utils.clip(moved, low, high)
        logits = self.model.get_logits(moved)
        predicted = ops.cast(ops.argmax(logits, axis=-1), labels.dtype)
        adversarial = ops.not_equal(predicted, labels) & utils.finite_rows(moved)
        size = utils.lp_norm(moved - x, norm)
        better = adversarial & (size < best)
        x_adv = ops.where(utils.per_example(better, x), moved, x_adv)
        best = ops.where(better, size, best)
        # after a success, step back towards the input
        moved = ops.where(utils.per_example(adversarial, x), x + (moved - x) * beta, moved)
        moved = ops.where(utils.per_example(utils.finite_rows(moved), x), moved, current)
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
        ranked = backend.descending_order(self.model.predict_logits(x))
        self._count(len(x))
        seed_pair = self._seed_pair(seed)
        out, open_ = x, np.ones(len(x), bool)
        best = np.full(len(x), np.inf)
        for k in range(1, min(n_target_classes, self.model.nb_classes - 1) + 1):
            rows = np.flatnonzero(open_)
            if rows.size == 0:
                break
            pick = lambda t: ops.take(t, rows, axis=0)
            x_adv, broken = self._attack(
                pick(x),
                pick(labels),
                ops.cast(pick(ranked)[:, k], labels.dtype),
                seed_pair + [0, _TARGET_SEED_STRIDE * k],
                eps=eps,
                **options,
            )
            norms = backend.to_numpy(utils.lp_norm(x_adv - pick(x), options["norm"]))
            changed = np.any(backend.to_numpy(utils.flatten(x_adv - pick(x))) != 0, axis=1)
            better = changed & (norms < best[rows])
            chosen = ops.take(x_adv, np.flatnonzero(better), axis=0)
            out = ops.scatter_update(out, rows[better][:, None], chosen)
            best[rows[better]] = norms[better]
            open_[rows[broken]] = False
        return out
