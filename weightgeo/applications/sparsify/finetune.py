"""Masked fine-tuning (with labels) and masked distillation (without): the recovery phases.

Both are minibatch SGD from :func:`weightgeo.training.train` with ``mask=``, so a pruned
network stays exactly sparse; each minibatch is one gradient evaluation. Distillation
fits the sparse network's logits to the dense network's logits on unlabelled inputs,
½ mean ||f(x; θ) − f(x; θ₀)||² — the squared output distance whose Hessian at θ₀ is the
output metric, so it is the finite form of what the geodesic's metric keeps small.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from weightgeo.data import Data
from weightgeo.functional import FunctionalModel
from weightgeo.training import predict, train


class UnlabelledInputs:
    """Inputs without labels, batched as ``(x, index)`` so a loss can look up reference outputs.

    Duck-types the part of :class:`~weightgeo.data.Data` that ``train`` uses; the labels of
    the data set it is built from are dropped.
    """

    def __init__(self, x: Tensor) -> None:
        self.x = x
        self.index = torch.arange(len(x), device=x.device)

    def __len__(self) -> int:
        return len(self.x)

    def batches(self, batch_size: int, shuffle: bool = True, generator=None) -> Iterator[tuple[Tensor, Tensor]]:
        order = torch.randperm(len(self.x), generator=generator).to(self.x.device) if shuffle else self.index
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.x[idx], idx


class Distillation:
    """The loss ½ mean ||f(x; θ) − f(x; θ₀)||² over unlabelled inputs, θ₀'s outputs computed once.

    Computing the reference outputs is forward passes only (no gradient): it is not
    counted as gradient evaluations.
    """

    def __init__(self, fmodel: FunctionalModel, theta0: Tensor, inputs: Tensor) -> None:
        self.inputs = UnlabelledInputs(inputs)
        self.reference = predict(fmodel, theta0.detach(), inputs)

    def __call__(self, logits: Tensor, index: Tensor, x: Tensor) -> Tensor:
        return 0.5 * (logits - self.reference[index]).square().sum(-1).mean()


def masked_finetune(
    fmodel: FunctionalModel,
    theta: Tensor,
    keep: Tensor,
    data: Data,
    steps: int,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    schedule: str = "cosine",
    buffers: dict[str, Tensor] | None = None,
) -> tuple[Tensor, int, dict[str, Tensor] | None]:
    """Cross-entropy SGD on labelled ``data`` inside the mask for ``steps`` minibatches.

    Returns (θ, gradient evaluations spent = steps, the batch-norm buffers it ended with).
    """
    if steps <= 0:
        return theta * keep, 0, buffers
    result = train(
        fmodel, theta, data, max_steps=steps, lr=lr, batch_size=batch_size, seed=seed,
        mask=keep, schedule=schedule, buffers=buffers,
    )
    return result.theta * keep, result.grad_evals, _buffers(fmodel, result.buffers)


def masked_distill(
    fmodel: FunctionalModel,
    theta: Tensor,
    keep: Tensor,
    distillation: Distillation,
    steps: int,
    *,
    lr: float = 0.01,
    batch_size: int = 64,
    seed: int = 0,
    schedule: str = "cosine",
    buffers: dict[str, Tensor] | None = None,
) -> tuple[Tensor, int, dict[str, Tensor] | None]:
    """Label-free SGD toward the dense network's outputs inside the mask, for ``steps`` minibatches."""
    if steps <= 0:
        return theta * keep, 0, buffers
    result = train(
        fmodel, theta, distillation.inputs, max_steps=steps, lr=lr, batch_size=batch_size,
        seed=seed, mask=keep, loss_fn=distillation, schedule=schedule, buffers=buffers,
    )
    return result.theta * keep, result.grad_evals, _buffers(fmodel, result.buffers)


def _buffers(fmodel: FunctionalModel, buffers: dict[str, Tensor]) -> dict[str, Tensor] | None:
    """Buffers worth keeping: None for a network without batch norm (eval ignores them)."""
    return buffers if fmodel.has_batch_norm else None
