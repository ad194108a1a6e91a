"""Losses for the optimisation loop, as functions ``loss(θ, batch)`` of a flat weight vector.

- :class:`SupervisedLoss`: mean cross-entropy on labelled batches (training, fine-tuning), optionally
  restricted to some output units (continual learning's heads);
- :class:`DistillationLoss`: ½ mean_x ||f(x; θ) − f(x; θ₀)||² toward a frozen network on unlabelled
  inputs — the squared output distance whose Hessian at θ₀ is the output metric.

Batch norm and dropout run in train mode (batch statistics, dropout on) on a private copy of the
buffers, updated in place and saved with a checkpoint (``state_dict``); the user's module and the
:class:`~weightgeo.functional.FunctionalModel`'s own buffers never change. A network with neither
runs in eval mode.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightgeo import distributed
from weightgeo.functional import FunctionalModel, as_functional, mask_logits

DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
"""torch's dropout layers: random in train mode, the identity in eval mode."""


def needs_train_mode(model: FunctionalModel) -> bool:
    """Whether training differs from evaluation: the network has batch norm or dropout."""
    return model.has_batch_norm or any(isinstance(m, DROPOUT) for m in model.module.modules())


class NetworkLoss:
    """Base of the losses of one network: logits in train mode on private buffers where needed."""

    def __init__(
        self,
        model: nn.Module | FunctionalModel,
        *,
        train_mode: bool | None = None,
        buffers: Mapping[str, Tensor] | None = None,
    ) -> None:
        self.model = as_functional(model)
        self.train_mode = needs_train_mode(self.model) if train_mode is None else bool(train_mode)
        source = self.model.buffers if buffers is None else buffers
        self.buffers: dict[str, Tensor] = {name: b.clone() for name, b in source.items()}

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(x; θ): train mode (buffers updated) where the network needs it, else eval mode."""
        if self.train_mode:
            return self.model.train_call(theta, x, self.buffers)
        return self.model(theta, x, self.buffers)

    def state_dict(self) -> dict:
        return {"buffers": {name: b.clone() for name, b in self.buffers.items()}}

    def load_state_dict(self, state: dict) -> None:
        for name, b in state["buffers"].items():
            self.buffers[name].copy_(b)


class SupervisedLoss(NetworkLoss):
    """Mean cross-entropy of f(x; θ) on batches ``(x, y)`` or ``(x, y, allowed)``.

    Args:
        model: the network.
        units: a bool vector of the output units that count (None: all); a batch's third
            element, if any, gives one such vector per example instead.
        train_mode, buffers: see :class:`NetworkLoss`.

    ``last_accuracy`` holds the accuracy on the last batch (a 0-dim tensor on the device).
    """

    def __init__(self, model: nn.Module | FunctionalModel, *, units: Tensor | None = None,
                 train_mode: bool | None = None, buffers: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(model, train_mode=train_mode, buffers=buffers)
        self.units = units
        self.last_accuracy: Tensor | None = None

    def __call__(self, theta: Tensor, batch: Any) -> Tensor:
        x, y = batch[0], batch[1]
        allowed = batch[2] if len(batch) > 2 else self.units
        logits = mask_logits(self.logits(theta, x), allowed)
        accuracy = (logits.detach().argmax(-1) == y).float().mean()
        self.last_accuracy = distributed.average(accuracy, len(y))  # the same on every rank
        return F.cross_entropy(logits, y)


class DistillationLoss(NetworkLoss):
    """½ mean_x ||f(x; θ) − f(x; θ₀)||² on unlabelled batches x, θ₀'s outputs in eval mode.

    The reference outputs are computed for each batch from the batch itself (a forward pass
    without gradient: free in the budget), so they can never be misaligned with the inputs.
    """

    def __init__(self, model: nn.Module | FunctionalModel, reference: Tensor, *,
                 reference_buffers: Mapping[str, Tensor] | None = None,
                 train_mode: bool | None = None, buffers: Mapping[str, Tensor] | None = None) -> None:
        super().__init__(model, train_mode=train_mode, buffers=buffers)
        self.reference = reference.detach()
        self.reference_buffers = None if reference_buffers is None else dict(reference_buffers)

    def __call__(self, theta: Tensor, batch: Any) -> Tensor:
        x = batch[0] if isinstance(batch, tuple | list) else batch
        with torch.no_grad():
            target = self.model(self.reference, x, self.reference_buffers)
        return 0.5 * (self.logits(theta, x) - target).square().sum(-1).mean()
