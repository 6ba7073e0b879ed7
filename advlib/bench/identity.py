"""A run's identity: what decides its numbers, hashed so that a resumed run, a
shard or a merge can prove it belongs to the same run."""

from __future__ import annotations

import hashlib
import importlib
import json
import platform
from collections.abc import Iterable
from typing import Any

import numpy as np

import advlib
from advlib import backend

# what the identity of a run saved before advlib recorded the backend leaves out
LEGACY_IDENTITY = {"backend": "tensorflow"}
IDENTITY_PROBE = 100  # examples whose predicted classes join a model's identity


def fingerprint_arrays(arrays: Iterable[np.ndarray]) -> str:
    """SHA-256 of arrays' dtypes, shapes and bytes, in order."""
    digest = hashlib.sha256()
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(str(array.dtype).encode() + str(array.shape).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def engine_fingerprint(engine) -> str:
    """SHA-256 of an exported binary network: its spec and every array."""
    names = sorted(engine.arrays)
    return _sha(
        json.dumps(engine.spec, sort_keys=True)
        + fingerprint_arrays([engine.arrays[name] for name in names])
        + ",".join(names)
    )


def _model_settings(wrapped) -> dict[str, Any]:
    """Everything of a wrapper that decides its predictions and gradients."""
    kind = type(wrapped)
    parts: dict[str, Any] = {"wrapper": f"{kind.__module__}.{kind.__qualname__}"}
    keras_model = getattr(wrapped, "model", None)
    if keras_model is not None and hasattr(keras_model, "weights"):
        try:
            config = json.dumps(keras_model.get_config(), sort_keys=True, default=repr)
        except (NotImplementedError, TypeError):
            config = type(keras_model).__qualname__
        parts["architecture"] = _sha(config)
        parts["weights"] = fingerprint_arrays(
            [backend.to_numpy(w.value) for w in keras_model.weights]
        )
    for name in ("output_kind", "surrogate", "temperature", "output_layer", "samples", "bypassed"):
        if hasattr(wrapped, name):
            parts[name] = repr(getattr(wrapped, name))
    function = getattr(wrapped, "fn", None)
    if function is not None:
        parts["function"] = (
            f"{getattr(function, '__module__', '?')}."
            f"{getattr(function, '__qualname__', type(function).__name__)}"
        )
    if getattr(wrapped, "engine", None) is not None:
        parts["engine"] = engine_fingerprint(wrapped.engine)
    if getattr(wrapped, "inner", None) is not None:
        parts["inner"] = _model_settings(wrapped.inner)
    return parts


def model_identity(wrapped, x_probe: np.ndarray) -> dict[str, Any]:
    """The model's part of a run's identity: its wrapper and settings, architecture,
    weights, engine, and its predicted classes on the first examples (which tell
    apart even models without weights). `fingerprint` hashes all of it."""
    parts = _model_settings(wrapped)
    logits = backend.to_numpy(wrapped.predict_logits(x_probe))
    if np.array_equal(logits, backend.to_numpy(wrapped.predict_logits(x_probe)), equal_nan=True):
        parts["predictions"] = fingerprint_arrays([logits.argmax(axis=1).astype(np.int64)])
    else:  # a randomized model (noise, EOT): its predictions cannot identify it
        parts["predictions"] = "randomized"
    return dict(parts, fingerprint=_sha(json.dumps(parts, sort_keys=True)))


def run_identity(
    protocol_hash: str,
    model_fingerprint: str,
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    shard: tuple[int, int] | None,
    variants: dict | None = None,
    transfer_fingerprint: str | None = None,
    verification: dict | None = None,
) -> dict[str, Any]:
    """Everything that decides a run's numbers; a resumed run must match it key by key."""
    return {
        "backend": backend.name(),
        "protocol_hash": protocol_hash,
        "model_fingerprint": model_fingerprint,
        "data_fingerprint": fingerprint_arrays([x, y]),
        "batch_size": batch_size,
        "n": len(x),
        "shard": None if shard is None else f"{shard[0]}/{shard[1]}",
        "adaptive": None if variants is None else list(variants),
        "transfer_from": transfer_fingerprint,
        "verify": verification,
    }


def environment() -> dict[str, str]:
    """The versions and device a run used, for its report."""
    import keras

    name = backend.name()
    framework = importlib.import_module(backend.BACKENDS.get(name, (name,))[0])
    return {
        "advlib": advlib.__version__,
        "backend": name,
        name: getattr(framework, "__version__", "unknown"),
        "keras": keras.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "device": backend.device(),
    }
