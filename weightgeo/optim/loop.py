"""``fit``: the one optimisation loop for everything that trains a parameter on minibatches.

Training, fine-tuning, distillation, every continual-learning method, the Bezier and
polygonal-chain curves and ``relax`` all run here; a method differs from another by its loss,
its penalty or its metric, never by a loop of its own. The loop is ``torch.optim`` /
``geoopt.optim`` with a ``LambdaLR`` schedule:

- without a ``space`` the parameter is a plain tensor and the optimiser is ``torch.optim.SGD`` or
  ``Adam``;
- with a :class:`~weightgeo.manifolds.WeightSpace` the parameter is a ``geoopt.ManifoldParameter``
  on it and the optimiser is ``geoopt.optim.RiemannianSGD`` / ``RiemannianAdam``: the gradient
  becomes the space's damped natural gradient (G + μI)⁻¹g and a masked space keeps a sparse
  network sparse. Natural-gradient descent under any metric is this loop with that space.

Each step draws a batch from the stream, evaluates ``loss(param, batch)``, tests the loss, the
gradient and the point for finite values (one host read: the stop test) and steps. Under
``torchrun`` each rank evaluates its shard of the batch and the gradients are averaged over the
ranks weighted by shard size (:mod:`weightgeo.distributed`): ``loss`` must be a mean over the
batch's examples plus terms that are the same on every rank (penalties). A non-finite
value ends the run with the last finite point kept and the cause recorded (:class:`Stop`);
hooks run every k steps (logging, per-step bookkeeping such as SI's path integral); a budget of
gradient evaluations ends it before a step that would overspend; ``checkpoint`` saves the whole
state (parameter, optimiser, schedule, stream, loss) every ``checkpoint_every`` steps and
``resume`` continues from such a state to the same numbers.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    import geoopt

from weightgeo import distributed
from weightgeo.data.streams import Stream, stream
from weightgeo.errors import WeightgeoError
from weightgeo.optim.schedules import SCHEDULES, ScheduleName, schedule_factor
from weightgeo.progress import Progress
from weightgeo.stopping import Budget, Stop, StopReason, all_finite, finite, first_non_finite

OPTIMIZERS: tuple[str, ...] = ("sgd", "adam")


@dataclass(frozen=True)
class OptimizerSpec:
    """The optimiser and its schedule: SGD (momentum, weight decay) or Adam at base rate ``lr``.

    Raises:
        WeightgeoError: an unknown name or schedule, or a rate that is not a positive number.
    """

    name: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: ScheduleName = "cosine"

    def __post_init__(self) -> None:
        if self.name not in OPTIMIZERS:
            raise WeightgeoError(f"unknown optimizer {self.name!r}; choose one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise WeightgeoError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        if not (isinstance(self.lr, int | float) and 0 < self.lr < float("inf")):
            raise WeightgeoError(f"the learning rate must be a positive number, got {self.lr!r}")
        if not 0 <= self.momentum < 1:
            raise WeightgeoError(f"momentum must be in [0, 1), got {self.momentum!r}")
        if not self.weight_decay >= 0:
            raise WeightgeoError(f"weight decay must be ≥ 0, got {self.weight_decay!r}")

    def build(self, param: Tensor, space: Any = None) -> torch.optim.Optimizer:
        """The optimiser over ``param`` (a ManifoldParameter of ``space`` when one is given)."""
        if space is None:
            if self.name == "sgd":
                return torch.optim.SGD([param], lr=self.lr, momentum=self.momentum,
                                       weight_decay=self.weight_decay)
            return torch.optim.Adam([param], lr=self.lr, weight_decay=self.weight_decay)
        if self.name == "sgd":
            optimizer = geoopt.optim.RiemannianSGD([param], lr=self.lr, momentum=self.momentum,
                                                   weight_decay=self.weight_decay)
            if self.momentum > 0:
                # geoopt starts its momentum buffer at the first raw (Euclidean) gradient and
                # then adds the Riemannian one, so the first step would move along
                # momentum·g + (G + μI)⁻¹g. Starting from zero makes the first step the
                # Riemannian gradient, as torch.optim.SGD's first step is the gradient.
                optimizer.state[param]["momentum_buffer"] = torch.zeros_like(param)
            return optimizer
        return geoopt.optim.RiemannianAdam([param], lr=self.lr, weight_decay=self.weight_decay)


@dataclass
class FitState:
    """What a hook sees after a step: the step count, the parameter, the loss and gradient."""

    step: int
    param: Tensor
    optimizer: torch.optim.Optimizer
    loss: Tensor
    grad: Tensor
    before: Tensor
    budget: Budget


Hook = Callable[[FitState], "bool | dict | None"]
"""Called after a step; returning True stops the run, a dict is added to the history (logging)."""


@dataclass
class FitResult:
    """The parameter after the run (the last finite one), its cost and how the run ended."""

    param: Tensor
    steps: int
    grad_evals: int
    stop: Stop
    history: list[dict] = field(default_factory=list)

    @property
    def stop_reason(self) -> str:
        return self.stop.reason.value


def fit(
    param: Tensor,
    loss: Callable[[Tensor, Any], Tensor],
    batches: Any,
    steps: int | None,
    *,
    optimizer: OptimizerSpec = OptimizerSpec(),
    space: Any = None,
    budget: Budget | None = None,
    cost_per_step: int = 1,
    hooks: Sequence[tuple[int, Hook]] = (),
    stop_when: Callable[[], bool] | None = None,
    checkpoint: Callable[[dict], None] | None = None,
    checkpoint_every: int = 0,
    resume: dict | None = None,
    progress: bool | str = False,
) -> FitResult:
    """Minimise ``loss(param, batch)`` over batches drawn from ``batches`` for ``steps`` steps.

    Args:
        param: the starting point (not modified); θ for a network, or any tensor (relax's nodes).
        loss: ``loss(param, batch) -> 0-dim tensor`` (differentiable in ``param``). An object with
            ``state_dict``/``load_state_dict`` (e.g. batch-norm buffers) is saved with checkpoints.
        batches: a :class:`~weightgeo.data.streams.Stream` or anything :func:`stream` accepts.
        steps: the number of steps (None: until the budget is spent).
        optimizer: the optimiser and its learning-rate schedule over ``steps``.
        space: a WeightSpace: Riemannian optimisation under its metric (and mask); None: flat.
        budget: shared count of gradient evaluations; a step costs ``cost_per_step`` plus the
            metric-vector products the space's solves spend.
        hooks: ``(every, hook)`` pairs: ``hook(state)`` after every ``every``-th step.
        stop_when: a stop test called after each step (e.g. a target accuracy reached).
        checkpoint, checkpoint_every: ``checkpoint(state_dict)`` every that many steps.
        resume: a state saved by ``checkpoint``: continue from it.
        progress: show a progress bar (a string is its label).

    Returns:
        A :class:`FitResult`; ``stop.reason`` is max-steps, budget, callback or non-finite.

    Raises:
        WeightgeoError: neither ``steps`` nor a budget limit given, or a bad setting.
    """
    if steps is None and (budget is None or budget.limit is None):
        raise WeightgeoError("fit needs a number of steps or a budget limit")
    if steps is not None and steps < 0:
        raise WeightgeoError(f"the number of steps must be ≥ 0, got {steps}")
    if cost_per_step < 0:
        raise WeightgeoError(f"cost_per_step must be ≥ 0, got {cost_per_step}")
    budget = Budget() if budget is None else budget
    total = steps if steps is not None else max(1, budget.remaining // max(1, cost_per_step))
    source: Stream = stream(batches)
    start = param.detach().clone()
    if space is not None:
        start = space.projx(start)
        point: Tensor = geoopt.ManifoldParameter(start, manifold=space)
    else:
        point = start.requires_grad_(True)
    opt = optimizer.build(point, space)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, schedule_factor(optimizer.schedule, total))
    step, history = 0, []
    if resume is not None:
        step = _load(resume, point, opt, scheduler, source, loss, budget)
    stop: Stop | None = None
    before = point.detach().clone()
    label = progress if isinstance(progress, str) else "fit"
    with Progress(total, label, enabled=bool(progress)) as bar:
        bar.update(step)
        while stop is None:
            if steps is not None and step >= total:
                stop = Stop(StopReason.STEPS, step)
                break
            if not budget.affords(cost_per_step):
                stop = Stop(StopReason.BUDGET, step)
                break
            batch = distributed.shard(source.next())  # this rank's part (the whole batch alone)
            spent_before = _space_spent(space)
            with torch.enable_grad():
                value = loss(point, batch)
                (grad,) = torch.autograd.grad(value, point)
            examples = distributed.batch_size(batch)
            value, grad = distributed.average(value.detach(), examples), distributed.average(grad, examples)
            ok = all_finite(value, grad, point)
            if not bool(ok):  # stop test: one host read per step
                cause = first_non_finite(step=point.detach(), loss=value, gradient=grad)
                if step > 0:
                    with torch.no_grad():
                        point.copy_(before)  # the last point whose loss was finite
                stop = Stop(StopReason.NON_FINITE, step, cause)
                break
            before = point.detach().clone()
            point.grad = grad
            opt.step()
            scheduler.step()
            point.grad = None
            step += 1
            budget.charge(cost_per_step + _space_spent(space) - spent_before)
            bar.update(1)
            state = FitState(step, point, opt, value.detach(), grad, before, budget)
            for every, hook in hooks:
                if every > 0 and step % every == 0:
                    answer = hook(state)
                    if answer is True:
                        stop = Stop(StopReason.CALLBACK, step)
                    elif isinstance(answer, dict):
                        history.append({"step": step, "grad_evals": budget.spent, **answer})
            if stop is None and stop_when is not None and stop_when():
                stop = Stop(StopReason.CALLBACK, step)
            if checkpoint is not None and checkpoint_every > 0 and step % checkpoint_every == 0:
                checkpoint(_save(point, opt, scheduler, source, loss, budget, step))
    final = point.detach().clone()
    if stop.reason is not StopReason.NON_FINITE and not bool(finite(final)):  # stop test
        final = before
        stop = Stop(StopReason.NON_FINITE, step, "step")
    return FitResult(final, step, budget.spent, stop, history)


def _space_spent(space: Any) -> int:
    """Metric-vector products the space's solves have spent so far (0 without a space)."""
    return int(getattr(space, "products_spent", 0)) if space is not None else 0


def _save(point, opt, scheduler, source: Stream, loss, budget: Budget, step: int) -> dict:
    state = {
        "param": point.detach().clone(), "optimizer": copy.deepcopy(opt.state_dict()),
        "scheduler": scheduler.state_dict(),
        "stream": source.state_dict(), "spent": budget.spent, "step": step,
    }
    if hasattr(loss, "state_dict"):
        state["loss"] = copy.deepcopy(loss.state_dict())
    return state


def _load(state: dict, point, opt, scheduler, source: Stream, loss, budget: Budget) -> int:
    with torch.no_grad():
        point.copy_(state["param"])
    opt.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    source.load_state_dict(state["stream"])
    if "loss" in state and hasattr(loss, "load_state_dict"):
        loss.load_state_dict(state["loss"])
    budget.spent = int(state["spent"])
    return int(state["step"])
