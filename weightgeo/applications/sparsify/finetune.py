"""Masked fine-tuning (with labels) and masked distillation (without): the recovery phases.

Both are the library's one optimisation loop (:func:`~weightgeo.optim.fit`) on the masked
weight space, so a pruned network stays exactly sparse; each minibatch is one gradient
evaluation. Distillation fits the sparse network's logits to the dense network's logits on
unlabelled inputs, ½ mean ||f(x; θ) − f(x; θ₀)||² — the squared output distance whose Hessian at
θ₀ is the output metric, so it is the finite form of what the geodesic's metric keeps small.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from weightgeo.data import Data
from weightgeo.data.streams import Minibatches
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import Euclidean
from weightgeo.optim import DistillationLoss, OptimizerSpec, SupervisedLoss, fit
from weightgeo.stopping import Stop, StopReason


class Recovery(NamedTuple):
    """A recovery phase's outcome: θ (exactly sparse; the last finite point if the run diverged),
    the gradient evaluations spent, the batch-norm buffers it ended with, and how it stopped."""

    theta: Tensor
    grad_evals: int
    buffers: dict[str, Tensor] | None
    stop: Stop


class Distillation:
    """The distillation target: the dense network θ₀ and the unlabelled inputs to distil on."""

    def __init__(self, fmodel: FunctionalModel, theta0: Tensor, inputs: Tensor) -> None:
        self.fmodel, self.theta0, self.inputs = fmodel, theta0.detach(), inputs

    def loss(self, buffers: dict[str, Tensor] | None = None) -> DistillationLoss:
        """½ mean ||f(x; θ) − f(x; θ₀)||² (θ₀'s outputs in eval mode, computed per batch)."""
        return DistillationLoss(self.fmodel, self.theta0, buffers=buffers)


def _masked_fit(fmodel: FunctionalModel, theta: Tensor, keep: Tensor, loss, batches, steps: int, lr: float,
                schedule: str) -> Recovery:
    space = WeightSpace(fmodel, Euclidean(), damping=0.0, mask=keep)
    result = fit(theta * keep, loss, batches, steps, space=space,
                 optimizer=OptimizerSpec("sgd", lr=lr, momentum=0.9, schedule=schedule))
    buffers = loss.buffers if fmodel.has_batch_norm else None
    return Recovery(result.param * keep, result.grad_evals, buffers, result.stop)


def _nothing_to_do(theta: Tensor, keep: Tensor, buffers: dict[str, Tensor] | None) -> Recovery:
    return Recovery(theta * keep, 0, buffers, Stop(StopReason.STEPS, 0))


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
) -> Recovery:
    """Cross-entropy SGD on labelled ``data`` inside the mask for ``steps`` minibatches.

    Returns the :class:`Recovery` (gradient evaluations spent = steps unless it diverged).
    """
    if steps <= 0:
        return _nothing_to_do(theta, keep, buffers)
    loss = SupervisedLoss(fmodel, buffers=buffers)
    return _masked_fit(fmodel, theta, keep, loss, Minibatches(data, batch_size, seed), steps, lr, schedule)


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
) -> Recovery:
    """Label-free SGD toward the dense network's outputs inside the mask, for ``steps`` minibatches."""
    if steps <= 0:
        return _nothing_to_do(theta, keep, buffers)
    batches = Minibatches(distillation.inputs, batch_size, seed)
    return _masked_fit(fmodel, theta, keep, distillation.loss(buffers), batches, steps, lr, schedule)
