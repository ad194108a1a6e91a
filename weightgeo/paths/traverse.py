"""traverse: the papers' step, a damped natural-gradient walk toward a second objective.

At each point θ_k: dθ = −(G(θ_k) + μI)^{-1} ∇O(θ_k), solved by conjugate gradients on
metric-vector products that share one linearisation at θ_k, then scaled to length ε
(Euclidean by default, as in the papers' trust region θᵀθ ≤ ε; or metric length).
This is the Lagrangian solution of min_dθ dθᵀGdθ − β⟨v, dθ⟩ s.t. ||dθ|| ≤ ε
(Raghavan & Thomson 2021, eq. 3). Each step's metric length comes free from the
solve: xᵀGx = xᵀ(g − μx) for the CG solution x of (G + μI)x = g (up to its residual).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.objectives.base import Objective
from weightgeo.paths.path import Path
from weightgeo.progress import Progress

STEP_NORMS = ("euclidean", "metric")


def _check_positive(name: str, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and value == value):
        raise WeightgeoError(f"{name} must be a positive number, got {value!r}")


def traverse(
    space: WeightSpace,
    objective: Objective,
    step_size: float = 0.1,
    max_steps: int = 1000,
    damping: float | None = None,
    *,
    start: Tensor | None = None,
    path: Path | None = None,
    directory: str | os.PathLike | None = None,
    save_every: int = 10,
    cg_maxiter: int | None = None,
    cg_tol: float | None = None,
    step_norm: str = "euclidean",
    metric_inputs: Iterable[Tensor] | None = None,
    budget: int | None = None,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    evaluate_every: int = 10,
    callback: Callable[[int, Tensor, Path], bool | None] | None = None,
    progress: bool = False,
) -> Path:
    """Trace a path from ``start`` that decreases ``objective`` while moving least under the metric.

    Args:
        space: the weight space (model, metric, damping, optional sparsity mask).
        objective: the second goal O(θ).
        step_size: ε, the length of each step (see ``step_norm``).
        max_steps: the most steps to take.
        damping: μ (default: the space's).
        start: θ_0 (default: the model's own weights); ignored when resuming ``path``.
        path: an existing (e.g. resumed) path to continue from its end.
        directory, save_every: stream the new path to this directory (see :class:`Path`).
        cg_maxiter, cg_tol: conjugate-gradient settings (default: the space's).
        step_norm: "euclidean" (||dθ|| = ε, the papers') or "metric" (√(dθᵀGdθ) = ε).
        metric_inputs: batches of inputs; if given, the metric is re-estimated on the next
            batch at every step (a stochastic metric).
        budget: stop before the gradient evaluations spent would exceed this.
        evaluate: ``θ -> dict`` of measurements (e.g. test accuracy), recorded every
            ``evaluate_every`` points and at the end. Logging: it may read from the device.
        callback: called as ``callback(k, θ_k, path)`` after each point; returning True stops.
        progress: show a progress bar.

    Returns:
        The :class:`Path`; ``path.stop_reason`` is "done", "max-steps", "budget",
        "non-finite" (the last finite point is kept) or "callback".
    """
    _check_positive("step_size", step_size)
    if step_norm not in STEP_NORMS:
        raise WeightgeoError(f"step_norm must be one of {', '.join(STEP_NORMS)}, got {step_norm!r}")
    if max_steps < 0:
        raise WeightgeoError(f"max_steps must be ≥ 0, got {max_steps}")
    mu = space.damping if damping is None else float(damping)
    if mu < 0:
        raise WeightgeoError(f"damping must be ≥ 0, got {mu}")
    maxiter = space.cg_maxiter if cg_maxiter is None else cg_maxiter
    tol = space.cg_tol if cg_tol is None else cg_tol

    if path is None:
        theta = space.model.theta() if start is None else start.detach()
        space.check(theta)
        theta = space.projx(theta)
        path = Path(
            theta,
            directory=directory,
            save_every=save_every,
            meta={
                "tracer": "traverse",
                "metric": type(space.metric).__name__,
                "step_size": step_size,
                "step_norm": step_norm,
                "damping": mu,
                "cg_maxiter": maxiter,
                "objective": repr(objective),
            },
        )
        spent = 0
        first_record = {"metric_length": 0.0, "euclidean_length": 0.0}
    else:
        theta = path.end.to(path.start.device)
        spent = path.grad_evals
        first_record = None
    inputs: Iterator[Tensor] | None = None if metric_inputs is None else _cycle(metric_inputs)

    segment = first_record
    stop_reason = "max-steps"
    steps_taken = 0
    evaluated_last = True
    with Progress(max_steps, "traverse", enabled=progress) as bar:
        while True:
            value, grad = objective.value_and_grad(theta)
            spent += objective.cost
            if segment is not None:
                k = path.append(theta, objective=value, grad_evals=spent, **segment)
                evaluated_last = k % evaluate_every == 0
                if evaluate is not None and evaluated_last:
                    path.update_last(**evaluate(theta))
                if callback is not None and callback(k, theta, path):
                    stop_reason = "callback"
                    break
            # Stop tests: each reads one value from the device.
            if not bool(torch.isfinite(value) & torch.isfinite(grad).all()):
                stop_reason = "non-finite"
                break
            if objective.done(theta):
                stop_reason = "done"
                break
            if steps_taken >= max_steps:
                stop_reason = "max-steps"
                break
            if budget is not None and spent + maxiter + objective.cost > budget:
                stop_reason = "budget"
                break
            if inputs is not None:
                space = space.with_inputs(next(inputs))
            solution = space.natural_gradient(theta, grad, mu, maxiter, tol)
            spent += solution.products
            x = solution.x  # lies in the (masked) space, so x·grad = x·proju(grad)
            metric_sq = (x @ grad - mu * (x @ x)).clamp_min(0)
            euclid = torch.linalg.vector_norm(x)
            if step_norm == "euclidean":
                scale = step_size / euclid.clamp_min(torch.finfo(x.dtype).tiny)
            else:
                scale = step_size / metric_sq.sqrt().clamp_min(torch.finfo(x.dtype).tiny)
            limit = objective.step_limit(theta, -x * scale)
            if limit is not None:
                scale = scale * limit
            step = -scale * x
            candidate = space.retr(theta, step)
            if not bool(torch.isfinite(candidate).all()):  # stop test
                stop_reason = "non-finite"
                break
            theta = candidate
            segment = {
                "metric_length": scale * metric_sq.sqrt(),
                "euclidean_length": scale * euclid,
                "cg_residual": solution.residual,
                "cg_products": solution.products,
            }
            steps_taken += 1
            bar.update(1)
    if evaluate is not None and not evaluated_last:
        path.update_last(**evaluate(path.end))
    return path.finish(stop_reason)


def _cycle(batches: Iterable[Tensor]) -> Iterator[Tensor]:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch[0] if isinstance(batch, tuple | list) else batch
        if empty:
            raise WeightgeoError("metric_inputs yielded no batch")
