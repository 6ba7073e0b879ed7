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
    return _OpenBatch(fn)


class _OpenBatch:
    """`fn` as one `tf.function` per combination of Python arguments and array
    dtypes and shapes past the batch dimension, each traced once with the batch
    dimension open.

    `reduce_retracing` alone traces once for the first batch size and again,
    generalized, for the second, and attacks always meet a second one (the
    last batch, the examples still unbroken): a trace through a model's
    gradient costs a second or more. It also generalizes across models: a
    module-level step called on images and then on vectors would be traced for
    inputs of unknown rank, which no step can reshape. Here no trace ever sees
    two shapes."""

    def __init__(self, fn):
        self._fn = fn
        self._functions: dict = {}
        self._fallback = None

    def __call__(self, *args, **kwargs):
        try:
            key = _trace_key((args, kwargs))
            function = self._functions.get(key)
        except TypeError:  # an unhashable argument: leave the tracing to TensorFlow
            if self._fallback is None:
                self._fallback = tf.function(self._fn, reduce_retracing=True, autograph=False)
            return self._fallback(*args, **kwargs)
        if function is None:
            function = tf.function(self._fn, autograph=False)
            function.get_concrete_function(*_open(args), **_open(kwargs))
            self._functions[key] = function
        return function(*args, **kwargs)

    def experimental_get_tracing_count(self) -> int:
        """How many traces were made, as `tf.function`'s method counts them."""
        functions = list(self._functions.values()) + [self._fallback]
        return sum(f.experimental_get_tracing_count() for f in functions if f is not None)


def _rank(value) -> int | None:
    """The rank of an array argument (None if a traced tensor's is unknown)."""
    return value.ndim if isinstance(value, np.ndarray) else value.shape.rank


def _is_array(value) -> bool:
    return isinstance(value, (tf.Tensor, np.ndarray)) and bool(_rank(value))


def _trace_key(structure) -> tuple:
    """What fixes a trace besides the arrays' batch sizes: the Python values, and
    each array's dtype and shape past the first dimension."""
    return tuple(
        (tf.as_dtype(value.dtype), _rank(value), tuple(value.shape[1:]) if _is_array(value) else ())
        if isinstance(value, (tf.Tensor, np.ndarray))
        else value
        for value in tf.nest.flatten(structure)
    )


def _open(structure):
    def spec(value):
        if _is_array(value):
            return tf.TensorSpec((None, *value.shape[1:]), tf.as_dtype(value.dtype))
        return value

    return tf.nest.map_structure(spec, structure)


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


def replica():
    context = tf.distribute.get_replica_context()
    replica_id = 0 if context is None else context.replica_id_in_sync_group
    return replica_id, tf.distribute.get_strategy().num_replicas_in_sync


def device():
    gpus = tf.config.list_physical_devices("GPU")
    return f"{len(gpus)} GPU(s)" if gpus else "CPU"
