"""Network architectures by name, and checkpoints that can rebuild them.

``build_model(name, **config)`` makes a model; ``default_config(name)`` gives the full config;
``config_for_data(name, data)`` the config for a data set, and ``check_model_fits`` refuses a
model that does not fit one (a probe forward pass); ``save_checkpoint`` / ``load_checkpoint``
store and restore ``(name, config, weights)``.
"""

from weightgeo.models.checkpoint import (
    Checkpoint,
    checkpoints_compatible,
    load_checkpoint,
    save_checkpoint,
)
from weightgeo.models.cnn import FashionCNN, SmallCNN
from weightgeo.models.fit import check_model_fits, config_for_data, models_that_fit
from weightgeo.models.mlp import MLP
from weightgeo.models.registry import MODEL_NAMES, build_model, default_config
from weightgeo.models.resnet import ResNet18
from weightgeo.models.vgg import VGG

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "ResNet18",
    "VGG",
    "Checkpoint",
    "FashionCNN",
    "SmallCNN",
    "build_model",
    "check_model_fits",
    "checkpoints_compatible",
    "config_for_data",
    "default_config",
    "load_checkpoint",
    "models_that_fit",
    "save_checkpoint",
]
