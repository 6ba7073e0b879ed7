"""The model interface that every attack is written against."""

from __future__ import annotations

import abc
from collections.abc import Callable

import tensorflow as tf

from advlib import backend


class Model(abc.ABC):
    """A classifier seen through its logits.

    Subclasses implement `get_logits`; everything an attack needs is derived
    from it. Logits are the pre-softmax scores: attacks differentiate them and
    never the saturating probabilities.
    """

    def __init__(self, nb_classes: int | None = None):
        backend.require_supported("advlib's models and attacks")
        self._nb_classes = nb_classes
        self._checked_shapes: set[tuple] = set()
        self._predict = tf.function(self._predict_logits, reduce_retracing=True)

    @abc.abstractmethod
    def get_logits(self, x: tf.Tensor) -> tf.Tensor:
        """Returns the logits of shape (batch, nb_classes) for the batch `x`."""

    def get_probs(self, x) -> tf.Tensor:
        """Returns class probabilities, the softmax of the logits."""
        return tf.nn.softmax(self.get_logits(x), axis=-1)

    def predict_logits(self, x) -> tf.Tensor:
        """Logits through a compiled function, for eager callers."""
        return self._predict(tf.convert_to_tensor(x))

    def predict_classes(self, x) -> tf.Tensor:
        """Returns the predicted class indices (int64) for the batch `x`."""
        return tf.argmax(self.predict_logits(x), axis=-1)

    def _predict_logits(self, x):
        return self.get_logits(x)

    @property
    def nb_classes(self) -> int:
        """Number of classes; known once the model has been checked or called."""
        if self._nb_classes is None:
            raise ValueError(
                "nb_classes is not known until the model has seen an input; "
                "call check_output(x) or pass nb_classes to the wrapper."
            )
        return self._nb_classes

    def check_output(self, x) -> int:
        """Checks that the model maps inputs shaped like `x` to 2-D class scores.

        Runs the model on one example the first time each input shape is seen.

        Returns:
            The number of classes.

        Raises:
            ValueError: if the output is not a (batch, classes) tensor with
                at least two classes.
        """
        shape = tuple(x.shape[1:])
        if shape in self._checked_shapes:
            return self.nb_classes
        sample = tf.zeros((1,) + shape, dtype=x.dtype)
        try:
            logits = self.predict_logits(sample)
        except Exception as error:
            raise ValueError(
                f"the model cannot be called on inputs of shape (batch,) + {shape}: {error}"
            ) from error
        if logits.shape.rank != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
            raise ValueError(
                f"the model must return a 2-D batch of class scores "
                f"(batch, nb_classes >= 2); for an input of shape "
                f"{(1,) + shape} it returned shape {tuple(logits.shape)}."
            )
        if self._nb_classes is not None and logits.shape[1] != self._nb_classes:
            raise ValueError(
                f"the model returns {logits.shape[1]} class scores, but "
                f"nb_classes={self._nb_classes} was given."
            )
        self._nb_classes = int(logits.shape[1])
        self._on_first_output(logits)
        self._checked_shapes.add(shape)
        return self._nb_classes

    def _on_first_output(self, logits: tf.Tensor) -> None:  # noqa: B027  (an optional hook)
        """Hook for wrappers that want to inspect the first output."""

    def loss_gradient(
        self, x: tf.Tensor, labels: tf.Tensor, loss_fn: Callable, targeted: bool = False
    ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        """The gradient that attacks ascend.

        Args:
            x: input batch.
            labels: int class indices; the true classes, or the targets when
                `targeted`.
            loss_fn: per-example loss called as `loss_fn(labels=, logits=)`.
            targeted: if true, the loss is negated so that ascending it moves
                towards `labels`.

        Returns:
            `(loss, gradient, logits)`: the per-example attacker objective,
            its gradient with respect to `x` (same dtype as `x`), and the
            logits at `x`.
        """
        with tf.GradientTape() as tape:
            tape.watch(x)
            logits = self.get_logits(x)
            loss = loss_fn(labels=labels, logits=logits)
            if targeted:
                loss = -loss
        # a model that cuts the input off (stop_gradient, tf.round) has a zero gradient,
        # not a missing one: attacks see it, and the diagnostics report it
        return (
            loss,
            tape.gradient(loss, x, unconnected_gradients=tf.UnconnectedGradients.ZERO),
            logits,
        )
