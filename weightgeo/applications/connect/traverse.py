"""traverse as a connection method: the papers' step from θ_a toward θ_b, then a straight end.

A damped natural-gradient walk under the task metric toward O(θ) = ½||θ − θ_b||² plus
``traverse_weight`` × a task term on training batches (:class:`TowardNetwork`): by default
(``traverse_task="image"``, no labels) the outputs' distance from the output metric's geodesic
between f(θ_a) and f(θ_b) — the logit segment — at the walk's progress
(:class:`~weightgeo.objectives.OutputGeodesicLoss`), or with ``"labels"`` the cross-entropy; once within
``tol`` of θ_b (or when the budget runs out) a final straight segment ends the path exactly at
θ_b, recorded as a stage of its own.

With a constant weight w the objective is least where θ − θ_b = −w ∇L(θ), not at θ_b: the walk
settles there, short of the target (on mnist5k MLPs 2.2–2.4% of ||θ_b − θ_a|| away, beyond the 2%
tolerance, so the budget ran out). ``traverse_fade`` (the default) fades the weight with the
remaining distance, w · r/d with r = ||θ − θ_b||, d = ||θ_b − θ_a||: the objective ½r² + w (r/d) L
is least at θ_b whenever w ||∇L|| < d, and the walk reaches it. The path is streamed to ``paths/traverse`` with the walk's
state at every saved waypoint, so an interrupted run continues it to the same numbers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.applications.connect.curves import Polyline
from weightgeo.applications.connect.task import ConnectTask, MethodResult
from weightgeo.data.streams import RandomSubsets, Stream
from weightgeo.metrics import Metric, OutputMetric
from weightgeo.metrics.base import has_output_geodesic
from weightgeo.objectives import Objective, OutputGeodesicLoss, TargetPoint, TaskLoss
from weightgeo.paths import Path, traverse
from weightgeo.stopping import Stop, StopReason

WALK, FINAL = "traverse", "final-segment"


class TowardNetwork(Objective):
    """½||θ − θ_b||² + w · task loss: move to θ_b while the task loss stays low.

    The step limit and the stop test are the target's (no overshoot along a step; done
    within ``tol``); the task term only bends the route. ``batches`` (the task loss's stream)
    is saved with the walk's state.

    With ``fade`` = d the task term is w · (r/d) · L(θ), r = ||θ − θ_b||, differentiated exactly:
    w (r/d) ∇L + w L (θ − θ_b)/(r d).
    """

    def __init__(self, target: TargetPoint, task: Objective | None, weight: float,
                 batches: Stream | None = None, fade: float | None = None) -> None:
        self.target, self.task, self.weight, self.batches = target, task, weight, batches
        self.fade = fade

    @property
    def cost(self) -> int:  # type: ignore[override]
        return 0 if self.task is None else self.task.cost

    def _faded(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """The fading factor r/d and its gradient (θ − θ_b)/(r d) (zero at θ_b)."""
        offset = theta.detach() - self.target.target
        r = torch.linalg.vector_norm(offset)
        return r / self.fade, offset / (r.clamp_min(torch.finfo(r.dtype).tiny) * self.fade)

    def value(self, theta: Tensor) -> Tensor:
        value = self.target.value(theta)
        if self.task is None:
            return value
        factor = 1.0 if self.fade is None else self._faded(theta)[0]
        return value + self.weight * factor * self.task.value(theta)

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        value, grad = self.target.value_and_grad(theta)
        if self.task is not None and self.weight:
            v, g = self.task.value_and_grad(theta)
            if self.fade is None:
                value, grad = value + self.weight * v, grad + self.weight * g
            else:
                factor, slope = self._faded(theta)
                value = value + self.weight * factor * v
                grad = grad + self.weight * (factor * g + v.detach() * slope)
        return value, grad

    def step_limit(self, theta: Tensor, step: Tensor) -> Tensor:
        return self.target.step_limit(theta, step)

    def done(self, theta: Tensor) -> bool:
        return self.target.done(theta)

    def state_dict(self) -> dict:
        return {} if self.batches is None else {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.batches is not None and "batches" in state:
            self.batches.load_state_dict(state["batches"])

    def __repr__(self) -> str:
        if self.task is None:
            return "TargetPoint"
        return f"TargetPoint + {self.weight:g}·{'(r/d)·' if self.fade else ''}{type(self.task).__name__}"


def _open_path(task: ConnectTask, name: str, save_every: int) -> Path:
    """The walk's path: the interrupted one in ``paths/<name>`` if there is one, else a new one."""
    directory = task.directory(name)
    if directory is not None and (directory / "metrics.jsonl").exists():
        path = Path.load(directory)
        if not path.finished:
            return path
    return Path(task.theta_a, directory=directory, save_every=save_every)


def _stage_stop(path: Path, name: str) -> Stop | None:
    """How stage ``name`` ended, if it has."""
    for stage in path.stages:
        if stage["name"] == name and "stop_reason" in stage:
            return Stop(StopReason(stage["stop_reason"]), int(stage["stop_step"]), stage.get("stop_cause"))
    return None


TERMS: dict[str, type[Objective]] = {"labels": TaskLoss, "image": OutputGeodesicLoss}
"""The walk's task term per ``--traverse-task`` (its class: its ``cost`` plans the steps)."""


def image_metric(task: ConnectTask) -> Metric:
    """The metric whose output geodesic the image term follows: the walk's own where it has one
    (output: the logits' segment; fisher: the great circle of √p), else the output metric's."""
    metric = task.space().metric
    return metric if has_output_geodesic(metric) else OutputMetric(task.model, task.metric_inputs)


def _walk(task: ConnectTask, path: Path, step: float, max_steps: int) -> Stop:
    """The natural-gradient walk (continued where an interrupted run left it); returns its stop."""
    s = task.settings
    distance = float((task.theta_b - task.theta_a).norm())  # reporting
    batches = task.minibatches(offset=1, labelled=s.traverse_task == "labels") if s.walk_weight > 0 else None
    term = None if batches is None else (
        TaskLoss(task.model, batches) if TERMS[s.traverse_task] is TaskLoss
        else OutputGeodesicLoss(image_metric(task), task.theta_a, task.theta_b, batches))
    objective = TowardNetwork(TargetPoint(task.theta_b, tol=s.tol * distance), term,
                              s.walk_weight, batches, fade=distance if s.traverse_fade else None)
    if not path.stages:
        path.begin_stage(WALK)
    inputs = RandomSubsets(task.train.x, s.metric_batch, s.seed + 2)
    taken = max(0, len(path) - 1)  # steps an interrupted run had taken
    traverse(task.space(), objective, step_size=step, max_steps=max_steps - taken, path=path, finish=False,
             metric_inputs=inputs, budget=s.budget, progress=task.progress)
    stop = path.last_stop  # its step counts on from the resumed point (run_tracer's offset)
    path.flush()
    path.save_waypoint(len(path) - 1, path.end)  # where the walk stopped is a vertex of the curve
    return stop


def method_traverse(task: ConnectTask, name: str = "traverse") -> MethodResult:
    """The papers' damped natural-gradient walk toward θ_b, ended by a straight segment."""
    s = task.settings
    distance = float((task.theta_b - task.theta_a).norm())  # reporting
    step = s.step_size if s.step_size is not None else distance / 100
    term_cost = 0 if s.walk_weight == 0 else TERMS[s.traverse_task].cost
    per_step = term_cost + task.space().solve_cost(s.cg_iters)
    max_steps = max(1, s.budget // max(1, per_step))
    path = _open_path(task, name, save_every=max(1, max_steps // 100))
    walked = _stage_stop(path, WALK) or _walk(task, path, step, max_steps)
    final = next((stage for stage in path.stages if stage["name"] == FINAL), None)
    if final is None:
        walk_end = path.end
        remaining = float((task.theta_b - walk_end).norm())  # reporting
        if remaining > 0:
            length = task.space().segment_lengths(torch.stack([walk_end, task.theta_b]))[0]
            path.begin_stage(FINAL)
            path.append(task.theta_b, metric_length=length, euclidean_length=remaining,
                        grad_evals=path.grad_evals, final_segment=True)
            path.end_stage("done")
    else:  # an interrupted run had appended the final segment already
        walk_end = path.waypoint(final["first_point"] - 1)
        remaining = float((task.theta_b - walk_end).norm())  # reporting
        if path.stage_open:
            path.end_stage("done")
    path.finish(walked)
    steps = sum(1 for r in path.records if r.get("stage") == WALK) - 1
    return MethodResult(name, Polyline([w for _, w in path.waypoints()]), path.grad_evals, walked,
                        path=path, info={"steps": steps, "step_size": step, "final_segment_length": remaining,
                                         "final_segment_fraction": remaining / distance})
