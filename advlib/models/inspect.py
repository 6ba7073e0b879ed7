"""Measurements of a model's inside: what its layers see, where its gradients
vanish, and how it answers repeated calls.

The adaptive wrappers (`bpda`), the harness's adaptive variants and its
gradient-masking probes all read a model through these functions.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from advlib import backend
from advlib.losses import margin_loss


def layer_inputs(model, layers, x) -> list[np.ndarray]:
    """The values that each of `layers` receives when `model` runs on `x`."""
    if isinstance(model, keras.Sequential):
        seen, state = {}, ops.convert_to_tensor(x)
        for layer in model.layers:
            seen[layer.name] = state
            state = layer(state, training=False)
        return [backend.to_numpy(seen[layer.name]) for layer in layers]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    values = probe(x, training=False)
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return [backend.to_numpy(value) for value in values]


def find_masking_layers(model: keras.Model, x: np.ndarray) -> list[str]:
    """Names of the layers whose input gradient is zero everywhere on `x`.

    Only weightless layers that keep their input's shape are candidates
    (input quantization, rounding, thresholding): those can be replaced by the
    identity backward without changing the forward pass (Athalye et al. 2018).

    Args:
        model: a Sequential or functional `keras.Model`.
        x: a batch of inputs, at which the gradients are measured.

    Returns:
        The names, in the model's layer order; empty if none is found or the
        model cannot be taken apart.
    """
    if not isinstance(model, keras.Model) or not (
        isinstance(model, keras.Sequential) or hasattr(model, "_inbound_nodes")
    ):
        return []
    candidates = [
        layer
        for layer in model.layers
        if not layer.weights and not isinstance(layer, keras.layers.InputLayer)
    ]
    try:
        inputs = layer_inputs(model, candidates, x)
    except (ValueError, TypeError, AttributeError):
        return []
    found = []
    for layer, value in zip(candidates, inputs):
        value = ops.convert_to_tensor(value, "float32")
        if tuple(layer(value, training=False).shape) != tuple(value.shape):
            continue
        weights = ops.convert_to_tensor(
            np.random.default_rng(0).normal(size=value.shape), "float32"
        )

        def objective(value, layer=layer, weights=weights):
            output = ops.cast(layer(value, training=False), "float32")
            return ops.sum(ops.reshape(output * weights, (value.shape[0], -1)), axis=1), None

        _, grad, _ = backend.value_and_gradient(objective, value)
        if not np.any(backend.to_numpy(grad)):
            found.append(layer.name)
    return found


def logit_spread(model, x, calls: int = 3) -> dict:
    """The largest difference between the logits of repeated calls: 0 if deterministic."""
    outputs = [backend.to_numpy(model.predict_logits(x)) for _ in range(calls)]
    difference = max(float(np.max(np.abs(c - outputs[0]), initial=0.0)) for c in outputs[1:])
    return {"calls": len(outputs), "max_abs_difference": difference}


def gradient_health(model, x, y) -> dict:
    """How many examples have a zero or a non-finite input gradient of the margin loss."""
    _, grad, _ = model.loss_gradient(
        ops.convert_to_tensor(x), ops.convert_to_tensor(y), margin_loss
    )
    flat = backend.to_numpy(grad).reshape(len(x), -1)
    nonfinite = ~np.isfinite(flat).all(axis=1)
    zero = ~nonfinite & ~np.any(flat, axis=1)
    return {
        "zero": int(zero.sum()),
        "nonfinite": int(nonfinite.sum()),
        "n": len(x),
        "loss": "margin (logit difference)",
    }


def quantized_units(model) -> list:
    """(layer name, quantizer) for each quantizer of a layer's input in a Keras QNN."""
    from advlib.qnn.quantizers import KBitQuantizer, SteSign

    keras_model = getattr(model, "model", None)
    found = []
    for layer in getattr(keras_model, "layers", []):
        quantizer = (
            layer
            if isinstance(layer, (SteSign, KBitQuantizer))
            else getattr(layer, "input_quantizer", None)
        )
        if isinstance(quantizer, (SteSign, KBitQuantizer)):
            found.append((layer, quantizer))
    return found


def ste_window(model, x) -> dict | None:
    """The share of quantized units whose straight-through window is closed on `x`."""
    from advlib.qnn.quantizers import SteSign

    units = quantized_units(model)
    if not units:
        return None
    try:
        values = layer_inputs(model.model, [layer for layer, _ in units], x)
    except (ValueError, TypeError, AttributeError) as error:
        return {"error": f"{type(error).__name__}: {error}"}
    layers, closed_total, size_total = [], 0, 0
    for (layer, quantizer), value in zip(units, values):
        value = np.asarray(value)
        if isinstance(quantizer, SteSign):
            closed = np.abs(value) > 1
        else:
            closed = (value < quantizer.clip_min) | (value > quantizer.clip_max)
        layers.append({"layer": layer.name, "closed": float(closed.mean())})
        closed_total += int(closed.sum())
        size_total += closed.size
    return {
        "layers": layers,
        "closed": closed_total / max(size_total, 1),
        "surrogate": getattr(model, "surrogate", "ste"),
    }
