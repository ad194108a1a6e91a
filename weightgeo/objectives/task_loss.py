"""TaskLoss: O(θ) = mean cross-entropy of f(x; θ) on a data set (e.g. a new task)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightgeo import distributed
from weightgeo.data.streams import Stream, stream
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.objectives.base import Objective


class TaskLoss(Objective):
    """Cross-entropy of the network on labelled batches.

    Args:
        model: the network (evaluated in eval mode, like every metric).
        batches: one ``(x, y)`` pair (a fixed batch: a deterministic objective), an iterable of
            ``(x, y)`` batches (cycled) or a :class:`~weightgeo.data.streams.Stream` (resumable),
            drawn afresh at every ``grad`` call (a stochastic objective).
        target_accuracy: if set, ``done`` when the accuracy on the last batch seen reaches it.
        transform_logits: optional map applied to the logits first (e.g. selecting the
            output units of one task in task-incremental learning).

    Under ``torchrun`` each rank evaluates its shard of every batch; the loss, its gradient and
    the accuracy are averaged over the ranks (:mod:`weightgeo.distributed`).
    """

    cost = 1

    def __init__(
        self,
        model: nn.Module | FunctionalModel,
        batches: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]] | Stream,
        target_accuracy: float | None = None,
        transform_logits: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        self.model = as_functional(model)
        self.batches = stream(batches)
        self.target_accuracy = target_accuracy
        self.transform_logits = transform_logits
        self.last_accuracy: Tensor | None = None

    def next_batch(self) -> tuple[Tensor, Tensor]:
        """This rank's part of the next batch."""
        return distributed.shard(self.batches.next())

    def _loss(self, theta: Tensor, x: Tensor, y: Tensor) -> Tensor:
        logits = self.model(theta, x)
        if self.transform_logits is not None:
            logits = self.transform_logits(logits)
        accuracy = (logits.detach().argmax(-1) == y).float().mean()
        self.last_accuracy = distributed.average(accuracy, len(y))
        return F.cross_entropy(logits, y)

    def value(self, theta: Tensor) -> Tensor:
        x, y = self.next_batch()
        return self._loss(theta, x, y)

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        x, y = self.next_batch()
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            loss = self._loss(t, x, y)
            (g,) = torch.autograd.grad(loss, t)
        return distributed.average(loss.detach(), len(y)), distributed.average(g, len(y))

    def done(self, theta: Tensor) -> bool:
        if self.target_accuracy is None or self.last_accuracy is None:
            return False
        return bool(self.last_accuracy >= self.target_accuracy)  # stop test

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
