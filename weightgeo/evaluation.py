"""Evaluating a network at θ: logits, loss and accuracy on a data set, in large batches.

The one place evaluation is written: training logs and the applications' reports call
:func:`evaluate` (or :func:`loss_and_correct` for the sums on the device); connect's evaluation
of many points along a path builds on the same sums. Evaluation runs in eval mode (batch norm on the given running statistics,
dropout off) and reads its result from the device once, at the end (logging and reports).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, mask_logits


@torch.no_grad()
def predict(
    model: FunctionalModel,
    theta: Tensor,
    x: Tensor,
    batch_size: int = 1000,
    buffers: Mapping[str, Tensor] | None = None,
) -> Tensor:
    """Logits f(x; θ) in eval mode, computed in batches of ``batch_size``."""
    return torch.cat([model(theta, x[i : i + batch_size].to(theta.device), buffers)
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def loss_and_correct(
    model: FunctionalModel,
    theta: Tensor,
    data,
    *,
    buffers: Mapping[str, Tensor] | None = None,
    units: Tensor | None = None,
    batch_size: int = 1000,
) -> tuple[Tensor, Tensor]:
    """(summed cross-entropy, number correct) of f(·; θ) on ``data``, as tensors on θ's device."""
    total = torch.zeros((), device=theta.device, dtype=torch.float64)
    correct = torch.zeros((), device=theta.device, dtype=torch.long)
    xs, ys = distributed.shard((data.x, data.y))  # each rank its part; the sums are added up
    for i in range(0, len(ys), batch_size):
        logits = mask_logits(model(theta, xs[i : i + batch_size].to(theta.device), buffers), units)
        target = ys[i : i + batch_size].to(theta.device)
        total += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(-1) == target).sum()
    return distributed.total(total), distributed.total(correct)


def evaluate(
    model: FunctionalModel,
    theta: Tensor,
    data,
    *,
    buffers: Mapping[str, Tensor] | None = None,
    units: Tensor | None = None,
    batch_size: int = 1000,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of f(·; θ) on ``data`` (an object with ``x`` and ``y``).

    Args:
        model: the network as a function of θ.
        theta: the point.
        data: the labelled examples.
        buffers: batch-norm statistics to use (default: the model's own).
        units: a bool vector of the output units that count (None: all).
        batch_size: examples per forward pass.

    Returns:
        ``{"loss": …, "accuracy": …}`` as floats (read from the device: for logs and reports).

    Raises:
        WeightgeoError: ``data`` is empty.
    """
    if len(data.y) == 0:
        raise WeightgeoError("cannot evaluate on an empty data set")
    total, correct = loss_and_correct(model, theta, data, buffers=buffers, units=units, batch_size=batch_size)
    n = len(data.y)
    return {"loss": float(total) / n, "accuracy": float(correct) / n}
