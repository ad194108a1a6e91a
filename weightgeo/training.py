"""Training and evaluation of a network given as a flat weight vector θ.

Plain minibatch SGD (with momentum) on θ through ``functional_call``: the building
block of ``weightgeo train`` and of every fine-tuning baseline. A mask keeps a sparse
network sparse (the gradient and the iterate are multiplied by it). Batch-norm
networks train in train mode on a private copy of their buffers, which are returned.
Each minibatch counts as one gradient evaluation.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.progress import Progress

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""``loss(logits, y, x) -> scalar``; the default is cross-entropy on the labels."""


@dataclass
class TrainResult:
    """θ after training, the batch-norm buffers it ran with, and the cost."""

    theta: Tensor
    buffers: dict[str, Tensor]
    grad_evals: int
    history: list[dict] = field(default_factory=list)


def cross_entropy(logits: Tensor, y: Tensor, x: Tensor) -> Tensor:
    return F.cross_entropy(logits, y)


@torch.no_grad()
def predict(
    fmodel: FunctionalModel,
    theta: Tensor,
    x: Tensor,
    batch_size: int = 1000,
    buffers: dict[str, Tensor] | None = None,
) -> Tensor:
    """Logits f(x; θ) in eval mode, in batches."""
    return torch.cat(
        [fmodel(theta, x[i : i + batch_size], buffers) for i in range(0, len(x), batch_size)]
    )


@torch.no_grad()
def evaluate(
    fmodel: FunctionalModel,
    theta: Tensor,
    data,
    batch_size: int = 1000,
    buffers: dict[str, Tensor] | None = None,
    logits_transform: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, float]:
    """Mean cross-entropy and accuracy of f(·; θ) on ``data`` (an object with ``x`` and ``y``).

    Returns plain floats (it reads the result from the device: for logging and reports).
    """
    x, y = data.x, data.y
    if len(y) == 0:
        raise WeightgeoError("cannot evaluate on an empty data set")
    total_loss = torch.zeros((), device=theta.device, dtype=torch.float64)
    correct = torch.zeros((), device=theta.device, dtype=torch.long)
    for i in range(0, len(x), batch_size):
        logits = fmodel(theta, x[i : i + batch_size].to(theta.device), buffers)
        if logits_transform is not None:
            logits = logits_transform(logits)
        target = y[i : i + batch_size].to(theta.device)
        total_loss += F.cross_entropy(logits, target, reduction="sum").double()
        correct += (logits.argmax(-1) == target).sum()
    n = len(y)
    return {"loss": float(total_loss) / n, "accuracy": float(correct) / n}


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
    progress: bool = False,
) -> TrainResult:
    """Minibatch SGD on θ; returns the trained θ (a new tensor) and the cost.

    Args:
        fmodel: the network as a function of θ.
        theta: the starting weights (not modified).
        data: a data set with ``x``, ``y`` and ``batches(batch_size, shuffle, generator)``.
        epochs: passes over the data (fractions allowed), unless ``max_steps`` is given.
        max_steps: the number of minibatches (= gradient evaluations) to take.
        lr, momentum, weight_decay: SGD settings; ``schedule`` "cosine" or "constant".
        mask: keep θ ⊙ mask (a sparse network stays sparse).
        loss_fn: ``loss(logits, y, x)``; e.g. a distillation loss toward reference outputs.
        buffers: batch-norm buffers to start from (default: the model's).
        augment: ``augment(x, generator)`` applied to each training batch.
        epoch_callback: ``f(epoch, θ, buffers)`` after each full epoch; a returned dict is
            added to the history (logging).
    """
    if lr <= 0 or not math.isfinite(lr):
        raise WeightgeoError(f"learning rate must be a positive number, got {lr}")
    if schedule not in ("cosine", "constant"):
        raise WeightgeoError(f"schedule must be 'cosine' or 'constant', got {schedule!r}")
    per_epoch = max(1, math.ceil(len(data) / batch_size))
    total = max_steps if max_steps is not None else int(round(epochs * per_epoch))
    if total < 0:
        raise WeightgeoError(f"the number of training steps must be ≥ 0, got {total}")
    device = theta.device
    mask_t = None if mask is None else mask.to(device=device, dtype=theta.dtype)
    start = theta.detach().clone()
    if mask_t is not None:
        start = start * mask_t
    param = start.requires_grad_(True)
    optimizer = torch.optim.SGD([param], lr=lr, momentum=momentum, weight_decay=weight_decay)
    run_buffers = fmodel.clone_buffers() if buffers is None else {k: b.clone() for k, b in buffers.items()}
    train_mode = fmodel.has_batch_norm or any(
        isinstance(m, torch.nn.Dropout) for m in fmodel.module.modules()
    )
    generator = torch.Generator(device="cpu").manual_seed(seed)
    history: list[dict] = []
    step, epoch = 0, 0
    with Progress(total, "train", enabled=progress) as bar:
        while step < total:
            epoch_loss = torch.zeros((), device=device)
            seen = 0
            for x, y in data.batches(batch_size, shuffle=True, generator=generator):
                if step >= total:
                    break
                x, y = x.to(device), y.to(device)
                if augment is not None:
                    x = augment(x, generator)
                if schedule == "cosine" and total > 0:
                    for group in optimizer.param_groups:
                        group["lr"] = 0.5 * lr * (1 + math.cos(math.pi * step / total))
                if train_mode:
                    logits = fmodel.train_call(param, x, run_buffers)
                else:
                    logits = fmodel(param, x)
                loss = loss_fn(logits, y, x)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if mask_t is not None:
                    param.grad.mul_(mask_t)
                optimizer.step()
                if mask_t is not None:
                    with torch.no_grad():
                        param.mul_(mask_t)
                epoch_loss += loss.detach() * len(y)
                seen += len(y)
                step += 1
                bar.update(1)
            epoch += 1
            if seen == len(data) and epoch_callback is not None:
                row = epoch_callback(epoch, param.detach(), run_buffers)
                if row is not None:
                    history.append({"epoch": epoch, "train_loss": float(epoch_loss) / seen, **row})
    return TrainResult(param.detach().clone(), run_buffers, step, history)
