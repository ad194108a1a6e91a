"""fip: the authors' released form of the method (Raghavan et al. 2024, "FIP"), a baseline.

An optimiser on the penalty  L(θ) = D(f(x; θ), f(x; θ₀)) + λ·O(θ)  over a memory of
reference inputs x, with θ₀ a frozen copy of the start (its outputs are computed once,
in eval mode — not the live network, the defect of the released notebook). D is the
mean squared logit distance ||f − f₀||² or the Bhattacharyya distance
−log Σ_c √(p_c q_c) between the softmax outputs, averaged over the batch (the code sums;
the mean keeps step sizes independent of the batch size). With ``normalize=True`` each
step is the code's sparsification step θ ← θ − lr·∇L/||∇L||.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.objectives.base import Objective
from weightgeo.paths.path import Path
from weightgeo.progress import Progress

DISTANCES = ("squared", "bhattacharyya")
OPTIMIZERS = ("sgd", "adam")


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


def fip(
    model: nn.Module | FunctionalModel | WeightSpace,
    objective: Objective,
    reference_inputs: Tensor,
    *,
    start: Tensor | None = None,
    lam: float = 1.0,
    distance: str = "bhattacharyya",
    optimizer: str = "sgd",
    lr: float = 0.01,
    momentum: float = 0.9,
    max_steps: int = 1000,
    batch_size: int | None = None,
    normalize: bool = False,
    budget: int | None = None,
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
        start: θ₀ (default: the model's weights).
        lam: λ, the weight of the objective.
        distance: "squared" or "bhattacharyya".
        optimizer: "sgd" (with ``momentum``) or "adam".
        batch_size: reference inputs per step (default: all of them).
        normalize: step along the unit-norm gradient (the code's sparsification step).
        budget: stop before the gradient evaluations would exceed this; each step costs
            one evaluation for D plus ``objective.cost``.
    """
    if distance not in DISTANCES:
        raise WeightgeoError(f"unknown distance {distance!r}; choose one of {', '.join(DISTANCES)}")
    if optimizer not in OPTIMIZERS:
        raise WeightgeoError(f"unknown optimizer {optimizer!r}; choose one of {', '.join(OPTIMIZERS)}")
    if not lr > 0:
        raise WeightgeoError(f"lr must be positive, got {lr}")
    space = model if isinstance(model, WeightSpace) else WeightSpace(model)
    fmodel = space.model
    theta0 = (fmodel.theta() if start is None else start.detach()).clone()
    space.check(theta0)
    theta0 = space.projx(theta0)
    with torch.no_grad():
        reference_outputs = fmodel(theta0, reference_inputs)
    theta = theta0.clone().requires_grad_(True)
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD([theta], lr=lr, momentum=momentum)
    else:
        opt = torch.optim.Adam([theta], lr=lr)
    generator = torch.Generator(device="cpu").manual_seed(seed)
    n_ref = reference_inputs.shape[0]
    batch = n_ref if batch_size is None else min(batch_size, n_ref)
    path = Path(
        theta0,
        directory=directory,
        save_every=save_every,
        meta={
            "tracer": "fip",
            "distance": distance,
            "lam": lam,
            "optimizer": optimizer,
            "lr": lr,
            "normalize": normalize,
            "objective": repr(objective),
        },
    )
    spent = 0
    per_step = 1 + objective.cost
    previous = theta0
    stop_reason = "max-steps"
    evaluated_last = True
    with Progress(max_steps, "fip", enabled=progress) as bar:
        for step in range(max_steps + 1):
            objective_value, objective_grad = objective.value_and_grad(theta.detach())
            spent += objective.cost
            current = theta.detach().clone()  # θ is updated in place by the optimiser
            segment = torch.linalg.vector_norm(current - previous)
            k = path.append(
                current,
                objective=objective_value,
                grad_evals=spent,
                euclidean_length=segment,
            )
            evaluated_last = k % evaluate_every == 0
            if evaluate is not None and evaluated_last:
                path.update_last(**evaluate(theta.detach()))
            # Stop tests: each reads one value from the device.
            if not bool(torch.isfinite(objective_value)):
                stop_reason = "non-finite"
                break
            if objective.done(theta.detach()):
                stop_reason = "done"
                break
            if step == max_steps:
                break
            if budget is not None and spent + per_step > budget:
                stop_reason = "budget"
                break
            if batch < n_ref:
                index = torch.randperm(n_ref, generator=generator)[:batch]
                x, reference = reference_inputs[index], reference_outputs[index]
            else:
                x, reference = reference_inputs, reference_outputs
            opt.zero_grad(set_to_none=True)
            loss = output_distance(fmodel(theta, x), reference, distance)
            (grad,) = torch.autograd.grad(loss, theta)
            spent += 1
            total = space.proju(theta, grad + lam * objective_grad)
            if normalize:
                total = total / torch.linalg.vector_norm(total).clamp_min(1e-30)
            theta.grad = total
            previous = current
            opt.step()
            with torch.no_grad():
                theta.copy_(space.projx(theta))
            bar.update(1)
    if evaluate is not None and not evaluated_last:
        path.update_last(**evaluate(path.end))
    return path.finish(stop_reason)
