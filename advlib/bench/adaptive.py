"""The model variants of `--adaptive`: gradients that go around non-differentiable parts."""

from __future__ import annotations

import numpy as np

from advlib.models.base import Model
from advlib.models.bpda import BPDAModelWrapper, EOTModelWrapper
from advlib.models.inspect import find_masking_layers, logit_spread, quantized_units
from advlib.models.qnn import QNNModelWrapper

# (name, surrogate, temperature): BinaryNet's STE, the plain BPDA identity, and a
# smooth sign whose derivative reaches beyond the STE window
SIGN_SURROGATES = (("ste", "ste", 1.0), ("identity", "identity", 1.0), ("smooth-1", "smooth", 1.0))
EOT_SAMPLES = 8


def variants(wrapped, x: np.ndarray) -> dict[str, Model]:
    """Adaptive versions of `wrapped`, by name; the forward pass of each is unchanged.

    - For QNNs (sign or quantized activations): the sign surrogates of
      `SIGN_SURROGATES` other than the one in use.
    - For any Sequential or functional model: BPDA (identity backward)
      through the layers whose gradient is zero on `x`, if there are any.
    - For randomized models (logits that differ between calls): EOT over
      `EOT_SAMPLES` calls.

    Returns:
        An ordered dict; empty when nothing in the model needs adapting.
    """
    out: dict[str, Model] = {}
    if logit_spread(wrapped, x, calls=2)["max_abs_difference"] > 0:
        out[f"eot-{EOT_SAMPLES}"] = EOTModelWrapper(wrapped, samples=EOT_SAMPLES)
    keras_model = getattr(wrapped, "model", None)
    if keras_model is None:
        return out
    if quantized_units(wrapped):
        current = (getattr(wrapped, "surrogate", "ste"), getattr(wrapped, "temperature", 1.0))
        for name, surrogate, temperature in SIGN_SURROGATES:
            if (surrogate, temperature) != current:
                out[name] = QNNModelWrapper(
                    keras_model,
                    surrogate=surrogate,
                    temperature=temperature,
                    engine=getattr(wrapped, "engine", None),
                )
    masked = find_masking_layers(keras_model, x)
    if masked:
        out["bpda"] = BPDAModelWrapper(keras_model, layers=masked)
    return out
