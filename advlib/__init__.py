"""advlib: adversarial robustness for TensorFlow/Keras models.

Submodules are imported on first use so that parts which do not need
TensorFlow (the binary inference engine) stay importable without it.
"""

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("attacks", "bench", "certify", "datasets", "models", "qnn", "training")


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"advlib.{name}")
    raise AttributeError(f"module 'advlib' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_SUBMODULES))
