"""The one place that knows which Keras backend runs.

Keras 3 runs a model on TensorFlow, JAX or PyTorch, chosen by the
`KERAS_BACKEND` environment variable or the `backend` key of `keras.json`.
advlib's attacks, model wrappers, certification and harness are written once,
in `keras.ops` and NumPy, over the few primitives that Keras 3 does not give in
one form, defined here per backend: the value and gradient of a per-example
loss with respect to the input, a compiled step, stateless seeded random
numbers, and the move to NumPy. Training (`AdversarialModel`, `VerifiableModel`)
goes through Keras's own training step on each backend, and the quantized
layers use `keras.ops.custom_gradient`, so they need nothing more from here
than the number of replicas of a TensorFlow distribution (`replica`).

Example:
    >>> from advlib import backend
    >>> backend.name()
    'tensorflow'
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

# the backends advlib knows, with the module each needs and the extra that installs it
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorflow": ("tensorflow", "advlib"),
    "jax": ("jax", "advlib[jax]"),
    "torch": ("torch", "advlib[torch]"),
}
# the backends that advlib's models, attacks, certification and harness run on
SUPPORTED = ("tensorflow", "jax", "torch")

__all__ = [
    "BACKENDS",
    "SUPPORTED",
    "BackendError",
    "chosen",
    "compiled",
    "descending_order",
    "device",
    "fold_seed",
    "name",
    "no_gradient",
    "normal",
    "replica",
    "require_installed",
    "require_supported",
    "seed",
    "split_seed",
    "to_numpy",
    "uniform",
    "value_and_gradient",
]


class BackendError(RuntimeError):
    """A Keras backend that advlib cannot run on, or a model of another backend."""


def chosen() -> str:
    """The backend Keras will load, read as Keras reads it but without importing
    Keras: `KERAS_BACKEND`, else `keras.json` in `KERAS_HOME` (default
    `~/.keras`), else "tensorflow"."""
    if os.environ.get("KERAS_BACKEND"):
        return os.environ["KERAS_BACKEND"]
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    try:
        with open(os.path.join(home, "keras.json")) as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return "tensorflow"
    backend = config.get("backend") if isinstance(config, dict) else None
    return backend if isinstance(backend, str) and backend else "tensorflow"


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module set to None in sys.modules
        return False


def require_installed(backend: str | None = None) -> None:
    """Raises an ImportError that names the pip extra when the chosen backend (or
    `backend`) is one advlib knows but is not installed: otherwise the first
    `import keras` would fail with a bare "No module named ...".

    Raises:
        ImportError: naming the backend and `pip install 'advlib[EXTRA]'`.
    """
    backend = chosen() if backend is None else backend
    if backend in BACKENDS and not _installed(BACKENDS[backend][0]):
        module, extra = BACKENDS[backend]
        raise ImportError(
            f"Keras's backend is {backend!r} (KERAS_BACKEND or keras.json), but {module} "
            f"is not installed: pip install '{extra}', or choose another backend."
        )


def name() -> str:
    """The backend Keras runs on: "tensorflow", "jax", "torch", or another that
    Keras supports."""
    import keras

    return keras.backend.backend()


def require_supported(what: str, backends: Sequence[str] = SUPPORTED) -> None:
    """Raises `BackendError` unless Keras's backend is one of `backends`.

    Args:
        what: the part of advlib that needs the backend, for the message.
        backends: the backends it runs on.
    """
    backend = name()
    if backend not in backends:
        raise BackendError(
            f"{what} run on Keras's {' or '.join(backends)} backend in this release; "
            f"Keras runs on {backend!r} here (KERAS_BACKEND or keras.json). "
            f"Set KERAS_BACKEND={backends[0]} before Keras is imported."
        )


@functools.cache
def _primitives():
    backend = name()
    require_supported("advlib's models and attacks")
    return importlib.import_module(f"advlib.backend._{backend}")


def value_and_gradient(fn: Callable, x: Any) -> tuple[Any, Any, Any]:
    """The value of a per-example objective and its gradient with respect to `x`.

    Args:
        fn: called as `fn(x)`; returns `(value, aux)`, where `value` has one
            entry per example (examples are independent, so each one's
            gradient is that of the sum) and `aux` is any structure of tensors
            to pass out, such as the logits.
        x: the input batch, a tensor of the backend.

    Returns:
        `(value, gradient, aux)`; the gradient has the shape and dtype of `x`,
        and is zero (never missing) where `value` does not depend on `x`.

    Example:
        >>> value, gradient, _ = backend.value_and_gradient(
        ...     lambda x: (keras.ops.sum(x**2, axis=1), None), x)
    """
    return _primitives().value_and_gradient(fn, x)


def compiled(fn: Callable, variables: Callable[[], list] | None = None) -> Callable:
    """`fn` compiled for repeated calls: `tf.function` on TensorFlow, `jax.jit` on
    JAX, eager on PyTorch (measured faster than `torch.compile` for attacks on
    CPUs). Array arguments are traced; any other argument (a norm, a function,
    a flag) is fixed per compilation, as a Python value is in a `tf.function`.

    Args:
        fn: a function of tensors (and Python values), written in `keras.ops`.
        variables: returns the Keras variables that `fn` reads. JAX then passes
            their current values in at every call, instead of compiling the
            values at the first call in as constants.

    Returns:
        A callable with `fn`'s signature.
    """
    return _Compiled(fn, variables)


class _Compiled:
    """Compiles at the first call, so that modules may declare compiled steps at
    import; other attributes are the compiled function's (on TensorFlow,
    `experimental_get_tracing_count`)."""

    def __init__(self, fn: Callable, variables: Callable[[], list] | None):
        functools.update_wrapper(self, fn)
        self._fn, self._variables = fn, variables
        self._compiled: Callable | None = None

    def _get(self) -> Callable:
        if self._compiled is None:
            self._compiled = _primitives().compiled(self._fn, self._variables)
        return self._compiled

    def __call__(self, *args, **kwargs):
        return self._get()(*args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._get(), name)


def seed(seed_pair: Any) -> Any:
    """A stateless random seed (a pair of ints) as the backend's tensor."""
    return _primitives().seed_tensor(seed_pair)


def split_seed(seed: Any, count: int) -> list:
    """`count` independent seeds derived from `seed`."""
    return _primitives().split_seed(seed, count)


def fold_seed(seed: Any, index: Any) -> Any:
    """A seed derived from `seed` and the integer (or integer tensor) `index`, as
    a loop derives one seed per step; usable inside compiled steps."""
    return _primitives().fold_seed(seed, index)


def uniform(shape, seed: Any, minval, maxval, dtype) -> Any:
    """Uniform samples in [minval, maxval), the same for the same `seed`."""
    return _primitives().uniform(shape, seed, minval, maxval, dtype)


def normal(shape, seed: Any, dtype) -> Any:
    """Standard normal samples, the same for the same `seed`."""
    return _primitives().normal(shape, seed, dtype)


def descending_order(values: Any) -> Any:
    """The indices that sort each row of `values` (along the last axis) from
    largest to smallest, equal values in the order of their index."""
    return _primitives().descending_order(values)


def padded_rows(rows: Any) -> Any:
    """`rows` (a NumPy index array), with its last entry repeated up to the next
    power of two on JAX, which compiles a step once per batch shape: a set of
    examples that shrinks as they are broken then meets a few shapes, not one
    per size. Unchanged on the other backends. The caller keeps the first
    `len(rows)` results."""
    if name() != "jax" or len(rows) == 0:
        return rows
    size = 1 << (len(rows) - 1).bit_length()
    return np.concatenate([rows, np.repeat(rows[-1:], size - len(rows))])


def replica() -> tuple[Any, int]:
    """This replica's index and the number of replicas that run a training step
    in sync: TensorFlow's `tf.distribute` runs the step once per replica, each
    on its share of the batch. JAX (`keras.distribution`) and PyTorch run one
    program over the whole batch: (0, 1)."""
    return _primitives().replica()


def device() -> str:
    """The devices the backend computes on: "CPU" or "N GPU(s)"."""
    return _primitives().device()


def no_gradient():
    """A context in which no gradient is recorded (PyTorch's `no_grad`)."""
    return _primitives().no_gradient()


def to_numpy(tensor: Any) -> Any:
    """The tensor as a NumPy array (NumPy values pass through)."""
    return _primitives().to_numpy(tensor)
