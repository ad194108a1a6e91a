"""Does a model fit a data set? Its config from the data, and a probe forward pass on one example.

A model fits a data set when one of its inputs goes through it and comes out as one row of at
least as many logits as the data has classes. Which models fit is found by trying each one
(a freshly built model of the registry, configured from the data), never from a list of names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.models.registry import MODEL_NAMES, build_model, default_config

if TYPE_CHECKING:
    from weightgeo.data.core import Data

# config key -> its value for inputs of shape C×H×W; a model takes the keys its config has
_SHAPE_KEYS: dict[str, Callable[[tuple[int, ...]], int]] = {
    "input_size": lambda shape: int(math.prod(shape)),
    "in_channels": lambda shape: int(shape[0]),
    "image_size": lambda shape: int(shape[-1]),
}


def config_for_data(name: str, data: Data, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Model ``name``'s full config for ``data``: ``num_classes`` and whichever of input_size,
    in_channels and image_size the model has are taken from the data unless ``config`` sets them."""
    config = dict(config or {})
    config.setdefault("num_classes", data.num_classes)
    keys = default_config(name)
    for key, value_for in _SHAPE_KEYS.items():
        if key in keys:
            config.setdefault(key, value_for(data.input_shape))
    return default_config(name, **config)


def probe(forward: Callable[[Tensor], Tensor], data: Data) -> str | None:
    """Why ``forward`` (x ↦ logits) does not fit ``data``, or None when it does.

    One forward pass without gradients on the data's first example, on its device.
    """
    try:
        with torch.no_grad():
            out = forward(data.x[:1])
    except (RuntimeError, ValueError, IndexError) as exc:  # PyTorch's shape-mismatch errors
        detail = " ".join(str(exc).split())
        return f"its forward pass fails ({detail[:120]}{'…' if len(detail) > 120 else ''})"
    if out.dim() != 2 or out.shape[0] != 1:
        return f"it gives outputs of shape {tuple(out.shape[1:])} per input, not a row of logits"
    if out.shape[1] < data.num_classes:
        return f"it has {out.shape[1]} outputs for {data.num_classes} classes"
    return None


def models_that_fit(data: Data) -> list[str]:
    """The registry's models that fit ``data`` when configured from it (each one tried)."""
    sample = data.subset(slice(0, 1)).to("cpu")
    fitting = []
    with torch.random.fork_rng(devices=[]):  # building models must not disturb the caller's draws
        for name in MODEL_NAMES:
            model = build_model(name, **config_for_data(name, sample)).eval()
            if probe(model, sample) is None:
                fitting.append(name)
    return fitting


def check_model_fits(
    name: str, forward: Callable[[Tensor], Tensor], data: Data, what: str | None = None
) -> None:
    """Refuse, in one line, a model whose probe forward pass does not fit ``data``.

    Args:
        name: the model's name (for the message).
        forward: x ↦ logits of the model as it will be used (eval mode).
        data: a non-empty data set of the inputs and classes the model will meet.
        what: how to call the data in the message (default its name).

    Raises:
        WeightgeoError: naming the model, the data's input shape and classes, why, and the
            models that fit.
    """
    reason = probe(forward, data)
    if reason is None:
        return
    shape = "×".join(map(str, data.input_shape))
    raise WeightgeoError(
        f"model {name} does not fit {what or data.name} (inputs {shape}, {data.num_classes} "
        f"classes): {reason}; models that fit: {', '.join(models_that_fit(data)) or 'none'}"
    )
