"""The primitives on PyTorch: autograd, eager steps, and seeded generators.

Steps run eagerly: `torch.compile` recompiles for every new batch shape and
needs a C++ compiler, and on CPUs its compile time outweighs what it saves on
attacks of tens of steps (benchmarks/attack_speed.py --backend torch).
"""

from __future__ import annotations

import numpy as np
import torch


def value_and_gradient(fn, x):
    from keras import ops

    x = ops.convert_to_tensor(x).detach().requires_grad_(True)
    with torch.enable_grad():
        value, aux = fn(x)
        if value.requires_grad:
            # examples are independent, so the gradient of the sum is each one's gradient
            (gradient,) = torch.autograd.grad(value.sum(), x, allow_unused=True)
        else:
            gradient = None
    # a model that cuts the input off has a zero gradient, not a missing one
    gradient = torch.zeros_like(x) if gradient is None else gradient
    return value.detach(), gradient, _detached(aux)


def _detached(tree):
    if isinstance(tree, torch.Tensor):
        return tree.detach()
    if isinstance(tree, tuple):
        return (
            type(tree)(*map(_detached, tree))
            if hasattr(tree, "_fields")
            else tuple(map(_detached, tree))
        )
    if isinstance(tree, list):
        return [_detached(item) for item in tree]
    return tree


def compiled(fn, variables=None):
    del variables
    return fn


def _device():
    from keras.src.backend.torch.core import get_device

    return get_device()


def seed_tensor(seed_pair):
    return torch.as_tensor(np.asarray(seed_pair, np.int64))


def _generator(seed):
    pair = np.asarray(seed.cpu() if isinstance(seed, torch.Tensor) else seed, np.int64)
    # one 63-bit seed from the pair; SeedSequence mixes both halves
    state = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in pair])
    generator = torch.Generator(device=_device())
    generator.manual_seed(int(state.generate_state(1, np.uint64)[0]) >> 1)
    return generator


def split_seed(seed, count):
    pair = np.asarray(seed.cpu() if isinstance(seed, torch.Tensor) else seed, np.int64)
    children = np.random.SeedSequence([int(v) & 0xFFFFFFFFFFFFFFFF for v in pair]).spawn(count)
    return [
        torch.as_tensor(child.generate_state(2, np.uint32).astype(np.int64)) for child in children
    ]


def _dtype(dtype):
    from keras.src.backend.torch.core import to_torch_dtype

    return to_torch_dtype(dtype)


def uniform(shape, seed, minval, maxval, dtype):
    dtype = _dtype(dtype)
    sample = torch.rand(tuple(shape), generator=_generator(seed), device=_device(), dtype=dtype)
    minval = torch.as_tensor(minval, dtype=dtype, device=_device())
    maxval = torch.as_tensor(maxval, dtype=dtype, device=_device())
    return minval + (maxval - minval) * sample


def normal(shape, seed, dtype):
    generator = _generator(seed)
    return torch.randn(tuple(shape), generator=generator, device=_device(), dtype=_dtype(dtype))


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


def device():
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return f"{count} GPU(s)" if count else "CPU"
