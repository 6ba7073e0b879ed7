"""`from_torch`: a PyTorch module evaluated as it is, on Keras's PyTorch backend."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras

from advlib import _checks, backend
from advlib.models.keras import KerasModelWrapper


def from_torch(
    module: Any,
    input_shape: Sequence[int],
    nb_classes: int | None = None,
    data_format: str = "channels_first",
) -> KerasModelWrapper:
    """Wraps a `torch.nn.Module` that returns logits, for every attack and the harness.

    The module runs as it is, in its own layout (channels first for most
    PyTorch image models), through `keras.layers.TorchModuleWrapper`: no port,
    no copy of its weights. It is put in evaluation mode (`module.eval()`),
    so that BatchNorm and Dropout behave as at test time.

    Args:
        module: the network, mapping a float batch to logits (batch, classes).
        input_shape: the shape of one example, without the batch, e.g. (1, 28, 28).
        nb_classes: the number of classes, checked against the output.
        data_format: for images (an `input_shape` of rank 3, channels first, as
            the module takes them), the layout of the arrays given to the
            attacks: "channels_first" (default), as the module takes them; or
            "channels_last", (height, width, channels) as Keras's data sets
            and advlib's protocols hold them, transposed for the module inside
            the wrapper. Attacks that draw over height and width (Square) read
            it from the wrapper.

    Returns:
        A `KerasModelWrapper` around a functional Keras model that calls `module`.

    Raises:
        BackendError: unless Keras runs on PyTorch (KERAS_BACKEND=torch).
        TypeError: if `module` is not a `torch.nn.Module`.

    Example:
        >>> model = from_torch(net, input_shape=(1, 28, 28))
        >>> x_adv = ProjectedGradientDescent(model).generate_np(x, eps=0.1)
    """
    backend.require_supported("from_torch", ("torch",))
    import torch

    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise ValueError(
            f"input_shape must be the positive sizes of one example, without the batch, "
            f"e.g. (1, 28, 28); got {input_shape!r}."
        )
    _checks.check_number("nb_classes", nb_classes, low=2, integer=True, allow_none=True)
    _checks.check_choice("data_format", data_format, ("channels_first", "channels_last"))
    if data_format == "channels_last" and len(shape) != 3:
        raise ValueError(
            f"data_format='channels_last' transposes images, whose input_shape is "
            f"(channels, height, width); got input_shape {shape}."
        )
    module.eval()
    device = next((p.device for p in module.parameters()), torch.device("cpu"))
    with torch.no_grad():
        # Keras cannot infer the output's shape from a symbolic input: one call tells
        probe = module(torch.zeros((1, *shape), device=device))
    if not isinstance(probe, torch.Tensor) or probe.ndim != 2:
        raise ValueError(
            f"the module must return logits of shape (batch, classes); on a batch of "
            f"shape {(1, *shape)} it returned {getattr(probe, 'shape', type(probe).__name__)}."
        )
    wrapper = keras.layers.TorchModuleWrapper(module, output_shape=(None, *probe.shape[1:]))
    if data_format == "channels_last":
        inputs = keras.Input((*shape[1:], shape[0]))
        outputs = wrapper(keras.layers.Permute((3, 1, 2))(inputs))
    else:
        inputs = keras.Input(shape)
        outputs = wrapper(inputs)
    wrapped = KerasModelWrapper(
        keras.Model(inputs, outputs), from_logits=True, nb_classes=nb_classes
    )
    wrapped.data_format = data_format if len(shape) == 3 else "channels_last"
    return wrapped


def load_torch_weights(path: str, module: Any) -> Any:
    """Loads the state dict saved at `path` into `module`, never unpickling anything
    but tensors (`torch.load(weights_only=True)`).

    Args:
        path: a `.pt` file written by `torch.save(net.state_dict(), path)`.
        module: the network's architecture, built by the user's own code.

    Returns:
        `module`, with the weights loaded.

    Raises:
        ValueError: if the file holds more than weights (a whole pickled module,
            or any other object), before anything in it runs; or if its weights
            do not fit `module`.
    """
    backend.require_supported("load_torch_weights", ("torch",))
    import pickle

    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as error:
        raise ValueError(
            f"{path} holds more than weights (a pickled object that torch.load with "
            "weights_only=True refuses to run); save net.state_dict() instead, and pass "
            "the architecture as a module."
        ) from error
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ValueError(
            f"{path} must hold a state dict (parameter names to tensors), as "
            f"torch.save(net.state_dict(), path) writes; it holds a {type(state).__name__}."
        )
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"the weights in {path} do not fit the module: {error}") from error
    return module
