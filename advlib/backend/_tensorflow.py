"""The primitives on TensorFlow: a gradient tape, `tf.function`, and TensorFlow's
stateless random ops."""

from __future__ import annotations

import numpy as np
import tensorflow as tf


def value_and_gradient(fn, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value, aux = fn(x)
    # a model that cuts the input off (stop_gradient, round) has a zero gradient, not a
    # missing one: attacks see it, and the diagnostics report it
    gradient = tape.gradient(value, x, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    return value, gradient, aux


def compiled(fn, variables=None):
    del variables  # tf.function reads variables as they are at each call
    return tf.function(fn, reduce_retracing=True, autograph=False)


def seed_tensor(seed_pair):
    return tf.convert_to_tensor(seed_pair, tf.int64)


def split_seed(seed, count):
    return tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), count))


def uniform(shape, seed, minval, maxval, dtype):
    return tf.random.stateless_uniform(shape, tf.cast(seed, tf.int64), minval, maxval, dtype=dtype)


def normal(shape, seed, dtype):
    return tf.random.stateless_normal(shape, tf.cast(seed, tf.int64), dtype=dtype)


def no_gradient():
    return _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def to_numpy(tensor):
    return tensor.numpy() if hasattr(tensor, "numpy") else np.asarray(tensor)


def descending_order(values):
    # top_k puts equal values in index order, as a stable sort would
    return tf.math.top_k(values, k=values.shape[-1]).indices


def fold_seed(seed, index):
    seed = tf.cast(seed, tf.int64)
    return seed + tf.stack([tf.constant(0, tf.int64), tf.cast(index, tf.int64)])


def device():
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else "CPU"
