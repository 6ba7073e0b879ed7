"""Counterexamples for the verifier by large neighbourhood search (LNS).

On networks as large as the reference digits CNN, the complete program of a
whole eps-ball is too large to solve in seconds, yet many of the examples that
gradient and score-based attacks leave do have counterexamples. LNS finds
them with the verifier's own exact encoding: it keeps one point of the ball
(pixel levels), frees a small neighbourhood of its pixels to their whole range
in the ball while the others stay where they are, and solves that program to
optimality for the smallest margin logit_y - logit_j. The fixed pixels pin
most units of the first layers, so each program is small; its optimum is never
worse than the current point, which it contains; and the neighbourhood grows
while the programs solve quickly and shrinks when they do not (Shaw 1998;
Pisinger & Ropke 2010). A neighbourhood small enough (a pixel or two) is
searched by running all its points through the engine instead: there the
program would be slower than the enumeration, most of all on convolutional
networks, whose interval bounds leave thousands of units undecided even when
one pixel moves.

The search is incomplete, as an attack is: it can only answer "broken", and
every counterexample is re-checked through the engine like the complete
verifier's.
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

# the first neighbourhood's share of the free pixels, and its growth and shrink factors
_START_SHARE = 0.15
_GROW, _SHRINK = 1.5, 0.5
# a program that takes longer than this share of the search's time shrinks the neighbourhood
_SLOW_SHARE = 0.1
# neighbourhoods with at most this many points are searched by running them all through
# the engine: on convolutional networks, interval bounds leave thousands of units open
# even when a single pixel moves, and the program of one pixel is slower than its levels
_ENUMERATE = 256


def neighbourhood_search(encoding, x: np.ndarray, label: int, eps: float, time_limit: float,
                         seed: int = 0, start: Optional[np.ndarray] = None
                         ) -> Optional[np.ndarray]:
    """Searches the L-inf ball of radius `eps` around `x` for a point that the engine
    misclassifies.

    Args:
        encoding: the network's `NetworkEncoding`.
        x: one image in [0, 1], of the engine's input shape.
        label: the class to move away from.
        eps: the L-inf radius.
        time_limit: seconds.
        seed: seeds the neighbourhoods (the programs' time limits can still make
            two runs differ).
        start: a point of the ball to start from, such as an attack's best
            (default: `x`).

    Returns:
        An image within eps of `x` that the engine misclassifies, or None.
    """
    deadline = time.perf_counter() + time_limit
    rng = np.random.default_rng(seed)
    low, high = encoding.input_box(x.reshape(-1), eps)
    free = np.flatnonzero(low != high)
    if free.size == 0:
        return None
    origin = x if start is None else start
    levels = np.clip(np.round(np.clip(origin.reshape(-1).astype(np.float32), 0, 1) * 255),
                     low, high).astype(np.int64)
    size = max(1.0, _START_SHARE * free.size)
    too_slow = free.size + 1  # the smallest neighbourhood whose program ran out of time
    step = 0
    while True:
        image = encoding.image_at_levels(x, levels, eps)
        logits = encoding.engine.predict(image[None])[0]
        if int(logits.argmax()) != label:
            return image
        remaining = deadline - time.perf_counter()
        if remaining <= 0:
            return None
        chosen = _neighbourhood(free, int(round(size)), encoding.engine.input_shape, rng)
        if np.prod(high[chosen] - low[chosen] + 1.0) <= _ENUMERATE:
            levels = _best_by_enumeration(encoding, x, eps, levels, chosen, low, high, label)
            size = max(1.0, min(size * _GROW, too_slow - 1.0))
            step += 1
            continue
        box = (levels.copy(), levels.copy())
        box[0][chosen], box[1][chosen] = low[chosen], high[chosen]
        limit = min(remaining, max(_SLOW_SHARE * time_limit, 0.05))
        began = time.perf_counter()
        proposal, optimal = _best_in_box(encoding, x, eps, box, label,
                                         _target(logits, label, step, rng), limit)
        if optimal and time.perf_counter() - began < limit / 2:
            size = max(1.0, min(free.size, size * _GROW, too_slow - 1.0))
        else:
            if not optimal:
                too_slow = min(too_slow, len(chosen))
            size = max(1.0, size * _SHRINK)
        if proposal is not None:
            levels = proposal
        step += 1


def _best_by_enumeration(encoding, x, eps, levels, chosen, low, high, label):
    """The levels of `chosen` that minimize logit_label minus the best other logit,
    found by running every combination through the engine (the others fixed)."""
    grids = np.meshgrid(*[np.arange(low[i], high[i] + 1) for i in chosen], indexing="ij")
    candidates = np.repeat(levels[None], grids[0].size, axis=0)
    candidates[:, chosen] = np.stack([grid.ravel() for grid in grids], axis=1)
    logits = encoding.engine.predict(encoding.image_at_levels(x, candidates, eps))
    others = np.delete(logits, label, axis=1).max(axis=1)
    return candidates[int(np.argmin(logits[:, label] - others))]


def _target(logits: np.ndarray, label: int, step: int, rng) -> int:
    """The runner-up class two steps in three; otherwise a random other class, so
    that a class whose margin has stopped shrinking does not hold the search."""
    others = np.array([c for c in np.argsort(-logits) if c != label])
    return int(others[0] if step % 3 else rng.choice(others))


def _neighbourhood(free: np.ndarray, size: int, input_shape, rng) -> np.ndarray:
    """`size` free pixels around a random one: the nearest in the image plane for
    images (every channel of a pixel together), random ones for flat inputs."""
    if size >= free.size:
        return free
    if len(input_shape) != 3:
        return rng.choice(free, size, replace=False)
    height, width, channels = input_shape
    pixel = free // channels
    row, column = pixel // width, pixel % width
    centre = rng.integers(free.size)
    distance = np.maximum(np.abs(row - row[centre]), np.abs(column - column[centre]))
    # ties in distance broken at random, so square rings are not always cut the same way
    order = np.lexsort((rng.random(free.size), distance))
    return free[order[:size]]


def _best_in_box(encoding, x, eps, box, label, target, time_limit):
    """The levels minimizing logit_label - logit_target over the box, and whether
    the solver proved them optimal; (None, False) when it found no point."""
    program, const, matrix, columns, _, _, _ = encoding.encode(x, eps, box=box)
    row, _ = encoding.margin_objective(const, matrix, columns, label, target,
                                       len(program.low))
    if row.size == 0:  # every pixel of the box fixed
        return box[0].copy(), True
    base, base_low, base_high = program.matrix()
    constraints = [LinearConstraint(base, base_low, base_high)] if base.shape[0] else []
    result = milp(row, integrality=np.ones(row.size), bounds=Bounds(program.low, program.high),
                  constraints=constraints,
                  options={"time_limit": max(float(time_limit), 1e-3), "presolve": True})
    if result.x is None:
        return None, False
    return encoding.solution_levels(result.x, box), result.status == 0
