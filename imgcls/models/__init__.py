"""Model registry: `MODELS.list()` names every builder; `build_model` makes a Classifier."""

from imgcls.models.base import MODELS, Classifier, ModelError, ModelMeta
from imgcls.models.factory import build_model, default_input_size, default_scratch_lr

__all__ = [
    "MODELS",
    "Classifier",
    "ModelError",
    "ModelMeta",
    "build_model",
    "default_input_size",
    "default_scratch_lr",
]
