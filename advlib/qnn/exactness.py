"""Checks that the bit-packed engine reproduces a Keras binary network."""

from __future__ import annotations

import keras
import numpy as np

from advlib.qnn.engine import BinaryEngine


def _keras_hidden_names(spec) -> list[str]:
    names: list[str] = []
    for layer in spec["layers"]:
        if layer["type"] == "maxpool":
            names[-1] = layer["name"]
        elif layer.get("output") == "bits":
            names.append(layer["keras_output"])
    return names


def check_exactness(
    model: keras.Model, engine: BinaryEngine, x: np.ndarray, batch_size: int = 500
) -> dict:
    """Compares the engine with the Keras model in inference mode on `x`.

    Args:
        model: the Keras model that `engine` was exported from.
        engine: the exported network.
        x: inputs in [0, 1].
        batch_size: examples per Keras call.

    Returns:
        {"hidden_mismatches": [bits differing per hidden layer],
        "hidden_bits": [bits compared per layer], "max_logit_rel_error",
        "prediction_agreement", "exact": all hidden bits equal and the same
        predicted classes}.
    """
    names = _keras_hidden_names(engine.spec)
    probe = keras.Model(
        model.inputs, [model.get_layer(n).output for n in names] + [model.outputs[0]]
    )
    mismatches = np.zeros(len(names), np.int64)
    counts = np.zeros(len(names), np.int64)
    worst, agree = 0.0, 0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        outputs = probe.predict(batch, verbose=0, batch_size=batch_size)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        keras_logits = outputs[-1]
        logits, hidden = engine.forward(batch)
        for i, (ours, theirs) in enumerate(zip(hidden, outputs[:-1])):
            mismatches[i] += int(np.sum(ours != (theirs >= 0)))
            counts[i] += ours.size
        scale = np.maximum(np.abs(keras_logits), 1.0)
        worst = max(worst, float(np.max(np.abs(logits - keras_logits) / scale)))
        agree += int(np.sum(logits.argmax(1) == keras_logits.argmax(1)))
    return {
        "hidden_mismatches": mismatches.tolist(),
        "hidden_bits": counts.tolist(),
        "max_logit_rel_error": worst,
        "prediction_agreement": agree / max(len(x), 1),
        "exact": bool(mismatches.sum() == 0 and agree == len(x)),
    }
