"""relax: a boundary-value solver for paths between two networks (discrete geodesics).

The path from θ_a to θ_b is a polyline through K interior nodes θ_1 … θ_K (θ_0 = θ_a,
θ_{K+1} = θ_b fixed). relax minimises the discrete path energy

    E = (K + 1) Σ_k d²(θ_k, θ_{k+1}),

whose minimisers are discrete geodesics at constant speed (with ``damping`` λ: of G + λI,
d² + λ||Δθ||², a geodesic held nearer the straight line where G is blind). d² is the metric's own
``segment_energies`` (any metric: by default Δθᵀ G(θ̄) Δθ from products at the midpoints;
the pull-back metrics give it as a distance between the network's outputs, with no Jacobian —
mean_x ||Δf||² for the output metric, 8 × the squared Hellinger distance for the Fisher metric —
evaluated at all nodes in one vmapped pass).

With ``objective="image"`` the nodes are fitted instead to the image of the geodesic in the
output space, for a metric pulled back from the outputs (``Metric.output_geodesic``: the logits'
straight segment for the output metric, the great circle of √p for the Fisher metric):

    I = (K + 1) Σ_k d²_out(f(θ_k), γ(t_k)),   t_k = k / (K + 1),

where γ joins f(θ_a) and f(θ_b) on each batch. Wherever the network can realise γ, the minimisers
of E are the nodes whose outputs lie on γ at constant speed, the minimisers of I; but E couples
neighbours only (its gradient spreads along the chain like heat, a condition number of order K²),
while I pulls every node towards its own target at once. No labels are needed.

Optionally the task loss at the nodes is added (``task=``, weight ``task_weight``): the
energy keeps the path short in function space, the loss keeps every node accurate. The nodes
are optimised by the library's one loop (:func:`~weightgeo.optim.fit`, Adam by default), so
budgets, non-finite stops (the last finite nodes kept) and resumption are the loop's.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo import distributed
from weightgeo.data.streams import Stream, stream
from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.metrics.base import Metric, has_output_geodesic
from weightgeo.optim.loop import OptimizerSpec, fit
from weightgeo.paths.path import Path
from weightgeo.rundir import load_tensors, save_tensors
from weightgeo.stopping import Budget


def resample_polyline(points: Tensor, lengths: Tensor, count: int) -> tuple[Tensor, Tensor]:
    """``count`` points evenly spaced by arc length along the polyline through ``points``.

    ``lengths`` holds the N−1 segment lengths (any metric). Returns the new points
    (count×n) and their arc-length fractions in [0, 1]. The first and last points are kept.
    """
    if count < 2:
        raise WeightgeoError(f"resampling needs at least 2 points, got {count}")
    lengths = lengths.to(points.dtype).clamp_min(0)
    cumulative = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])
    total = cumulative[-1]
    fractions = torch.linspace(0, 1, count, dtype=points.dtype, device=points.device)
    if not bool(total > 0):  # a degenerate path: all points coincide (stop test)
        return points[:1].expand(count, -1).clone(), fractions
    targets = fractions * total
    index = torch.searchsorted(cumulative, targets, right=True).clamp(1, len(points) - 1)
    left, right = cumulative[index - 1], cumulative[index]
    w = ((targets - left) / (right - left).clamp_min(torch.finfo(points.dtype).tiny)).clamp(0, 1)
    out = points[index - 1] + w[:, None] * (points[index] - points[index - 1])
    out[0], out[-1] = points[0], points[-1]
    return out, fractions


def initial_nodes(
    theta_a: Tensor, theta_b: Tensor, nodes: int, init: Tensor | Path | None = None
) -> Tensor:
    """K interior nodes: on the straight line, or resampled from a given path by arc length."""
    if init is None:
        t = torch.linspace(0, 1, nodes + 2, dtype=theta_a.dtype, device=theta_a.device)[1:-1]
        return theta_a + t[:, None] * (theta_b - theta_a)
    if isinstance(init, Path):
        pts = torch.stack([w.to(theta_a.device) for _, w in init.waypoints()])
        if not torch.equal(pts[-1], theta_b):
            pts = torch.cat([pts, theta_b[None]])
        if not torch.equal(pts[0], theta_a):
            pts = torch.cat([theta_a[None], pts])
        lengths = (pts[1:] - pts[:-1]).norm(dim=-1)
        return resample_polyline(pts, lengths, nodes + 2)[0][1:-1]
    if init.dim() != 2 or init.shape != (nodes, theta_a.numel()):
        raise WeightgeoError(
            f"init must hold the {nodes} interior nodes as a {nodes}×{theta_a.numel()} tensor, "
            f"got shape {tuple(init.shape)}"
        )
    return init.detach().to(theta_a)


class RelaxBatches(Stream):
    """(energy inputs, task batch) per step: the energy's own stream, or the task batch's inputs
    (sharing its forward pass), or None (the metric's own batch)."""

    def __init__(self, inputs: Stream | None, task: Stream | None) -> None:
        self.inputs, self.task = inputs, task

    def next(self) -> tuple[Tensor | None, tuple[Tensor, Tensor] | None]:
        task = None if self.task is None else self.task.next()
        if self.inputs is not None:
            batch = self.inputs.next()
            x = batch[0] if isinstance(batch, tuple | list) else batch
        else:
            x = None if task is None else task[0]
        return x, task

    def state_dict(self) -> dict:
        return {"inputs": None if self.inputs is None else self.inputs.state_dict(),
                "task": None if self.task is None else self.task.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        for name in ("inputs", "task"):
            part = getattr(self, name)
            if part is not None and state.get(name) is not None:
                part.load_state_dict(state[name])


OBJECTIVES = ("energy", "image", "auto")
"""relax's objectives: the discrete path energy E, the fit I to the output-space geodesic, or auto
(I where the metric has an output geodesic, else E)."""


def no_output_geodesic(metric: Metric) -> str:
    """The one-line refusal of the image objective for ``metric``."""
    return (f"relax's image objective needs a metric pulled back from the outputs with a closed-form output "
            f"geodesic (output, fisher), not {type(metric).__name__}: use objective='energy'")


class PathEnergy:
    """relax's loss over the interior nodes z: E(z) or I(z) (divided by the straight line's, with
    ``normalize``) plus ``task_weight`` × the mean cross-entropy at the nodes."""

    def __init__(self, space: WeightSpace, theta_a: Tensor, theta_b: Tensor, nodes: int,
                 task_weight: float, normalize: bool, damping: float = 0.0, objective: str = "energy") -> None:
        if objective not in OBJECTIVES:
            raise WeightgeoError(f"relax's objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.space, self.theta_a, self.theta_b, self.nodes = space, theta_a, theta_b, nodes
        self.task_weight, self.normalize, self.damping = task_weight, normalize, damping
        if objective == "auto":
            objective = "image" if has_output_geodesic(space.metric) else "energy"
        if objective == "image" and not has_output_geodesic(space.metric):
            raise WeightgeoError(no_output_geodesic(space.metric))
        self.objective = objective
        self.scale: Tensor | None = None
        self.last: dict[str, Tensor] = {}

    def polyline(self, z: Tensor) -> Tensor:
        return torch.cat([self.theta_a[None], self.space.projx(z), self.theta_b[None]])

    def energy(self, full: Tensor, x: Tensor | None) -> Tensor:
        """(K + 1) Σ_k [d²(θ_k, θ_{k+1}) + λ||θ_{k+1} − θ_k||²] (the energy under G + λI), or with
        the image objective (K + 1) Σ_k [d²_out(f(θ_k), γ(t_k)) + λ||θ_{k+1} − θ_k||²]."""
        if self.objective == "image":
            terms = self.image_distances(full, x).sum()
        else:
            terms = self.local_metric(x).segment_energies(self.space.projx(full)).sum()
        if self.damping:
            terms = terms + self.damping * (full[1:] - full[:-1]).square().sum()
        return (self.nodes + 1) * terms

    def local_metric(self, x: Tensor | None) -> Metric:
        """The metric on the step's inputs x, which the loop has already sharded (this rank's part),
        or on its own batch (sharded by the metric)."""
        return self.space.metric if x is None else self.space.metric.on_local_inputs(x)

    def segment_lengths(self, full: Tensor, damped: bool = False) -> Tensor:
        """d(θ_k, θ_{k+1}) under the metric (with ``damped``: under G + λI) on the last step's inputs
        (this rank's part), averaged over the ranks by their shares: the reported metric lengths and
        the reparametrisation's arc lengths, the same on every rank."""
        x = self.last.get("x")
        if x is None:
            energies = self.space.metric.segment_energies(self.space.projx(full))
        else:
            energies = distributed.average(self.local_metric(x).segment_energies(self.space.projx(full)), len(x))
        if damped and self.damping:
            energies = energies + self.damping * (full[1:] - full[:-1]).square().sum(1)
        return energies.clamp_min(0).sqrt()

    def floor(self, x: Tensor | None, examples: int) -> Tensor:
        """The least line value that normalises: ``tiny`` for the energy; for the image objective √eps
        × d²_out(f(θ_a), f(θ_b)) on the batch (the scale of its rounding noise)."""
        dtype = self.theta_a.dtype
        if self.objective != "image":
            return torch.tensor(torch.finfo(dtype).tiny, dtype=dtype, device=self.theta_a.device)
        metric = self.local_metric(x)
        ends = self.space.model.stacked()(torch.stack([self.theta_a, self.theta_b]), metric.local_inputs)
        distance = distributed.average(metric.paired_distances(ends[:1], ends[1:])[0], examples)
        return torch.finfo(dtype).eps ** 0.5 * distance

    def image_distances(self, full: Tensor, x: Tensor | None) -> Tensor:
        """d²_out(f(θ_k), γ(t_k)) for the K interior nodes, on this rank's shard of the batch."""
        metric = self.local_metric(x)
        outputs = self.space.model.stacked()(self.space.projx(full), metric.local_inputs)
        t = torch.linspace(0, 1, self.nodes + 2, dtype=outputs.dtype, device=outputs.device)[1:-1]
        targets = metric.output_geodesic(outputs[0].detach(), outputs[-1].detach(), t)
        if targets is None:
            raise WeightgeoError(no_output_geodesic(metric))
        return metric.paired_distances(outputs[1:-1], targets)

    def __call__(self, z: Tensor, batch: tuple) -> Tensor:
        x, task = batch
        full = self.polyline(z)
        energy = self.energy(full, x)
        if self.normalize and self.scale is None:
            with torch.no_grad():
                t = torch.linspace(0, 1, self.nodes + 2, dtype=z.dtype, device=z.device)[:, None]
                line = self.theta_a + t * (self.theta_b - self.theta_a)
                # the same constant on every rank: the line's energy over the whole batch
                line_energy = distributed.average(self.energy(line, x), distributed.batch_size(batch))
                # a line that is its own image (a model linear in θ) has a misfit of rounding noise,
                # not 0: below √eps of the ends' own squared output distance, no scaling
                floor = self.floor(x, distributed.batch_size(batch))
                self.scale = torch.where(line_energy > floor, line_energy, torch.ones_like(line_energy))
        total = energy / self.scale if self.normalize else energy
        task_loss = torch.zeros((), dtype=z.dtype, device=z.device)
        if task is not None:
            xt, yt = task
            logits = self.space.model.stacked()(full, xt)[1:-1]
            task_loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), yt.repeat(self.nodes))
            total = total + self.task_weight * task_loss
        self.last = {"energy": energy.detach(), "task_loss": task_loss.detach(), "x": x}
        return total

    def state_dict(self) -> dict:
        return {"scale": self.scale}

    def load_state_dict(self, state: dict) -> None:
        self.scale = state["scale"]


def relax(
    space: WeightSpace,
    theta_a: Tensor,
    theta_b: Tensor,
    nodes: int = 16,
    *,
    init: Tensor | Path | None = None,
    inputs: Tensor | Iterable[Tensor] | Stream | None = None,
    task: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]] | Stream | None = None,
    task_weight: float = 1.0,
    normalize: bool = True,
    damping: float = 0.0,
    objective: Literal["energy", "image", "auto"] = "energy",
    steps: int = 200,
    lr: float = 1e-3,
    optimizer: Literal["adam", "sgd"] = "adam",
    momentum: float = 0.9,
    budget: int | None = None,
    reparametrize_every: int = 0,
    directory: str | os.PathLike | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    callback: Callable[[int, dict], bool | None] | None = None,
    log_every: int = 10,
    progress: bool = False,
) -> Path:
    """A path θ_a → θ_b through ``nodes`` interior nodes minimising the discrete path energy.

    Args:
        space: the weight space; its metric gives the energy (any metric). A mask keeps every
            node in the sparse subspace.
        theta_a, theta_b: the fixed endpoints.
        nodes: K, the number of interior nodes.
        init: the starting path: None (the straight line), a K×n tensor of nodes, or a
            :class:`Path` (resampled to K nodes by Euclidean arc length).
        inputs: the unlabelled inputs of the energy: one batch (fixed), an iterable of batches
            or a stream (a fresh one per step). Default: the task batches' inputs if ``task`` is
            given, else the metric's own batch.
        task: labelled ``(x, y)`` batches (one pair, an iterable or a stream); if given, the mean
            cross-entropy over the nodes, times ``task_weight``, is added to the energy.
        normalize: divide the energy by the straight line's energy on the first batch (a
            constant), so ``task_weight`` is relative: E/E_line + w·CE. The minimiser of the
            energy alone does not change.
        damping: λ ≥ 0, the energy under G + λI: each segment adds λ||Δθ||² (free: no network
            pass), so directions the metric does not see are no longer free to wander.
        objective: "energy" (the path energy E) or "image" (each node's outputs fitted to the
            output-space geodesic between the endpoints' outputs: the same minimisers where the
            network can realise it, reached faster; a pull-back metric with ``output_geodesic``),
            or "auto" (image where the metric has an output geodesic, else energy).
        steps: optimiser steps; ``budget`` (gradient evaluations) may stop it earlier.
        lr, optimizer, momentum: "adam" (default) or "sgd" (with ``momentum``), constant rate.
        reparametrize_every: every this many steps, move the nodes to equal metric arc
            length along the current polyline (constant speed) and restart the optimiser's
            state; 0 never.
        directory: stream the resulting path there (every node is saved); with
            ``checkpoint_every`` the optimisation's state is saved there every that many steps
            and ``resume=True`` continues from it.
        evaluate: ``θ -> dict`` recorded at every node of the final path (logging).
        callback: ``callback(step, info)`` every ``log_every`` steps with the energy, task
            loss and grad evals so far (logging; returning True stops).

    Returns:
        A :class:`Path` with the K + 2 nodes as its points; each record holds the metric and
        Euclidean length of the segment into it; ``meta["history"]`` the energy every
        ``log_every`` steps; its ``stop`` says why the optimisation ended. Gradient
        evaluations per step: the metric's ``energy_cost(K + 1)`` (K + 1 for a pull-back
        metric: one network gradient per node), plus K when the task loss is on other inputs.
    """
    if not isinstance(nodes, int) or nodes < 1:
        raise WeightgeoError(f"relax needs at least one interior node, got nodes={nodes!r}")
    if not isinstance(steps, int) or steps < 0:
        raise WeightgeoError(f"steps must be a whole number ≥ 0, got {steps!r}")
    if not damping >= 0:
        raise WeightgeoError(f"relax's damping must be ≥ 0, got {damping!r}")
    spec = OptimizerSpec(optimizer, lr=lr, momentum=momentum if optimizer == "sgd" else 0.0,
                         schedule="constant")
    theta_a, theta_b = space.projx(theta_a.detach()), space.projx(theta_b.detach())
    space.check(theta_a)
    space.check(theta_b)
    loss = PathEnergy(space, theta_a, theta_b, nodes, task_weight, normalize, damping, objective)
    if loss.objective == "image" and reparametrize_every:
        raise WeightgeoError("relax's image objective fixes each node's fraction t_k: it takes no reparametrize_every")
    if inputs is None and task is None and space.metric.inputs is not None:
        # the metric's own batch, given to the loop like any other so that it shards it once and
        # weights each rank by its share (exact with uneven shards under torchrun)
        inputs = space.metric.inputs
    batches = RelaxBatches(None if inputs is None else stream(inputs), None if task is None else stream(task))
    cost = space.metric.energy_cost(nodes + 1)
    if task is not None and (inputs is not None or cost == 0):
        cost += nodes  # the task loss on inputs of its own: one gradient per interior node
    history: list[dict] = []

    def log(state) -> bool | dict:
        # Logging: one host read every log_every steps.
        row = {"step": state.step - 1, "energy": float(loss.last["energy"]),
               "task_loss": float(loss.last["task_loss"]), "grad_evals": state.budget.spent}
        history.append(row)
        return callback is not None and bool(callback(state.step - 1, row))

    def reparametrize(state) -> None:
        with torch.no_grad():
            full = loss.polyline(state.param)
            lengths = loss.segment_lengths(full, damped=True)
            state.param.copy_(resample_polyline(full, lengths, nodes + 2)[0][1:-1])
        state.optimizer.state.clear()  # restart the optimiser's moments at the new nodes

    hooks = [(max(1, log_every), log)] + ([(reparametrize_every, reparametrize)] if reparametrize_every else [])
    state_file = None if directory is None else os.path.join(directory, "relax_state.pt")
    saved = load_tensors(state_file) if resume and state_file and os.path.exists(state_file) else None
    if saved is not None:
        history = saved.pop("history")
    result = fit(initial_nodes(theta_a, theta_b, nodes, init), loss, batches, steps, optimizer=spec,
                 budget=Budget(budget), cost_per_step=cost, hooks=hooks, progress="relax" if progress else False,
                 checkpoint=(lambda s: save_tensors(state_file, {**s, "history": list(history)}))
                 if state_file and checkpoint_every else None,
                 checkpoint_every=checkpoint_every, resume=saved)
    with torch.no_grad():
        full = loss.polyline(result.param)
        lengths = loss.segment_lengths(full)
    path = Path(theta_a, directory=directory, save_every=1, meta={
        "tracer": "relax", "metric": type(space.metric).__name__, "nodes": nodes, "steps": steps, "lr": lr,
        "optimizer": optimizer, "task_weight": task_weight, "normalize": normalize, "damping": damping,
        "objective": loss.objective,
        "line_energy": None if loss.scale is None else float(loss.scale), "with_task_loss": task is not None,
        "reparametrize_every": reparametrize_every, "history": history,
    })
    euclid = (full[1:] - full[:-1]).norm(dim=-1)
    for k in range(nodes + 2):
        seg = {"metric_length": 0.0, "euclidean_length": 0.0} if k == 0 else {
            "metric_length": lengths[k - 1], "euclidean_length": euclid[k - 1]}
        path.append(full[k], grad_evals=result.grad_evals if k else 0, **seg)
        if evaluate is not None:
            path.update_last(**evaluate(full[k]))
    if state_file and os.path.exists(state_file):
        os.unlink(state_file)
    return path.finish(result.stop)
