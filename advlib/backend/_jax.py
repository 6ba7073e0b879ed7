"""The primitives on JAX: `jax.value_and_grad`, `jax.jit` with the model's
variables passed in (never baked into the compiled code as constants), and
JAX's counter-based random numbers."""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import numpy as np
from keras import StatelessScope


def value_and_gradient(fn, x):
    def summed(x):
        value, aux = fn(x)
        # examples are independent, so the gradient of the sum is each one's gradient
        return jnp.sum(value), (value, aux)

    (_, (value, aux)), gradient = jax.value_and_grad(summed, has_aux=True)(x)
    return value, gradient, aux


def _is_array(leaf):
    return isinstance(leaf, (jax.Array, np.ndarray, np.generic))


class _Compiled:
    """`jax.jit` over `fn`'s array arguments; every other argument (a norm, a loss
    function, a flag) is static, as a Python value is in a `tf.function` trace."""

    def __init__(self, fn, variables):
        self._fn = fn
        self._variables = variables or list
        self._traces: dict = {}

    def __call__(self, *args, **kwargs):
        leaves, treedef = jax.tree_util.tree_flatten((args, kwargs))
        arrays = tuple(_is_array(leaf) for leaf in leaves)
        static = tuple(leaf for leaf, is_array in zip(leaves, arrays) if not is_array)
        key = (treedef, arrays, static)
        if key not in self._traces:
            self._traces[key] = jax.jit(self._traced(treedef, arrays, static))
        variables = list(self._variables())
        values = [variable.value for variable in variables]
        dynamic = [leaf for leaf, is_array in zip(leaves, arrays) if is_array]
        outputs, updated = self._traces[key](values, dynamic)
        # state that the call advanced (a random layer's seed, say) is kept, as in Keras
        for variable, value in zip(variables, updated):
            if value is not None:
                variable.assign(value)
        return outputs

    def _traced(self, treedef, arrays, static):
        def run(values, dynamic):
            dynamic_iter, static_iter = iter(dynamic), iter(static)
            leaves = [next(dynamic_iter) if a else next(static_iter) for a in arrays]
            args, kwargs = jax.tree_util.tree_unflatten(treedef, leaves)
            variables = list(self._variables())
            with StatelessScope(state_mapping=list(zip(variables, values))) as scope:
                outputs = self._fn(*args, **kwargs)
            # only the variables the call assigned come back, so that a call writes
            # nothing back unless it advanced some state
            current = [scope.get_current_value(variable) for variable in variables]
            updated = [new if new is not old else None for new, old in zip(current, values)]
            return outputs, updated

        return run


def compiled(fn, variables=None):
    return _Compiled(fn, variables)


def seed_tensor(seed_pair):
    # a raw key from both 64-bit halves: casting them to uint32 would drop high bits
    words = [int(v) & 0xFFFFFFFFFFFFFFFF for v in np.asarray(seed_pair, np.int64)]
    return jnp.asarray(np.random.SeedSequence(words).generate_state(2, np.uint32))


def split_seed(seed, count):
    return list(jax.random.split(seed.astype(jnp.uint32), count))


def uniform(shape, seed, minval, maxval, dtype):
    return jax.random.uniform(
        seed.astype(jnp.uint32), tuple(shape), dtype=dtype, minval=minval, maxval=maxval
    )


def normal(shape, seed, dtype):
    return jax.random.normal(seed.astype(jnp.uint32), tuple(shape), dtype=dtype)


def no_gradient():
    return contextlib.nullcontext()


def to_numpy(tensor):
    # a copy: NumPy views of JAX arrays are read-only, and callers write into results
    return np.array(tensor)


def descending_order(values):
    # lax.top_k puts equal values in index order, as a stable sort would
    return jax.lax.top_k(values, values.shape[-1])[1]


def fold_seed(seed, index):
    return jax.random.fold_in(seed.astype(jnp.uint32), index)


def replica():
    return 0, 1


def device():
    gpus = [d for d in jax.devices() if d.platform == "gpu"]
    return f"{len(gpus)} GPU(s)" if gpus else "CPU"
