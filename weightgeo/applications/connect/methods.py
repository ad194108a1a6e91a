"""The connection methods: each turns two networks into a curve between them (:data:`METHODS`).

- ``linear``: the straight line.
- ``traverse``: the paper's approach (:mod:`.traverse`): a damped natural-gradient walk from θ_a
  under the task metric toward θ_b, plus ``traverse_weight`` × a task term (by default the
  label-free distance from the output-space geodesic at the walk's progress; the cross-entropy
  with ``traverse_task="labels"``; faded with the remaining distance unless ``traverse_fade`` is
  off), ended by a recorded straight segment.
- ``relax``: the boundary-value solver (:func:`weightgeo.paths.relax`) from the straight line,
  with the nodes' fit to the output-space geodesic (``relax_objective`` auto; or the metric's
  path energy) on training inputs, divided by the straight line's, plus ``task_weight`` × the
  task loss at the nodes.
- ``bezier`` / ``polychain``: Garipov et al.'s curves, the bend trained with one t ~ U(0, 1)
  per minibatch on the task loss at w(t) (:class:`~.curves.CurveLoss`), endpoints fixed, SGD
  with momentum 0.9, weight decay on w(t), the ``garipov`` schedule (constant for half the run,
  then linearly down to 1%), all in the library's loop :func:`~weightgeo.optim.fit`.
- ``rebasin``: weight matching (MLPs only), then the straight line to the permuted θ_b.
- ``aligned-relax`` / ``aligned-traverse``: weight matching first (as ``rebasin``), then relax /
  traverse from θ_a to the permuted θ_b π(θ_b) — the same function as θ_b, at a smaller distance
  from θ_a. The alignment uses the weights only: it costs no gradient evaluation, so these
  methods spend the same budget as relax / traverse. Their paths end at π(θ_b), not at θ_b.

Methods that train share one budget of gradient evaluations each (a minibatch gradient of the
network = 1, a metric-vector product = 1). A method that stops on a non-finite value keeps its
last finite curve; :attr:`Method.hint` names the option to change.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from weightgeo.applications.connect.curves import BENT_CURVES, CurveBatches, CurveLoss, Polyline
from weightgeo.applications.connect.rebasin import mlp_layers, weight_matching
from weightgeo.applications.connect.task import ConnectTask, MethodResult, timed
from weightgeo.applications.connect.traverse import method_traverse
from weightgeo.optim import OptimizerSpec, fit
from weightgeo.paths import relax
from weightgeo.registry import Registry
from weightgeo.stopping import Budget


@dataclass(frozen=True)
class Method:
    """A connection method: ``run(task) -> MethodResult``; ``trains``: it spends the budget;
    ``hint``: what to change when it diverges (e.g. "lower --relax-lr"); ``check(task)``: refuses
    a task the method cannot do, before any work (one line)."""

    run: Callable[[ConnectTask], MethodResult]
    trains: bool = False
    hint: str | None = None
    check: Callable[[ConnectTask], object] | None = None


def method_linear(task: ConnectTask) -> MethodResult:
    """The straight line from θ_a to θ_b."""
    return MethodResult("linear", Polyline([task.theta_a, task.theta_b]), 0)


def aligned(task: ConnectTask) -> tuple[ConnectTask, dict]:
    """The task with θ_b replaced by π(θ_b), its hidden units permuted onto θ_a's by weight
    matching (same function as θ_b; no gradient evaluation), and what the alignment did."""
    permuted, perms = weight_matching(task.model, task.theta_a, task.theta_b, seed=task.settings.seed)
    moved = sum(int((p != torch.arange(len(p), device=p.device)).sum()) for p in perms)  # reporting
    info = {"units_permuted": moved, "distance_before": float((task.theta_b - task.theta_a).norm()),
            "distance_after": float((permuted - task.theta_a).norm())}  # reporting
    return replace(task, theta_b=permuted), info


def method_rebasin(task: ConnectTask) -> MethodResult:
    """Weight matching of θ_b's hidden units onto θ_a's (MLPs), then the straight line."""
    target, info = aligned(task)
    return MethodResult("rebasin", Polyline([target.theta_a, target.theta_b]), 0, info=info)


def method_relax(task: ConnectTask, name: str = "relax") -> MethodResult:
    """A discrete geodesic: the nodes fit the output-space geodesic (or minimise the path energy, with
    ``relax_objective="energy"``) plus the task loss at the nodes."""
    s = task.settings
    labelled = s.task_weight > 0
    minibatches = task.minibatches(offset=3, labelled=labelled)
    path = relax(
        task.space(), task.theta_a, task.theta_b, nodes=s.nodes, task=minibatches if labelled else None,
        inputs=None if labelled else minibatches, task_weight=s.task_weight, damping=s.relax_damping,
        objective=s.relax_objective,
        steps=max(0, s.budget // (s.nodes + 1)), lr=s.relax_lr, optimizer=s.relax_optimizer, budget=s.budget,
        directory=task.directory(name), checkpoint_every=s.checkpoint_every, resume=True,
        progress=task.progress,
    )
    vertices = [w for _, w in path.waypoints()]
    return MethodResult(name, Polyline(vertices), path.grad_evals, path.stop, path=path,
                        info={"nodes": s.nodes})


def method_aligned_relax(task: ConnectTask) -> MethodResult:
    """relax from θ_a to the weight-matched π(θ_b) (same function as θ_b; alignment is free)."""
    target, info = aligned(task)
    result = method_relax(target, "aligned-relax")
    result.info.update(info, end="permuted theta_b")
    return result


def method_aligned_traverse(task: ConnectTask) -> MethodResult:
    """traverse from θ_a to the weight-matched π(θ_b) (same function as θ_b; alignment is free)."""
    target, info = aligned(task)
    result = method_traverse(target, "aligned-traverse")
    result.info.update(info, end="permuted theta_b")
    return result


def curve_method(kind: str) -> Callable[[ConnectTask], MethodResult]:
    """Garipov et al.'s training of the bend of a ``kind`` curve (see the module docstring)."""
    curve = BENT_CURVES[kind]

    def run(task: ConnectTask) -> MethodResult:
        s = task.settings
        loss = CurveLoss(task.model, kind, task.theta_a, task.theta_b, s.weight_decay)
        batches = CurveBatches(task.minibatches(offset=4), s.seed + 4)
        spec = OptimizerSpec("sgd", lr=s.curve_lr, momentum=0.9, schedule="garipov")
        result = fit(0.5 * (task.theta_a + task.theta_b), loss, batches, s.budget, optimizer=spec,
                     budget=Budget(s.budget), checkpoint=task.checkpoint(kind),
                     checkpoint_every=s.checkpoint_every, resume=task.saved(kind),
                     progress=kind if task.progress else False)
        return MethodResult(kind, curve.build(task.theta_a, result.param, task.theta_b), result.grad_evals,
                            result.stop)

    run.__doc__ = f"Garipov et al.'s {kind} curve, its bend trained on the loss at w(t)."
    return run


METHODS: Registry[Method] = Registry("method")
"""The connection methods by name (``--method``)."""

METHODS.register("linear", Method(method_linear), help="the straight line")
METHODS.register("traverse", Method(method_traverse, True, "lower --step-size"),
                 help="damped natural-gradient walk toward θ_b, then a straight end")
METHODS.register("relax", Method(method_relax, True, "lower --relax-lr"),
                 help="discrete geodesic: nodes fitted to the output-space geodesic (or the path energy) plus the "
                      "task loss")
METHODS.register("bezier", Method(curve_method("bezier"), True, "lower --curve-lr"),
                 help="Garipov's quadratic Bezier curve")
METHODS.register("polychain", Method(curve_method("polychain"), True, "lower --curve-lr"),
                 help="Garipov's polygonal chain")
def _mlp_only(task: ConnectTask) -> object:
    """Refuse, in one line, a network weight matching cannot align (anything but an MLP)."""
    return mlp_layers(task.model, task.name)


METHODS.register("rebasin", Method(method_rebasin, check=_mlp_only),
                 help="weight matching, then the straight line (MLPs)")

METHODS.register("aligned-relax", Method(method_aligned_relax, True, "lower --relax-lr", _mlp_only),
                 help="weight matching, then relax to the permuted θ_b (MLPs; ends at π(θ_b))")
METHODS.register("aligned-traverse", Method(method_aligned_traverse, True, "lower --step-size", _mlp_only),
                 help="weight matching, then traverse to the permuted θ_b (MLPs; ends at π(θ_b))")

DEFAULT_METHODS: tuple[str, ...] = ("linear", "traverse", "relax", "bezier", "polychain", "rebasin")
"""The methods of a run without --method (the aligned methods are asked for by name)."""


def run_method(name: str, task: ConnectTask) -> MethodResult:
    """Run method ``name`` on ``task`` (or read back what an interrupted run finished).

    The result is written to ``paths/<name>/`` when the task has a run directory.

    Raises:
        WeightgeoError: an unknown method (one line naming the choices).
    """
    method = METHODS[name]
    directory = task.directory(name)
    finished = MethodResult.load(directory, task.theta_a.device)
    if finished is not None:
        return finished
    result = timed(method.run)(task)
    result.save(directory)
    task.forget(name)
    return result
