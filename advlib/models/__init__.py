"""Model wrappers: the interface between attacks and classifiers."""

from advlib.models.base import Model, as_model
from advlib.models.keras import CallableModelWrapper, KerasModelWrapper
from advlib.models.qnn import QNNModelWrapper
from advlib.models.zoo import mlp, small_cnn, train_classifier

__all__ = ["CallableModelWrapper", "KerasModelWrapper", "Model", "QNNModelWrapper", "as_model",
           "mlp",
           "small_cnn", "train_classifier"]
