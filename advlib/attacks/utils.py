"""Tensor helpers shared by the attacks: norms, projections, Adam, bounds.

All functions treat axis 0 as the batch and reduce over every other axis,
so they work for inputs of any rank. They are written in `keras.ops`, so they
run on every Keras backend, inside compiled steps too.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from advlib import backend

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


def dtype_of(x) -> str:
    """The Keras name ("float32") of a tensor's or array's dtype, on any backend."""
    return keras.backend.standardize_dtype(x.dtype)


def bounds_as_tensors(dtype, clip_min, clip_max):
    """The input domain as two tensors of `dtype`; an open bound is -inf / +inf."""
    return (
        ops.convert_to_tensor(-np.inf if clip_min is None else clip_min, dtype),
        ops.convert_to_tensor(np.inf if clip_max is None else clip_max, dtype),
    )


def clip(x, low, high):
    """`x` clipped to [low, high], where the bounds may be tensors that broadcast."""
    return ops.minimum(ops.maximum(x, low), high)


ADAM_BETAS = (0.9, 0.999)
ADAM_EPSILON = 1e-8


def adam_update(grad, first, second, t, learning_rate: float):
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
    second = beta2 * second + (1 - beta2) * ops.square(grad)
    first_hat = first / (1 - ops.power(beta1, t))
    second_hat = second / (1 - ops.power(beta2, t))
    return learning_rate * first_hat / (ops.sqrt(second_hat) + ADAM_EPSILON), first, second


def _axes(x):
    return tuple(range(1, len(x.shape)))


def flatten(x):
    """The batch as (batch, features)."""
    return ops.reshape(x, (-1, int(np.prod(x.shape[1:]))))


def per_example(value, x):
    """Reshapes a (batch,) tensor so that it broadcasts against `x`."""
    return ops.reshape(value, (-1,) + (1,) * (len(x.shape) - 1))


def finite_rows(x):
    """Per example (axis 0): whether every entry is finite."""
    return ops.all(ops.isfinite(flatten(x)), axis=1)


def optimize_linear(grad, eps, norm=np.inf):
    """The perturbation of size `eps` in `norm` that maximises <grad, eta>.

    L-inf: eps * sign(grad). L2: eps * grad / ||grad||_2. L1: eps spread over
    the coordinates of largest |grad| (ties share it). A zero gradient gives a
    zero perturbation.
    """
    if norm == np.inf:
        return eps * ops.sign(grad)
    axes = _axes(grad)
    if norm == 2:
        square = ops.sum(ops.square(grad), axes, keepdims=True)
        return eps * grad / ops.sqrt(ops.maximum(square, _TINY))
    abs_grad = ops.abs(grad)
    max_abs = ops.max(abs_grad, axes, keepdims=True)
    dtype = dtype_of(grad)
    ties = ops.cast(ops.equal(abs_grad, max_abs), dtype) * ops.cast(max_abs > 0, dtype)
    count = ops.sum(ties, axes, keepdims=True)
    return eps * ops.sign(grad) * ties / ops.maximum(count, 1)


def lp_norm(delta, norm):
    """Per-example L0 (nonzero count), L1, L2 or L-inf norm of a batch tensor."""
    flat = flatten(delta)
    if norm == 0:
        return ops.sum(ops.cast(ops.not_equal(flat, 0), dtype_of(flat)), axis=1)
    if norm == np.inf:
        return ops.max(ops.abs(flat), axis=1)
    if norm == 1:
        return ops.sum(ops.abs(flat), axis=1)
    return ops.sqrt(ops.sum(ops.square(flat), axis=1))


def take_rows(values, index):
    """values[i, index[i]] for each row i, over the leading two axes of `values`."""
    index = ops.reshape(ops.cast(index, "int32"), (-1, 1) + (1,) * (len(values.shape) - 2))
    return ops.squeeze(ops.take_along_axis(values, index, axis=1), axis=1)


DUAL_NORMS = {np.inf: 1, 2: 2, 1: np.inf}


def nearest_linear_boundary(difference, flat_gradient, norm):
    """The decision boundary nearest in `norm` under linearisation, as DeepFool and
    FAB pick it: with f_j - f_y = `difference` (batch, classes) and its gradient
    `flat_gradient` (batch, classes, features), the class j minimising
    |f_j - f_y| / ||grad||_dual. Returns (j, that distance, f_j - f_y, its gradient)."""
    dual = DUAL_NORMS[norm]
    if dual == np.inf:
        gradient_norm = ops.max(ops.abs(flat_gradient), axis=2)
    elif dual == 1:
        gradient_norm = ops.sum(ops.abs(flat_gradient), axis=2)
    else:
        gradient_norm = ops.sqrt(ops.sum(ops.square(flat_gradient), axis=2))
    distance = ops.abs(difference) / (gradient_norm + 1e-12)
    nearest = ops.cast(ops.argmin(distance, axis=1), "int32")
    return (
        nearest,
        take_rows(distance, nearest),
        take_rows(difference, nearest),
        take_rows(flat_gradient, nearest),
    )


def sort_descending(x, axis=-1):
    """`x` sorted from largest to smallest along `axis`."""
    return ops.flip(ops.sort(x, axis=axis), axis=axis)


def project_l1_ball(eta, eps):
    """Exact Euclidean projection of each example onto the L1 ball of radius eps.

    The sort-based algorithm of Duchi et al. (2008), batched.
    """
    flat = flatten(eta)
    dtype = dtype_of(flat)
    abs_flat = ops.abs(flat)
    eps = ops.cast(eps, dtype)
    inside = ops.sum(abs_flat, axis=1, keepdims=True) <= eps
    sorted_abs = sort_descending(abs_flat, axis=1)
    cumulative = ops.cumsum(sorted_abs, axis=1)
    ranks = ops.cast(ops.arange(1, flat.shape[1] + 1), dtype)
    # rho: the last index where sorted_abs exceeds its own threshold.
    active = sorted_abs * ranks > cumulative - eps
    rho = ops.maximum(ops.sum(ops.cast(active, "int32"), axis=1, keepdims=True), 1)
    cumulative_at_rho = ops.take_along_axis(cumulative, rho - 1, axis=1)
    theta = (cumulative_at_rho - eps) / ops.cast(rho, dtype)
    projected = ops.sign(flat) * ops.maximum(abs_flat - theta, 0)
    return ops.reshape(ops.where(inside, flat, projected), ops.shape(eta))


def project_l1_box(delta, eps, low, high, steps: int = 40):
    """Euclidean projection of each example's `delta` onto the L1 ball of radius
    `eps` intersected with the box [low, high] (low <= 0 <= high, elementwise).

    The projection is a soft threshold at some theta >= 0, then the box; the
    L1 norm of that point falls with theta, so theta is found by bisection.
    The returned point is always inside both sets.
    """
    flat = flatten(delta)
    dtype = dtype_of(flat)
    low, high = (
        flatten(ops.broadcast_to(ops.cast(b, dtype), ops.shape(delta))) for b in (low, high)
    )
    eps = ops.cast(eps, dtype) * ops.ones_like(flat[:, :1])

    def shrink(theta):
        return clip(ops.sign(flat) * ops.relu(ops.abs(flat) - theta), low, high)

    size = lambda theta: ops.sum(ops.abs(shrink(theta)), axis=1, keepdims=True)
    lower = ops.zeros_like(eps)
    upper = ops.max(ops.abs(flat), axis=1, keepdims=True)
    for _ in range(steps):
        middle = (lower + upper) / 2
        over = size(middle) > eps
        lower, upper = ops.where(over, middle, lower), ops.where(over, upper, middle)
    zero = ops.zeros_like(eps)
    return ops.reshape(ops.where(size(zero) <= eps, shrink(zero), shrink(upper)), ops.shape(delta))


def clip_eta(eta, norm, eps):
    """Projects the perturbation `eta` onto the `norm` ball of radius `eps`."""
    eps = ops.cast(eps, dtype_of(eta))
    if norm == np.inf:
        return clip(eta, -eps, eps)
    if norm == 1:
        return project_l1_ball(eta, eps)
    axes = _axes(eta)
    length = ops.sqrt(ops.maximum(ops.sum(ops.square(eta), axes, keepdims=True), _TINY))
    return eta * ops.minimum(1.0, eps / length)


def random_lp_vector(shape: Sequence[int], norm: float, eps, seed, dtype="float32"):
    """Samples uniformly from the `norm` ball of radius `eps`, reproducibly.

    L-inf: uniform in the box. L1 and L2: the construction of Barthe et al.
    (2005): Y / (||Y||_p^p + W)^(1/p) with Y generalized Gaussian and W ~ Exp(1).

    Args:
        shape: the full shape, batch first.
        norm: np.inf, 2 or 1.
        eps: the radius.
        seed: a stateless seed (`advlib.backend.seed`).
        dtype: the samples' float type.

    Returns:
        A tensor of `shape`.
    """
    if norm == np.inf:
        return backend.uniform(shape, seed, -eps, eps, dtype)
    seed_y, seed_w = backend.split_seed(seed, 2)
    if norm == 2:
        y = backend.normal(shape, seed_y, dtype) * np.sqrt(0.5)
    else:
        uniform = backend.uniform(shape, seed_y, -0.5, 0.5, dtype)
        y = -ops.sign(uniform) * ops.log1p(-2 * ops.abs(uniform))  # Laplace(0, 1)
    w = -ops.log(backend.uniform(shape[:1], seed_w, np.finfo(np.float32).tiny, 1.0, dtype))
    power = ops.sum(ops.power(ops.abs(y), norm), _axes(y)) + w
    return eps * y / per_example(ops.power(power, 1.0 / norm), y)


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
