"""Defences with known evaluation failures, for testing an evaluation pipeline.

An evaluation that reports these models as robust is broken. They are the
positive controls of the diagnostics (`advlib.bench.diagnostics`), in the
spirit of the test models of Pintor et al. 2022. They are registered Keras
layers, so models using them save and load with `safe_mode=True`.

Example:
    >>> from advlib.models.testbeds import InputQuantization, defended
    >>> masked = defended(cnn, InputQuantization(levels=5))
    >>> advlib.bench.evaluate(masked)["headline_flag"]      # flagged
    >>> advlib.bench.evaluate(masked, adaptive=True)         # broken through BPDA
"""

from __future__ import annotations

import keras
from keras import ops

from advlib import _checks


@keras.saving.register_keras_serializable(package="advlib")
class InputQuantization(keras.layers.Layer):
    """Rounds inputs in [0, 1] to `levels` values, with a zero gradient.

    Gradient attacks see nothing and fail; the model's real robustness is
    barely changed. The textbook case of gradient masking (Athalye et al.
    2018), undone by BPDA.

    Args:
        levels: number of values, at least 2.
    """

    def __init__(self, levels: int = 5, **kwargs):
        super().__init__(**kwargs)
        _checks.check_number("levels", levels, low=2, integer=True)
        self.levels = int(levels)

    def call(self, inputs):
        steps = self.levels - 1
        return ops.stop_gradient(ops.round(inputs * steps) / steps)

    def get_config(self):
        return {**super().get_config(), "levels": self.levels}


@keras.saving.register_keras_serializable(package="advlib")
class AlwaysOnNoise(keras.layers.Layer):
    """Adds Gaussian noise to the inputs at inference too: a randomized model.

    Args:
        stddev: the noise's standard deviation.
    """

    def __init__(self, stddev: float = 0.05, **kwargs):
        super().__init__(**kwargs)
        _checks.check_number("stddev", stddev, low=0)
        self.stddev = float(stddev)
        self.seed_generator = keras.random.SeedGenerator()

    def call(self, inputs):
        noise = keras.random.normal(
            ops.shape(inputs), stddev=self.stddev, dtype=inputs.dtype, seed=self.seed_generator
        )
        return inputs + noise

    def get_config(self):
        return {**super().get_config(), "stddev": self.stddev}


def defended(model: keras.Model, preprocessing: keras.layers.Layer) -> keras.Model:
    """`model` behind the input layer `preprocessing`, as one functional model."""
    inputs = keras.Input(model.input_shape[1:])
    return keras.Model(
        inputs, model(preprocessing(inputs)), name=f"{preprocessing.name}_defended_{model.name}"
    )
