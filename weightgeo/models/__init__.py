"""Network architectures by name, and checkpoints that can rebuild them.

``build_model(name, **config)`` makes a model; ``default_config(name)`` gives the full config;
``save_checkpoint`` / ``load_checkpoint`` store and restore ``(name, config, weights)``.
"""

from weightgeo.models.checkpoint import (
    Checkpoint,
    checkpoints_compatible,
    load_checkpoint,
    save_checkpoint,
)
from weightgeo.models.cnn import FashionCNN, SmallCNN
from weightgeo.models.mlp import MLP
from weightgeo.models.registry import MODEL_NAMES, build_model, default_config
from weightgeo.models.vgg import VGG

__all__ = [
    "MLP",
    "MODEL_NAMES",
    "VGG",
    "Checkpoint",
    "FashionCNN",
    "SmallCNN",
    "build_model",
    "checkpoints_compatible",
    "default_config",
    "load_checkpoint",
    "save_checkpoint",
]
