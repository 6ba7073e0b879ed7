"""Wrappers that expose Keras models and plain callables as `Model`s."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import keras
import numpy as np
from keras import ops

from advlib import _checks, backend
from advlib.models.base import Model

_PROBS_FLOOR = 1e-30


def _is_softmax(fn) -> bool:
    return getattr(fn, "__name__", None) == "softmax"


def _ends_in_softmax(layer) -> str:
    """'layer' if `layer` is a softmax, 'activation' if it applies one, else ''."""
    if isinstance(layer, keras.layers.Softmax):
        return "layer" if layer.axis in (-1, [-1]) else ""
    if isinstance(layer, keras.layers.Activation):
        return "layer" if _is_softmax(layer.activation) else ""
    return "activation" if _is_softmax(getattr(layer, "activation", None)) else ""


def _call_without_activation(layer, inputs, training=False):
    """Calls `layer` with its activation replaced by the identity.

    The weights are the layer's own, so later training is seen at once.
    """
    saved = layer.activation
    layer.activation = keras.activations.linear
    try:
        return layer(inputs, training=training)
    finally:
        layer.activation = saved


def _logits_function(model) -> Callable | None:
    """Builds (x, training) -> pre-softmax logits for a model ending in a softmax, or None.

    Sequential and functional models are taken apart structurally (nested
    models included); subclassed models cannot be, and return None.
    """
    if isinstance(model, keras.Sequential):
        if not model.layers:
            return None
        body, last = model.layers[:-1], model.layers[-1]

        def run_body(x, training):
            for layer in body:
                x = layer(x, training=training)
            return x
    elif _is_functional(model):
        if len(model.inputs) != 1 or len(model.outputs) != 1:
            return None
        history = model.outputs[0]._keras_history
        last = history.operation
        node = last._inbound_nodes[history.node_index]
        if len(node.input_tensors) != 1:
            return None
        penultimate = node.input_tensors[0]
        if penultimate is model.inputs[0]:
            run_body = lambda x, training: x
        else:
            body_model = keras.Model(model.inputs[0], penultimate)
            run_body = lambda x, training: body_model(x, training=training)
    else:
        return None

    kind = _ends_in_softmax(last)
    if kind == "layer":
        return run_body
    if kind == "activation":
        return lambda x, training: _call_without_activation(last, run_body(x, training), training)
    if isinstance(last, keras.Model):
        inner = _logits_function(last)
        if inner is not None:
            return lambda x, training: inner(run_body(x, training), training)
    return None


def _is_functional(model) -> bool:
    return (
        not isinstance(model, keras.Sequential)
        and hasattr(model, "_inbound_nodes")
        and type(model).__name__ == "Functional"
    )


class KerasModelWrapper(Model):
    """Exposes any Keras 3 model to attacks.

    If the model ends in a softmax (a `Softmax` layer, or a layer with
    `activation="softmax"`, found without needing a layer name), attacks
    differentiate the pre-softmax logits, never the saturated probabilities.
    Any other output is taken as logits.

    Args:
        model: a Sequential, functional or subclassed `keras.Model`.
        from_logits: overrides the detection. `True`: the output is logits.
            `False`: the output is probabilities; if the softmax cannot be
            taken apart (subclassed models), log-probabilities are used.
        nb_classes: the number of classes, checked against the output.

    Example:
        >>> wrapped = KerasModelWrapper(keras_model)
        >>> logits = wrapped.get_logits(x)
    """

    def __init__(
        self, model: keras.Model, from_logits: bool | None = None, nb_classes: int | None = None
    ):
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        if not (from_logits is None or isinstance(from_logits, bool)):
            raise TypeError(f"from_logits must be None, True or False, got {from_logits!r}.")
        self.model = model
        self._detected = from_logits is None
        split = _logits_function(model) if from_logits is not True else None
        if split is not None:
            self._logits = split
            self.output_kind = "softmax-split"
        elif from_logits is False:
            self._logits = lambda x, training: _log_probs(model(x, training=training))
            self.output_kind = "log-probs"
            warnings.warn(
                "the model's softmax could not be taken apart; attacks use "
                "log-probabilities, whose gradients vanish where the softmax "
                "saturates. Expose the logits for reliable attacks.",
                stacklevel=2,
            )
        else:
            self._logits = lambda x, training: model(x, training=training)
            self.output_kind = "logits"
        super().__init__(nb_classes=nb_classes or _static_classes(model))

    def get_logits(self, x, training: bool = False):
        """Pre-softmax logits; `training=True` runs BatchNorm and Dropout in training mode."""
        return self._logits(x, training)

    def variables(self) -> list:
        return list(self.model.variables)

    def _on_first_output(self, logits):
        if not (self._detected and self.output_kind == "logits"):
            return
        values = backend.to_numpy(logits).astype(np.float64)
        if np.all(values >= 0) and np.allclose(values.sum(axis=-1), 1.0, atol=1e-5):
            warnings.warn(
                "the model's outputs look like probabilities (non-negative, "
                "rows summing to 1) but no softmax layer was found to take "
                "apart; they are treated as logits. Pass from_logits=False, or "
                "better, expose the pre-softmax logits.",
                stacklevel=3,
            )


def _static_classes(model) -> int | None:
    try:
        shape = model.output_shape
    except (AttributeError, ValueError, RuntimeError):
        return None
    if isinstance(shape, tuple) and len(shape) == 2 and isinstance(shape[1], int):
        return shape[1]
    if (
        isinstance(shape, tuple)
        and len(shape) != 2
        and all(isinstance(d, (int, type(None))) for d in shape)
    ):
        raise ValueError(
            f"the model must return a 2-D batch of class scores "
            f"(batch, nb_classes); its output shape is {shape}."
        )
    return None


class _WrapperSlot:
    """A Keras model's own wrapper, kept on the model so that it lives exactly as
    long as the model; copies and pickles of the model start without one."""

    __slots__ = ("wrapper",)

    def __init__(self):
        self.wrapper: KerasModelWrapper | None = None

    def __copy__(self) -> _WrapperSlot:
        return _WrapperSlot()

    def __deepcopy__(self, memo) -> _WrapperSlot:
        return _WrapperSlot()

    def __reduce__(self):
        return (_WrapperSlot, ())


_SLOT = "_advlib_wrapper"


def as_model(model: keras.Model | Model, **kwargs: Any) -> Model:
    """Wraps a bare Keras model; returns `Model`s unchanged.

    Without `kwargs`, a Keras model always gets the same wrapper, so that every
    attack on it shares the wrapper's compiled steps (`Model.compiled_method`)
    instead of tracing them anew.

    Args:
        model: an `advlib.models.Model` or a `keras.Model`.
        **kwargs: passed to `KerasModelWrapper` (e.g. `from_logits`).
    """
    if isinstance(model, Model):
        return model
    if isinstance(model, keras.Model):
        if kwargs:
            return KerasModelWrapper(model, **kwargs)
        slot = vars(model).get(_SLOT)
        if slot is None:
            slot = _WrapperSlot()
            # past Keras's attribute tracking: the slot is not part of the model
            object.__setattr__(model, _SLOT, slot)
        if slot.wrapper is None:
            slot.wrapper = KerasModelWrapper(model)
        return slot.wrapper
    raise TypeError(
        f"model must be an advlib.models.Model or a keras.Model, got "
        f"{type(model).__name__}; wrap plain functions with "
        "CallableModelWrapper(fn, output_layer='logits' or 'probs')."
    )


class CallableModelWrapper(Model):
    """Exposes a function of a batch as a `Model`.

    Args:
        fn: maps an input batch to a (batch, classes) tensor.
        output_layer: "logits" if `fn` returns logits, "probs" if it returns
            probabilities (attacks then use their logarithm).
        nb_classes: the number of classes, if known in advance.

    Example:
        >>> model = CallableModelWrapper(lambda x: x @ w, output_layer="logits")
    """

    def __init__(self, fn: Callable, output_layer: str = "logits", nb_classes: int | None = None):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}.")
        _checks.check_choice("output_layer", output_layer, ("logits", "probs"))
        self.fn = fn
        self.output_layer = output_layer
        super().__init__(nb_classes=nb_classes)

    def get_logits(self, x):
        out = self.fn(x)
        if self.output_layer == "probs":
            return _log_probs(out)
        return out


def _log_probs(probs):
    return ops.log(ops.maximum(ops.cast(probs, "float32"), _PROBS_FLOOR))
