"""Per-example losses on logits that attacks ascend.

Each takes integer `labels` of shape (batch,) and `logits` of shape
(batch, classes) as keywords, the convention of
`tf.nn.sparse_softmax_cross_entropy_with_logits`, so TensorFlow's own loss
functions can be passed to attacks as `loss_fn` too.
"""

from __future__ import annotations

from collections.abc import Callable

import tensorflow as tf

__all__ = ["LOSSES", "cross_entropy", "dlr_loss", "get", "margin_loss", "targeted_dlr_loss"]

# a per-example loss: loss(labels=(batch,), logits=(batch, classes)) -> (batch,)
LossFunction = Callable[..., tf.Tensor]


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy, computed stably from logits."""
    logits = tf.cast(logits, tf.float32) if logits.dtype == tf.float16 else logits
    return tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)


def margin_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Carlini-Wagner margin: best other logit minus the logit of `labels`.

    Positive exactly when the model does not predict `labels`.
    """
    depth = tf.shape(logits)[-1]
    label_mask = tf.one_hot(labels, depth, on_value=True, off_value=False)
    label_logit = tf.reduce_sum(tf.where(label_mask, logits, tf.zeros_like(logits)), axis=-1)
    lowest = tf.reduce_min(logits, axis=-1, keepdims=True) - 1
    best_other = tf.reduce_max(tf.where(label_mask, lowest, logits), axis=-1)
    return best_other - label_logit


def _sorted_logits(logits):
    logits = tf.cast(logits, tf.float32) if logits.dtype == tf.float16 else logits
    return logits, tf.sort(logits, axis=-1, direction="DESCENDING")


def dlr_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """Difference of Logits Ratio (Croce & Hein 2020): the margin loss divided by
    z_pi1 - z_pi3, the gap between the largest and the third largest logit, so
    that rescaling the logits changes nothing. Needs 3 classes or more."""
    logits, ranked = _sorted_logits(logits)
    return margin_loss(labels=labels, logits=logits) / (ranked[:, 0] - ranked[:, 2] + 1e-12)


def targeted_dlr_loss(labels: tf.Tensor, logits: tf.Tensor) -> tf.Tensor:
    """The targeted DLR of Croce & Hein 2020, to ascend: -(z_y - z_t) /
    (z_pi1 - (z_pi3 + z_pi4) / 2). `labels` stacks (true class, target) per
    example, shape (batch, 2). Needs 4 classes or more."""
    logits, ranked = _sorted_logits(logits)
    true = tf.gather(logits, labels[:, 0], batch_dims=1)
    target = tf.gather(logits, labels[:, 1], batch_dims=1)
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
