"""fip: the authors' released form of the method (Raghavan et al. 2024, "FIP"), a baseline.

An optimiser on the penalty  L(θ) = D(f(x; θ), f(x; θ₀)) + λ·O(θ)  over a memory of
reference inputs x, with θ₀ a frozen copy of the start (its outputs are computed once,
in eval mode — not the live network, the defect of the released notebook). D is the
mean squared logit distance ||f − f₀||² or the Bhattacharyya distance
−log Σ_c √(p_c q_c) between the softmax outputs, averaged over the batch (the code sums;
the mean keeps step sizes independent of the batch size). With ``normalize=True`` each
step is the code's sparsification step θ ← θ − lr·∇L/||∇L||.

The step rule is :class:`PenaltyStep`; the loop, budget, stop tests and Path writing are
the tracer driver's (:mod:`weightgeo.paths.driver`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from weightgeo import distributed
from weightgeo.data.streams import Fixed, RandomSubsets, Stream
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.objectives.base import Objective
from weightgeo.optim.loop import OptimizerSpec
from weightgeo.paths.driver import ObjectiveRule, Observation, Proposal, run_tracer
from weightgeo.paths.path import Path

DISTANCES = ("squared", "bhattacharyya")


def output_distance(logits: Tensor, reference: Tensor, kind: str = "squared") -> Tensor:
    """Mean over the batch of the distance between outputs and reference outputs (logits)."""
    if kind == "squared":
        return (logits - reference).square().sum(-1).mean()
    if kind == "bhattacharyya":
        log_p = logits.log_softmax(-1)
        log_q = reference.log_softmax(-1)
        coefficient = torch.logsumexp(0.5 * (log_p + log_q), dim=-1)  # log Σ √(p q)
        return (-coefficient).mean()
    raise WeightgeoError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")


class PenaltyStep(ObjectiveRule):
    """One optimiser step on D(f(x; θ), f(x; θ₀)) + λ·O(θ) over a batch of reference inputs.

    The objective's gradient comes from the observation at θ (no second evaluation); D's
    gradient costs one gradient evaluation per step.
    """

    name = "fip"

    def __init__(self, space: WeightSpace, objective: Objective, reference_inputs: Tensor, start: Tensor, *,
                 lam: float, distance: str, optimizer: OptimizerSpec, batch_size: int | None,
                 normalize: bool, seed: int) -> None:
        if distance not in DISTANCES:
            raise WeightgeoError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
        self.space, self.objective, self.lam, self.distance = space, objective, float(lam), distance
        self.normalize, self.spec = normalize, optimizer
        model = space.model
        with torch.no_grad():
            reference = model(start, reference_inputs)
        n = reference_inputs.shape[0]
        self.batches: Stream = (Fixed((reference_inputs, reference)) if batch_size is None or batch_size >= n
                                else RandomSubsets((reference_inputs, reference), batch_size, seed))
        self.param = start.detach().clone().requires_grad_(True)
        self.optimizer = optimizer.build(self.param)

    @property
    def meta(self) -> dict:
        return {"tracer": self.name, "distance": self.distance, "lam": self.lam, "optimizer": self.spec.name,
                "lr": self.spec.lr, "normalize": self.normalize, "objective": repr(self.objective)}

    def step_cost(self) -> int:
        return 1 + self.objective.cost

    def propose(self, point: Tensor, observation: Observation) -> Proposal:
        x, reference = distributed.shard(self.batches.next())  # this rank's part of the batch
        with torch.no_grad():
            self.param.copy_(point)
        with torch.enable_grad():
            loss = output_distance(self.space.model(self.param, x), reference, self.distance)
            (grad,) = torch.autograd.grad(loss, self.param)
        grad = distributed.average(grad, len(x))
        total = self.space.proju(point, grad + self.lam * observation.gradient)
        if self.normalize:
            total = total / torch.linalg.vector_norm(total).clamp_min(1e-30)
        self.param.grad = total
        self.optimizer.step()
        candidate = self.space.projx(self.param.detach()).clone()
        return Proposal(candidate, 1, {"euclidean_length": torch.linalg.vector_norm(candidate - point)},
                        gradient=total)

    def own_state(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(), "batches": self.batches.state_dict()}

    def load_own_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.batches.load_state_dict(state["batches"])


def fip(
    model: nn.Module | FunctionalModel | WeightSpace,
    objective: Objective,
    reference_inputs: Tensor,
    *,
    start: Tensor | None = None,
    lam: float = 1.0,
    distance: Literal["squared", "bhattacharyya"] = "bhattacharyya",
    optimizer: Literal["sgd", "adam"] = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    max_steps: int = 1000,
    batch_size: int | None = None,
    normalize: bool = False,
    budget: int | None = None,
    path: Path | None = None,
    finish: bool = True,
    directory: str | os.PathLike | None = None,
    save_every: int = 10,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    evaluate_every: int = 10,
    seed: int = 0,
    progress: bool = False,
) -> Path:
    """Minimise D(f(x; θ), f(x; θ₀)) + λ·O(θ) with an optimiser; returns the Path of iterates.

    Args:
        model: the network, or a :class:`WeightSpace` (whose mask, if any, is kept).
        objective: the second goal O.
        reference_inputs: the memory of inputs x on which outputs are kept (labels unused).
        start: θ₀ (default: the model's weights); the frozen reference.
        lam: λ, the weight of the objective.
        distance: "squared" or "bhattacharyya".
        optimizer, lr, momentum: "sgd" (with ``momentum``) or "adam", constant rate.
        batch_size: reference inputs per step (default: all of them).
        normalize: step along the unit-norm gradient (the code's sparsification step).
        budget: stop before the gradient evaluations would exceed this; each step costs
            one evaluation for D plus ``objective.cost``.
        path, finish, directory, save_every, evaluate, evaluate_every, progress: as for
            :func:`~weightgeo.paths.traverse`.
        seed: draws the reference batches.
    """
    space = model if isinstance(model, WeightSpace) else WeightSpace(model)
    theta0 = (space.model.theta() if start is None else start.detach()).clone()
    space.check(theta0)
    theta0 = space.projx(theta0)
    spec = OptimizerSpec(optimizer, lr=lr, momentum=momentum if optimizer == "sgd" else 0.0, schedule="constant")
    rule = PenaltyStep(space, objective, reference_inputs, theta0, lam=lam, distance=distance, optimizer=spec,
                       batch_size=batch_size, normalize=normalize, seed=seed)
    if path is None:
        path = Path(theta0, directory=directory, save_every=save_every, meta=rule.meta)
    return run_tracer(rule, path, max_steps=max_steps, budget=budget, finish=finish, evaluate=evaluate,
                      evaluate_every=evaluate_every, progress=progress)
