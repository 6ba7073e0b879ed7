"""The one place that knows which Keras backend runs.

Keras 3 runs a model on TensorFlow, JAX or PyTorch, chosen by the
`KERAS_BACKEND` environment variable or the `backend` key of `keras.json`.
advlib's models, attacks, training and harness run on TensorFlow in this
release; JAX and PyTorch are coming, and until then they are refused with one
clear error instead of a failure deep inside TensorFlow.

Example:
    >>> from advlib import backend
    >>> backend.name()
    'tensorflow'
"""

from __future__ import annotations

import importlib.util
import json
import os

# the backends advlib knows, with the module each needs and the extra that installs it
BACKENDS: dict[str, tuple[str, str]] = {
    "tensorflow": ("tensorflow", "advlib"),
    "jax": ("jax", "advlib[jax]"),
    "torch": ("torch", "advlib[torch]"),
}
# the backends that advlib's models and attacks run on today
SUPPORTED = ("tensorflow",)

__all__ = ["BACKENDS", "SUPPORTED", "BackendError", "chosen", "name", "require_installed"]


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


def require_supported(what: str) -> None:
    """Raises `BackendError` unless advlib's `what` runs on Keras's backend.

    Args:
        what: the part of advlib that needs the backend, for the message.
    """
    backend = name()
    if backend not in SUPPORTED:
        raise BackendError(
            f"{what} run on Keras's {' or '.join(SUPPORTED)} backend in this release; "
            f"Keras runs on {backend!r} here (KERAS_BACKEND or keras.json). "
            "Set KERAS_BACKEND=tensorflow before Keras is imported."
        )
