"""Reference architectures used by the examples, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np


def small_cnn(
    input_shape: Sequence[int] = (28, 28, 1),
    nb_classes: int = 10,
    filters: tuple[int, int] = (32, 64),
    dense: int = 128,
    name: str = "small_cnn",
) -> keras.Model:
    """conv-pool-conv-pool-dense-dense, the CNN of the cleverhans tutorials.

    Outputs logits. Inputs smaller than 16 pixels (the 8x8 digits) skip the
    second pooling so the feature map does not vanish.
    """
    small = min(input_shape[:2]) < 16
    layers = [
        keras.Input(tuple(input_shape)),
        keras.layers.Conv2D(filters[0], 3, padding="same", activation="relu"),
        keras.layers.MaxPooling2D(2),
        keras.layers.Conv2D(filters[1], 3, padding="same", activation="relu"),
    ]
    if not small:
        layers.append(keras.layers.MaxPooling2D(2))
    layers += [
        keras.layers.Flatten(),
        keras.layers.Dense(dense, activation="relu"),
        keras.layers.Dense(nb_classes),
    ]
    return keras.Sequential(layers, name=name)


def mlp(
    input_shape: Sequence[int] = (8, 8, 1),
    nb_classes: int = 10,
    hidden: Sequence[int] = (64,),
    name: str = "mlp",
) -> keras.Model:
    """A ReLU multilayer perceptron with logits outputs."""
    layers = [keras.Input(tuple(input_shape)), keras.layers.Flatten()]
    layers += [keras.layers.Dense(width, activation="relu") for width in hidden]
    layers.append(keras.layers.Dense(nb_classes))
    return keras.Sequential(layers, name=name)


def train_classifier(
    model: keras.Model,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    learning_rate: float = 1e-3,
    seed: int = 0,
    verbose: int = 0,
) -> keras.Model:
    """Trains a logits model with Adam and cross-entropy, reproducibly from `seed`."""
    keras.utils.set_random_seed(seed)
    model.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=verbose)
    return model
