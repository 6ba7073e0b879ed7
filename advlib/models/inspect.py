"""Measurements of a model's inside: what its layers see, where its gradients
vanish, and how it answers repeated calls.

The adaptive wrappers (`bpda`), the harness's adaptive variants and its
gradient-masking probes all read a model through these functions.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from advlib.losses import margin_loss


def layer_inputs(model, layers, x) -> list[np.ndarray]:
    """The values that each of `layers` receives when `model` runs on `x`."""
    if isinstance(model, keras.Sequential):
        seen, state = {}, tf.convert_to_tensor(x)
        for layer in model.layers:
            seen[layer.name] = state
            state = layer(state, training=False)
        return [seen[layer.name] for layer in layers]
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [layer.input for layer in layers])
    values = probe(x, training=False)
    return list(values) if isinstance(values, (list, tuple)) else [values]


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
        value = tf.cast(value, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(value)
            output = layer(value, training=False)
            if output.shape != value.shape:
                continue
            weights = tf.random.stateless_normal(tf.shape(output), [0, 1])
            objective = tf.reduce_sum(tf.cast(output, tf.float32) * weights)
        grad = tape.gradient(objective, value)
        if grad is None or not np.any(grad.numpy()):
            found.append(layer.name)
    return found


def logit_spread(model, x, calls: int = 3) -> dict:
    """The largest difference between the logits of repeated calls: 0 if deterministic."""
    outputs = [model.predict_logits(x).numpy() for _ in range(calls)]
    difference = max(float(np.max(np.abs(c - outputs[0]), initial=0.0)) for c in outputs[1:])
    return {"calls": len(outputs), "max_abs_difference": difference}


def gradient_health(model, x, y) -> dict:
    """How many examples have a zero or a non-finite input gradient of the margin loss."""
    _, grad, _ = model.loss_gradient(tf.convert_to_tensor(x), tf.constant(y), margin_loss)
    flat = grad.numpy().reshape(len(x), -1)
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
