"""The primitives on PyTorch: autograd, eager steps, and seeded generators.

Steps run eagerly: `torch.compile` recompiles for every new batch shape and
needs a C++ compiler, and on CPUs its compile time outweighs what it saves on
attacks of tens of steps (benchmarks/attack_speed.py --backend torch).
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import torch
from keras.src.backend.torch.core import get_device, to_torch_dtype


def value_and_gradient(fn, x):
    x = keras.ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        value, aux = fn(x)
        if value.requires_grad:
            # examples are independent, so the gradient of the sum is each one's gradient
            (gradient,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        else:
            gradient = None
    # a model that cuts the input off has a zero gradient, not a missing one
    gradient = torch.zeros_like(x) if gradient is None else gradient
    aux = keras.tree.map_structure(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, aux)
    return value.detach(), gradient, aux


def compiled(fn, variables=None):
    del variables

    @functools.wraps(fn)
    def without_history(*args, **kwargs):
        # a step's outputs (losses, logits) feed the next step; recorded, each
        # would keep the autograd graph of every step before it, activations
        # included (Square's 5,000 queries on 1,000 images filled 24 GB).
        # value_and_gradient records what it differentiates, and only that.
        with torch.no_grad():
            return fn(*args, **kwargs)

    return without_history


def seed_tensor(seed_pair):
    return torch.as_tensor(np.asarray(seed_pair, np.int64))


def _sequence(seed):
    """A NumPy SeedSequence mixing both 64-bit halves of the seed pair."""
    pair = np.asarray(seed.cpu() if isinstance(seed, torch.Tensor) else seed, np.int64)
    return np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in pair])


def _generator(seed):
    generator = torch.Generator(device=get_device())
    generator.manual_seed(int(_sequence(seed).generate_state(1, np.uint64)[0]) >> 1)
    return generator


def split_seed(seed, count):
    children = _sequence(seed).spawn(count)
    return [
        torch.as_tensor(child.generate_state(2, np.uint32).astype(np.int64)) for child in children
    ]


def uniform(shape, seed, minval, maxval, dtype):
    dtype, device = to_torch_dtype(dtype), get_device()
    sample = torch.rand(tuple(shape), generator=_generator(seed), device=device, dtype=dtype)
    minval = torch.as_tensor(minval, dtype=dtype, device=device)
    maxval = torch.as_tensor(maxval, dtype=dtype, device=device)
    return minval + (maxval - minval) * sample


def normal(shape, seed, dtype):
    dtype, device = to_torch_dtype(dtype), get_device()
    return torch.randn(tuple(shape), generator=_generator(seed), device=device, dtype=dtype)


def no_gradient():
    return torch.no_grad()


def to_numpy(tensor):
    if isinstance(tensor, torch.Tensor):
        return tensor.detach().cpu().numpy()
    return np.asarray(tensor)


def descending_order(values):
    return torch.argsort(values, dim=-1, descending=True, stable=True)


def fold_seed(seed, index):
    return torch.as_tensor(seed) + torch.stack(
        [torch.zeros((), dtype=torch.int64), torch.as_tensor(index, dtype=torch.int64)]
    )


def replica():
    return 0, 1


def device():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{count} GPU(s)" if count else "CPU"
