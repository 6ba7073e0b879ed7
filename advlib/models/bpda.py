"""Wrappers for adaptive attacks: BPDA through non-differentiable layers, and EOT."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
from keras import ops

from advlib import _checks
from advlib.models.base import Model
from advlib.models.inspect import find_masking_layers
from advlib.models.keras import KerasModelWrapper, as_model


class _IdentityBackward(keras.layers.Layer):
    """Runs `inner` forward exactly; differentiates as the identity."""

    def __init__(self, inner, **kwargs):
        super().__init__(name=f"bpda_{inner.name}", **kwargs)
        self.inner = inner

    def call(self, inputs):
        # f(x) + (x - x) is f(x) bit for bit, with the gradient of x
        return ops.stop_gradient(self.inner(inputs)) + (inputs - ops.stop_gradient(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape


class BPDAModelWrapper(KerasModelWrapper):
    """A Keras model whose named layers are differentiated as the identity (BPDA).

    The forward pass is unchanged, bit for bit; only the backward pass of the
    given layers is replaced. This is the Backward Pass Differentiable
    Approximation of Athalye, Carlini & Wagner (2018), the standard adaptive
    attack on input quantization, thresholding and other defences with zero
    or undefined gradients.

    Args:
        model: a Sequential or functional `keras.Model`.
        layers: names of the layers to bypass; None finds them from
            `sample` with `find_masking_layers`.
        sample: an input batch, needed when `layers` is None.

    Example:
        >>> wrapped = BPDAModelWrapper(defended, sample=x[:32])
        >>> x_adv = ProjectedGradientDescent(wrapped).generate_np(x, eps=0.1)
    """

    def __init__(
        self,
        model: keras.Model,
        layers: Sequence[str] | None = None,
        sample: np.ndarray | None = None,
    ):
        if layers is None:
            if sample is None:
                raise ValueError(
                    "BPDAModelWrapper needs layers=[names] or a sample batch "
                    "to find the non-differentiable layers from."
                )
            layers = find_masking_layers(model, sample)
        known = {layer.name for layer in model.layers}
        unknown = sorted(set(layers) - known)
        if unknown:
            raise ValueError(
                f"layers {unknown} are not layers of model {model.name!r}; "
                f"its layers are {sorted(known)}."
            )
        self.bypassed = list(layers)
        bypass = set(layers)
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: (
                _IdentityBackward(layer) if layer.name in bypass else layer
            ),
        )
        super().__init__(clone)
        self.original = model


class EOTModelWrapper(Model):
    """Expectation over Transformation: the mean logits of `samples` calls.

    For randomized models (noise, random transforms), gradients of a single
    call follow one draw of the randomness; the gradient of the mean follows
    the expectation that the defence's prediction relies on (Athalye et al.
    2018).

    Args:
        model: an `advlib.models.Model` or a `keras.Model`.
        samples: calls averaged per evaluation.

    Example:
        >>> x_adv = ProjectedGradientDescent(EOTModelWrapper(noisy, samples=16)).generate_np(x)
    """

    def __init__(self, model: keras.Model | Model, samples: int = 8):
        _checks.check_number("samples", samples, low=1, integer=True)
        self.inner, self.samples = as_model(model), int(samples)
        super().__init__()

    def variables(self) -> list:
        return self.inner.variables()

    def get_logits(self, x):
        return sum(self.inner.get_logits(x) for _ in range(self.samples)) / self.samples
