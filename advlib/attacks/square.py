"""Square Attack (Andriushchenko, Croce, Flammarion & Hein 2020): a score-based
black-box attack by random square updates."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import numpy as np
from keras import ops

from advlib import _checks, backend, losses
from advlib.attacks import utils
from advlib.attacks.base import DOMAIN, TARGETABLE, Attack, on_survivors

# the p schedule of the paper, for 10,000 queries: p_init is halved after each bound
_SCHEDULE_BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)
# queries run in compiled chunks of this many iterations between re-selections of the
# examples still running (models answered in Python, such as the NumPy engine, go
# one query at a time)
_CHUNK = 100


def p_selection(p_init: float, iteration: int, n_queries: int, rescale: bool) -> float:
    """The fraction of the image a square covers at `iteration`."""
    if rescale:
        iteration = int(iteration / n_queries * 10000)
    halvings = sum(iteration > bound for bound in _SCHEDULE_BOUNDS)
    return p_init / 2**halvings


def _rectangles(rows: int, cols: int) -> np.ndarray:
    """Nested rectangles around the centre, weighted 1 / (ring + 1)^2, unit L2 norm."""
    pattern = np.zeros((rows, cols))
    centre_r, centre_c = rows // 2 + 1, cols // 2 + 1
    top, left = centre_r - 1, centre_c - 1
    for ring in range(max(centre_r, centre_c)):
        pattern[
            max(top, 0) : min(top + 2 * ring + 1, rows),
            max(left, 0) : min(left + 2 * ring + 1, cols),
        ] += 1.0 / (ring + 1) ** 2
        top, left = top - 1, left - 1
    return pattern / max(np.sqrt((pattern**2).sum()), 1e-12)


@lru_cache(maxsize=64)
def eta(size: int) -> np.ndarray:
    """The L2 attack's square pattern: two blocks of nested rectangles of opposite
    signs, unit L2 norm (its transpose is drawn as often)."""
    pattern = np.zeros((size, size))
    half = size // 2
    if half:
        pattern[:half] = _rectangles(half, size)
    pattern[half:] = -_rectangles(size - half, size)
    return pattern / max(np.sqrt((pattern**2).sum()), 1e-12)


class SquareAttack(Attack):
    """Random square updates of the perturbation, kept when they lower the margin.

    The attack sees only the model's logits, so it is unaffected by gradient
    masking. Queries run in compiled chunks through `model.get_logits`; a
    model answered outside TensorFlow (a `QNNModelWrapper` with an engine, the
    exact binary network) is queried through `model.predict_logits`, one
    query at a time. Each query changes one square of
    side sqrt(p * pixels) at a random place: L-inf sets it to +-eps per
    channel; L2 moves mass within the square and from a second square, keeping
    the norm at eps. p decreases on the paper's schedule. An example stops
    once it is adversarial; the random draws of each example depend only on
    its place in the batch and the iteration, never on which others stopped.

    Args (to `generate` / `generate_np`):
        eps: radius (default 0.3).
        norm: np.inf (default) or 2; `ord` is an alias.
        n_queries: queries per example and restart (default 5000).
        p_init: the first squares' share of the image (default 0.8).
        loss: "margin" (default) or "ce", the objective lowered.
        nb_restarts: restarts on the examples still robust (default 1).
        rescale_schedule: stretch the schedule (made for 10,000 queries) to
            `n_queries`; AutoAttack does not (default False).
        y, y_target, targeted: labels as in `FastGradientMethod`.
        clip_min, clip_max: input domain bounds.
        seed: makes the squares reproducible.

    Inputs are images, (batch, height, width, channels) or (batch, height,
    width); or (batch, channels, height, width) for a model whose `data_format`
    is "channels_first", such as a PyTorch module wrapped by `from_torch`.

    Example:
        >>> square = SquareAttack(keras_model)
        >>> x_adv = square.generate_np(x, y=y, eps=0.1, n_queries=1000, clip_min=0., clip_max=1.)
    """

    black_box = True

    def __init__(self, model):
        super().__init__(model)
        self._rank = 4  # of the inputs of the current call: the model is queried in it
        self._propose = self._compiled(self._propose_fn)
        self._accept = self._compiled(self._accept_fn)
        self._chunk = self._compiled(self._chunk_fn)

    shared_params = ("eps", "norm", *TARGETABLE, *DOMAIN, "seed")
    norms = (np.inf, 2)

    def parse_params(
        self, n_queries=5000, p_init=0.8, loss="margin", nb_restarts=1, rescale_schedule=False
    ) -> dict[str, Any]:
        number = _checks.check_number
        return dict(
            n_queries=int(number("n_queries", n_queries, low=0, integer=True)),
            p_init=float(number("p_init", p_init, low=0, high=1, low_open=True)),
            loss=_checks.check_choice("loss", loss, ("margin", "ce")),
            nb_restarts=int(number("nb_restarts", nb_restarts, low=1, integer=True)),
            rescale_schedule=bool(rescale_schedule),
        )

    def _check_input(self, x, parsed) -> Any:
        x = super()._check_input(x, parsed)
        if len(x.shape) not in (3, 4):
            raise ValueError(
                f"x must be a batch of images, (batch, height, width[, "
                f"channels]), for SquareAttack; got shape {tuple(x.shape)}."
            )
        return x

    # -- the attack -------------------------------------------------------------------
    def _generate(self, x, labels, targeted, *, nb_restarts, clip_min, clip_max, seed, **search):
        if search["eps"] == 0 or search["n_queries"] == 0:
            return x
        # the search works on (batch, height, width, channels); the model is queried
        # in its own layout
        self._rank = len(x.shape)
        images = x if self._rank == 4 else x[..., None]
        if self._channels_first(self._rank):
            images = ops.transpose(images, (0, 2, 3, 1))
        bounds = utils.bounds_as_tensors(images.dtype, clip_min, clip_max)
        seed_pair = self._seed_pair(seed)

        def restart(index, rows):
            batch = (ops.take(images, rows, axis=0), ops.take(labels, rows, axis=0), targeted)
            return self._search(*batch, bounds, seed_pair + [index, 0], **search)

        out = on_survivors(images, np.ones(len(x), bool), range(nb_restarts), restart)
        return self._as_model_takes(out, self._rank)

    def _channels_first(self, rank: int) -> bool:
        return rank == 4 and self.model.data_format == "channels_first"

    def _as_model_takes(self, images, rank: int):
        """(batch, height, width, channels) images in the layout and rank the model takes."""
        if self._channels_first(rank):
            return ops.transpose(images, (0, 3, 1, 2))
        return images if rank == 4 else images[..., 0]

    @staticmethod
    def _scores(logits, labels, targeted, loss):
        """(margin, objective) to lower: the margin is <= 0 once the attack succeeded."""
        margin = losses.margin_loss(labels=labels, logits=logits)
        margin = margin if targeted else -margin
        if loss == "margin":
            return margin, margin
        ce = losses.cross_entropy(labels=labels, logits=logits)
        return margin, ce if targeted else -ce

    def _objectives(self, points, labels, targeted, loss):
        logits = self.model.predict_logits(self._as_model_takes(points, self._rank))
        self._count(int(points.shape[0]))
        return self._scores(logits, labels, targeted, loss)

    @staticmethod
    def _sides(p_init, n_queries, rescale, norm, height, width):
        """The square's side at every iteration."""
        sides = []
        for iteration in range(n_queries):
            p = p_selection(p_init, iteration, n_queries, rescale)
            side = int(round(np.sqrt(p * height * width)))
            sides.append(
                min(max(side, 1), height, width)
                if norm == np.inf
                else min(max(side + (side % 2 == 0), 3), height, width)
            )
        return sides

    def _search(
        self, x, labels, targeted, bounds, seed_pair, *, eps, norm, n_queries, p_init, loss, **rest
    ):
        """One restart on a batch: (best points, which stayed robust)."""
        low, high = bounds
        eps_t = ops.cast(eps, x.dtype)
        batch, height, width, channels = (int(d) for d in x.shape)
        x_best = self._start(x, eps_t, norm, low, high, seed_pair)
        margin, objective = self._objectives(x_best, labels, targeted, loss)
        sides = self._sides(p_init, n_queries, rest["rescale_schedule"], norm, height, width)
        # each side's pattern, padded to the image, so that a compiled loop can index them
        distinct = sorted(set(sides))
        bank = np.zeros((len(distinct), height, width))
        for k, side in enumerate(distinct):
            bank[k, :side, :side] = eta(side)
        bank = ops.convert_to_tensor(bank, x.dtype)
        which = [distinct.index(side) for side in sides]
        step = _CHUNK if getattr(self.model, "engine", None) is None else 1
        common = dict(batch=batch, eps=eps_t, low=low, high=high, norm=norm)
        for first in range(0, n_queries, step):
            active = np.flatnonzero(backend.to_numpy(margin) > 0)
            if active.size == 0:
                break
            rows = ops.convert_to_tensor(active)
            count = min(step, n_queries - first)
            if step == 1:
                row_x, row_best, row_margin, row_objective = _take_rows(
                    (x, x_best, margin, objective), rows
                )
                candidate = self._propose(
                    row_x,
                    row_best,
                    rows,
                    backend.seed(seed_pair + [0, first + 1]),
                    ops.convert_to_tensor(sides[first]),
                    bank[which[first]],
                    **common,
                )
                new_margin, new_objective = self._objectives(
                    candidate, ops.take(labels, rows, axis=0), targeted, loss
                )
                accepted = self._accept(
                    row_best,
                    row_margin,
                    row_objective,
                    candidate,
                    new_margin,
                    new_objective,
                    ops.ones([len(active)], "bool"),
                )
                x_best, margin, objective = _put_rows((x_best, margin, objective), rows, accepted)
                continue
            x_best, margin, objective, queries = self._chunk(
                x,
                x_best,
                margin,
                objective,
                labels,
                rows,
                backend.seed(seed_pair),
                ops.convert_to_tensor(first),
                ops.convert_to_tensor(sides[first : first + count]),
                ops.convert_to_tensor(which[first : first + count]),
                bank,
                targeted,
                loss,
                self._rank,
                **common,
            )
            self._count(int(queries))
        return x_best, backend.to_numpy(margin) > 0

    def _start(self, x, eps, norm, low, high, seed_pair):
        """L-inf: vertical stripes of +-eps per channel; L2: a grid of eta patterns of
        random signs, scaled to norm eps."""
        batch, height, width, channels = (int(d) for d in x.shape)
        seed = backend.seed(seed_pair)
        if norm == np.inf:
            signs = ops.sign(backend.uniform((batch, 1, width, channels), seed, -1.0, 1.0, x.dtype))
            return utils.clip(x + eps * ops.where(signs == 0, 1.0, signs), low, high)
        side = max(height // 5, 1)
        margin_r = max((height - side * 5) // 2, 0)
        margin_c = max((width - side * 5) // 2, 0)
        tiles_r, tiles_c = height // side, width // side
        shape = (batch, tiles_r, tiles_c, channels)
        signs = ops.sign(backend.uniform(shape, seed, -1.0, 1.0, x.dtype))
        signs = ops.where(signs == 0, ops.ones_like(signs), signs)
        flips = np.random.default_rng(int(seed_pair[0])).random((tiles_r, tiles_c)) > 0.5
        delta = ops.zeros_like(x)
        for i in range(tiles_r):
            for j in range(tiles_c):
                top, left = margin_r + i * side, margin_c + j * side
                pattern = eta(side).T if flips[i, j] else eta(side)
                block = np.zeros((height, width))
                bottom, right = min(top + side, height), min(left + side, width)
                if bottom <= top or right <= left:
                    continue
                block[top:bottom, left:right] = pattern[: bottom - top, : right - left]
                delta += (
                    ops.convert_to_tensor(block[None, :, :, None], x.dtype)
                    * signs[:, i, j][:, None, None, :]
                )
        delta = utils.optimize_linear(delta, eps, 2)  # delta scaled to norm eps
        return utils.clip(x + delta, low, high)

    # -- compiled pieces ------------------------------------------------------------------
    def _chunk_fn(
        self,
        x,
        x_best,
        margin,
        objective,
        labels,
        rows,
        seed_pair,
        first,
        sides,
        which,
        bank,
        targeted,
        loss,
        rank,
        batch,
        eps,
        low,
        high,
        norm,
    ):
        """`len(sides)` queries for the rows running at the chunk's start; a row that
        succeeds stops changing (and stops counting queries) within the chunk. The
        loop works on those rows alone, gathered once and put back once, not at
        every query."""
        row_x, row_labels = _take_rows((x, labels), rows)

        def query(i, state):
            row_best, row_margin, row_objective, queries = state
            active = row_margin > 0
            seed = backend.fold_seed(seed_pair, first + i + 1)
            candidate = self._propose_fn(
                row_x, row_best, rows, seed, sides[i], bank[which[i]], batch, eps, low, high, norm
            )
            logits = ops.cast(self.model.get_logits(self._as_model_takes(candidate, rank)), x.dtype)
            new_margin, new_objective = self._scores(logits, row_labels, targeted, loss)
            accepted = self._accept_fn(
                row_best, row_margin, row_objective, candidate, new_margin, new_objective, active
            )
            return (*accepted, queries + ops.sum(ops.cast(active, "int32")))

        state = (*_take_rows((x_best, margin, objective), rows), ops.convert_to_tensor(0, "int32"))
        *accepted, queries = ops.fori_loop(0, ops.shape(sides)[0], query, state)
        return (*_put_rows((x_best, margin, objective), rows, accepted), queries)

    @staticmethod
    def _windows(seed, count, batch, height, width, side, rows):
        """Per row: a random square's mask (rows, height, width, 1) and its corner."""
        corners = backend.uniform((batch, count, 2), seed, 0.0, 1.0, "float32")
        corners = ops.take(corners, rows, axis=0)
        span = ops.cast(ops.stack([height - side, width - side]), "float32")
        corners = ops.cast(ops.floor(corners * span), "int32")  # in [0, size - side)
        r = ops.arange(height)[None, :, None]
        c = ops.arange(width)[None, None, :]
        masks = []
        for k in range(count):
            top = corners[:, k, 0][:, None, None]
            left = corners[:, k, 1][:, None, None]
            inside = (r >= top) & (r < top + side) & (c >= left) & (c < left + side)
            masks.append((inside, top, left))
        return masks

    def _propose_fn(self, x, x_best, rows, seed, side, pattern, batch, eps, low, high, norm):
        """Candidates for the rows still running, one square change each: `x` and
        `x_best` hold those rows; `rows` are their places in the batch of `batch`,
        which fix their random draws."""
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        seeds = backend.split_seed(seed, 3)
        every_sign = backend.uniform((batch, 1, 1, channels), seeds[0], -1.0, 1.0, x.dtype)
        signs = ops.sign(ops.take(every_sign, rows, axis=0))
        signs = ops.where(signs == 0, ops.ones_like(signs), signs)
        if norm == np.inf:
            ((inside, _, _),) = self._windows(seeds[1], 1, batch, height, width, side, rows)
            inside = ops.cast(inside[..., None], x.dtype)
            moved = x_best + inside * 2 * eps * signs
            return utils.clip(utils.clip(moved, x - eps, x + eps), low, high)
        return self._propose_l2(x, x_best, rows, seeds, side, pattern, batch, eps, low, high, signs)

    def _propose_l2(self, x, x_best, rows, seeds, side, pattern, batch, eps, low, high, signs):
        height, width, channels = x.shape[1], x.shape[2], x.shape[3]
        (first, top, left), (second, _, _) = self._windows(
            seeds[1], 2, batch, height, width, side, rows
        )
        first_mask = ops.cast(first[..., None], x.dtype)
        union = ops.cast((first | second)[..., None], x.dtype)
        delta = x_best - x
        sum_sq = lambda t, axes: ops.sum(ops.square(t), axes, keepdims=True)
        window_norm = ops.sqrt(sum_sq(delta * first_mask, [1, 2]))  # per channel
        image_sq = sum_sq(delta, [1, 2, 3])
        windows_sq = sum_sq(delta * union, [1, 2, 3])
        # the pattern (transposed for half the rows) placed at each row's first square
        flips = backend.uniform((batch,), seeds[2], 0.0, 1.0, "float32")
        transpose = ops.take(flips, rows, axis=0) > 0.5
        shape = ops.shape(first)
        r = ops.broadcast_to(
            utils.clip(ops.arange(height)[None, :, None] - top, 0, side - 1), shape
        )
        c = ops.broadcast_to(
            utils.clip(ops.arange(width)[None, None, :] - left, 0, side - 1), shape
        )
        transpose = transpose[:, None, None]
        index = ops.where(transpose, c, r) * width + ops.where(transpose, r, c)
        placed = ops.take(ops.reshape(pattern, (-1,)), index)[..., None] * first_mask
        window = placed * signs + delta * first_mask / (window_norm + 1e-12)
        scale = ops.sqrt(ops.maximum(ops.square(eps) - image_sq, 0.0) / channels + windows_sq)
        window = window / (ops.sqrt(sum_sq(window, [1, 2])) + 1e-12) * scale
        delta = delta * (1 - union) + window
        return utils.clip(x + utils.optimize_linear(delta, eps, 2), low, high)

    @staticmethod
    def _accept_fn(x_best, margin, objective, candidate, new_margin, new_objective, active):
        """Keeps each candidate (of an `active` row) that lowered the objective or made
        the example adversarial; every argument holds the rows still running."""
        improved = (new_objective < objective) & active
        keep = improved | ((new_margin <= 0) & active)
        return (
            ops.where(keep[:, None, None, None], candidate, x_best),
            ops.where(keep, new_margin, margin),
            ops.where(improved, new_objective, objective),
        )


def _take_rows(tensors, rows) -> tuple:
    """Each tensor's `rows`."""
    return tuple(ops.take(t, rows, axis=0) for t in tensors)


def _put_rows(tensors, rows, values):
    """Each tensor with its `rows` replaced by the matching values."""
    index = rows[:, None]
    return tuple(ops.scatter_update(t, index, v) for t, v in zip(tensors, values))
