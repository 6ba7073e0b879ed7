"""Builders for the reference quantized architectures of the QNN paper."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from advlib import _checks
from advlib.qnn.layers import QuantConv2D, QuantDense
from advlib.qnn.quantizers import KBitQuantizer, SteppedInput, SteSign, Uint8Input, WeightClip

# BinaryNet's batch normalisation settings
_BN = dict(momentum=0.9, epsilon=1e-4)


def _activation(bits: int):
    if bits == 1:
        return SteSign()
    if bits == 32:
        return None
    return KBitQuantizer(bits)


def _binary_kwargs(activation_bits: int, binary: bool):
    if not binary:
        return dict(
            input_quantizer=_activation(activation_bits) if activation_bits != 32 else None,
            use_bias=False,
        )
    return dict(
        input_quantizer=_activation(activation_bits),
        kernel_quantizer=SteSign(),
        kernel_constraint=WeightClip(1.0),
        use_bias=False,
    )


def _check_bits(activation_bits):
    # 32: real-valued activations
    _checks.check_choice("activation_bits", activation_bits, (1, 2, 3, 4, 5, 6, 7, 8, 32))


def _first_quantizer(binary: bool, input_step: float | None):
    if not binary:
        return None
    return Uint8Input() if input_step is None else SteppedInput(input_step)


def _convolutions(
    input_shape, filters, kernel, strides, activation_bits, binary, input_step, pool, masks=None
):
    """Input, then per width a "same" QuantConv2D and BatchNorm (the first reading
    the quantized inputs), with max-pooling after every second one if `pool`;
    `masks`: the mask arguments of every layer."""
    if not binary:
        activation_bits = 32
    layers = [keras.Input(tuple(input_shape))]
    for index, width in enumerate(filters):
        kwargs = {**_binary_kwargs(activation_bits, binary), **(masks or {})}
        if index == 0:
            kwargs["input_quantizer"] = _first_quantizer(binary, input_step)
        elif not binary:
            layers.append(keras.layers.Activation("relu"))
        # the 8-bit first layer pads with zeros; binary inputs have no zero
        pad = 0.0 if index == 0 or not binary else 1.0
        layers += [
            QuantConv2D(width, kernel, strides=strides, padding="same", pad_values=pad, **kwargs),
            keras.layers.BatchNormalization(**_BN),
        ]
        if pool and index % 2 == 1:
            layers.append(keras.layers.MaxPooling2D(pool))
    return layers


def _dense_head(widths, activation_bits, binary, masks=None):
    """Flatten, then per width a QuantDense and BatchNorm; the last gives the logits.
    `masks`: the mask arguments of the hidden layers (the logits layer keeps +-1)."""
    if not binary:
        activation_bits = 32
    layers: list = [keras.layers.Flatten()]
    for index, units in enumerate(widths):
        if not binary:
            layers.append(keras.layers.Activation("relu"))
        hidden = masks if index < len(widths) - 1 else None
        layers += [
            QuantDense(units, **_binary_kwargs(activation_bits, binary), **(hidden or {})),
            keras.layers.BatchNormalization(**_BN),
        ]
    return layers


def binary_mlp(
    input_shape: Sequence[int] = (28, 28, 1),
    nb_classes: int = 10,
    width: int = 4096,
    depth: int = 3,
    activation_bits: int = 1,
    binary: bool = True,
    input_step: float | None = None,
    name: str = "binary_mlp",
) -> keras.Model:
    """The BinaryNet MLP: `depth` hidden binary layers of `width` units.

    Each layer is QuantDense -> BatchNorm; the next layer binarizes its input.
    The first layer sees 8-bit inputs (`Uint8Input`) with binary weights; the
    model outputs logits (the last BatchNorm's output).

    Args:
        width: hidden units (4096 in the paper).
        activation_bits: 1 for binary activations, 2-8 for k-bit ones.
        binary: False builds the float twin (same layers, no quantizers, with
            ReLU activations in place of the quantized ones).
        input_step: quantize the inputs on this grid (`SteppedInput`, EEV's
            input quantization) instead of to 8 bits; None: `Uint8Input`.
    """
    _check_bits(activation_bits)
    if not binary:
        activation_bits = 32
    layers = [keras.Input(tuple(input_shape)), keras.layers.Flatten()]
    for index in range(depth + 1):
        units = width if index < depth else nb_classes
        kwargs = _binary_kwargs(activation_bits, binary)
        if index == 0:
            kwargs["input_quantizer"] = _first_quantizer(binary, input_step)
        elif not binary:
            layers.append(keras.layers.Activation("relu"))
        layers += [QuantDense(units, **kwargs), keras.layers.BatchNormalization(**_BN)]
    return keras.Sequential(layers, name=name)


def binary_cnn(
    input_shape: Sequence[int] = (28, 28, 1),
    nb_classes: int = 10,
    filters: Sequence[int] = (64, 64, 128, 128),
    dense: int = 512,
    activation_bits: int = 1,
    binary: bool = True,
    input_step: float | None = None,
    name: str = "binary_cnn",
) -> keras.Model:
    """A binary VGG-style CNN for 28x28 inputs.

    conv(f0) conv(f1) pool conv(f2) conv(f3) pool dense(dense) dense(classes),
    each followed by BatchNorm. Pooling follows BatchNorm, so the packed engine
    pools binary values with a bitwise OR. "same" convolutions pad binary
    inputs with +1 (`pad_values=1.0`) and the 8-bit first layer with 0.

    Args:
        filters: the four convolutions' widths.
        dense: the hidden dense width.
        activation_bits: as in `binary_mlp`.
        binary: as in `binary_mlp`.
        input_step: as in `binary_mlp`.
    """
    _check_bits(activation_bits)
    layers = _convolutions(input_shape, filters, 3, 1, activation_bits, binary, input_step, pool=2)
    return keras.Sequential(
        layers + _dense_head((dense, nb_classes), activation_bits, binary), name=name
    )


def conv_small(
    input_shape: Sequence[int] = (28, 28, 1),
    nb_classes: int = 10,
    filters: Sequence[int] = (16, 32),
    dense: int = 100,
    input_step: float | None = 0.61,
    kernel_mask: bool = False,
    mask_decay: float = 0.0,
    binary: bool = True,
    name: str = "conv_small",
) -> keras.Model:
    """EEV's "conv-small" binary network (Jia & Rinard 2020, after Wong & Kolter's
    small MNIST network), built to be verified exactly.

    Input quantization, then conv(16, 4x4, stride 2) conv(32, 4x4, stride 2)
    dense(100) dense(classes), each followed by BatchNorm; no pooling. "same"
    padding gives EEV's padding of 1 on 28x28 inputs (28 -> 14 -> 7) and on
    the 8x8 digits (8 -> 4 -> 2); binary layers pad with +1.

    Args:
        filters: the two convolutions' widths.
        dense: the hidden dense width.
        input_step: the input grid (`SteppedInput`); EEV used 0.61 on MNIST
            at eps 0.1 and 0.3. None: 8-bit inputs (`Uint8Input`).
        kernel_mask: ternary weights in the hidden layers, each with a learned
            mask (EEV's BinMask; `QuantDense`); the logits layer keeps +-1.
        mask_decay: the masks' penalty per kept weight (`MaskDecay`).
        binary: False builds the float twin, as in `binary_mlp`.

    Example:
        >>> model = conv_small((28, 28, 1), input_step=0.61)
        >>> qnn.export(model, "conv_small.npz")   # after training
    """
    masks = dict(kernel_mask=True, mask_decay=mask_decay) if kernel_mask and binary else None
    layers = _convolutions(input_shape, filters, 4, 2, 1, binary, input_step, None, masks)
    head = _dense_head((dense, nb_classes), 1, binary, masks)
    return keras.Sequential(layers + head, name=name)
