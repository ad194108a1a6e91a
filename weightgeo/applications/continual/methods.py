"""Continual-learning methods on flat θ: the geodesic method and the baselines a reviewer asks for.

Every method learns the tasks of a :class:`~weightgeo.data.tasks.TaskSequence` one after the
other (``joint`` all at once) and spends at most ``budget`` gradient evaluations per task:
one minibatch gradient = 1, one metric-vector product = 1, a Fisher estimate on m examples
= ⌈m / batch_size⌉ (per-example gradients of m examples cost the FLOPs of that many
minibatch gradients), one replay step on new + stored examples = 1.

- ``finetune``: plain SGD on each task (the lower bound).
- ``geodesic``: the damped natural gradient under the metric of the earlier tasks, estimated
  at the current θ on a memory of their inputs (labels unused): every step moves down the
  new task's loss along (G_old + μI)^{-1} ∇L, the direction that changes the old tasks'
  outputs least per unit of progress (Raghavan & Thomson 2021). Solvers: ``nystrom``
  (G_old ≈ U Λ Uᵀ from ``rank`` products at the start of the task, then exact Woodbury
  solves: minibatch natural-gradient SGD with momentum), ``cg`` (G_old re-estimated on a
  memory batch at every step, CG with ``cg_iters`` products) and ``traverse`` (the core's
  tracer with fixed-length steps, the papers' form).
- ``fip``: the authors' released form, an optimiser on CE + s·D(f(x; θ), f(x; θ₀)) with θ₀
  a frozen copy of the task's start (core :func:`weightgeo.paths.fip`).
- ``ewc`` (Kirkpatrick et al. 2017): (λ/2) Σ_k F_k ⊙ (θ − θ_k)² with the empirical diagonal
  Fisher F_k of each earlier task; ``online-ewc`` (Schwarz et al. 2018): one running
  F̃ = γF̃ + F_k anchored at the latest θ_k.
- ``si`` (Zenke et al. 2017): c Σ Ω ⊙ (θ − θ*)², Ω the path integral of −∇L·dθ over
  (Δθ)² + ξ.
- ``l2``: (λ/2)||θ − θ_{k−1}||² (anchor to the previous task's weights).
- ``replay``: each step trains on a new-task minibatch plus as many stored examples (with
  their labels) from the same memory the geodesic method uses.
- ``joint``: all tasks at once with the sequential methods' total budget (the ceiling).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import functional_call, grad, vmap

from weightgeo.data.core import Data
from weightgeo.data.tasks import TaskSequence, mask_logits
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import KroneckerMetric, LowRankMetric, Metric, build_metric
from weightgeo.metrics.diagonal_fisher import DiagonalOperator
from weightgeo.objectives import TaskLoss
from weightgeo.paths import fip as fip_tracer
from weightgeo.paths import output_distance, traverse

METHODS: tuple[str, ...] = (
    "geodesic", "fip", "finetune", "ewc", "online-ewc", "si", "l2", "replay", "joint",
)
PENALISED: tuple[str, ...] = ("geodesic", "fip", "ewc", "online-ewc", "si", "l2")
"""Methods with one strength to tune (for ``geodesic``: the damping μ)."""
SOLVERS: tuple[str, ...] = ("kfac", "nystrom", "cg", "traverse")
METRICS: tuple[str, ...] = ("output", "fisher", "diag-fisher")

DEFAULT_STRENGTH: dict[str, float] = {
    "geodesic": 0.1, "fip": 10.0, "ewc": 1e2, "online-ewc": 1e2, "si": 100.0, "l2": 0.1,
}
"""Defaults without ``--tune``: the values tuned on permuted-mnist (domain, lr 0.01; BENCHMARKS.md)."""
DEFAULT_GRIDS: dict[str, tuple[float, ...]] = {
    "geodesic": (1e-5, 1e-4, 1e-3, 1e-2, 1e-1),
    "fip": (0.1, 1.0, 10.0, 100.0, 1000.0),
    "ewc": (1.0, 1e1, 1e2, 1e3, 1e4),
    "online-ewc": (1.0, 1e1, 1e2, 1e3, 1e4),
    "si": (1e-2, 1e-1, 1.0, 10.0, 100.0),
    "l2": (1e-3, 1e-2, 1e-1, 1.0, 10.0),
}
"""Tuning grids: five values over four orders of magnitude each."""


@dataclass
class ContinualConfig:
    """Settings shared by every method (budgets are per task, in gradient evaluations)."""

    budget: int = 315
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    memory_per_task: int = 100
    metric: str = "output"
    solver: str = "kfac"
    rank: int = 40
    refresh: int = 0
    cg_iters: int = 3
    metric_batch: int = 256
    step_size: float = 0.05
    fisher_samples: int = 256
    online_gamma: float = 1.0
    si_xi: float = 0.1
    fip_distance: str = "bhattacharyya"
    anchor: float = 0.0
    target_accuracy: float | None = None
    strengths: dict[str, float] = field(default_factory=dict)

    def strength(self, method: str) -> float | None:
        if method not in PENALISED:
            return None
        return self.strengths.get(method, DEFAULT_STRENGTH[method])

    def check(self) -> None:
        if self.budget < 1:
            raise WeightgeoError(f"the budget per task must be ≥ 1 gradient evaluation, got {self.budget}")
        if self.metric not in METRICS:
            raise WeightgeoError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRICS)}")
        if self.solver not in SOLVERS:
            raise WeightgeoError(f"unknown solver {self.solver!r}; choose one of {', '.join(SOLVERS)}")
        if self.memory_per_task < 1:
            raise WeightgeoError(f"the memory needs ≥ 1 input per task, got {self.memory_per_task}")
        if self.solver == "nystrom" and not 1 <= self.rank < self.budget:
            raise WeightgeoError(f"the Nyström rank must be in [1, budget), got {self.rank}")


class Memory:
    """Stored examples of earlier tasks: ``per_task`` inputs (with labels, for replay) each."""

    def __init__(self, per_task: int, seed: int = 0) -> None:
        self.per_task = int(per_task)
        self.generator = torch.Generator().manual_seed(int(seed) + 911)
        self.x: list[Tensor] = []
        self.y: list[Tensor] = []

    def add(self, data: Data) -> None:
        """Store ``per_task`` examples of ``data`` drawn without replacement."""
        if len(data) < self.per_task:
            raise WeightgeoError(
                f"a task has {len(data)} training examples, fewer than the memory's {self.per_task}"
            )
        index = torch.randperm(len(data), generator=self.generator)[: self.per_task].to(data.x.device)
        self.x.append(data.x[index])
        self.y.append(data.y[index])

    def __len__(self) -> int:
        return len(self.x)

    def inputs(self) -> Tensor:
        """The union of the stored inputs of every earlier task."""
        return torch.cat(self.x)

    def task_ids(self) -> Tensor:
        return torch.cat([torch.full((len(x),), k, dtype=torch.long) for k, x in enumerate(self.x)])


@dataclass
class Learned:
    """θ after a task, the batch-norm buffers, and the gradient evaluations spent on it."""

    theta: Tensor
    buffers: dict[str, Tensor]
    grad_evals: int


class Learner:
    """Sequential learner: ``learn(t, θ)`` trains task t, then ``after_task`` updates its state."""

    name = "finetune"
    uses_memory = False

    def __init__(
        self, fmodel: FunctionalModel, seq: TaskSequence, config: ContinualConfig, seed: int = 0
    ) -> None:
        self.fmodel = fmodel
        self.seq = seq
        self.config = config
        self.strength = config.strength(self.name)
        self.seed = seed
        self.memory = Memory(config.memory_per_task, seed)
        self.buffers = fmodel.clone_buffers()
        self.train_mode = fmodel.has_batch_norm or any(
            isinstance(m, torch.nn.Dropout) for m in fmodel.module.modules()
        )

    # -- pieces shared by the SGD-based methods ---------------------------------------
    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        if self.train_mode:
            return self.fmodel.train_call(theta, x, self.buffers)
        return self.fmodel(theta, x, self.buffers)

    def task_loss(self, theta: Tensor, t: int, x: Tensor, y: Tensor) -> Tensor:
        logits = mask_logits(self.logits(theta, x), self.seq.allowed(t))
        self.last_accuracy = (logits.detach().argmax(-1) == y).float().mean()
        return F.cross_entropy(logits, y)

    def penalty_grad(self, theta: Tensor) -> Tensor | None:
        """The gradient of a quadratic penalty (closed form, no network pass)."""
        return None

    def direction(self, theta: Tensor, g: Tensor) -> Tensor:
        """The update direction from the task gradient (identity: SGD)."""
        return g

    def before_task(self, t: int, theta: Tensor) -> int:
        """Per-task set-up; returns the gradient evaluations it spent."""
        return 0

    def after_step(self, theta_before: Tensor, theta_after: Tensor, g: Tensor) -> None:
        pass

    def sgd(self, t: int, theta: Tensor, steps: int, extra_cost: int = 0) -> Learned:
        """``steps`` minibatch steps of momentum SGD (cosine learning rate) on task t."""
        config = self.config
        data = self.seq.tasks[t].train
        generator = torch.Generator().manual_seed(self.seed * 1000 + t)
        param = theta.detach().clone().requires_grad_(True)
        opt = torch.optim.SGD([param], lr=config.lr, momentum=config.momentum)
        step = 0
        self.last_accuracy = None
        while step < steps:
            for x, y in data.batches(config.batch_size, shuffle=True, generator=generator):
                if step >= steps:
                    break
                if (config.target_accuracy is not None and self.last_accuracy is not None
                        and bool(self.last_accuracy >= config.target_accuracy)):  # stop test
                    steps = step
                    break
                for group in opt.param_groups:
                    group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / steps))
                x, y = self.batch(t, x, y, generator)
                loss = self.loss(param, t, x, y)
                extra = self.anchor_loss(param)
                (g,) = torch.autograd.grad(loss, param, retain_graph=extra is not None)
                before = param.detach().clone()
                with torch.no_grad():
                    d = self.direction(param.detach(), g)
                    penalty = self.penalty_grad(param.detach())
                    param.grad = d if penalty is None else d + penalty
                if extra is not None:  # not preconditioned: it pulls the old outputs back
                    param.grad += torch.autograd.grad(extra, param)[0]
                opt.step()
                self.after_step(before, param.detach(), g)
                step += 1
        return Learned(param.detach().clone(), self.buffers, steps + extra_cost + self.refresh_cost(steps))

    def batch(self, t: int, x: Tensor, y: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return x, y

    def loss(self, theta: Tensor, t: int, x: Tensor, y: Tensor) -> Tensor:
        return self.task_loss(theta, t, x, y)

    def anchor_loss(self, theta: Tensor) -> Tensor | None:
        """A loss term whose gradient is added after :meth:`direction` (None: none)."""
        return None

    # -- the protocol -------------------------------------------------------------------
    def learn(self, t: int, theta: Tensor) -> Learned:
        spent = self.before_task(t, theta)
        reserve = self.after_task_cost(t)
        steps = self.planned_steps(self.config.budget - spent - reserve)
        if steps < 1:
            raise WeightgeoError(
                f"{self.name}: the budget of {self.config.budget} gradient evaluations per task "
                f"leaves no training step after {spent + reserve} for its own bookkeeping"
            )
        return self.sgd(t, theta, steps, extra_cost=spent + reserve)

    def after_task_cost(self, t: int) -> int:
        return 0

    def planned_steps(self, available: int) -> int:
        return available

    def refresh_cost(self, steps: int) -> int:
        return 0

    def after_task(self, t: int, theta: Tensor) -> None:
        self.memory.add(self.seq.tasks[t].train)


class Finetune(Learner):
    name = "finetune"


class L2(Learner):
    name = "l2"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.anchor: Tensor | None = None

    def penalty_grad(self, theta):
        return None if self.anchor is None else self.strength * (theta - self.anchor)

    def after_task(self, t, theta):
        super().after_task(t, theta)
        self.anchor = theta.detach().clone()


def empirical_fisher_diagonal(
    fmodel: FunctionalModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    allowed: Tensor | None,
    buffers: dict[str, Tensor] | None = None,
    chunk: int = 64,
) -> Tensor:
    """(1/m) Σ_i (∂ log p_{y_i}(x_i)/∂θ)² over m examples (eval mode, masked logits)."""
    module = fmodel.module
    state = {**fmodel.frozen, **(fmodel.buffers if buffers is None else buffers)}

    def loss(t: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        params = {n: c.view(s) for n, c, s in zip(fmodel.names, t.split(fmodel.numels), fmodel.shapes)}
        logits = functional_call(module, {**state, **params}, (xi.unsqueeze(0),))
        return F.cross_entropy(mask_logits(logits, allowed), yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    total = torch.zeros_like(theta)
    for start in range(0, len(x), chunk):
        total += per_example(theta.detach(), x[start : start + chunk], y[start : start + chunk]).square().sum(0)
    return total / len(x)


class EWC(Learner):
    name = "ewc"
    online = False

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fishers: list[Tensor] = []
        self.anchors: list[Tensor] = []

    def after_task_cost(self, t):
        m = min(self.config.fisher_samples, len(self.seq.tasks[t].train))
        return math.ceil(m / self.config.batch_size)

    def penalty_grad(self, theta):
        if not self.fishers:
            return None
        return self.strength * sum(f * (theta - a) for f, a in zip(self.fishers, self.anchors))

    def after_task(self, t, theta):
        super().after_task(t, theta)
        data = self.seq.tasks[t].train
        m = min(self.config.fisher_samples, len(data))
        generator = torch.Generator().manual_seed(self.seed * 1000 + 500 + t)
        index = torch.randperm(len(data), generator=generator)[:m].to(data.x.device)
        fisher = empirical_fisher_diagonal(
            self.fmodel, theta, data.x[index], data.y[index], self.seq.allowed(t), self.buffers
        )
        if self.online and self.fishers:
            self.fishers = [self.config.online_gamma * self.fishers[0] + fisher]
            self.anchors = [theta.detach().clone()]
        else:
            self.fishers.append(fisher)
            self.anchors.append(theta.detach().clone())


class OnlineEWC(EWC):
    name = "online-ewc"
    online = True


class SI(Learner):
    name = "si"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.omega: Tensor | None = None
        self.path_integral: Tensor | None = None
        self.anchor: Tensor | None = None
        self.task_start: Tensor | None = None

    def before_task(self, t, theta):
        self.path_integral = torch.zeros_like(theta)
        self.task_start = theta.detach().clone()
        return 0

    def after_step(self, theta_before, theta_after, g):
        self.path_integral -= g * (theta_after - theta_before)

    def penalty_grad(self, theta):
        if self.omega is None:
            return None
        return 2 * self.strength * self.omega * (theta - self.anchor)

    def after_task(self, t, theta):
        super().after_task(t, theta)
        delta = theta - self.task_start
        contribution = self.path_integral.clamp_min(0) / (delta.square() + self.config.si_xi)
        self.omega = contribution if self.omega is None else self.omega + contribution
        self.anchor = theta.detach().clone()


class Replay(Learner):
    name = "replay"
    uses_memory = True

    def batch(self, t, x, y, generator):
        if len(self.memory) == 0:
            return x, y
        stored_x, stored_y = self.memory.inputs(), torch.cat(self.memory.y)
        index = torch.randint(len(stored_y), (len(y),), generator=generator).to(stored_x.device)
        self._ids = torch.cat([torch.full((len(y),), t), self.memory.task_ids()[index.cpu()]])
        return torch.cat([x, stored_x[index]]), torch.cat([y, stored_y[index]])

    def loss(self, theta, t, x, y):
        if len(self.memory) == 0:
            return self.task_loss(theta, t, x, y)
        logits = self.logits(theta, x)
        if self.seq.scenario == "task":
            allowed = torch.stack([self.seq.allowed(int(k)) for k in range(len(self.seq))])[self._ids]
        else:
            allowed = self.seq.allowed(t)
        return F.cross_entropy(mask_logits(logits, allowed), y)


class Geodesic(Learner):
    """Damped natural-gradient descent on the new task under the earlier tasks' metric."""

    name = "geodesic"
    uses_memory = True

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.space: WeightSpace | None = None
        self.reference: Tensor | None = None
        self.build_cost = 0
        self.step = 0

    def _metric(self, theta: Tensor, inputs: Tensor):
        return build_metric(self.config.metric, self.fmodel, inputs)

    def _build_space(self, theta: Tensor) -> int:
        """The weight space under the old tasks' metric at θ; returns its cost."""
        config = self.config
        inputs = self.memory.inputs()
        mu = self.strength
        generator = torch.Generator().manual_seed(self.seed * 1000 + 77 + len(self.memory) + self.step)
        if config.metric == "diag-fisher":
            # frozen at θ; its cost: one per-example gradient per output unit and stored input
            metric = self._metric(theta, inputs)
            frozen = _FrozenDiagonal(metric.diagonal(theta.detach()))
            cost = self.seq.num_outputs * math.ceil(len(inputs) / config.batch_size)
        elif config.solver == "kfac":
            frozen = KroneckerMetric.build(self.fmodel, theta, inputs, config.metric, generator=generator,
                                           buffers=self.buffers)
            cost = frozen.products
        else:
            frozen = LowRankMetric.nystrom(self._metric(theta, inputs), theta.detach(), config.rank, generator)
            cost = frozen.products
        self.space = WeightSpace(self.fmodel, frozen, damping=mu)
        self.build_cost = cost
        return cost

    def before_task(self, t, theta):
        self.space = None
        self.step = 0
        self.reference = None
        if len(self.memory) == 0 or self.config.solver not in ("kfac", "nystrom"):
            return 0
        if self.config.anchor > 0:
            with torch.no_grad():  # the frozen outputs of the task's start on the memory
                self.reference = self.fmodel(theta.detach(), self.memory.inputs(), self.buffers)
            self.anchor_generator = torch.Generator().manual_seed(self.seed * 1000 + 600 + t)
        return self._build_space(theta)

    def anchor_loss(self, theta):
        """anchor · D(f(x; θ), f(x; θ₀)) on a memory minibatch (``anchor`` > 0 only).

        Evaluated on the same forward/backward budget as a replay step (counted with the
        task gradient as one evaluation); its gradient is not preconditioned. In eval mode,
        like its reference: D is 0 at θ₀ and the memory never enters batch-norm statistics.
        """
        if self.reference is None:
            return None
        inputs = self.memory.inputs()
        index = torch.randint(len(inputs), (self.config.batch_size,), generator=self.anchor_generator)
        index = index.to(inputs.device)
        logits = self.fmodel(theta, inputs[index], self.buffers)
        return self.config.anchor * output_distance(logits, self.reference[index], self.config.fip_distance)

    def refresh_cost(self, steps: int) -> int:
        if self.space is None or self.config.refresh <= 0:
            return 0
        return self.build_cost * ((steps - 1) // self.config.refresh)

    def planned_steps(self, available: int) -> int:
        """Steps that fit ``available`` evaluations with a rebuild every ``refresh`` steps."""
        refresh = self.config.refresh
        if self.space is None or refresh <= 0:
            return available
        steps = available
        while steps > 0 and steps + self.build_cost * ((steps - 1) // refresh) > available:
            steps -= 1
        return steps

    def direction(self, theta, g):
        if self.space is None:
            return g
        refresh = self.config.refresh
        if refresh > 0 and self.step > 0 and self.step % refresh == 0:
            self._build_space(theta)
        self.step += 1
        # (G + μI)^{-1} g scaled by μ: along directions the old tasks do not see, the step is
        # the plain SGD step; along those they see, it shrinks by μ / (λ + μ).
        return self.strength * self.space.natural_gradient(theta, g).x

    def learn(self, t, theta):
        if len(self.memory) == 0 or self.config.solver in ("kfac", "nystrom"):
            return super().learn(t, theta)
        if self.config.solver == "cg":
            return self._learn_cg(t, theta)
        return self._learn_traverse(t, theta)

    def _memory_batches(self, t: int) -> list[Tensor]:
        inputs = self.memory.inputs()
        generator = torch.Generator().manual_seed(self.seed * 1000 + 300 + t)
        size = min(self.config.metric_batch, len(inputs))
        return [inputs[torch.randperm(len(inputs), generator=generator)[:size].to(inputs.device)]
                for _ in range(50)]

    def _learn_cg(self, t: int, theta: Tensor) -> Learned:
        """Per step: the metric on a fresh memory batch at the current θ, CG with cg_iters products."""
        config = self.config
        batches = self._memory_batches(t)
        space = WeightSpace(self.fmodel, self._metric(theta, batches[0]), damping=self.strength,
                            cg_maxiter=config.cg_iters)
        data = self.seq.tasks[t].train
        generator = torch.Generator().manual_seed(self.seed * 1000 + t)
        param = theta.detach().clone().requires_grad_(True)
        opt = torch.optim.SGD([param], lr=config.lr, momentum=config.momentum)
        per_step = 1 + config.cg_iters
        steps = config.budget // per_step
        spent, step = 0, 0
        while step < steps:
            for x, y in data.batches(config.batch_size, shuffle=True, generator=generator):
                if step >= steps:
                    break
                for group in opt.param_groups:
                    group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / steps))
                (g,) = torch.autograd.grad(self.task_loss(param, t, x, y), param)
                with torch.no_grad():
                    here = space.with_inputs(batches[step % len(batches)])
                    solution = here.natural_gradient(param.detach(), g)
                    param.grad = self.strength * solution.x
                opt.step()
                spent += 1 + solution.products
                step += 1
        return Learned(param.detach().clone(), self.buffers, spent)

    def _learn_traverse(self, t: int, theta: Tensor) -> Learned:
        """The core's tracer: fixed-length steps (Euclidean, ``step_size``) down the task loss."""
        config = self.config
        batches = self._memory_batches(t)
        data = self.seq.tasks[t].train
        generator = torch.Generator().manual_seed(self.seed * 1000 + t)
        stream = _Stream(data, config.batch_size, generator)
        allowed = self.seq.allowed(t)
        objective = TaskLoss(self.fmodel, stream, target_accuracy=config.target_accuracy,
                             transform_logits=lambda logits: mask_logits(logits, allowed))
        space = WeightSpace(self.fmodel, self._metric(theta, batches[0]), damping=self.strength,
                            cg_maxiter=config.cg_iters)
        path = traverse(space, objective, step_size=config.step_size, max_steps=config.budget,
                        start=theta.detach(), metric_inputs=batches, budget=config.budget,
                        save_every=10**9)
        return Learned(path.end.detach().clone(), self.buffers, path.grad_evals)


class _FrozenDiagonal(Metric):
    """diag(d) frozen at one θ (the diag-fisher metric of the nystrom solver)."""

    def __init__(self, diag: Tensor) -> None:
        self.diag = diag

    def at(self, theta: Tensor) -> DiagonalOperator:
        return DiagonalOperator(self, theta, self.diag)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.diag * v


class _Stream:
    """Endless minibatches of one data set (re-shuffled every epoch)."""

    def __init__(self, data: Data, batch_size: int, generator: torch.Generator) -> None:
        self.data, self.batch_size, self.generator = data, batch_size, generator

    def __iter__(self):
        while True:
            yield from self.data.batches(self.batch_size, shuffle=True, generator=self.generator)


class FIP(Learner):
    """CE(new task) + s·D(f(x; θ), f(x; θ₀)) on the memory, θ₀ frozen at the task's start."""

    name = "fip"
    uses_memory = True

    def learn(self, t, theta):
        if len(self.memory) == 0:
            return super().learn(t, theta)
        config = self.config
        data = self.seq.tasks[t].train
        generator = torch.Generator().manual_seed(self.seed * 1000 + t)
        allowed = self.seq.allowed(t)
        objective = TaskLoss(self.fmodel, _Stream(data, config.batch_size, generator),
                             target_accuracy=config.target_accuracy,
                             transform_logits=lambda logits: mask_logits(logits, allowed))
        s = self.strength
        # core fip minimises D + λ·CE with SGD(lr): λ = 1/s and lr·s give θ ← θ − lr(∇CE + s∇D).
        path = fip_tracer(self.fmodel, objective, self.memory.inputs(), start=theta.detach(),
                          lam=1.0 / s, lr=config.lr * s, momentum=config.momentum,
                          distance=config.fip_distance, max_steps=config.budget,
                          batch_size=config.batch_size, budget=config.budget,
                          seed=self.seed * 1000 + t, save_every=10**9)
        return Learned(path.end.detach().clone(), self.buffers, path.grad_evals)


LEARNERS: dict[str, type[Learner]] = {
    "geodesic": Geodesic, "fip": FIP, "finetune": Finetune, "ewc": EWC,
    "online-ewc": OnlineEWC, "si": SI, "l2": L2, "replay": Replay,
}


def train_joint(
    fmodel: FunctionalModel, seq: TaskSequence, config: ContinualConfig, theta: Tensor, seed: int
) -> Learned:
    """All tasks at once (per-example output units), with ``len(seq) × budget`` minibatch steps."""
    learner = Learner(fmodel, seq, config, seed)
    xs = torch.cat([task.train.x for task in seq.tasks])
    ys = torch.cat([task.train.y for task in seq.tasks])
    ids = torch.cat([torch.full((len(task.train),), k) for k, task in enumerate(seq.tasks)])
    last = len(seq) - 1
    table = torch.stack([
        seq.allowed(k, last) if seq.scenario != "domain" else torch.ones(seq.num_outputs, dtype=torch.bool)
        for k in range(len(seq))
    ])
    steps = config.budget * len(seq)
    generator = torch.Generator().manual_seed(seed * 1000 + 999)
    param = theta.detach().clone().requires_grad_(True)
    opt = torch.optim.SGD([param], lr=config.lr, momentum=config.momentum)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = 0.5 * config.lr * (1 + math.cos(math.pi * step / steps))
        index = torch.randint(len(ys), (config.batch_size,), generator=generator).to(xs.device)
        logits = learner.logits(param, xs[index])
        loss = F.cross_entropy(mask_logits(logits, table[ids[index.cpu()]]), ys[index])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return Learned(param.detach().clone(), learner.buffers, steps)


def make_learner(method: str, fmodel: FunctionalModel, seq: TaskSequence, config: ContinualConfig,
                 seed: int = 0) -> Learner:
    if method not in LEARNERS:
        raise WeightgeoError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    return LEARNERS[method](fmodel, seq, config, seed)


EvaluateFn = Callable[[Tensor, dict[str, Tensor], int, int], float]
