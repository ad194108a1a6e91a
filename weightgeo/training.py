"""Training a network given as a flat weight vector θ: supervised minibatch SGD.

``train`` is the library's one optimisation loop (:func:`~weightgeo.optim.fit`) with the
supervised loss: minibatches from a seeded stream, cross-entropy (or any ``loss(logits, y, x)``),
SGD with momentum and a cosine schedule. A mask keeps a sparse network sparse (the loop moves on
the masked :class:`~weightgeo.manifolds.WeightSpace`). Batch-norm networks train in train mode on
a private copy of their buffers, which are returned. Each minibatch counts as one gradient
evaluation. ``evaluate`` and ``predict`` live in :mod:`weightgeo.evaluation`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo.data.streams import Minibatches, Stream
from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import evaluate, predict
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import Euclidean
from weightgeo.optim import OptimizerSpec, SupervisedLoss, fit
from weightgeo.stopping import Stop

__all__ = ["LossFn", "TrainResult", "cross_entropy", "evaluate", "predict", "train"]

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``loss(logits, y, x) -> scalar``; the default is cross-entropy on the labels."""


@dataclass
class TrainResult:
    """θ after training, the batch-norm buffers it ran with, the cost, and how it ended."""

    theta: Tensor
    buffers: dict[str, Tensor]
    grad_evals: int
    history: list[dict] = field(default_factory=list)
    stop: Stop | None = None


def cross_entropy(logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


class _Augmented(Stream):
    """Minibatches whose inputs pass through ``augment(x, generator)`` (the stream's generator)."""

    def __init__(self, base: Minibatches, augment: Callable[[Tensor, torch.Generator], Tensor]) -> None:
        self.base, self.augment = base, augment

    def next(self) -> Any:
        x, y = self.base.next()
        return self.augment(x, self.base.generator), y

    def state_dict(self) -> dict:
        return self.base.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.base.load_state_dict(state)


class _CustomLoss(SupervisedLoss):
    """A supervised loss with a user's ``loss(logits, y, x)``."""

    def __init__(self, model: FunctionalModel, loss_fn: LossFn, buffers) -> None:
        super().__init__(model, buffers=buffers)
        self.loss_fn = loss_fn

    def __call__(self, theta: Tensor, batch: Any) -> Tensor:
        x, y = batch
        return self.loss_fn(self.logits(theta, x), y, x)


def train(
    fmodel: FunctionalModel,
    theta: Tensor,
    data,
    *,
    epochs: float = 1.0,
    max_steps: int | None = None,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 64,
    schedule: str = "cosine",
    seed: int = 0,
    mask: Tensor | None = None,
    loss_fn: LossFn = cross_entropy,
    buffers: dict[str, Tensor] | None = None,
    augment: Callable[[Tensor, torch.Generator], Tensor] | None = None,
    epoch_callback: Callable[[int, Tensor, dict[str, Tensor]], dict | None] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    resume: dict | None = None,
    progress: bool = False,
) -> TrainResult:
    """Minibatch SGD on θ; returns the trained θ (a new tensor) and the cost.

    Args:
        fmodel: the network as a function of θ.
        theta: the starting weights (not modified).
        data: a labelled data set (``x``, ``y``).
        epochs: passes over the data (fractions allowed), unless ``max_steps`` is given.
        max_steps: the number of minibatches (= gradient evaluations) to take.
        lr, momentum, weight_decay: SGD settings; ``schedule`` "cosine" or "constant".
        mask: keep θ ⊙ mask (a sparse network stays sparse).
        loss_fn: ``loss(logits, y, x)``; e.g. a distillation loss toward reference outputs.
        buffers: batch-norm buffers to start from (default: the model's).
        augment: ``augment(x, generator)`` applied to each training batch.
        epoch_callback: ``f(epoch, θ, buffers)`` after each full epoch; a returned dict is
            added to the history with the epoch's mean training loss (logging).
        checkpoint: ``checkpoint(state)`` after each epoch (the state resumes the run exactly).
        resume: a state given to ``checkpoint``: continue from it.

    Raises:
        WeightgeoError: a learning rate that is not a positive number, an unknown schedule, or a
            negative number of steps.
    """
    if not (lr > 0 and math.isfinite(lr)):
        raise WeightgeoError(f"learning rate must be a positive number, got {lr}")
    per_epoch = max(1, math.ceil(len(data) / batch_size))
    total = max_steps if max_steps is not None else int(round(epochs * per_epoch))
    if total < 0:
        raise WeightgeoError(f"the number of training steps must be ≥ 0, got {total}")
    loss = _CustomLoss(fmodel, loss_fn, buffers)
    stream: Stream = Minibatches(data, batch_size, seed)
    if augment is not None:
        stream = _Augmented(stream, augment)
    space = None if mask is None else WeightSpace(fmodel, Euclidean(), damping=0.0, mask=mask)
    epoch_loss = {"sum": torch.zeros((), device=theta.device), "count": 0}
    history: list[dict] = [] if resume is None else list(resume.get("history", []))

    def accumulate(state) -> None:
        epoch_loss["sum"] = epoch_loss["sum"] + state.loss
        epoch_loss["count"] += 1

    def end_of_epoch(state) -> None:
        seen = epoch_loss["count"]
        if epoch_callback is not None and seen == per_epoch:
            row = epoch_callback(state.step // per_epoch, state.param.detach(), loss.buffers)
            if row is not None:  # logging: one host read per epoch
                history.append({"epoch": state.step // per_epoch,
                                "train_loss": float(epoch_loss["sum"]) / seen, **row})
        epoch_loss["sum"], epoch_loss["count"] = torch.zeros((), device=theta.device), 0

    result = fit(
        theta, loss, stream, total,
        optimizer=OptimizerSpec("sgd", lr=lr, momentum=momentum, weight_decay=weight_decay, schedule=schedule),
        space=space, hooks=[(1, accumulate), (per_epoch, end_of_epoch)],
        checkpoint=None if checkpoint is None else (lambda state: checkpoint({**state, "history": list(history)})),
        checkpoint_every=per_epoch if checkpoint is not None else 0,
        resume=resume, progress="train" if progress else False,
    )
    return TrainResult(result.param.clone(), loss.buffers, result.steps, history, result.stop)
