"""advlib: adversarial robustness for Keras 3 models.

Submodules are imported on first use so that parts which do not need
TensorFlow (the binary inference engine) stay importable without it.
"""

import importlib

from advlib import backend

__version__ = "0.1.0"

# a chosen JAX or PyTorch that is not installed gets its pip extra named here, before
# `import keras` fails with a bare "No module named ..."; a missing TensorFlow stays
# allowed, for the binary engine, which runs without it
if backend.chosen() != "tensorflow":
    backend.require_installed()

_SUBMODULES = ("attacks", "bench", "certify", "datasets", "models", "qnn", "training")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"advlib.{name}")
    raise AttributeError(f"module 'advlib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
