"""traverse: the papers' step, a damped natural-gradient walk toward a second objective.

At each point θ_k: dθ = −(G(θ_k) + μI)^{-1} ∇O(θ_k), solved by conjugate gradients on
metric-vector products that share one linearisation at θ_k, then scaled to length ε
(Euclidean by default, as in the papers' trust region θᵀθ ≤ ε; or metric length).
This is the Lagrangian solution of min_dθ dθᵀGdθ − β⟨v, dθ⟩ s.t. ||dθ|| ≤ ε
(Raghavan & Thomson 2021, eq. 3). Each step's metric length comes free from the
solve: xᵀGx = xᵀ(g − μx) for the CG solution x of (G + μI)x = g (up to its residual).

The step rule is :class:`NaturalGradientStep`; the loop, budget, stop tests and Path writing
are the tracer driver's (:mod:`weightgeo.paths.driver`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor

from weightgeo.data.streams import Stream, stream
from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.objectives.base import Objective
from weightgeo.paths.driver import ObjectiveRule, Observation, Proposal, run_tracer
from weightgeo.paths.path import Path

STEP_NORMS = ("euclidean", "metric")


def check_positive(name: str, value: float) -> float:
    """``value`` if it is a positive finite number, else one line naming ``name``."""
    if not (isinstance(value, int | float) and not isinstance(value, bool) and 0 < value < float("inf")):
        raise WeightgeoError(f"{name} must be a positive number, got {value!r}")
    return float(value)


class NaturalGradientStep(ObjectiveRule):
    """dθ = −ε x / ||x|| with x = (G(θ) + μI)⁻¹ ∇O(θ): the papers' damped natural-gradient step.

    Args:
        space: the weight space (model, metric, damping, optional mask).
        objective: the second goal O(θ).
        step_size: ε; ``step_norm`` says whether it is the Euclidean or the metric length.
        damping, cg_maxiter, cg_tol: the solve (default: the space's).
        metric_inputs: batches of inputs; the metric is re-estimated on the next one at every
            step (a stochastic metric).
    """

    name = "traverse"

    def __init__(
        self,
        space: WeightSpace,
        objective: Objective,
        step_size: float,
        *,
        damping: float | None = None,
        cg_maxiter: int | None = None,
        cg_tol: float | None = None,
        step_norm: Literal["euclidean", "metric"] = "euclidean",
        metric_inputs: Iterable[Tensor] | Stream | None = None,
    ) -> None:
        self.step_size = check_positive("step_size", step_size)
        if step_norm not in STEP_NORMS:
            raise WeightgeoError(f"step_norm must be one of {', '.join(STEP_NORMS)}, got {step_norm!r}")
        self.damping = space.damping if damping is None else float(damping)
        if not self.damping >= 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {self.damping}")
        self.maxiter = space.cg_maxiter if cg_maxiter is None else int(cg_maxiter)
        self.tol = space.cg_tol if cg_tol is None else float(cg_tol)
        self.space, self.objective, self.step_norm = space, objective, step_norm
        self.inputs = None if metric_inputs is None else stream(metric_inputs)

    @property
    def meta(self) -> dict:
        return {"tracer": self.name, "metric": type(self.space.metric).__name__, "step_size": self.step_size,
                "step_norm": self.step_norm, "damping": self.damping, "cg_maxiter": self.maxiter,
                "objective": repr(self.objective)}

    def step_cost(self) -> int:
        return self.space.solve_cost(self.maxiter) + self.objective.cost

    def propose(self, point: Tensor, observation: Observation) -> Proposal:
        space = self.space
        if self.inputs is not None:
            batch = self.inputs.next()
            space = space.with_inputs(batch[0] if isinstance(batch, tuple | list) else batch)
        grad = observation.gradient
        solution = space.natural_gradient(point, grad, self.damping, self.maxiter, self.tol)
        x = solution.x  # lies in the (masked) space, so x·grad = x·proju(grad)
        metric_sq = (x @ grad - self.damping * (x @ x)).clamp_min(0)
        euclid = torch.linalg.vector_norm(x)
        length = euclid if self.step_norm == "euclidean" else metric_sq.sqrt()
        scale = self.step_size / length.clamp_min(torch.finfo(x.dtype).tiny)
        limit = self.objective.step_limit(point, -x * scale)
        if limit is not None:
            scale = scale * limit
        record = {"metric_length": scale * metric_sq.sqrt(), "euclidean_length": scale * euclid,
                  "cg_residual": solution.residual, "cg_products": solution.products}
        return Proposal(space.retr(point, -scale * x), solution.cost, record, gradient=x)

    def own_state(self) -> dict:
        return {} if self.inputs is None else {"inputs": self.inputs.state_dict()}

    def load_own_state(self, state: dict) -> None:
        if self.inputs is not None and "inputs" in state:
            self.inputs.load_state_dict(state["inputs"])


def traverse(
    space: WeightSpace,
    objective: Objective,
    step_size: float = 0.1,
    max_steps: int = 1000,
    damping: float | None = None,
    *,
    start: Tensor | None = None,
    path: Path | None = None,
    finish: bool = True,
    directory: str | os.PathLike | None = None,
    save_every: int = 10,
    cg_maxiter: int | None = None,
    cg_tol: float | None = None,
    step_norm: Literal["euclidean", "metric"] = "euclidean",
    metric_inputs: Iterable[Tensor] | Stream | None = None,
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
        start: θ_0 (default: the model's own weights); ignored when continuing ``path``.
        path: an open path to continue from its end (a resumed one, or a stage of a longer
            path); ``finish=False`` leaves it open for more stages.
        directory, save_every: stream a new path to this directory (see :class:`Path`).
        cg_maxiter, cg_tol: conjugate-gradient settings (default: the space's).
        step_norm: "euclidean" (||dθ|| = ε, the papers') or "metric" (√(dθᵀGdθ) = ε).
        metric_inputs: batches of inputs; if given, the metric is re-estimated on the next
            batch at every step (a stochastic metric).
        budget: stop before the gradient evaluations spent in all would exceed this.
        evaluate: ``θ -> dict`` of measurements (e.g. test accuracy), recorded every
            ``evaluate_every`` points and at the end. Logging: it may read from the device.
        callback: called as ``callback(k, θ_k, path)`` after each point; returning True stops.
        progress: show a progress bar.

    Returns:
        The :class:`Path`; its ``stop`` says why it ended: done, max-steps, budget, non-finite
        (the last finite point is kept, the cause recorded) or callback.
    """
    rule = NaturalGradientStep(space, objective, step_size, damping=damping, cg_maxiter=cg_maxiter,
                               cg_tol=cg_tol, step_norm=step_norm, metric_inputs=metric_inputs)
    if path is None:
        theta = space.model.theta() if start is None else start.detach()
        space.check(theta)
        path = Path(space.projx(theta), directory=directory, save_every=save_every, meta=rule.meta)
    return run_tracer(rule, path, max_steps=max_steps, budget=budget, finish=finish, evaluate=evaluate,
                      evaluate_every=evaluate_every, callback=callback, progress=progress)
