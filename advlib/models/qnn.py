"""`QNNModelWrapper`: attacks on quantized networks, with a chosen sign surrogate."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

# registers the QNN layers for keras.models.load_model
import advlib.qnn.layers  # noqa: F401
from advlib import backend
from advlib.models.keras import KerasModelWrapper


class QNNModelWrapper(KerasModelWrapper):
    """A `KerasModelWrapper` for networks with `SteSign` activations.

    The sign has no useful gradient: differentiated naively it is zero almost
    everywhere and the network looks robust when it is not (Galloway et al.
    2018; Gupta & Ajanthan 2020). Attacks through this wrapper keep the exact
    sign forward and use a surrogate backward (BPDA):

    Args:
        model: a Keras QNN (from `advlib.qnn`).
        surrogate: "ste" (BinaryNet's 1[|x| <= 1], the default), "identity",
            "smooth" (the derivative of tanh(x / temperature)) or "zero" (the
            naive gradient, for demonstrations of gradient masking).
        temperature: the smooth sign's temperature.
        engine: a `BinaryEngine`, or the path of an exported `.npz`. When
            given, `predict_logits` and `predict_classes` run the exact binary engine, so
            robust accuracy is judged by binary inference itself.

    Example:
        >>> wrapped = QNNModelWrapper(qnn, surrogate="smooth", temperature=0.5)
        >>> x_adv = ProjectedGradientDescent(wrapped).generate_np(x, eps=0.1)
    """

    def __init__(
        self,
        model: keras.Model,
        surrogate: str = "ste",
        temperature: float = 1.0,
        engine: str | object | None = None,
        from_logits: bool | None = None,
    ):
        from advlib.qnn.quantizers import sign_surrogate

        with sign_surrogate(surrogate, temperature):  # validates both
            pass
        super().__init__(model, from_logits=from_logits)
        self.surrogate, self.temperature = surrogate, float(temperature)
        from advlib.qnn.engine import BinaryEngine

        if isinstance(engine, str):
            engine = BinaryEngine.load(engine)
        if engine is not None and not isinstance(engine, BinaryEngine):
            raise TypeError(
                f"engine must be a BinaryEngine, the path of an exported .npz or "
                f"None, got {type(engine).__name__}."
            )
        self.engine = engine
        # attacks query it on every step: the bit-exact BLAS twin is several times faster
        self._predictor = None if engine is None else engine.on_blas()

    def get_logits(self, x, training: bool = False):
        from advlib.qnn.quantizers import sign_surrogate

        with sign_surrogate(self.surrogate, self.temperature):
            return super().get_logits(x, training)

    def predict_logits(self, x):
        """Logits of the exact binary engine when there is one (gradient-free callers
        such as `SPSA` then query the bit-packed network itself)."""
        if self.engine is None:
            return super().predict_logits(x)
        assert self._predictor is not None  # set with the engine
        return ops.convert_to_tensor(self._predictor.predict(np.asarray(backend.to_numpy(x))))
