"""Per-example losses on logits that attacks ascend.

Each takes integer `labels` of shape (batch,) and `logits` of shape
(batch, classes) as keywords, the convention of
`tf.nn.sparse_softmax_cross_entropy_with_logits`, so TensorFlow's own loss
functions can be passed to attacks as `loss_fn` too. They are written in
`keras.ops`, so they run on every Keras backend.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from keras import ops

__all__ = ["LOSSES", "cross_entropy", "dlr_loss", "get", "margin_loss", "targeted_dlr_loss"]

# a per-example loss: loss(labels=(batch,), logits=(batch, classes)) -> (batch,)
LossFunction = Callable[..., Any]


def _at_least_float32(logits):
    return ops.cast(logits, "float32") if str(logits.dtype).endswith("float16") else logits


def _take(logits, labels):
    """logits[i, labels[i]] for each example i."""
    index = ops.expand_dims(ops.cast(labels, "int32"), 1)
    return ops.squeeze(ops.take_along_axis(logits, index, axis=1), 1)


def cross_entropy(labels, logits):
    """Softmax cross-entropy, computed stably from logits."""
    logits = _at_least_float32(logits)
    return ops.sparse_categorical_crossentropy(labels, logits, from_logits=True)


def margin_loss(labels, logits):
    """Carlini-Wagner margin: best other logit minus the logit of `labels`.

    Positive exactly when the model does not predict `labels`.
    """
    label_mask = ops.cast(ops.one_hot(ops.cast(labels, "int32"), logits.shape[-1]), "bool")
    label_logit = _take(logits, labels)
    lowest = ops.min(logits, axis=-1, keepdims=True) - 1
    best_other = ops.max(ops.where(label_mask, lowest, logits), axis=-1)
    return best_other - label_logit


def _sorted_logits(logits):
    logits = _at_least_float32(logits)
    return logits, ops.flip(ops.sort(logits, axis=-1), axis=-1)


def dlr_loss(labels, logits):
    """Difference of Logits Ratio (Croce & Hein 2020): the margin loss divided by
    z_pi1 - z_pi3, the gap between the largest and the third largest logit, so
    that rescaling the logits changes nothing. Needs 3 classes or more."""
    logits, ranked = _sorted_logits(logits)
    return margin_loss(labels=labels, logits=logits) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def targeted_dlr_loss(labels, logits):
    """The targeted DLR of Croce & Hein 2020, to ascend: -(z_y - z_t) /
    (z_pi1 - (z_pi3 + z_pi4) / 2). `labels` stacks (true class, target) per
    example, shape (batch, 2). Needs 4 classes or more."""
    logits, ranked = _sorted_logits(logits)
    true = _take(logits, labels[:, 0])
    target = _take(logits, labels[:, 1])
    return -(true - target) / (ranked[:, 0] - 0.5 * (ranked[:, 2] + ranked[:, 3]) + 1e-12)


LOSSES = {
    "ce": cross_entropy,
    "cross_entropy": cross_entropy,
    "cw": margin_loss,
    "margin": margin_loss,
    "dlr": dlr_loss,
}


def get(loss_fn: str | LossFunction | None) -> LossFunction:
    """Resolves a loss name ("ce", "cw") or returns a callable unchanged."""
    if loss_fn is None:
        return cross_entropy
    if callable(loss_fn):
        return loss_fn
    if isinstance(loss_fn, str) and loss_fn in LOSSES:
        return LOSSES[loss_fn]
    raise ValueError(
        f"loss_fn must be a callable(labels=, logits=) or one of {sorted(LOSSES)}, got {loss_fn!r}."
    )
