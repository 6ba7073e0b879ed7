"""Quantized Keras 3 layers: Dense and Conv2D with quantized inputs and kernels."""

from __future__ import annotations

from typing import Any

import keras
from keras import ops

from advlib import _checks
from advlib.qnn import quantizers

_PACKAGE = "advlib"
# a quantizer, its registered name (Larq's spellings too), or None for none
QuantizerSpec = str | quantizers.Quantizer | None


class _QuantizedMixin:
    """The quantizer bookkeeping shared by `QuantDense` and `QuantConv2D`."""

    # set by the Keras layer that the mixin joins
    kernel: keras.Variable
    bias: keras.Variable | None
    use_bias: bool
    activation: Any
    input_quantizer: Any
    kernel_quantizer: Any
    add_weight: Any

    def _set_quantizers(self, input_quantizer, kernel_quantizer, kernel_mask, mask_decay):
        self.input_quantizer = quantizers.get(input_quantizer)
        self.kernel_quantizer = quantizers.get(kernel_quantizer)
        if not isinstance(kernel_mask, bool):
            raise TypeError(f"kernel_mask must be True or False, got {kernel_mask!r}.")
        self.kernel_mask = kernel_mask
        self.mask_decay = float(_checks.check_number("mask_decay", mask_decay, low=0))
        self.mask: keras.Variable | None = None

    def _build_mask(self):
        """The learned mask (EEV's BinMask), beside the kernel it gates."""
        if self.kernel_mask:
            self.mask = self.add_weight(
                name="mask",
                shape=tuple(self.kernel.shape),
                initializer=quantizers.MaskInitializer(),
                regularizer=quantizers.MaskDecay(self.mask_decay) if self.mask_decay else None,
            )

    def _quantized(self, inputs):
        if self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs)
        return inputs, self.quantized_kernel()

    # Keras saves the variables it knows of a Dense or Conv2D; the mask goes after them
    def save_own_variables(self, store):
        super().save_own_variables(store)  # type: ignore[misc]
        if self.mask is not None:
            store[str(len(list(store.keys())))] = self.mask

    def load_own_variables(self, store):
        super().load_own_variables(store)  # type: ignore[misc]
        if self.mask is not None:
            self.mask.assign(store[str(len(list(store.keys())) - 1)])

    def quantized_kernel(self):
        """The kernel the layer multiplies by: the latent one through its quantizer,
        and, with `kernel_mask`, zero where the mask is negative (ternary weights)."""
        kernel = (
            self.kernel if self.kernel_quantizer is None else self.kernel_quantizer(self.kernel)
        )
        if self.mask is not None:
            kernel = kernel * quantizers.ste_step(self.mask)
        return kernel

    def _finish(self, outputs):
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        return self.activation(outputs) if self.activation is not None else outputs

    def _quantizer_config(self):
        serialized = {
            name: None if q is None else keras.saving.serialize_keras_object(q)
            for name, q in (
                ("input_quantizer", self.input_quantizer),
                ("kernel_quantizer", self.kernel_quantizer),
            )
        }
        return {**serialized, "kernel_mask": self.kernel_mask, "mask_decay": self.mask_decay}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantDense(_QuantizedMixin, keras.layers.Dense):
    """A Dense layer whose inputs and kernel pass through quantizers.

    Args:
        units: output width.
        input_quantizer: applied to the inputs (None: real-valued inputs).
        kernel_quantizer: applied to the latent kernel in every call.
        kernel_constraint: e.g. `WeightClip(1.0)` (Larq's "weight_clip"), which keeps
            the latent weights in [-1, 1] as BinaryNet does.
        kernel_mask: learn a mask beside the kernel (EEV's BinMask): a weight
            is zero where its mask is negative, so binary kernels become
            ternary, and the verifier's units depend on fewer inputs.
        mask_decay: the penalty per kept weight (`MaskDecay`), which pushes
            the mask towards sparsity; 0 for none.
        **kwargs: the arguments of `keras.layers.Dense`.

    Example:
        >>> QuantDense(512, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
        ...            kernel_constraint=WeightClip(1.0), use_bias=False)
    """

    def __init__(
        self,
        units: int,
        input_quantizer: QuantizerSpec = None,
        kernel_quantizer: QuantizerSpec = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        kernel_mask: bool = False,
        mask_decay: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(
            units, kernel_constraint=quantizers.get_constraint(kernel_constraint), **kwargs
        )
        self._set_quantizers(input_quantizer, kernel_quantizer, kernel_mask, mask_decay)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()

    def call(self, inputs, training=None):
        return self._finish(self.linear(*self._quantized(inputs)))

    def linear(self, inputs, kernel, pad_value=None):
        """The layer's product of (already quantized) inputs and kernel."""
        return ops.matmul(inputs, kernel)

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config()}


def same_padding(size: int, kernel: int, stride: int, dilation: int):
    """TensorFlow's 'same' padding (before, after) along one axis."""
    effective = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + effective - size, 0)
    return total // 2, total - total // 2


@keras.saving.register_keras_serializable(package=_PACKAGE)
class QuantConv2D(_QuantizedMixin, keras.layers.Conv2D):
    """A Conv2D layer whose inputs and kernel pass through quantizers.

    Args:
        filters: output channels.
        kernel_size: as in `keras.layers.Conv2D` (channels_last).
        input_quantizer: as in `QuantDense`.
        kernel_quantizer: as in `QuantDense`.
        kernel_constraint: as in `QuantDense`.
        kernel_mask: as in `QuantDense`.
        mask_decay: as in `QuantDense`.
        pad_values: the value "same" padding adds around the quantized inputs.
            Binary activations are +-1 and the packed engine has no zero, so
            binary layers pad with 1.0 (or -1.0); 0.0 keeps Keras's zeros, which
            suits integer inputs (the first layer).

    Example:
        >>> QuantConv2D(64, 3, padding="same", pad_values=1.0,
        ...             input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    """

    def __init__(
        self,
        filters: int,
        kernel_size: int | tuple[int, int],
        input_quantizer: QuantizerSpec = None,
        kernel_quantizer: QuantizerSpec = None,
        kernel_constraint: str | keras.constraints.Constraint | None = None,
        pad_values: float = 0.0,
        kernel_mask: bool = False,
        mask_decay: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(
            filters,
            kernel_size,
            kernel_constraint=quantizers.get_constraint(kernel_constraint),
            **kwargs,
        )
        if self.data_format != "channels_last":
            raise ValueError(f"data_format must be 'channels_last', got {self.data_format!r}.")
        self._set_quantizers(input_quantizer, kernel_quantizer, kernel_mask, mask_decay)
        self.pad_values = float(pad_values)

    def build(self, input_shape):
        super().build(input_shape)
        self._build_mask()

    def call(self, inputs, training=None):
        return self._finish(self.linear(*self._quantized(inputs)))

    def linear(self, inputs, kernel, pad_value=None):
        """The convolution of (already quantized) inputs and kernel, "same" padding
        adding `pad_value` (default: the layer's `pad_values`)."""
        pad_value = self.pad_values if pad_value is None else pad_value
        padding = self.padding
        if padding == "same" and pad_value != 0.0:
            pads = [
                same_padding(
                    int(inputs.shape[axis]),
                    self.kernel_size[axis - 1],
                    self.strides[axis - 1],
                    self.dilation_rate[axis - 1],
                )
                for axis in (1, 2)
            ]
            inputs = ops.pad(
                inputs, [[0, 0], list(pads[0]), list(pads[1]), [0, 0]], constant_values=pad_value
            )
            padding = "valid"
        return ops.conv(
            inputs,
            kernel,
            strides=self.strides,
            padding=padding,
            dilation_rate=self.dilation_rate,
            data_format=self.data_format,
        )

    def get_config(self):
        return {**super().get_config(), **self._quantizer_config(), "pad_values": self.pad_values}
