"""What a run evaluates: the protocol's examples, and checks that the model fits
them and answers with finite logits."""

from __future__ import annotations

import numpy as np


def load_examples(protocol: dict) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's examples: the first `n` of its data set's split, as (x, y)."""
    from advlib.datasets import load

    spec = protocol["dataset"]
    train, test = load(spec["name"])
    x, y = test if spec["split"] == "test" else train
    if spec["n"] > len(x):
        raise ValueError(
            f"protocol {protocol['name']!r} asks for {spec['n']} examples of "
            f"{spec['name']} ({spec['split']}), which has {len(x)}."
        )
    return x[: spec["n"]], y[: spec["n"]]


def check_model_fits(wrapped, x: np.ndarray, y: np.ndarray, protocol: dict) -> None:
    """Refuses a model whose input shape or number of classes does not fit the
    protocol's data, with a ValueError that says which."""
    expected = tuple(x.shape[1:])
    keras_model = getattr(wrapped, "model", None)
    declared = getattr(keras_model, "input_shape", None)
    if (
        isinstance(declared, tuple)
        and len(declared) == len(expected) + 1
        and any(d is not None and d != e for d, e in zip(declared[1:], expected))
    ):
        raise ValueError(
            f"the model expects inputs of shape {declared}, but protocol "
            f"{protocol['name']!r} evaluates {protocol['dataset']['name']} images "
            f"of shape (n,) + {expected}."
        )
    classes = wrapped.check_output(x[:1])
    if classes <= int(y.max()):
        raise ValueError(
            f"the model has {classes} classes, but {protocol['dataset']['name']} "
            f"has labels up to {int(y.max())}."
        )


def check_finite_logits(wrapped, x: np.ndarray, offset: int = 0) -> np.ndarray:
    """The model's logits on clean inputs; refuses a model that gives NaN or Inf,
    whose argmax (class 0) would count as a prediction."""
    from advlib import backend

    logits = backend.to_numpy(wrapped.predict_logits(x))
    bad = ~np.isfinite(logits).all(axis=1)
    if bad.any():
        first = offset + int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"the model returns non-finite logits (NaN or Inf) on {int(bad.sum())} "
            f"of {len(x)} clean examples (the first is example {first}); its "
            "predictions are meaningless there, so it cannot be evaluated."
        )
    return logits
