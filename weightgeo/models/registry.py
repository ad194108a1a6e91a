"""Models by name: build one from ``(name, config)``, the pair a checkpoint stores."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from torch import nn

from weightgeo.errors import WeightgeoError
from weightgeo.models.cnn import FashionCNN, SmallCNN
from weightgeo.models.mlp import MLP
from weightgeo.models.resnet import ResNet18
from weightgeo.models.vgg import VGG

# name -> (builder taking the full config as keywords, default config). Defaults hold only
# JSON types (lists, not tuples) so a config survives a round trip through JSON unchanged.
_REGISTRY: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "mlp": (MLP, {"input_size": 784, "hidden": [300, 100], "num_classes": 10}),
    "fashion-cnn": (FashionCNN, {"num_classes": 20}),
    "vgg11": (
        lambda **c: VGG(depth=11, **c),
        {"num_classes": 10, "batch_norm": True, "width": 1.0},
    ),
    "vgg16": (
        lambda **c: VGG(depth=16, **c),
        {"num_classes": 10, "batch_norm": True, "width": 1.0},
    ),
    "resnet18": (ResNet18, {"num_classes": 10, "in_channels": 3, "width": 1.0}),
    "small-cnn": (
        SmallCNN,
        {"in_channels": 1, "num_classes": 10, "batch_norm": False, "image_size": 28},
    ),
}

MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise WeightgeoError(f"unknown model {name!r}; choose one of: {', '.join(MODEL_NAMES)}")


def _normalise(name: str, key: str, value: Any, default: Any) -> Any:
    """Coerce ``value`` to the JSON type of ``default``; refuse what does not fit."""
    bad = WeightgeoError(f"model {name}: {key}={value!r} is not valid (default {default!r})")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise bad
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise bad
        return float(value)
    if isinstance(default, list):
        if isinstance(value, (str, bytes)) or not hasattr(value, "__iter__"):
            raise bad
        items = list(value)
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in items):
            raise bad
        return items
    return value


def default_config(name: str, **overrides: Any) -> dict[str, Any]:
    """The full config of model ``name``: its defaults with ``overrides`` applied and checked.

    The result holds only JSON types, so ``build_model(name, **default_config(name, ...))``
    rebuilds the same architecture from a checkpoint or a config.json. Unknown names, unknown
    keys and values of the wrong type raise WeightgeoError.
    """
    _check_name(name)
    defaults = _REGISTRY[name][1]
    unknown = sorted(set(overrides) - set(defaults))
    if unknown:
        raise WeightgeoError(
            f"model {name} has no option {', '.join(map(repr, unknown))}; "
            f"its options are: {', '.join(defaults)}"
        )
    config = copy.deepcopy(defaults)
    for key, value in overrides.items():
        config[key] = _normalise(name, key, value, defaults[key])
    return config


def build_model(name: str, **config: Any) -> nn.Module:
    """A freshly initialised model ``name`` (one of MODEL_NAMES) with ``config`` over its defaults.

    Use ``torch.manual_seed`` beforehand for a reproducible initialisation.
    """
    full = default_config(name, **config)
    return _REGISTRY[name][0](**full)
