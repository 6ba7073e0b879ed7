"""Training binary networks that the exact verifier can decide.

The verifier (`advlib.qnn.verify`) spends its time on the hidden units whose
sign the input box does not decide: each is a binary variable of the MILP or
SAT program, and a naturally trained 784-256-256-10 binary MLP leaves about
160 of its 512 units open at eps 1/255 on Fashion-MNIST. Xiao, Tjeng, Shafiullah
& Madry (ICLR 2019) made ReLU networks verifiable by training them with a loss
on the units that interval bounds leave unstable; Narodytska et al. (ICLR 2020)
and Jia & Rinard (NeurIPS 2020) did the same for binary networks and SAT.

Here the bounds are interval propagation through the model's own layers with
their quantizers, the same bounds the verifier's encoding starts from:

- the first layer sees the box of 8-bit levels that the engine's quantization
  gives inside the ball;
- a binary layer's output is +1 or -1 where its BatchNorm output keeps one
  sign over the box, and spans [-1, 1] where it does not (the unit is open);
- max-pooling and flattening map bounds to bounds.

BatchNorm uses its moving statistics, as the exported engine does, or in
training the clean batch's, as the forward pass does. The loss on
a thresholded unit is relu(radius - |center|) / radius of its BatchNorm
output's interval: 0 for a unit the box decides, 1 for one centred on its
threshold.

Example:
    >>> model = qnn.binary_mlp((28, 28, 1), width=256, depth=2)
    >>> trainer = VerifiableModel(model, eps=0.03, weight=2.0)
    >>> trainer.compile(keras.optimizers.Adam(3e-3),
    ...                 keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    ...                 metrics=["accuracy"])
    >>> trainer.fit(x_train, y_train, epochs=10, batch_size=128)   # logs "open_units"
    >>> qnn.export(model, "verifiable.npz")
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from advlib import _checks
from advlib.qnn.layers import QuantConv2D, QuantDense
from advlib.qnn.quantizers import SteSign, Uint8Input

_PASSTHROUGH = (keras.layers.Flatten, keras.layers.Reshape, keras.layers.MaxPooling2D)
_SKIPPED = (keras.layers.InputLayer, keras.layers.Dropout)


def _layers(model: keras.Model) -> list[keras.layers.Layer]:
    layers = [layer for layer in model.layers if not isinstance(layer, _SKIPPED)]
    quantized = 0
    for index, layer in enumerate(layers):
        if isinstance(layer, (QuantDense, QuantConv2D)):
            wanted = SteSign if quantized else Uint8Input
            quantized += 1
            if not isinstance(layer.input_quantizer, wanted):
                raise ValueError(
                    f"model: layer {layer.name!r} has input quantizer "
                    f"{type(layer.input_quantizer).__name__}; interval bounds of binary "
                    f"networks need {wanted.__name__} here (the exported engine's form)."
                )
            following = layers[index + 1] if index + 1 < len(layers) else None
            if not isinstance(following, keras.layers.BatchNormalization):
                raise ValueError(
                    f"model: layer {layer.name!r} is not followed by "
                    "BatchNormalization, whose output the bounds threshold "
                    "(binary_mlp and binary_cnn put one after every layer)."
                )
        elif not isinstance(layer, _PASSTHROUGH + (keras.layers.BatchNormalization,)):
            raise ValueError(
                f"model: layer {layer.name!r} ({type(layer).__name__}) is not "
                "one of a binary network's layers (QuantDense, QuantConv2D, "
                "BatchNormalization, MaxPooling2D, Flatten, Reshape, Dropout)."
            )
    if quantized < 2:
        raise ValueError(
            f"model {model.name!r} has no hidden binary layer: it needs at least "
            "two QuantDense or QuantConv2D layers."
        )
    return layers


def _linear_bounds(layer, kernel, low, high):
    """Bounds on a quantized layer's output from bounds on its inputs, with its
    already quantized kernel."""
    # quantizers are monotone, so they map bounds to bounds
    low, high = layer.input_quantizer(low), layer.input_quantizer(high)
    center = layer._finish(layer.linear((low + high) / 2, kernel))
    radius = layer.linear((high - low) / 2, ops.abs(kernel), pad_value=0.0)
    return center, radius


def _batchnorm_affine(layer, inputs, training: bool):
    """BatchNorm as scale * x + offset: with the statistics of `inputs` (the clean
    batch) in training, as the forward pass normalizes, else the moving ones."""
    if training:
        axes = list(range(len(inputs.shape) - 1))
        mean, variance = ops.moments(inputs, axes)
    else:
        mean, variance = layer.moving_mean, layer.moving_variance
    scale = ops.rsqrt(variance + layer.epsilon)
    if layer.scale:
        scale = scale * layer.gamma
    offset = -mean * scale
    if layer.center:
        offset = offset + layer.beta
    return scale, offset


def _thresholded(model: keras.Model, x, eps: float, training: bool) -> list[dict]:
    """One walk through a binary network's layers: per BatchNorm, its output's
    (center, radius) over the eps-balls, its affine map (scale, offset), and of
    the layer before it, each unit's non-zero weights (kept) and bias."""
    _checks.check_number("eps", eps, low=0, high=1)
    x = ops.convert_to_tensor(x, "float32")
    clean = x
    low, high = ops.clip(x - eps, 0.0, 1.0), ops.clip(x + eps, 0.0, 1.0)
    normalized = []
    kept = bias = None
    # in training, the clean batch runs beside the bounds for BatchNorm's statistics
    for layer in _layers(model):
        if isinstance(layer, _PASSTHROUGH):
            low, high = layer(low), layer(high)
            clean = layer(clean) if training else None
        elif isinstance(layer, (QuantDense, QuantConv2D)):
            kernel = layer.quantized_kernel()
            units = kernel.shape[-1]
            kept = ops.sum(ops.cast(ops.reshape(kernel, [-1, units]) != 0, "float32"), axis=0)
            bias = layer.bias if layer.use_bias else ops.zeros((units,))
            clean = (
                layer._finish(layer.linear(layer.input_quantizer(clean), kernel))
                if training
                else None
            )
            center, radius = _linear_bounds(layer, kernel, low, high)
            low, high = center - radius, center + radius
        else:
            scale, offset = _batchnorm_affine(layer, clean, training)
            clean = clean * scale + offset if training else None
            center = (low + high) / 2 * scale + offset
            radius = (high - low) / 2 * ops.abs(scale)
            normalized.append(
                dict(center=center, radius=radius, scale=scale, offset=offset, kept=kept, bias=bias)
            )
            low, high = center - radius, center + radius
    return normalized


def interval_bounds(model: keras.Model, x, eps: float, training: bool = False) -> list[tuple]:
    """(center, radius) of each thresholded BatchNorm output of a binary network
    over the L-inf ball of radius `eps` around each image of `x`.

    Args:
        model: a binary network in the exported engine's form (`binary_mlp`,
            `binary_cnn`, `conv_small`).
        x: images in [0, 1].
        eps: the ball's radius.
        training: normalize with the batch's statistics, as `model(x,
            training=True)` does; else with the moving ones, as the engine does.

    Returns:
        One (center, radius) pair per hidden binary layer, in order; the sign
        of a unit is decided over the ball where |center| >= radius (strictly,
        center - radius >= 0 or center + radius < 0).
    """
    # the last BatchNorm gives the logits, which no sign follows
    return [(b["center"], b["radius"]) for b in _thresholded(model, x, eps, training)[:-1]]


def _bound_decay(layers: list[dict], threshold: float):
    """EEV's cardinality bound decay over the walk's layers (see below)."""
    total = 0.0
    for layer in layers[1:-1]:
        scale, offset, kept = layer["scale"], layer["offset"], layer["kept"]
        safe = ops.where(scale >= 0, 1.0, -1.0) * ops.maximum(ops.abs(scale), 1e-6)
        # the unit's threshold on acc = 2 (agreements) - kept (BatchNorm sees acc + bias),
        # in agreements
        bound = (-offset / safe - layer["bias"] + kept) / 2
        total = total + ops.sum(ops.relu(bound - threshold))
    return total


def cardinality_bound_decay(
    model: keras.Model, x=None, threshold: float = 5.0, training: bool = False
):
    """The hinge on the BatchNorm bias of Jia & Rinard (EEV's cardinality bound
    decay): the sum over hidden units of relu(k - threshold), where k is the
    number of the unit's inputs that must agree with its (non-zero) weights for
    it to switch on. The verifier's SAT program holds each unit as "at least k
    of these literals"; small bounds make them easy to decide. As in EEV, the
    first layer (on the pixels) and the logits are left out.

    Args:
        model: a binary network in the exported engine's form.
        x: a batch, whose statistics BatchNorm uses in training; None with
            `training=False` (the moving statistics).
        threshold: bounds up to this are free (EEV: 5).
        training: as in `interval_bounds`.
    """
    _checks.check_number("threshold", threshold, low=0)
    if x is None:
        if training:
            raise ValueError("cardinality_bound_decay: training=True needs the batch x.")
        x = np.zeros((1,) + tuple(model.input_shape[1:]), np.float32)
    return _bound_decay(_thresholded(model, x, 0.0, training), threshold)


def instability(model: keras.Model, x, eps: float, training: bool = False) -> tuple:
    """(loss, share of open units) of a binary network over the eps-balls of `x`.

    The loss is the mean over images and hidden units of
    relu(radius - |center|) / radius: differentiable, 0 when every unit is
    decided by the bounds. The share counts the units whose sign the bounds
    leave open, the verifier's binary variables before its own tightening.
    """
    return _instability(_thresholded(model, x, eps, training)[:-1])


def _instability(layers: list[dict]) -> tuple:
    losses, open_units, total = [], [], 0
    for center, radius in ((layer["center"], layer["radius"]) for layer in layers):
        units = int(np.prod(center.shape[1:]))
        flat_center = ops.reshape(center, [-1, units])
        flat_radius = ops.reshape(radius, [-1, units])
        losses.append(
            ops.sum(
                ops.mean(
                    ops.relu(flat_radius - ops.abs(flat_center)) / ops.maximum(flat_radius, 1e-6),
                    axis=0,
                )
            )
        )
        is_open = (flat_center - flat_radius < 0) & (flat_center + flat_radius >= 0)
        open_units.append(ops.sum(ops.mean(ops.cast(is_open, "float32"), axis=0)))
        total += units
    return sum(losses) / total, sum(open_units) / total


class VerifiableModel(keras.Model):
    """Trains a binary network with a loss on the units interval bounds leave open.

    The compiled loss (e.g. cross-entropy on the logits) plus `weight` times
    the `instability` loss over the eps-balls of the batch. Fewer open units
    mean fewer binary variables for the verifier: the exact robustness of the
    trained network is decided in a fraction of the time.

    Args:
        model: a binary network in the exported engine's form (`binary_mlp`,
            `binary_cnn`): it is trained in place; export it afterwards.
        eps: the L-inf radius the bounds are taken over, at least the largest
            eps the network will be verified at.
        weight: the weight of the instability loss. On the Fashion-MNIST MLP,
            2 at eps 0.03 kept 8 of 512 units open at 1/255 and 78.7%
            accuracy (`benchmarks/RESULTS.md`).
        bias_hinge: the weight of EEV's cardinality bound decay
            (`cardinality_bound_decay`, with the batch's statistics); 0 for
            none. EEV used 5e-4 with a threshold of 5.
        hinge_threshold: the bound up to which the hinge is 0.

    Example:
        >>> trainer = VerifiableModel(qnn.binary_mlp((28, 28, 1), width=256, depth=2),
        ...                           eps=0.03)
        >>> trainer.compile("adam", keras.losses.SparseCategoricalCrossentropy(
        ...     from_logits=True), metrics=["accuracy"])
        >>> trainer.fit(x_train, y_train, epochs=10, batch_size=128)
        >>> qnn.export(trainer.model, "verifiable.npz")
    """

    def __init__(
        self,
        model: keras.Model,
        eps: float,
        weight: float = 2.0,
        bias_hinge: float = 0.0,
        hinge_threshold: float = 5.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, keras.Model):
            raise TypeError(f"model must be a keras.Model, got {type(model).__name__}.")
        _layers(model)
        _checks.check_number("eps", eps, low=0, high=1)
        _checks.check_number("weight", weight, low=0)
        _checks.check_number("bias_hinge", bias_hinge, low=0)
        _checks.check_number("hinge_threshold", hinge_threshold, low=0)
        self.model = model
        self.eps = float(eps)
        self.weight = float(weight)
        self.bias_hinge = float(bias_hinge)
        self.hinge_threshold = float(hinge_threshold)
        self.open_units = keras.metrics.Mean(name="open_units")
        self.bound_decay = keras.metrics.Mean(name="bound_decay")

    def call(self, inputs, training=False):
        return self.model(inputs, training=training)

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(
            x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
        )
        layers = _thresholded(self.model, x, self.eps, training)
        penalty, open_share = _instability(layers[:-1])
        self.open_units.update_state(open_share)
        decay = _bound_decay(layers, self.hinge_threshold)
        self.bound_decay.update_state(decay)
        return loss + self.weight * penalty + self.bias_hinge * decay
