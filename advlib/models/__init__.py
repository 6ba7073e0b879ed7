"""Model wrappers: the interface between attacks and classifiers."""

from advlib.models.base import Model
from advlib.models.bpda import BPDAModelWrapper, EOTModelWrapper
from advlib.models.inspect import find_masking_layers
from advlib.models.keras import CallableModelWrapper, KerasModelWrapper, as_model
from advlib.models.loading import UnsafeModelError, load_model
from advlib.models.qnn import QNNModelWrapper
from advlib.models.torch import from_torch, load_torch_weights
from advlib.models.zoo import mlp, small_cnn, train_classifier

__all__ = [
    "BPDAModelWrapper",
    "CallableModelWrapper",
    "EOTModelWrapper",
    "KerasModelWrapper",
    "Model",
    "QNNModelWrapper",
    "UnsafeModelError",
    "as_model",
    "find_masking_layers",
    "from_torch",
    "load_model",
    "load_torch_weights",
    "mlp",
    "small_cnn",
    "train_classifier",
]
