"""Tensor helpers shared by the attacks: norms, projections, Adam, bounds.

All functions treat axis 0 as the batch and reduce over every other axis,
so they work for inputs of any rank.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

NORMS = (np.inf, 1, 2)
_TINY = 1e-12


def normalize_norm(norm):
    """Maps the accepted spellings of a norm to np.inf, 1 or 2."""
    if isinstance(norm, str) and norm.lower() in ("inf", "linf", "l_inf"):
        return np.inf
    if isinstance(norm, str) and norm.lower() in ("l1", "l2"):
        return int(norm[1])
    try:
        if not isinstance(norm, bool) and float(norm) in NORMS:
            return np.inf if float(norm) == np.inf else int(norm)
    except (TypeError, ValueError):
        pass
    raise ValueError(f"norm must be one of np.inf, 1 or 2, got {norm!r}.")


def normalize_norm_or_l0(norm):
    """Like `normalize_norm`, and 0 (or "l0") for the count of changed entries."""
    if (isinstance(norm, str) and norm.lower() == "l0") or (
        not isinstance(norm, (bool, str)) and norm == 0
    ):
        return 0
    try:
        return normalize_norm(norm)
    except ValueError:
        raise ValueError(f"norm must be one of 0, 1, 2 or np.inf, got {norm!r}.") from None


def resolve_norm(norm, ord=None, default=np.inf, allowed=NORMS):
    """The norm from `norm` or its cleverhans alias `ord`, which must agree when
    both are given; refuses norms outside `allowed`."""
    spell = normalize_norm_or_l0 if 0 in allowed else normalize_norm
    if norm is not None and ord is not None and spell(norm) != spell(ord):
        raise ValueError(f"norm and its alias ord disagree: norm={norm!r}, ord={ord!r}.")
    chosen = spell(norm if norm is not None else ord if ord is not None else default)
    if chosen not in allowed:
        names = " or ".join("np.inf" if n == np.inf else str(n) for n in allowed)
        raise ValueError(f"norm must be {names} for this attack, got {chosen!r}.")
    return chosen


def bounds_as_tensors(dtype, clip_min, clip_max):
    """The input domain as two tensors of `dtype`; an open bound is -inf / +inf."""
    return (
        tf.cast(-np.inf if clip_min is None else clip_min, dtype),
        tf.cast(np.inf if clip_max is None else clip_max, dtype),
    )


ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


def adam_update(
    grad: tf.Tensor, first: tf.Tensor, second: tf.Tensor, t: tf.Tensor, learning_rate: float
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One Adam update (Kingma & Ba 2015), elementwise, so each example's search
    is independent of the batch.

    Args:
        grad: the gradient of the objective to minimise.
        first: the first-moment estimate before this step.
        second: the second-moment estimate before this step.
        t: the step's number, from 1 (a float tensor).
        learning_rate: the step size.

    Returns:
        (step, first, second): the step to subtract, and the new moments.
    """
    beta1, beta2 = ADAM_BETAS
    first = beta1 * first + (1 - beta1) * grad
    second = beta2 * second + (1 - beta2) * tf.square(grad)
    step = (
        learning_rate * (first / (1 - beta1**t)) / (tf.sqrt(second / (1 - beta2**t)) + ADAM_EPSILON)
    )
    return step, first, second


def _axes(x):
    return tf.range(1, tf.rank(x))


def per_example(value, x):
    """Reshapes a (batch,) tensor so that it broadcasts against `x`."""
    return tf.reshape(value, tf.concat([[-1], tf.ones([tf.rank(x) - 1], tf.int32)], 0))


def finite_rows(x):
    """Per example (axis 0): whether every entry is finite."""
    return tf.reduce_all(tf.math.is_finite(tf.reshape(x, [tf.shape(x)[0], -1])), axis=1)


def optimize_linear(grad, eps, norm=np.inf):
    """The perturbation of size `eps` in `norm` that maximises <grad, eta>.

    L-inf: eps * sign(grad). L2: eps * grad / ||grad||_2. L1: eps spread over
    the coordinates of largest |grad| (ties share it). A zero gradient gives a
    zero perturbation.
    """
    if norm == np.inf:
        return eps * tf.sign(grad)
    axes = _axes(grad)
    if norm == 2:
        square = tf.reduce_sum(tf.square(grad), axes, keepdims=True)
        return eps * grad / tf.sqrt(tf.maximum(square, _TINY))
    abs_grad = tf.abs(grad)
    max_abs = tf.reduce_max(abs_grad, axes, keepdims=True)
    ties = tf.cast(tf.equal(abs_grad, max_abs), grad.dtype) * tf.cast(max_abs > 0, grad.dtype)
    count = tf.reduce_sum(ties, axes, keepdims=True)
    return eps * tf.sign(grad) * ties / tf.maximum(count, 1)


def lp_norm(delta, norm):
    """Per-example L0 (nonzero count), L1, L2 or L-inf norm of a batch tensor."""
    flat = tf.reshape(delta, [tf.shape(delta)[0], -1])
    if norm == 0:
        return tf.reduce_sum(tf.cast(tf.not_equal(flat, 0), flat.dtype), axis=1)
    if norm == np.inf:
        return tf.reduce_max(tf.abs(flat), axis=1)
    if norm == 1:
        return tf.reduce_sum(tf.abs(flat), axis=1)
    return tf.norm(flat, axis=1)


DUAL_NORMS = {np.inf: 1, 2: 2, 1: np.inf}


def nearest_linear_boundary(difference, flat_gradient, norm):
    """The decision boundary nearest in `norm` under linearisation, as DeepFool and
    FAB pick it: with f_j - f_y = `difference` (batch, classes) and its gradient
    `flat_gradient` (batch, classes, features), the class j minimising
    |f_j - f_y| / ||grad||_dual. Returns (j, that distance, f_j - f_y, its gradient)."""
    dual = DUAL_NORMS[norm]
    if dual == np.inf:
        gradient_norm = tf.reduce_max(tf.abs(flat_gradient), axis=2)
    elif dual == 1:
        gradient_norm = tf.reduce_sum(tf.abs(flat_gradient), axis=2)
    else:
        gradient_norm = tf.norm(flat_gradient, axis=2)
    distance = tf.abs(difference) / (gradient_norm + 1e-12)
    nearest = tf.argmin(distance, axis=1, output_type=tf.int32)
    return (
        nearest,
        tf.gather(distance, nearest, batch_dims=1),
        tf.gather(difference, nearest, batch_dims=1),
        tf.gather(flat_gradient, nearest, batch_dims=1),
    )


def project_l1_ball(eta, eps):
    """Exact Euclidean projection of each example onto the L1 ball of radius eps.

    The sort-based algorithm of Duchi et al. (2008), batched.
    """
    shape = tf.shape(eta)
    flat = tf.reshape(eta, [shape[0], -1])
    abs_flat = tf.abs(flat)
    eps = tf.cast(eps, flat.dtype)
    inside = tf.reduce_sum(abs_flat, axis=1, keepdims=True) <= eps
    sorted_abs = tf.sort(abs_flat, axis=1, direction="DESCENDING")
    cumulative = tf.cumsum(sorted_abs, axis=1)
    ranks = tf.cast(tf.range(1, tf.shape(flat)[1] + 1), flat.dtype)
    # rho: the last index where sorted_abs exceeds its own threshold.
    active = sorted_abs * ranks > cumulative - eps
    rho = tf.reduce_sum(tf.cast(active, tf.int32), axis=1, keepdims=True)
    rho = tf.maximum(rho, 1)
    cumulative_at_rho = tf.gather(cumulative, rho - 1, batch_dims=1)
    theta = (cumulative_at_rho - eps) / tf.cast(rho, flat.dtype)
    projected = tf.sign(flat) * tf.maximum(abs_flat - theta, 0)
    return tf.reshape(tf.where(inside, flat, projected), shape)


def project_l1_box(delta, eps, low, high, steps: int = 40):
    """Euclidean projection of each example's `delta` onto the L1 ball of radius
    `eps` intersected with the box [low, high] (low <= 0 <= high, elementwise).

    The projection is a soft threshold at some theta >= 0, then the box; the
    L1 norm of that point falls with theta, so theta is found by bisection.
    The returned point is always inside both sets.
    """
    shape = tf.shape(delta)
    flat = tf.reshape(delta, [shape[0], -1])
    low, high = (
        tf.reshape(tf.broadcast_to(tf.cast(b, delta.dtype), shape), [shape[0], -1])
        for b in (low, high)
    )
    eps = tf.cast(eps, flat.dtype) * tf.ones_like(flat[:, :1])

    def shrink(theta):
        return tf.clip_by_value(tf.sign(flat) * tf.nn.relu(tf.abs(flat) - theta), low, high)

    size = lambda theta: tf.reduce_sum(tf.abs(shrink(theta)), axis=1, keepdims=True)
    lower = tf.zeros_like(eps)
    upper = tf.reduce_max(tf.abs(flat), axis=1, keepdims=True)
    for _ in range(steps):
        middle = (lower + upper) / 2
        over = size(middle) > eps
        lower, upper = tf.where(over, middle, lower), tf.where(over, upper, middle)
    return tf.reshape(tf.where(size(0.0) <= eps, shrink(0.0), shrink(upper)), shape)


def clip_eta(eta, norm, eps):
    """Projects the perturbation `eta` onto the `norm` ball of radius `eps`."""
    eps = tf.cast(eps, eta.dtype)
    if norm == np.inf:
        return tf.clip_by_value(eta, -eps, eps)
    if norm == 1:
        return project_l1_ball(eta, eps)
    axes = _axes(eta)
    length = tf.sqrt(tf.maximum(tf.reduce_sum(tf.square(eta), axes, keepdims=True), _TINY))
    return eta * tf.minimum(1.0 + tf.zeros_like(length), eps / length)


def random_lp_vector(
    shape: Sequence[int] | tf.Tensor,
    norm: float,
    eps: float | tf.Tensor,
    seed: tf.Tensor,
    dtype: tf.DType = tf.float32,
) -> tf.Tensor:
    """Samples uniformly from the `norm` ball of radius `eps`, reproducibly.

    L-inf: uniform in the box. L1 and L2: the construction of Barthe et al.
    (2005): Y / (||Y||_p^p + W)^(1/p) with Y generalized Gaussian and W ~ Exp(1).

    Args:
        shape: the full shape, batch first.
        norm: np.inf, 2 or 1.
        eps: the radius.
        seed: a pair of ints for TensorFlow's stateless random ops.
        dtype: the samples' float type.

    Returns:
        A tensor of `shape`.
    """
    if norm == np.inf:
        return tf.random.stateless_uniform(shape, seed, -eps, eps, dtype=dtype)
    seed_y, seed_w = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    if norm == 2:
        y = tf.random.stateless_normal(shape, seed_y, stddev=np.sqrt(0.5), dtype=dtype)
    else:
        uniform = tf.random.stateless_uniform(shape, seed_y, -0.5, 0.5, dtype=dtype)
        y = -tf.sign(uniform) * tf.math.log1p(-2 * tf.abs(uniform))  # Laplace(0, 1)
    w = -tf.math.log(
        tf.random.stateless_uniform(shape[:1], seed_w, np.finfo(np.float32).tiny, 1.0, dtype=dtype)
    )
    axes = tf.range(1, tf.size(shape))
    power = tf.reduce_sum(tf.abs(y) ** norm, axes) + w
    return eps * y / per_example(power ** (1.0 / norm), y)


# a perturbation is within eps up to float32 rounding
_NORM_TOLERANCE = 1e-5


def perturbation_norms(delta: np.ndarray, norm) -> np.ndarray:
    """Per-example `norm` (np.inf, 2 or 1, or their spellings) of a NumPy batch."""
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    norm = normalize_norm(norm)
    if norm == np.inf:
        return np.abs(flat).max(axis=1, initial=0.0)
    if norm == 1:
        return np.abs(flat).sum(axis=1)
    return np.sqrt((flat**2).sum(axis=1))


def within_threat(x_adv: np.ndarray, x: np.ndarray, eps: float, norm, clip_min, clip_max):
    """Per example: whether the perturbation lies within the eps ball and the input
    domain (NaN never does), and its norm."""
    norms = perturbation_norms(x_adv - x, norm)
    within = norms <= eps * (1 + _NORM_TOLERANCE) + 1e-7
    flat = x_adv.reshape(len(x_adv), -1)
    if clip_min is not None:
        within &= flat.min(axis=1, initial=np.inf) >= clip_min - 1e-6
    if clip_max is not None:
        within &= flat.max(axis=1, initial=-np.inf) <= clip_max + 1e-6
    return within, norms


def lp_norms(delta: np.ndarray):
    """Per-example L0, L1, L2 and L-inf norms of a NumPy perturbation batch."""
    flat = delta.reshape(len(delta), -1).astype(np.float64)
    return {
        "l0": (flat != 0).sum(axis=1).astype(np.int64),
        "l1": np.abs(flat).sum(axis=1),
        "l2": np.sqrt((flat**2).sum(axis=1)),
        "linf": np.abs(flat).max(axis=1, initial=0.0),
    }
