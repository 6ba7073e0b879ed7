"""Quantized neural networks (Hubara et al.; BinaryNet): Keras 3 layers with
straight-through gradients, builders, export, and the bit-packed engine.

`advlib.qnn.engine` imports NumPy only; everything else here needs Keras (on
any of its backends) and is imported on first use, so the engine runs where
only NumPy (and CuPy) is installed.
"""

import importlib

_EXPORTS = {
    "ste_sign": "quantizers",
    "quantize_k_bits": "quantizers",
    "Quantizer": "quantizers",
    "SteSign": "quantizers",
    "StochasticBinarization": "quantizers",
    "KBitQuantizer": "quantizers",
    "Uint8Input": "quantizers",
    "SteppedInput": "quantizers",
    "WeightClip": "quantizers",
    "ste_step": "quantizers",
    "MaskInitializer": "quantizers",
    "MaskDecay": "quantizers",
    "sign_surrogate": "quantizers",
    "sign_with_surrogate": "quantizers",
    "check_exactness": "exactness",
    "QuantDense": "layers",
    "QuantConv2D": "layers",
    "binary_mlp": "models",
    "binary_cnn": "models",
    "conv_small": "models",
    "summary": "memory_summary",
    "export": "exporter",
    "VerifiableModel": "stability",
    "interval_bounds": "stability",
    "instability": "stability",
    "cardinality_bound_decay": "stability",
    "CounterexampleMixing": "counterexamples",
    "MixedBatches": "counterexamples",
}

__all__ = sorted(_EXPORTS) + ["engine"]


def __getattr__(name):
    if name in _EXPORTS:
        module = importlib.import_module(f"advlib.qnn.{_EXPORTS[name]}")
        return getattr(module, name)
    if name == "engine":
        return importlib.import_module("advlib.qnn.engine")
    raise AttributeError(f"module 'advlib.qnn' has no attribute {name!r}")
