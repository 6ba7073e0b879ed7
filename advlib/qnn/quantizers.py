"""Quantizers: small functions with straight-through gradients, and
serializable objects wrapping them for use in layers.

The objects are registered Keras serializables, so models that use them save
to `.keras` files and load back with `safe_mode=True`.
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import Any

import keras
import numpy as np
from keras import ops

from advlib import _checks, _seeding

_PACKAGE = "advlib"


def ste_sign(x):
    """Binarizes to +1 where x >= 0 and -1 elsewhere: never 0.

    Gradient: the straight-through estimator with cancellation of BinaryNet,
    upstream * 1[|x| <= 1] (the derivative of hard tanh).
    """
    if isinstance(x, keras.Variable):
        # a kernel is read outside the custom gradient, which must see a tensor
        # (TensorFlow's would otherwise ask for the variable's gradient too)
        x = ops.copy(x)
    return _ste_sign(ops.convert_to_tensor(x))


def _sign(x):
    """+1 where x >= 0, -1 elsewhere, in x's dtype."""
    return ops.where(x >= 0, ops.ones_like(x), -ops.ones_like(x))


@ops.custom_gradient
def _ste_sign(x):
    def grad(*args, upstream=None):
        # TensorFlow and JAX pass the upstream gradient alone, PyTorch by keyword
        upstream = args[-1] if upstream is None else upstream
        return upstream * ops.cast(ops.abs(x) <= 1, upstream.dtype)

    return _sign(x), grad


SURROGATES = ("ste", "identity", "smooth", "zero")
_surrogate = contextvars.ContextVar("advlib_sign_surrogate", default=("ste", 1.0))


@contextlib.contextmanager
def sign_surrogate(name: str = "ste", temperature: float = 1.0):
    """Chooses the backward pass of `SteSign` for the models traced inside.

    The forward pass stays the exact sign, so predictions never change
    (BPDA, Athalye et al. 2018). The backward pass is:

    - "ste": BinaryNet's straight-through estimator, 1[|x| <= 1];
    - "identity": the plain straight-through estimator, 1;
    - "smooth": the derivative of tanh(x / temperature);
    - "zero": the true derivative of sign, 0 almost everywhere: the naive
      gradient that makes binary networks look robust.

    Example:
        >>> with sign_surrogate("smooth", temperature=0.5):
        ...     logits = model(x)
    """
    _checks.check_choice("surrogate", name, SURROGATES)
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    token = _surrogate.set((name, float(temperature)))
    try:
        yield
    finally:
        _surrogate.reset(token)


def sign_with_surrogate(x, name: str, temperature: float = 1.0):
    """sign(x) in {-1, +1} forward, the named surrogate's derivative backward."""
    if name == "ste":
        return ste_sign(x)
    forward = _sign(x)
    if name == "zero":
        proxy = ops.zeros_like(x) * x  # keeps a (zero) gradient path, never None
    elif name == "identity":
        proxy = x
    else:
        proxy = ops.tanh(x / temperature)
    return proxy + ops.stop_gradient(forward - proxy)


def _ste_round(x):
    """round(x) forward, identity backward."""
    return x + ops.stop_gradient(ops.round(x) - x)


def _ste_clip(x, low: float, high: float):
    """clip(x, low, high) forward; backward, 1 on [low, high], ends included, and 0
    outside. Spelt out because the backends differ at the ends: TensorFlow's
    `clip_by_value` passes the whole gradient there, JAX's `clip` half of it, and
    inputs sit exactly on the ends (pixels of 0 and 1, weights clipped to +-1)."""
    inside = ops.stop_gradient(ops.cast((x >= low) & (x <= high), x.dtype))
    # exact forward: x + 0 inside, 0 + clip(x) outside
    return x * inside + ops.stop_gradient(ops.clip(x, low, high) - x * inside)


def quantize_k_bits(x, k: int, clip_min: float = -1.0, clip_max: float = 1.0):
    """Uniform quantization to 2**k levels on [clip_min, clip_max], with an STE.

    The gradient passes unchanged inside the clipping range and is zero
    outside it (the clipped straight-through estimator).
    """
    levels = 2**k - 1
    scale = (clip_max - clip_min) / levels
    clipped = _ste_clip(x, clip_min, clip_max)
    return _ste_round((clipped - clip_min) / scale) * scale + clip_min


class Quantizer(keras.layers.Layer):
    """Base class of quantizers: layers without weights, applied elementwise.

    `precision` is the number of bits of the quantized value, used by the
    memory summary and the export to the bit-packed engine.
    """

    precision: int = 32

    def compute_output_shape(self, input_shape):
        return input_shape


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SteSign(Quantizer):
    """`ste_sign` as a layer: +1 / -1 with BinaryNet's hard-tanh STE.

    Example:
        >>> QuantDense(256, input_quantizer=SteSign(), kernel_quantizer=SteSign())
    """

    precision = 1

    def call(self, inputs):
        name, temperature = _surrogate.get()
        return sign_with_surrogate(inputs, name, temperature)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticBinarization(Quantizer):
    """Stochastic binarization of the QNN paper, for weights.

    In training, x becomes +1 with probability hard_sigmoid(x) =
    clip((x + 1) / 2, 0, 1), else -1; the draws are reproducible from `seed`.
    In inference it is deterministic, like `ste_sign`. The gradient is the
    same straight-through estimator as `ste_sign`.

    Args:
        seed: seed of the random draws. None: drawn from the generators that
            `keras.utils.set_random_seed` seeds, and kept in the config.
    """

    precision = 1

    def __init__(self, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        _checks.check_seed(seed)
        self.seed = _seeding.seed_or_draw(seed)
        self._generator = keras.random.SeedGenerator(self.seed)

    def call(self, inputs, training=None):
        deterministic = ste_sign(inputs)
        if not training:
            return deterministic
        probability = ops.clip((inputs + 1) / 2, 0, 1)
        uniform = keras.random.uniform(ops.shape(inputs), seed=self._generator, dtype=inputs.dtype)
        sampled = ops.where(uniform < probability, ops.ones_like(inputs), -ops.ones_like(inputs))
        # forward: the sample; backward: the STE of the deterministic sign
        return deterministic + ops.stop_gradient(sampled - deterministic)

    def get_config(self):
        return {**super().get_config(), "seed": self.seed}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class KBitQuantizer(Quantizer):
    """Uniform k-bit quantizer on [clip_min, clip_max] with a clipped STE.

    Args:
        k: bits, 1 to 8. With k = 1 the two levels are clip_min and clip_max.
        clip_min: the quantization range's low end.
        clip_max: its high end.
    """

    def __init__(self, k: int = 2, clip_min: float = -1.0, clip_max: float = 1.0, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= 8:
            raise ValueError(f"k must be an integer from 1 to 8, got {k!r}.")
        if not clip_min < clip_max:
            raise ValueError(f"clip_min must be below clip_max, got {clip_min} and {clip_max}.")
        self.k, self.clip_min, self.clip_max = int(k), float(clip_min), float(clip_max)
        self.precision = self.k

    def call(self, inputs):
        return quantize_k_bits(inputs, self.k, self.clip_min, self.clip_max)

    def get_config(self):
        return {
            **super().get_config(),
            "k": self.k,
            "clip_min": self.clip_min,
            "clip_max": self.clip_max,
        }


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Uint8Input(Quantizer):
    """Maps inputs in [0, 1] to the integers round(255 x), 0 to 255.

    The first layer of a binary network sees 8-bit inputs, as in the QNN
    paper. With integer inputs and +-1 weights, float32 sums are exact, so the
    bit-plane engine reproduces the layer bit for bit. The gradient is the
    STE of the rounding, scaled by 255.
    """

    precision = 8

    def call(self, inputs):
        return _ste_round(_ste_clip(inputs, 0.0, 1.0) * 255.0)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SteppedInput(Uint8Input):
    """Inputs in [0, 1] on a coarse grid: the integers k = round(l / (255 step)) of
    the 8-bit levels l = round(255 x), from 0 to about 1 / step.

    The input quantization of EEV (Jia & Rinard 2020, a step of 0.61 on MNIST):
    an eps-ball then covers one or two grid values of most pixels, and the
    verifier fixes those pixels before it solves. The 8-bit level comes first,
    as in `Uint8Input`, because the exported engine reads 8-bit pixels: it
    maps each of the 256 levels through `table()`, which this layer computes,
    so that the engine agrees with it bit for bit. The output is the integer
    k (the BatchNorm after the layer learns the scale); the gradient is the
    straight-through estimator's, 1 / step inside [0, 1].

    Args:
        step: the grid's spacing in the units of the inputs, from 1/255 (every
            8-bit level) to 1 (two values).

    Example:
        >>> QuantConv2D(16, 4, strides=2, input_quantizer=SteppedInput(0.61),
        ...             kernel_quantizer="ste_sign", use_bias=False)
    """

    def __init__(self, step: float = 0.61, **kwargs: Any):
        super().__init__(**kwargs)
        # below 1/255, two neighbouring 8-bit levels could skip a grid value, and the
        # verifier counts on every value between two reachable ones being reachable
        self.step = float(_checks.check_number("step", step, low=1 / 255, high=1.0))

    @property
    def precision(self) -> int:  # type: ignore[override]
        """Bits of the largest grid value."""
        return max(int(self.table().max()).bit_length(), 1)

    def call(self, inputs):
        return _ste_round(super().call(inputs) * (1.0 / (255.0 * self.step)))

    def table(self) -> np.ndarray:
        """The grid value of each 8-bit level, (256,) uint8: the layer's own output
        on the inputs level / 255, which it maps back to their levels."""
        levels = np.arange(256, dtype=np.float32)
        inputs = levels / np.float32(255)
        own = ops.convert_to_numpy(Uint8Input.call(self, ops.convert_to_tensor(inputs)))
        if not np.array_equal(own, levels):  # float32 guarantees it; checked, not assumed
            raise AssertionError("level / 255 does not round back to its 8-bit level.")
        return ops.convert_to_numpy(self.call(ops.convert_to_tensor(inputs))).astype(np.uint8)

    def get_config(self):
        return {**super().get_config(), "step": self.step}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class WeightClip(keras.constraints.Constraint):
    """Clips latent real-valued weights to [-clip_value, clip_value] after each update."""

    def __init__(self, clip_value: float = 1.0):
        self.clip_value = float(clip_value)

    def __call__(self, w):
        return keras.ops.clip(w, -self.clip_value, self.clip_value)

    def get_config(self):
        return {"clip_value": self.clip_value}


def ste_step(x):
    """1 where x >= 0 and 0 elsewhere; gradient: the identity (straight through).

    The gate of a learned weight mask (EEV's BinMask): a weight takes part
    where its mask is non-negative.
    """
    return x + ops.stop_gradient(ops.cast(x >= 0, x.dtype) - x)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskInitializer(keras.initializers.Initializer):
    """|N(0, stddev)|: every weight starts in its layer's mask, each at its own
    small distance from being dropped (EEV's BinMask initialization).

    Args:
        stddev: the standard deviation of the normal draw.
        seed: as for Keras's initializers.
    """

    def __init__(self, stddev: float = 0.01, seed: int | None = None):
        self.stddev = float(_checks.check_number("stddev", stddev, low=0))
        self.seed = seed
        self._normal = keras.initializers.RandomNormal(stddev=self.stddev, seed=seed)

    def __call__(self, shape, dtype=None):
        return ops.abs(self._normal(shape, dtype=dtype))

    def get_config(self):
        return {"stddev": self.stddev, "seed": self.seed}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MaskDecay(keras.regularizers.Regularizer):
    """`decay` times the number of weights a mask keeps: the pressure towards
    sparse layers, whose units the verifier decides from fewer inputs. Its
    gradient is `decay` on every kept weight (straight through the gate), as
    EEV's weight decay on BinMask.

    Args:
        decay: the penalty per kept weight, added to the training loss.
    """

    def __init__(self, decay: float = 1e-5):
        self.decay = float(_checks.check_number("decay", decay, low=0))

    def __call__(self, mask):
        return self.decay * ops.sum(ste_step(mask))

    def get_config(self):
        return {"decay": self.decay}


# Larq's names where advlib has the same quantizer, and advlib's own
_BY_NAME = {"ste_sign": SteSign, "stochastic": StochasticBinarization, "uint8": Uint8Input}
_K_BIT_NAMES = [f"{k}bit" for k in range(1, 9)]
# quantizer functions, as Larq users pass them (kernel_quantizer=ste_sign)
_BY_FUNCTION = {ste_sign: SteSign}
_CONSTRAINTS = {"weight_clip": WeightClip}


def get(identifier) -> Quantizer | None:
    """A quantizer from None, a name ("ste_sign", "stochastic", "uint8",
    "1bit" ... "8bit"), the function `ste_sign`, a `Quantizer` class, a
    config dict, or a `Quantizer` (returned as is)."""
    if identifier is None or isinstance(identifier, Quantizer):
        return identifier
    if isinstance(identifier, dict):
        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, type) and issubclass(identifier, Quantizer):
        return identifier()
    if isinstance(identifier, str) and identifier in _K_BIT_NAMES:
        return KBitQuantizer(int(identifier[:-3]))
    if isinstance(identifier, str) and identifier in _BY_NAME:
        return _BY_NAME[identifier]()
    if callable(identifier) and identifier in _BY_FUNCTION:
        return _BY_FUNCTION[identifier]()
    raise ValueError(
        f"quantizer must be None, a Quantizer, the function ste_sign, or one "
        f"of {sorted(_BY_NAME) + _K_BIT_NAMES}, got {identifier!r}."
    )


def get_constraint(identifier):
    """A kernel constraint, with Larq's name "weight_clip" for `WeightClip(1.0)`;
    anything else goes to `keras.constraints.get`."""
    if isinstance(identifier, str) and identifier in _CONSTRAINTS:
        return _CONSTRAINTS[identifier]()
    return keras.constraints.get(identifier)
