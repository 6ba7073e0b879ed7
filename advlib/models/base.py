"""The model interface that every attack is written against."""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable

import keras
from keras import ops

from advlib import backend


class Model(abc.ABC):
    """A classifier seen through its logits.

    Subclasses implement `get_logits`; everything an attack needs is derived
    from it. Logits are the pre-softmax scores: attacks differentiate them and
    never the saturating probabilities.

    Attributes:
        backends: the Keras backends the wrapper runs on.
        data_format: the layout of image inputs, "channels_last" (Keras's) or
            "channels_first" (a PyTorch module's, as `from_torch` wraps it);
            attacks that draw over height and width (Square) read it.
    """

    backends: tuple[str, ...] = backend.SUPPORTED
    data_format: str = "channels_last"

    def __init__(self, nb_classes: int | None = None):
        backend.require_supported(f"{type(self).__name__} models", self.backends)
        self._nb_classes = nb_classes
        self._checked_shapes: set[tuple] = set()
        self._compiled_methods: dict[Hashable, Callable] = {}
        self._predict = backend.compiled(self._predict_logits, self.variables)

    @abc.abstractmethod
    def get_logits(self, x):
        """Returns the logits of shape (batch, nb_classes) for the batch `x`."""

    def variables(self) -> list:
        """The Keras variables that `get_logits` reads, so that compiled steps
        see their current values (JAX). Wrappers of Keras models return the
        model's; a plain function has none."""
        return []

    def compiled_method(self, key: Hashable, method: Callable) -> Callable:
        """The compiled form of `method`, made at the first request for `key` and
        returned for every later one: objects that compute with this model
        (attacks) share compiled steps through it.

        Args:
            key: names the computation, such as (attack class, method name).
            method: compiled at the first request; it must compute the same
                function as every later request's (it may read this model, and
                nothing that differs between the objects sharing it).

        Returns:
            `backend.compiled(method, self.variables)`, made once per key.
        """
        if key not in self._compiled_methods:
            self._compiled_methods[key] = backend.compiled(method, self.variables)
        return self._compiled_methods[key]

    def get_probs(self, x):
        """Returns class probabilities, the softmax of the logits."""
        return ops.softmax(self.get_logits(x), axis=-1)

    def predict_logits(self, x):
        """Logits through a compiled function, for eager callers."""
        with backend.no_gradient():
            return self._predict(ops.convert_to_tensor(x))

    def predict_classes(self, x):
        """Returns the predicted class indices for the batch `x`."""
        return ops.argmax(self.predict_logits(x), axis=-1)

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
        sample = ops.zeros((1,) + shape, dtype=keras.backend.standardize_dtype(x.dtype))
        try:
            # called as it is, not compiled: compiling would convert (or choke on) the
            # tensors of another framework before they could be named
            with backend.no_gradient():
                logits = self.get_logits(sample)
        except Exception as error:
            raise ValueError(
                f"the model cannot be called on inputs of shape (batch,) + {shape}: {error}"
            ) from error
        _check_backend_tensor(logits)
        if len(logits.shape) != 2 or logits.shape[0] != 1 or logits.shape[1] < 2:
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

    def _on_first_output(self, logits) -> None:  # noqa: B027  (an optional hook)
        """Hook for wrappers that want to inspect the first output."""

    def loss_gradient(self, x, labels, loss_fn: Callable, targeted: bool = False):
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
            its gradient with respect to `x` (same dtype as `x`; zero where the
            model cuts the input off), and the logits at `x`.
        """

        def objective(x):
            logits = self.get_logits(x)
            loss = loss_fn(labels=labels, logits=logits)
            return (-loss if targeted else loss), logits

        loss, gradient, logits = backend.value_and_gradient(objective, x)
        return loss, gradient, logits


def _check_backend_tensor(value) -> None:
    """Refuses outputs of another framework: a model of one backend used under another."""
    module = type(value).__module__.split(".")[0]
    runs = backend.name()
    if runs not in backend.BACKENDS:
        return
    # JAX's arrays are jaxlib's type
    allowed = {backend.BACKENDS[runs][0], "numpy"} | ({"jaxlib"} if runs == "jax" else set())
    if module not in allowed:
        raise backend.BackendError(
            f"the model returned a {type(value).__module__}.{type(value).__name__}, but Keras "
            f"runs on {runs!r}: a model of one backend cannot run under another. Build the "
            f"model under KERAS_BACKEND={runs}, or set KERAS_BACKEND to its framework."
        )
