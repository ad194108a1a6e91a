"""relax: a boundary-value solver for paths between two networks (discrete geodesics).

The path from θ_a to θ_b is a polyline through K interior nodes θ_1 … θ_K (θ_0 = θ_a,
θ_{K+1} = θ_b fixed). relax minimises the discrete path energy

    E = (K + 1) Σ_k d²(θ_k, θ_{k+1}),

whose minimisers are discrete geodesics at constant speed. d² is the metric's own squared
distance between neighbouring nodes, computed without any Jacobian:

- Euclidean: ||θ_{k+1} − θ_k||²;
- OutputMetric (G = mean JᵀJ): mean_x ||f(x; θ_{k+1}) − f(x; θ_k)||², which is
  Δθᵀ G Δθ to second order;
- FisherMetric (G = mean Jᵀ(diag p − ppᵀ)J): 4 mean_x Σ_c (√p_{k+1} − √p_k)², eight times
  the squared Hellinger distance, again Δθᵀ G Δθ to second order.

Optionally the task loss at the nodes is added (``task=``, weight ``task_weight``): the
energy keeps the path short in function space, the loss keeps every node accurate.
All K + 2 nodes are evaluated in one batched forward pass (``torch.func.vmap`` over the
stacked weights with ``functional_call``), not a Python loop over nodes.

Batch-norm networks are evaluated with batch statistics at every node (a private copy of
the module with ``replace_all_batch_norm_modules_``), since running statistics of the
endpoints mean nothing at an interior node.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.fisher import FisherMetric
from weightgeo.metrics.output import OutputMetric
from weightgeo.paths.path import Path
from weightgeo.progress import Progress

OPTIMIZERS = ("adam", "sgd")


# -- the network at many weight vectors at once -------------------------------------------
class NodeFunction:
    """``f(x; θ)`` for a stack of weight vectors: one vmapped ``functional_call``.

    A private copy of the model's module is used: eval mode (dropout off); batch norm
    (if any) normalises with the statistics of the batch, per node.
    """

    def __init__(self, model: FunctionalModel) -> None:
        self.model = model
        module = copy.deepcopy(model.module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        if model.has_batch_norm:
            replace_all_batch_norm_modules_(module)
        self.module = module
        names = set(model.names)
        self._frozen = {n: p for n, p in module.named_parameters() if n not in names}
        self._buffers = {n: b for n, b in module.named_buffers()}
        self._batched = vmap(self.single, in_dims=(0, None))

    def single(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits at one θ (batch statistics for batch norm)."""
        m = self.model
        params = {
            n: chunk.view(s) for n, chunk, s in zip(m.names, theta.split(m.numels), m.shapes, strict=True)
        }
        return functional_call(self.module, {**self._frozen, **self._buffers, **params}, (x,))

    def __call__(self, stack: Tensor, x: Tensor) -> Tensor:
        """Logits at every row of ``stack`` (N×n): N×B×C, in one batched pass."""
        return self._batched(stack, x)

    def loop(self, stack: Tensor, x: Tensor) -> Tensor:
        """The same as ``__call__`` with a Python loop over the rows (the benchmark's reference)."""
        return torch.stack([self.single(theta, x) for theta in stack.unbind(0)])


# -- segment lengths under a metric ----------------------------------------------------------
def _kind(space: WeightSpace) -> str:
    metric = space.metric
    if isinstance(metric, Euclidean):
        return "euclidean"
    if isinstance(metric, FisherMetric):
        return "fisher"
    if isinstance(metric, OutputMetric):
        return "output"
    raise WeightgeoError(
        f"relax knows the discrete energy of the euclidean, output and fisher metrics, "
        f"not of {type(metric).__name__}"
    )


def output_squared_distances(outputs: Tensor, kind: str) -> Tensor:
    """Squared metric distances between consecutive rows of ``outputs`` (N×B×C logits): N−1.

    ``kind`` "output": mean_x ||Δf||²; "fisher": 4 mean_x Σ_c (Δ√p)².
    """
    if kind == "fisher":
        root = outputs.softmax(dim=-1).sqrt()
        return 4.0 * (root[1:] - root[:-1]).square().sum(-1).mean(-1)
    return (outputs[1:] - outputs[:-1]).square().sum(-1).mean(-1)


def segment_squared_lengths(
    space: WeightSpace,
    points: Tensor,
    inputs: Tensor | None = None,
    node_function: NodeFunction | None = None,
    chunk: int = 64,
) -> Tensor:
    """d²(θ_k, θ_{k+1}) under the space's metric for consecutive rows of ``points`` (N×n).

    ``inputs`` default to the metric's own batch. For the Euclidean metric no network runs.
    """
    kind = _kind(space)
    if kind == "euclidean":
        diff = points[1:] - points[:-1]
        mask = space._mask_like(points)
        return (diff if mask is None else diff * mask).square().sum(-1)
    x = space.metric.inputs if inputs is None else inputs
    fn = NodeFunction(space.model) if node_function is None else node_function
    parts = []
    with torch.no_grad():
        for i in range(0, len(points) - 1, chunk):
            block = points[i : i + chunk + 1]
            parts.append(output_squared_distances(fn(block, x), kind))
    return torch.cat(parts)


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


def _cycle(batches) -> Iterator:
    while True:
        empty = True
        for batch in batches:
            empty = False
            yield batch
        if empty:
            raise WeightgeoError("relax: a batch iterable yielded nothing")


def _batches(source) -> Iterator | None:
    if source is None:
        return None
    if isinstance(source, Tensor) or isinstance(source, tuple):
        return _cycle([source])
    return _cycle(source)


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


def relax(
    space: WeightSpace,
    theta_a: Tensor,
    theta_b: Tensor,
    nodes: int = 16,
    *,
    init: Tensor | Path | None = None,
    inputs: Tensor | Iterable[Tensor] | None = None,
    task: tuple[Tensor, Tensor] | Iterable[tuple[Tensor, Tensor]] | None = None,
    task_weight: float = 1.0,
    normalize: bool = True,
    steps: int = 200,
    lr: float = 1e-3,
    optimizer: str = "adam",
    momentum: float = 0.9,
    budget: int | None = None,
    reparametrize_every: int = 0,
    directory: str | os.PathLike | None = None,
    evaluate: Callable[[Tensor], dict[str, Any]] | None = None,
    callback: Callable[[int, dict], bool | None] | None = None,
    log_every: int = 10,
    progress: bool = False,
) -> Path:
    """A path θ_a → θ_b through ``nodes`` interior nodes minimising the discrete path energy.

    Args:
        space: the weight space; its metric picks the energy (euclidean, output, fisher).
            A mask keeps every node in the sparse subspace.
        theta_a, theta_b: the fixed endpoints.
        nodes: K, the number of interior nodes.
        init: the starting path: None (the straight line), a K×n tensor of nodes, or a
            :class:`Path` (resampled to K nodes by Euclidean arc length).
        inputs: the unlabelled inputs of the energy: one batch (fixed) or an iterable of
            batches (a fresh one per step). Default: the task batches' inputs if ``task`` is
            given, else the metric's own batch.
        task: labelled ``(x, y)`` batches (one pair or an iterable); if given, the mean
            cross-entropy over the nodes, times ``task_weight``, is added to the energy.
        normalize: divide the energy by the straight line's energy on the first batch (a
            constant), so ``task_weight`` is relative: E/E_line + w·CE. The minimiser of the
            energy alone does not change.
        steps: optimiser steps; ``budget`` (gradient evaluations) may stop it earlier.
        lr, optimizer, momentum: "adam" (default) or "sgd" (with ``momentum``).
        reparametrize_every: every this many steps, move the nodes to equal metric arc
            length along the current polyline (constant speed) and restart the optimiser's
            state; 0 never.
        directory: stream the resulting path there (every node is saved).
        evaluate: ``θ -> dict`` recorded at every node of the final path (logging).
        callback: ``callback(step, info)`` every ``log_every`` steps with the energy, task
            loss and grad evals so far (logging; returning True stops).

    Returns:
        A :class:`Path` with the K + 2 nodes as its points; each record holds the metric and
        Euclidean length of the segment into it; ``meta["history"]`` the energy every
        ``log_every`` steps. Gradient evaluations: K per step and per distinct batch
        (one network gradient per node), plus 1 per step for the two endpoints' forward
        passes (each about a third of a gradient).
    """
    if nodes < 1:
        raise WeightgeoError(f"relax needs at least one interior node, got nodes={nodes}")
    if optimizer not in OPTIMIZERS:
        raise WeightgeoError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
    if steps < 0:
        raise WeightgeoError(f"steps must be ≥ 0, got {steps}")
    if not lr > 0:
        raise WeightgeoError(f"lr must be a positive number, got {lr}")
    kind = _kind(space)
    theta_a = space.projx(theta_a.detach())
    theta_b = space.projx(theta_b.detach())
    space.check(theta_a)
    space.check(theta_b)
    task_iter = _batches(task)
    if inputs is None and task is None and kind != "euclidean":
        inputs = space.metric.inputs
    input_iter = _batches(inputs)
    fn = NodeFunction(space.model)
    mask = space._mask_like(theta_a)

    z = initial_nodes(theta_a, theta_b, nodes, init)
    if mask is not None:
        z = z * mask
    z = z.clone().requires_grad_(True)

    def make_optimizer():
        if optimizer == "adam":
            return torch.optim.Adam([z], lr=lr)
        return torch.optim.SGD([z], lr=lr, momentum=momentum)

    opt = make_optimizer()
    uses_network = kind != "euclidean" or task_iter is not None
    batches_per_step = (input_iter is not None and kind != "euclidean") + (task_iter is not None)
    cost = nodes * batches_per_step + (1 if uses_network else 0)
    spent = 0
    history: list[dict] = []
    stop_reason = "steps"
    last_x: Tensor | None = None
    scale: Tensor | None = None
    with Progress(steps, "relax", enabled=progress) as bar:
        for step in range(steps):
            if budget is not None and spent + cost > budget:
                stop_reason = "budget"
                break
            full = torch.cat([theta_a[None], z, theta_b[None]])
            energy = torch.zeros((), dtype=z.dtype, device=z.device)
            task_loss = torch.zeros((), dtype=z.dtype, device=z.device)
            if kind == "euclidean":
                energy = (nodes + 1) * (full[1:] - full[:-1]).square().sum()
            xt, yt = next(task_iter) if task_iter is not None else (None, None)
            if kind != "euclidean":
                x = next(input_iter) if input_iter is not None else xt
                out = fn(full, x)
                energy = (nodes + 1) * output_squared_distances(out, kind).sum()
                last_x = x
                if task_iter is not None:
                    out_task = out[1:-1] if x is xt else fn(z, xt)
            elif task_iter is not None:
                out_task = fn(z, xt)
            if task_iter is not None:
                logits = out_task.reshape(-1, out_task.shape[-1])
                task_loss = F.cross_entropy(logits, yt.repeat(nodes))
            if normalize and scale is None:
                with torch.no_grad():
                    line = torch.linspace(0, 1, nodes + 2, dtype=z.dtype, device=z.device)[:, None]
                    line = theta_a + line * (theta_b - theta_a)
                    if kind == "euclidean":
                        line_energy = (nodes + 1) * (line[1:] - line[:-1]).square().sum()
                    else:
                        line_energy = (nodes + 1) * output_squared_distances(fn(line, x), kind).sum()
                    scale = line_energy.clamp_min(torch.finfo(z.dtype).tiny)
            total = (energy / scale if normalize else energy) + task_weight * task_loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            if mask is not None:
                z.grad.mul_(mask)
            opt.step()
            spent += cost
            if mask is not None:
                with torch.no_grad():
                    z.mul_(mask)
            if reparametrize_every and (step + 1) % reparametrize_every == 0:
                with torch.no_grad():
                    full = torch.cat([theta_a[None], z, theta_b[None]])
                    lengths = segment_squared_lengths(space, full, last_x, fn).sqrt()
                    z.copy_(resample_polyline(full, lengths, nodes + 2)[0][1:-1])
                opt = make_optimizer()
            if step % log_every == 0 or step == steps - 1:
                # Logging: one host read every log_every steps.
                row = {"step": step, "energy": float(energy.detach()), "task_loss": float(task_loss.detach()),
                       "grad_evals": spent}
                history.append(row)
                if callback is not None and callback(step, row):
                    stop_reason = "callback"
                    break
            bar.update(1)
            if not bool(torch.isfinite(total)):  # stop test
                stop_reason = "non-finite"
                break

    with torch.no_grad():
        full = torch.cat([theta_a[None], z.detach(), theta_b[None]])
        sq = segment_squared_lengths(space, full, last_x, fn)
    path = Path(
        theta_a, directory=directory, save_every=1,
        meta={"tracer": "relax", "metric": type(space.metric).__name__, "nodes": nodes,
              "steps": steps, "lr": lr, "optimizer": optimizer, "task_weight": task_weight,
              "normalize": normalize, "line_energy": None if scale is None else float(scale),
              "with_task_loss": task_iter is not None, "reparametrize_every": reparametrize_every,
              "history": history},
    )
    euclid = (full[1:] - full[:-1]).norm(dim=-1)
    for k in range(nodes + 2):
        seg = {"metric_length": 0.0, "euclidean_length": 0.0} if k == 0 else {
            "metric_length": sq[k - 1].sqrt(), "euclidean_length": euclid[k - 1]}
        path.append(full[k], grad_evals=spent if k else 0, **seg)
        if evaluate is not None:
            path.update_last(**evaluate(full[k]))
    return path.finish(stop_reason)
