"""The geodesic: one label-free path from the dense network through a gradual schedule of levels.

At each stage of the schedule (:func:`stage_levels`) the mask is re-ranked by magnitude at the
current point, inside the previous stage's mask, and the stage's step is taken under the metric,
re-estimated on a fresh unlabelled batch:

- ``step="projection"`` (default): :func:`~weightgeo.manifolds.project_to_sparse`, the
  least-metric-length step onto the stage's sparse hyperplane;
- ``step="natural-gradient"``: the papers' step, ``traverse`` with the
  :class:`~weightgeo.objectives.Sparsity` objective (fixed mask, damped natural gradient,
  ``step_size``) on the previous stage's masked space, for ``path_share`` of the budget spread
  over the stages, then θ is put exactly on the hyperplane;
- ``step="layerwise"``: the step under the layer-wise output distance Σ_l mean ||W'_l ā'_l − W_l ā_l||²
  to the dense network, taken at each requested level only (it depends on nothing but the mask):
  the mask is OBC's (:mod:`.obs`: each layer's cheapest greedy removals under H_l = mean ā ā ᵀ, the
  layer-wise metric, as many per layer as magnitude pruning takes there) instead of magnitude's,
  and each layer in turn is refit to the dense layer's outputs on the inputs the pruned layers
  before it now give it (:func:`~weightgeo.applications.sparsify.obs.refit_in_sequence`; for the
  first layer this is the exact projection under A₁ ⊗ I). Forward passes only: no gradient
  evaluation, the whole budget distils. Each level starts again from the dense network's rows.

At each requested level the rest of its budget share goes to distillation toward the dense
network's outputs inside the mask (no labels), and the level is read off: its ``grad_evals`` is
the path's cumulative count there (≤ budget). The path is built in stages (``Path.begin_stage``,
``traverse(..., finish=False)``, ``Path.finish``). A stage that ends on a non-finite value ends the
path there: the last finite point is kept and every remaining level is read off it by magnitude
pruning, marked diverged with the option to change.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import Tensor

from weightgeo.applications.sparsify.baselines import distilling, finetuning
from weightgeo.applications.sparsify.task import (
    FINISHED,
    SparseResult,
    SparsifyTask,
    check_budget,
    check_levels,
    sparse_result,
    worse,
)
from weightgeo.errors import WeightgeoError
from weightgeo.manifolds import WeightSpace, project_to_sparse, sparse_projection_cost
from weightgeo.metrics import build_metric
from weightgeo.paths import Path, traverse
from weightgeo.stopping import Stop, StopReason, first_non_finite


def stage_levels(levels: list[float], ratio: float = 2.2) -> list[tuple[float, float | None]]:
    """The gradual schedule through ``levels``: every requested level is a stage, and
    intermediate stages (evenly spaced in log-density log(1 − s)) are inserted so that no stage
    keeps less than 1/``ratio`` of the weights the previous one kept. Each stage is paired
    with the requested level it is (None for an inserted one)."""
    if not ratio > 1:
        raise WeightgeoError(f"the stage ratio must be > 1, got {ratio}")
    out: list[tuple[float, float | None]] = []
    previous = 0.0
    for level in levels:
        a, b = math.log1p(-previous), math.log1p(-level)
        count = max(1, math.ceil((a - b) / math.log(ratio) - 1e-9))
        for k in range(1, count + 1):
            out.append((level, level) if k == count else (1 - math.exp(a + (b - a) * k / count), None))
        previous = level
    return out


def affordable_stages(levels: list[float], ratio: float, budget: int, stage_cost: int) -> list[tuple[float, float | None]]:
    """:func:`stage_levels`, coarsened until the stages' projections take at most half the budget
    (a stage without its projection would be plain magnitude pruning, and the late, hard stages
    are the ones that need it); free projections are never coarsened."""
    schedule = stage_levels(levels, ratio)
    if stage_cost <= 0:
        return schedule
    most = max(1, budget // 2 // stage_cost)
    while len(schedule) > most and ratio < 1e6:
        ratio *= 1.25
        schedule = stage_levels(levels, ratio)
    return schedule


def distillation_shares(schedule: list[tuple[float, float | None]], rest: float, every_stage: bool) -> dict:
    """The distillation budget of each stage that distils (the requested levels, or every stage),
    shared in proportion to the log-compression each adds."""
    stops = [a for a, r in schedule if r is not None or every_stage]
    gains = [math.log1p(-a) - math.log1p(-b) for a, b in zip([0.0, *stops[:-1]], stops, strict=True)]
    return {level: rest * g / sum(gains) for level, g in zip(stops, gains, strict=True)}


class GeodesicWalk:
    """One geodesic path while it is built: θ, its mask and buffers, what it spent and planned,
    and how it stopped (None while every stage ended on finite values)."""

    def __init__(self, task: SparsifyTask, path: Path, space: WeightSpace, batches, budget: int,
                 evaluate: Callable[[Tensor, float], dict] | None, evaluate_every: int) -> None:
        self.task, self.path, self.space, self.batches, self.budget = task, path, space, batches, budget
        self.evaluate, self.evaluate_every = evaluate, evaluate_every
        self.theta, self.keep, self.level = task.theta, torch.ones_like(task.eligible), 0.0
        self.buffers: dict[str, Tensor] | None = None
        self.spent, self.planned = 0, 0.0
        self.stop: Stop | None = None
        self.hint: str | None = None
        self.objective = None

    def stage(self, level: float, requested: bool, distill_share: float | None, per_stage: float) -> None:
        """Re-rank inside the current mask, step onto the level, read it, distil, evaluate."""
        s, path = self.task.settings, self.path
        self.planned += per_stage
        previous = self.keep
        self.level = level
        if s.step == "layerwise":
            path.begin_stage(f"sparsity {level:g}")
            self.layerwise(level, previous)
        else:
            self.keep = self.task.magnitude_mask(self.theta, level) & previous  # re-ranked inside the subspace
            if self.space.metric.inputs is not None:  # a metric of the data: re-drawn at every stage
                self.space = self.space.with_inputs(next(self.batches))
            if s.step == "projection":
                path.begin_stage(f"sparsity {level:g}")
                self.project(level, per_stage)
            else:
                self.natural_gradient(level, previous)
        if self.evaluate is not None and requested:
            path.update_last(**self.evaluate(self.theta, level))  # before the distillation
        if distill_share is not None and self.stop is None:
            self.planned += distill_share
            self.distill(level)
        if self.evaluate is not None:
            path.update_last(**self.evaluate(self.theta, level))
        path.end_stage(self.stop or "done")

    def project(self, level: float, per_stage: float) -> None:
        """The least-metric-length step onto the level's hyperplane (magnitude pruning when the
        budget cannot pay for it)."""
        s, before = self.task.settings, self.theta
        metric_sq = torch.zeros((), device=before.device)
        if self.spent + per_stage <= self.budget:
            projection = project_to_sparse(self.space, before, self.keep, damping=s.damping, cg_iters=s.cg_iters)
            self.spent += projection.cost
            cause = first_non_finite(step=projection.point)  # stop test: once per stage
            if cause is None:
                self.theta, metric_sq = projection.point, projection.metric_sq
            else:
                self.theta = before * self.keep  # the last finite point, on the hyperplane
                self.diverged(Stop(StopReason.NON_FINITE, len(self.path), cause), "raise --damping")
        else:
            self.theta = before * self.keep
        self.path.append(self.theta, metric_length=metric_sq.sqrt(),
                         euclidean_length=torch.linalg.vector_norm(self.theta - before),
                         grad_evals=self.spent, stage_sparsity=level)

    def layerwise(self, level: float, previous: Tensor) -> None:
        """OBC's mask for the level and every covered layer refit in sequence (forward passes only)."""
        obs, before = self.task.layerwise_obs, self.theta
        pruned, keep = obs.prune(self.task.magnitude_mask(self.task.theta, level))
        self.keep = keep & previous  # nested already: OBC's masks grow by prefixes
        self.theta = obs.refit(pruned, self.keep)
        self.path.append(self.theta, euclidean_length=torch.linalg.vector_norm(self.theta - before),
                         grad_evals=self.spent, stage_sparsity=level)

    def natural_gradient(self, level: float, previous: Tensor) -> None:
        """The papers' traverse toward the level on the previous stage's masked space, then θ is
        put exactly on the level's hyperplane."""
        s, path = self.task.settings, self.path
        if self.objective is None:
            self.objective = self.task.sparsity_objective(level)
        self.objective.set_sparsity(level, self.theta)
        self.objective.keep = self.keep
        path.begin_stage(f"traverse to {level:g}")
        evaluate = None if self.evaluate is None else (lambda t: self.evaluate(t, level))
        traverse(self.space.with_mask(previous), self.objective, step_size=s.step_size, max_steps=s.max_steps,
                 path=path, finish=False, step_norm=s.step_norm, budget=min(self.budget, int(self.planned)),
                 metric_inputs=self.batches if self.space.metric.inputs is not None else None, evaluate=evaluate,
                 evaluate_every=self.evaluate_every)
        if path.last_stop.diverged:
            self.diverged(path.last_stop, "lower --step-size")
        self.spent = path.grad_evals
        self.theta = path.end * self.keep
        path.begin_stage(f"sparsity {level:g}")
        path.append(self.theta, euclidean_length=torch.linalg.vector_norm(self.theta - path.end),
                    grad_evals=self.spent, stage_sparsity=level)

    def distill(self, level: float) -> None:
        """Distillation inside the mask up to the evaluations planned so far."""
        recover = distilling(self.task)
        self.theta, used, self.buffers, stop = recover.run(
            self.theta, self.keep, min(self.budget, int(self.planned)) - self.spent, self.buffers)
        self.spent += used
        if stop.diverged:
            self.diverged(stop, recover.hint)
        self.path.append(self.theta, euclidean_length=torch.linalg.vector_norm(self.theta - self.path.end),
                         grad_evals=self.spent, stage_sparsity=level, distilled=used)

    def diverged(self, stop: Stop, hint: str) -> None:
        self.stop, self.hint = stop, hint

    def result(self, label: str, level: float, started: float) -> SparseResult:
        """The network at ``level``: θ here, or — after a divergence short of it — the last finite
        point magnitude-pruned to it."""
        theta, keep = self.theta, self.keep
        if level > self.level:
            keep = self.task.magnitude_mask(theta, level) & keep
            theta = theta * keep
        return sparse_result(label, level, theta, keep, self.spent, started, stop=self.stop or FINISHED,
                             hint=self.hint, buffers=self.buffers)


def geodesic_path(
    task: SparsifyTask,
    levels,
    budget: int,
    *,
    label: str = "geodesic",
    directory=None,
    evaluate: Callable[[Tensor, float], dict] | None = None,
    evaluate_every: int = 10,
) -> tuple[Path, list[SparseResult]]:
    """One label-free path from the dense network through every level of ``levels`` in turn (see
    the module docstring). ``evaluate(θ, target)`` (logging) is recorded at every stage end and
    every ``evaluate_every`` points of a ``traverse``; ``directory`` streams the path there.

    Returns:
        The finished :class:`~weightgeo.paths.Path` and one :class:`SparseResult` per level.
    """
    s = task.settings
    levels, budget = check_levels(levels), check_budget(budget)
    batches = task.input_batches(s.metric_batch, s.seed)
    space = WeightSpace(task.fmodel, build_metric(s.metric, task.fmodel, next(batches)), damping=s.damping,
                        cg_maxiter=s.cg_iters)
    if s.step == "projection":
        per_stage = sparse_projection_cost(space, s.cg_iters)
        schedule = affordable_stages(levels, s.stage_ratio, budget, per_stage)
    elif s.step == "layerwise":
        per_stage, schedule = 0, [(level, level) for level in levels]
    else:
        schedule = stage_levels(levels, s.stage_ratio)
        per_stage = int(s.path_share * budget / len(schedule))
    path_cost = min(budget, per_stage * len(schedule))
    distill_at = distillation_shares(schedule, budget - path_cost, s.distill_every_stage)
    path = Path(task.theta, directory=directory, save_every=10**9, meta={
        "tracer": "geodesic-sparsify", "step": s.step, "metric": s.metric, "damping": s.damping,
        "cg_iters": s.cg_iters, "stages": [a for a, _ in schedule], "levels": levels,
    })
    path.append(task.theta, metric_length=0.0, euclidean_length=0.0, grad_evals=0, stage_sparsity=0.0)
    if evaluate is not None:
        path.update_last(**evaluate(task.theta, 0.0))
    walk = GeodesicWalk(task, path, space, batches, budget, evaluate, evaluate_every)
    started = time.perf_counter()
    results: list[SparseResult] = []
    for level, requested in schedule:
        if walk.stop is None:
            walk.stage(level, requested is not None, distill_at.get(level), per_stage)
        if requested is not None:
            results.append(walk.result(label, requested, started))
    path.finish(walk.stop or "done")
    return path, results


def geodesic(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The geodesic at every level with the full budget each (one path per level, through the
    gradual schedule below it), or — with ``settings.one_path`` — one path for all levels,
    each read off at the evaluations spent to reach it."""
    levels = check_levels(levels)
    if task.settings.one_path:
        return geodesic_path(task, levels, budget)[1]
    out = []
    for level in levels:
        path, (result,) = geodesic_path(task, [level], budget)
        result.path = path
        out.append(result)
    return out


def geodesic_finetune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The geodesic with ``1 − finetune_share`` of the budget, then masked fine-tuning with labels
    (a level whose geodesic diverged is not fine-tuned)."""
    s = task.settings
    first = int(round((1 - s.finetune_share) * budget))
    finetune = finetuning(task)
    out = []
    for result in geodesic(task, levels, first):
        started = time.perf_counter() - result.seconds
        steps = 0 if result.diverged else budget - result.grad_evals
        theta, used, buffers, stop = finetune.run(result.theta, result.keep, steps, result.buffers)
        hint = result.hint if result.diverged else finetune.hint
        out.append(sparse_result("geodesic-finetune", result.sparsity, theta, result.keep,
                                 result.grad_evals + used, started, stop=worse(result.stop, stop),
                                 hint=hint, buffers=buffers, path=result.path))
    return out
