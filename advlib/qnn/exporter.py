"""Export of a trained Keras binary network to the bit-packed engine format."""

from __future__ import annotations

from typing import NoReturn

import keras
import numpy as np
from keras import ops

from advlib import backend
from advlib.qnn.engine import spec as spec_io
from advlib.qnn.engine.packing import pack_signs
from advlib.qnn.layers import QuantConv2D, QuantDense, same_padding
from advlib.qnn.quantizers import SteppedInput, SteSign, StochasticBinarization, Uint8Input

_SKIPPED = (keras.layers.InputLayer, keras.layers.Dropout)
_INT_MIN, _INT_MAX = np.iinfo(np.int64).min, np.iinfo(np.int64).max


def _fail(layer, why) -> NoReturn:
    raise ValueError(
        f"layer {layer.name!r} ({type(layer).__name__}) cannot be exported to "
        f"the binary engine: {why}"
    )


def _binary_kernel(layer) -> bool:
    return isinstance(layer.kernel_quantizer, (SteSign, StochasticBinarization))


def _input_kind(layer, first: bool) -> str:
    quantizer = layer.input_quantizer
    if first and isinstance(quantizer, Uint8Input):
        return "uint8"
    if not first and isinstance(quantizer, SteSign):
        return "binary"
    wanted = "Uint8Input (8-bit inputs)" if first else "SteSign (binary activations)"
    _fail(
        layer,
        f"its input quantizer is {type(quantizer).__name__ if quantizer else None}; "
        f"the engine needs {wanted} here.",
    )


def _decision_function(layer, batchnorm, rank: int):
    """acc -> (the sign the model gives acc), evaluated by the model's own layers."""
    units = int(layer.kernel.shape[-1])
    shape = [1] * (rank - 1) + [units]

    def decide(values):
        outputs = ops.reshape(values, shape)
        if layer.use_bias:
            outputs = ops.add(outputs, layer.bias)
        if batchnorm is not None:
            outputs = batchnorm(outputs, training=False)
        return ops.reshape(outputs >= 0, [units])

    step = backend.compiled(decide)
    return lambda values: backend.to_numpy(step(ops.convert_to_tensor(values.astype(np.float32))))


def fold_thresholds(
    layer: keras.layers.Layer, batchnorm: keras.layers.BatchNormalization, max_abs: int, rank: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer thresholds equivalent to BatchNorm (+ bias) followed by sign.

    The model's float32 decision is monotone in the integer accumulator, so a
    bisection over [-max_abs - 1, max_abs + 1], evaluated by the model's own
    layers, finds per channel where it switches: exactly, rounding included.

    Returns:
        (threshold int64, flip bool): +1 iff acc >= threshold, or acc <= threshold
        where flip (a negative BatchNorm scale).
    """
    decide = _decision_function(layer, batchnorm, rank)
    units = int(layer.kernel.shape[-1])
    low = np.full(units, -max_abs - 1, np.int64)
    high = np.full(units, max_abs + 1, np.int64)
    at_low, at_high = decide(low), decide(high)
    while np.any(high - low > 1):
        middle = (low + high) // 2
        same_as_low = decide(middle) == at_low
        low = np.where(same_as_low, middle, low)
        high = np.where(same_as_low, high, middle)
    increasing = ~at_low & at_high
    decreasing = at_low & ~at_high
    threshold = np.where(
        increasing, high, np.where(decreasing, low, np.where(at_low, _INT_MIN, _INT_MAX))
    )
    return threshold.astype(np.int64), decreasing


def _affine(layer, batchnorm):
    """The last layer's logits = acc * scale + shift, in float32."""
    units = int(layer.kernel.shape[-1])
    bias = (
        ops.convert_to_numpy(layer.bias).astype(np.float32)
        if layer.use_bias
        else np.zeros(units, np.float32)
    )
    if batchnorm is None:
        return np.ones(units, np.float32), bias
    gamma = ops.convert_to_numpy(batchnorm.gamma) if batchnorm.scale else np.ones(units, np.float32)
    beta = ops.convert_to_numpy(batchnorm.beta) if batchnorm.center else np.zeros(units, np.float32)
    # in float64, rounded once: each backend's own rsqrt may differ in the last bit,
    # and the engine file must not depend on the backend that wrote it
    variance = ops.convert_to_numpy(batchnorm.moving_variance).astype(np.float64)
    inv = (gamma / np.sqrt(variance + batchnorm.epsilon)).astype(np.float32)
    shift = beta - ops.convert_to_numpy(batchnorm.moving_mean) * inv
    return inv.astype(np.float32), (shift + bias * inv).astype(np.float32)


def _pack_kernel(layer, variable) -> np.ndarray:
    """A kernel-shaped variable's signs (bit 1 where >= 0), packed as the engine's weights."""
    kernel = ops.convert_to_numpy(variable)
    if isinstance(layer, QuantDense):
        return pack_signs(kernel.T)
    filters = kernel.shape[-1]
    packed = pack_signs(np.transpose(kernel, (3, 0, 1, 2)))  # (F, kh, kw, words(C))
    return packed.reshape(filters, -1)


def _sequence(model) -> list[keras.layers.Layer]:
    layers = [layer for layer in model.layers if not isinstance(layer, _SKIPPED)]
    if not layers:
        raise ValueError("the model has no layers to export.")
    return layers


def _check_no_activation(layer) -> None:
    if layer.activation is not None and layer.activation.__name__ != "linear":
        _fail(layer, "the engine folds only BatchNorm after a layer, not an activation.")


def _window(shape, size, strides, padding) -> dict:
    """The spec fields of a sliding window (conv or pooling) over `shape`."""
    pads = (
        [same_padding(shape[a], size[a], strides[a], 1) for a in (0, 1)]
        if padding == "same"
        else [(0, 0), (0, 0)]
    )
    return dict(strides=list(strides), pads=[list(p) for p in pads])


def _pool_entry(layer, shape, previous: dict | None) -> dict:
    if previous is None or previous.get("output") == "logits" or previous["type"] == "flatten":
        _fail(layer, "max-pooling must follow a binary layer's BatchNorm.")
    return dict(
        type="maxpool",
        pool=list(layer.pool_size),
        **_window(shape, layer.pool_size, layer.strides, layer.padding),
    )


def _compute_entry(layer, shape, first: bool) -> dict:
    """The spec fields of a QuantDense or QuantConv2D layer (out_shape's width only)."""
    if not _binary_kernel(layer):
        _fail(layer, "its kernel quantizer is not binary (SteSign).")
    kind = _input_kind(layer, first)
    _check_no_activation(layer)
    units = int(layer.kernel.shape[-1])
    # the grid of a SteppedInput: the engine maps the 8-bit levels through its table
    steps = {"input_levels": True} if isinstance(layer.input_quantizer, SteppedInput) else {}
    if isinstance(layer, QuantDense):
        if len(shape) != 1:
            _fail(layer, f"a dense layer needs flat inputs, got shape {shape}.")
        return dict(type="dense", input=kind, out_shape=[units], **steps)
    if tuple(layer.dilation_rate) != (1, 1):
        _fail(layer, "dilated convolutions are not supported.")
    if kind == "binary" and layer.padding == "same" and layer.pad_values == 0:
        _fail(
            layer,
            "binary 'same' convolutions must pad with +1 or -1 (pad_values), since "
            "packed bits have no zero.",
        )
    return dict(
        type="conv",
        input=kind,
        out_shape=[units],
        kernel=list(layer.kernel_size),
        pad_value=float(layer.pad_values),
        **_window(shape, layer.kernel_size, layer.strides, layer.padding),
        **steps,
    )


def _accumulator_length(entry: dict) -> int:
    """How many products one accumulator sums."""
    if entry["type"] == "dense":
        return entry["in_shape"][0]
    return entry["kernel"][0] * entry["kernel"][1] * entry["in_shape"][-1]


def _layer_arrays(layer, batchnorm, entry: dict, index: int, last: bool) -> dict:
    """The packed weights, and the thresholds or (last layer) the affine map."""
    length = _accumulator_length(entry)
    max_abs = 255 * length if entry["input"] == "uint8" else length
    if max_abs >= 2**24:
        _fail(layer, f"accumulators up to {max_abs} exceed float32's exact integers.")
    name = f"layer{index}"
    arrays = {f"{name}/weights": _pack_kernel(layer, layer.kernel)}
    if entry.get("mask"):  # a weight takes part where its mask is >= 0, as ste_step gates
        arrays[f"{name}/mask"] = _pack_kernel(layer, layer.mask)
    if entry.get("input_levels"):
        arrays[f"{name}/levels"] = layer.input_quantizer.table()
    if last:
        arrays[f"{name}/scale"], arrays[f"{name}/shift"] = _affine(layer, batchnorm)
    else:
        rank = 2 if isinstance(layer, QuantDense) else 4
        arrays[f"{name}/threshold"], arrays[f"{name}/flip"] = fold_thresholds(
            layer, batchnorm, max_abs, rank
        )
    return arrays


def export(model: keras.Model, path: str | None = None) -> dict:
    """Writes a Keras binary network as a self-describing `.npz` for `BinaryEngine`.

    Supported: a chain of `QuantConv2D` / `QuantDense` layers with binary
    kernels, each optionally followed by BatchNormalization, MaxPooling2D
    (after the BatchNorm) and Flatten. The first compute layer takes
    `Uint8Input` or `SteppedInput` inputs; the others binary (`SteSign`) inputs.
    Hidden layers with `kernel_mask` are written with their masks (ternary
    weights). BatchNorm and
    sign fold into integer thresholds; the last layer keeps a float affine
    transform and gives the logits.

    Args:
        model: the trained Keras model.
        path: where to write; None only builds the network.

    Returns:
        {"spec": ..., "arrays": ...}, as written.

    Raises:
        ValueError: naming the first layer the engine cannot represent exactly.
    """
    layers = _sequence(model)
    compute = [i for i, layer in enumerate(layers) if isinstance(layer, (QuantDense, QuantConv2D))]
    if not compute:
        raise ValueError("the model has no QuantDense or QuantConv2D layer to export.")
    shape = [int(d) for d in model.input_shape[1:]]
    spec_layers: list[dict] = []
    arrays: dict[str, np.ndarray] = {}
    i = 0
    while i < len(layers):
        layer, index = layers[i], len(spec_layers)
        entry = {"name": layer.name, "in_shape": list(shape)}
        if isinstance(layer, keras.layers.Flatten):
            entry["type"] = "flatten"
        elif isinstance(layer, keras.layers.MaxPooling2D):
            entry.update(_pool_entry(layer, shape, spec_layers[-1] if spec_layers else None))
        elif isinstance(layer, (QuantDense, QuantConv2D)):
            first, last = i == compute[0], i == compute[-1]
            entry.update(_compute_entry(layer, shape, first))
            batchnorm = None
            if i + 1 < len(layers) and isinstance(layers[i + 1], keras.layers.BatchNormalization):
                batchnorm = layers[i + 1]
                i += 1
            entry.update(
                output="logits" if last else "bits", keras_output=(batchnorm or layer).name
            )
            if layer.mask is not None:
                if last:
                    _fail(
                        layer,
                        "the logits layer must keep dense +-1 weights (kernel_mask=False): "
                        "the verifier's last step counts agreements with them.",
                    )
                entry["mask"] = True
            arrays.update(_layer_arrays(layer, batchnorm, entry, index, last))
        elif i > compute[-1]:
            _fail(
                layer,
                "the engine's output is the last binary layer's logits (after its "
                "BatchNorm); remove the layers after it.",
            )
        else:
            _fail(
                layer,
                "not a layer type the engine supports (QuantDense, QuantConv2D, "
                "BatchNormalization, MaxPooling2D, Flatten, Dropout).",
            )
        entry["out_shape"] = spec_io.output_shape(entry)
        spec_layers.append(entry)
        shape = entry["out_shape"]
        i += 1
    spec = {
        "format": spec_io.FORMAT,
        "version": spec_io.version_for(spec_layers),
        "word_bits": 32,
        "input_shape": [int(d) for d in model.input_shape[1:]],
        "layers": spec_layers,
    }
    if path is not None:
        spec_io.save(path, spec, arrays)
    else:
        spec_io.validate(spec, arrays)
    return {"spec": spec, "arrays": arrays}
