"""The connection methods: each turns two networks into a curve between them.

- ``linear``: the straight line.
- ``traverse``: the paper's approach — a damped natural-gradient walk from θ_a under the task
  metric toward O(θ) = ½||θ − θ_b||², plus ``traverse_weight`` × the task loss on training batches;
  once within ``tol`` of θ_b (or when the budget runs out) a final straight segment ends the
  path exactly at θ_b, recorded as such.
- ``relax``: the boundary-value solver (:func:`weightgeo.paths.relax`) from the straight line,
  with the metric's path energy on training inputs (divided by the straight line's) plus
  ``task_weight`` × the task loss at the nodes.
- ``bezier`` / ``polychain``: Garipov et al.'s curves, the bend trained with one t ~ U(0, 1)
  per minibatch on the task loss at w(t), endpoints fixed, SGD with momentum 0.9, weight
  decay on w(t), learning rate constant for half the run then linearly down to 1%.
- ``rebasin``: weight matching (MLPs only), then the straight line to the permuted θ_b.

Methods that train share one budget of gradient evaluations (a minibatch gradient of the
network = 1, a metric-vector product = 1).
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path as FilePath

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo.applications.connect.curves import Bezier, Curve, Polyline
from weightgeo.applications.connect.rebasin import weight_matching
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.metrics.registry import build_metric
from weightgeo.objectives import Objective, TargetPoint, TaskLoss
from weightgeo.paths import Path, relax, traverse

METHODS = ("linear", "traverse", "relax", "bezier", "polychain", "rebasin")
TRAINED = ("traverse", "relax", "bezier", "polychain")


@dataclass
class Setting:
    """Everything a method needs: the two networks, the data and the shared settings."""

    model: FunctionalModel
    theta_a: Tensor
    theta_b: Tensor
    train: object
    test: object
    metric: str = "output"
    nodes: int = 16
    budget: int = 3000
    batch_size: int = 128
    metric_batch: int = 256
    task_weight: float = 20.0
    traverse_weight: float = 100.0
    relax_lr: float = 1e-3
    reparametrize_every: int = 0
    step_size: float | None = None
    damping: float = 1e-3
    cg_iters: int = 10
    tol: float = 0.02
    curve_lr: float = 0.05
    weight_decay: float = 5e-4
    seed: int = 0
    paths_dir: FilePath | None = None
    progress: bool = False
    log: Callable[[str], None] = lambda msg: None
    metric_inputs: Tensor | None = field(default=None, repr=False)

    def space(self, inputs: Tensor | None = None) -> WeightSpace:
        x = self.metric_inputs if inputs is None else inputs
        return WeightSpace(self.model, build_metric(self.metric, self.model, x), damping=self.damping,
                           cg_maxiter=self.cg_iters)

    def directory(self, name: str) -> FilePath | None:
        """A fresh ``paths/<name>`` (an earlier run's files there are removed: paths append)."""
        if self.paths_dir is None:
            return None
        directory = self.paths_dir / name
        if directory.exists():
            shutil.rmtree(directory)
        return directory

    def batches(self, offset: int = 0) -> Iterator[tuple[Tensor, Tensor]]:
        """Shuffled training minibatches, endlessly (reproducible from the seed)."""
        generator = torch.Generator(device="cpu").manual_seed(self.seed + offset)
        device = self.theta_a.device
        while True:
            for x, y in self.train.batches(self.batch_size, shuffle=True, generator=generator):
                yield x.to(device), y.to(device)


@dataclass
class MethodResult:
    name: str
    curve: Curve
    grad_evals: int
    seconds: float
    path: Path | None = None
    info: dict = field(default_factory=dict)


# -- linear and rebasin -------------------------------------------------------------------------
def method_linear(s: Setting) -> MethodResult:
    return MethodResult("linear", Polyline([s.theta_a, s.theta_b]), 0, 0.0)


def method_rebasin(s: Setting) -> MethodResult:
    started = time.perf_counter()
    permuted, perms = weight_matching(s.model, s.theta_a, s.theta_b, seed=s.seed)
    moved = sum(int((p != torch.arange(len(p), device=p.device)).sum()) for p in perms)
    return MethodResult(
        "rebasin", Polyline([s.theta_a, permuted]), 0, time.perf_counter() - started,
        info={"units_permuted": moved, "distance_after": float((permuted - s.theta_a).norm())},
    )


# -- traverse -------------------------------------------------------------------------------------
class TowardNetwork(Objective):
    """½||θ − θ_b||² + w · task loss: move to θ_b while the task loss stays low.

    The step limit and the stop test are the target's (no overshoot along a step; done
    within ``tol``); the task term only bends the route.
    """

    def __init__(self, target: TargetPoint, task: TaskLoss | None, weight: float) -> None:
        self.target, self.task, self.weight = target, task, weight

    @property
    def cost(self) -> int:  # type: ignore[override]
        return 0 if self.task is None else self.task.cost

    def value(self, theta: Tensor) -> Tensor:
        value = self.target.value(theta)
        return value if self.task is None else value + self.weight * self.task.value(theta)

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.target.value_and_grad(theta)
        if self.task is not None and self.weight:
            v, g = self.task.value_and_grad(theta)
            value, grad = value + self.weight * v, grad + self.weight * g
        return value, grad

    def step_limit(self, theta: Tensor, step: Tensor) -> Tensor:
        return self.target.step_limit(theta, step)

    def done(self, theta: Tensor) -> bool:
        return self.target.done(theta)

    def __repr__(self) -> str:
        return f"TargetPoint + {self.weight:g}·TaskLoss" if self.task is not None else "TargetPoint"


def method_traverse(s: Setting) -> MethodResult:
    started = time.perf_counter()
    distance = float((s.theta_b - s.theta_a).norm())
    step = s.step_size if s.step_size is not None else distance / 100
    tol = s.tol * distance
    task = TaskLoss(s.model, s.batches(offset=1)) if s.traverse_weight > 0 else None
    objective = TowardNetwork(TargetPoint(s.theta_b, tol=tol), task, s.traverse_weight)
    generator = torch.Generator(device="cpu").manual_seed(s.seed + 2)
    device = s.theta_a.device

    def metric_batches():
        while True:
            idx = torch.randperm(len(s.train.x), generator=generator)[: s.metric_batch]
            yield s.train.x[idx].to(device)

    per_step = objective.cost + (0 if s.metric == "euclidean" else s.cg_iters)
    max_steps = max(1, s.budget // max(1, per_step))
    save_every = max(1, max_steps // 100)
    path = Path(s.theta_a, directory=s.directory("traverse"), save_every=save_every)
    path.begin_stage("traverse")
    traverse(
        s.space(), objective, step_size=step, max_steps=max_steps, path=path, finish=False,
        metric_inputs=metric_batches(), budget=s.budget, progress=s.progress,
    )
    traced = path.last_stop
    reason = traced.reason.value
    remaining = float((s.theta_b - path.end).norm())
    vertices = [w for _, w in path.waypoints()]
    if remaining > 0:
        # The final straight segment to θ_b (exact end), recorded as a stage of its own.
        with torch.no_grad():
            sq = s.space().segment_energies(torch.stack([path.end, s.theta_b]))
        path.begin_stage("final-segment")
        path.append(s.theta_b, metric_length=sq[0].sqrt(), euclidean_length=remaining,
                    grad_evals=path.grad_evals, final_segment=True)
        path.end_stage("done")
        reason += "+final-segment"
        vertices.append(s.theta_b)
    path.finish(traced)
    return MethodResult(
        "traverse", Polyline(vertices), path.grad_evals, time.perf_counter() - started, path,
        info={"stop_reason": reason, "steps": len(path) - 1, "step_size": step,
              "final_segment_length": remaining, "final_segment_fraction": remaining / distance},
    )


# -- relax ------------------------------------------------------------------------------------------
def method_relax(s: Setting) -> MethodResult:
    started = time.perf_counter()
    task = s.batches(offset=3) if s.task_weight > 0 else None
    inputs = None
    if task is None:
        inputs = (x for x, _ in s.batches(offset=3))
    per_step = s.nodes + 1
    path = relax(
        s.space(), s.theta_a, s.theta_b, nodes=s.nodes, task=task, inputs=inputs,
        task_weight=s.task_weight, steps=max(0, s.budget // per_step), lr=s.relax_lr,
        budget=s.budget, reparametrize_every=s.reparametrize_every,
        directory=s.directory("relax"), progress=s.progress,
    )
    vertices = [w for _, w in path.waypoints()]
    return MethodResult("relax", Polyline(vertices), path.grad_evals, time.perf_counter() - started,
                        path, info={"stop_reason": path.stop_reason, "nodes": s.nodes})


# -- Garipov curves ---------------------------------------------------------------------------------
def train_bend(s: Setting, kind: str) -> tuple[Tensor, int]:
    """Garipov et al.'s curve training: one t ~ U(0,1) per minibatch, loss at w(t), bend trained."""
    fn = s.model.stacked()  # batch norm (if any) on batch statistics, dropout off
    a, b = s.theta_a, s.theta_b
    bend = (0.5 * (a + b)).clone().requires_grad_(True)
    opt = torch.optim.SGD([bend], lr=s.curve_lr, momentum=0.9)
    generator = torch.Generator(device="cpu").manual_seed(s.seed + 4)
    batches = s.batches(offset=4)
    steps = s.budget
    for step in range(steps):
        frac = step / max(1, steps)
        factor = 1.0 if frac < 0.5 else 1.0 - 0.99 * (frac - 0.5) / 0.5
        for group in opt.param_groups:
            group["lr"] = s.curve_lr * factor
        t = float(torch.rand((), generator=generator))
        if kind == "bezier":
            w = (1 - t) ** 2 * a + 2 * t * (1 - t) * bend + t**2 * b
        elif t < 0.5:
            w = a + 2 * t * (bend - a)
        else:
            w = bend + (2 * t - 1) * (b - bend)
        x, y = next(batches)
        loss = F.cross_entropy(fn.single(w, x), y) + 0.5 * s.weight_decay * w.square().sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return bend.detach(), steps


def method_bezier(s: Setting) -> MethodResult:
    started = time.perf_counter()
    bend, spent = train_bend(s, "bezier")
    return MethodResult("bezier", Bezier(s.theta_a, bend, s.theta_b), spent, time.perf_counter() - started)


def method_polychain(s: Setting) -> MethodResult:
    started = time.perf_counter()
    bend, spent = train_bend(s, "polychain")
    return MethodResult("polychain", Polyline([s.theta_a, bend, s.theta_b]), spent,
                        time.perf_counter() - started)


RUNNERS: dict[str, Callable[[Setting], MethodResult]] = {
    "linear": method_linear,
    "traverse": method_traverse,
    "relax": method_relax,
    "bezier": method_bezier,
    "polychain": method_polychain,
    "rebasin": method_rebasin,
}


def run_method(name: str, setting: Setting) -> MethodResult:
    if name not in RUNNERS:
        raise WeightgeoError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return RUNNERS[name](setting)
