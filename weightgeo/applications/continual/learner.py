"""The sequential learner every continual-learning method is: one task at a time, through ``fit``.

A method is a :class:`Learner` registered in :data:`METHODS`. Learning task t is one call of
:func:`weightgeo.optim.fit` — momentum SGD with a cosine learning rate over the task — and a
method differs from another only by what it gives that call:

- its loss: the task's cross-entropy on the task's output units (:class:`TaskObjective`), plus a
  penalty as a differentiable term (EWC, SI, L2: :meth:`Learner.penalty_value` with the
  closed-form gradient :meth:`Learner.penalty_grad`) or an extra term (the geodesic anchor);
- its batches (:meth:`Learner.batches`: the task's minibatches; replay mixes in stored examples);
- its weight space (:meth:`Learner.space`: None is flat SGD; the geodesic method's is the
  earlier tasks' metric, so the step is Riemannian SGD, the natural gradient under that metric);
- its hooks: :meth:`Learner.after_step` after every step (SI's path integral) and a target
  accuracy as the stop test.

Budget per task, in gradient evaluations: what :meth:`Learner.before_task` spends (building a
metric), what :meth:`Learner.after_task_cost` reserves (a Fisher), and one per step, plus any
metric-vector products the space's solves spend.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from weightgeo.data.core import Data
from weightgeo.data.streams import Minibatches, Stream
from weightgeo.data.tasks import TaskSequence
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.optim import OptimizerSpec, SupervisedLoss, fit
from weightgeo.optim.loop import FitState
from weightgeo.optim.losses import needs_train_mode
from weightgeo.registry import Registry
from weightgeo.stopping import Budget, Stop, StopReason

if TYPE_CHECKING:
    from weightgeo.applications.continual.settings import ContinualSettings

METHODS: Registry[type[Learner]] = Registry("method")
"""The continual-learning methods: name → :class:`Learner` subclass."""


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
                f"a task has {len(data)} training examples, fewer than the memory's {self.per_task} (--memory)"
            )
        index = torch.randperm(len(data), generator=self.generator)[: self.per_task].to(data.x.device)
        self.x.append(data.x[index])
        self.y.append(data.y[index])

    def __len__(self) -> int:
        return len(self.x)

    def inputs(self) -> Tensor:
        """The union of the stored inputs of every earlier task."""
        return torch.cat(self.x)

    def labels(self) -> Tensor:
        return torch.cat(self.y)

    def task_ids(self) -> Tensor:
        return torch.cat([torch.full((len(x),), k, dtype=torch.long) for k, x in enumerate(self.x)])

    def state_dict(self) -> dict:
        return {"x": list(self.x), "y": list(self.y), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.x, self.y = list(state["x"]), list(state["y"])
        self.generator.set_state(state["generator"])


@dataclass
class Learned:
    """θ after a task (the last finite point), the buffers, the evaluations spent and how it ended."""

    theta: Tensor
    buffers: dict[str, Tensor]
    grad_evals: int
    stop: Stop = field(default_factory=lambda: Stop(StopReason.STEPS, 0))
    steps: int = 0


class _Tap(torch.autograd.Function):
    """The identity on θ that keeps the gradient flowing back through it (one term's gradient)."""

    @staticmethod
    def forward(ctx, theta: Tensor, box: GradientTap) -> Tensor:  # noqa: D102
        ctx.box = box
        return theta.clone()

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        ctx.box.grad = grad
        return grad, None


class GradientTap:
    """``tap(θ)`` is θ; after a backward pass ``grad`` holds the gradient of the terms computed from it."""

    def __init__(self) -> None:
        self.grad: Tensor | None = None

    def __call__(self, theta: Tensor) -> Tensor:
        return _Tap.apply(theta, self)


class _ClosedForm(torch.autograd.Function):
    """A term whose value and gradient at θ are given (a quadratic penalty in closed form)."""

    @staticmethod
    def forward(ctx, theta: Tensor, value: Tensor, grad: Tensor) -> Tensor:  # noqa: D102
        ctx.save_for_backward(grad)
        return value.clone()

    @staticmethod
    def backward(ctx, upstream: Tensor):  # noqa: D102
        (grad,) = ctx.saved_tensors
        return upstream * grad, None, None


class TaskCrossEntropy(SupervisedLoss):
    """The task's masked cross-entropy that keeps its batch's logits (``last_logits``, unmasked)."""

    last_logits: Tensor | None = None

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        self.last_logits = self.network(theta, x)
        return self.last_logits

    def network(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(x; θ) as the loss runs it (train mode on its buffers where needed), not kept."""
        return super().logits(theta, x)


class TaskObjective:
    """The loss of one task: cross-entropy on its units (gradient tapped) + penalty + extra terms.

    ``loss(θ, batch)`` for :func:`fit`; ``state_dict`` carries the batch-norm buffers. The tap
    holds the gradient of the terms computed from the task batch's logits (the cross-entropy, and
    a term on those logits such as LwF's distillation); the penalty and the terms on other inputs
    are outside it.
    """

    def __init__(self, learner: Learner, t: int) -> None:
        self.learner = learner
        self.task = t
        self.supervised = TaskCrossEntropy(learner.fmodel, units=learner.seq.allowed(t), buffers=learner.buffers,
                                           train_mode=learner.train_mode)
        self.tap = GradientTap()

    @property
    def last_accuracy(self) -> Tensor | None:
        return self.supervised.last_accuracy

    def logits(self, theta: Tensor, x: Tensor) -> Tensor:
        """f(x; θ) as the task loss runs the network (train mode on its buffers where needed)."""
        return self.supervised.network(theta, x)

    def __call__(self, theta: Tensor, batch: Any) -> Tensor:
        value = self.supervised(self.tap(theta), batch)
        point = theta.detach()
        penalty = self.learner.penalty_grad(point)
        if penalty is not None:
            value = value + _ClosedForm.apply(theta, self.learner.penalty_value(point), penalty)
        extra = self.learner.extra_loss(theta, batch, self)
        return value if extra is None else value + extra

    def state_dict(self) -> dict:
        return self.supervised.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.supervised.load_state_dict(state)


class Learner:
    """Sequential learner: ``learn(t, θ)`` trains task t, then ``after_task`` updates its state.

    Subclasses set ``name`` (registered in :data:`METHODS`), ``default_strength`` and ``grid``
    (methods with one strength to tune) and override the pieces listed in the module docstring.
    ``state`` names the attributes that carry over from task to task (saved for ``--resume``).
    """

    name: ClassVar[str] = "finetune"
    default_strength: ClassVar[float | None] = None
    grid: ClassVar[tuple[float, ...]] = ()
    hint: ClassVar[str] = "lower --lr"
    state: ClassVar[tuple[str, ...]] = ()

    def __init__(self, fmodel: FunctionalModel, seq: TaskSequence, settings: ContinualSettings,
                 seed: int = 0) -> None:
        self.fmodel = fmodel
        self.seq = seq
        self.settings = settings
        self.strength = settings.strength_of(self.name)
        self.seed = seed
        self.memory = Memory(settings.memory, seed)
        self.buffers = fmodel.clone_buffers()
        self.train_mode = needs_train_mode(fmodel)

    # -- what a method changes ------------------------------------------------------------------
    def stages(self, n: int) -> list[int]:
        """The tasks after which the accuracy matrix gets a row (every task; joint: the last)."""
        return list(range(n))

    def task_budget(self, t: int) -> int:
        """Gradient evaluations for learning task t."""
        return self.settings.budget

    def before_task(self, t: int, theta: Tensor) -> int:
        """Per-task set-up; returns the gradient evaluations it spent."""
        return 0

    def after_task_cost(self, t: int) -> int:
        """Gradient evaluations :meth:`after_task` will spend (reserved from the task's budget)."""
        return 0

    def planned_steps(self, available: int) -> int:
        """The steps that ``available`` gradient evaluations pay for."""
        return available

    def batches(self, t: int) -> Stream:
        """Task t's training minibatches, reshuffled every epoch (seeded per seed and task)."""
        return Minibatches(self.seq.tasks[t].train, self.settings.batch_size, self.seed * 1000 + t)

    def space(self, t: int) -> WeightSpace | None:
        """The weight space the step is Riemannian in (None: flat SGD)."""
        return None

    def penalty_grad(self, theta: Tensor) -> Tensor | None:
        """The gradient of a quadratic penalty in closed form (None: no penalty)."""
        return None

    def penalty_value(self, theta: Tensor) -> Tensor:
        """The penalty's value (with :meth:`penalty_grad` its gradient)."""
        raise NotImplementedError

    def extra_loss(self, theta: Tensor, batch: Any, objective: TaskObjective) -> Tensor | None:
        """A further differentiable term of the loss at θ (None: none). ``batch`` is the step's task
        batch, ``objective.supervised.last_logits`` its logits (with their gradient), and
        ``objective.logits(θ, x)`` runs the network on other inputs as the task loss does."""
        return None

    def hooks(self, t: int, objective: TaskObjective) -> list[tuple[int, Callable[[FitState], Any]]]:
        """Further ``(every, hook)`` pairs for :func:`fit`."""
        return []

    def after_step(self, theta_before: Tensor, theta_after: Tensor, g: Tensor) -> None:
        """After each step, with the task loss's gradient ``g`` at ``theta_before``."""

    def after_task(self, t: int, theta: Tensor) -> None:
        self.memory.add(self.seq.tasks[t].train)

    # -- the protocol -----------------------------------------------------------------------------
    def training_loss(self, t: int) -> TaskObjective:
        return TaskObjective(self, t)

    def reached_target(self, objective: TaskObjective) -> bool:
        """The stop test of ``--target-accuracy`` on the last minibatch (reads one value)."""
        target = self.settings.target_accuracy
        return target is not None and objective.last_accuracy is not None and bool(
            objective.last_accuracy >= target)

    def optimizer(self) -> OptimizerSpec:
        return OptimizerSpec("sgd", lr=self.settings.lr, momentum=self.settings.momentum, schedule="cosine")

    def learn(self, t: int, theta: Tensor) -> Learned:
        """Task t from θ: momentum SGD (cosine rate) on the method's loss, batches and space."""
        budget = Budget(self.task_budget(t))
        budget.charge(self.before_task(t, theta))
        reserve = self.after_task_cost(t)
        steps = self.planned_steps(budget.limit - budget.spent - reserve)
        if steps < 1:
            raise WeightgeoError(
                f"{self.name}: the budget of {budget.limit} gradient evaluations per task "
                f"leaves no training step after {budget.spent + reserve} for its own bookkeeping (--budget)"
            )
        objective = self.training_loss(t)

        def after_step(state: FitState) -> None:
            self.after_step(state.before, state.param.detach(), objective.tap.grad)

        result = fit(theta, objective, self.batches(t), steps, optimizer=self.optimizer(), space=self.space(t),
                     budget=budget, hooks=[(1, after_step), *self.hooks(t, objective)],
                     stop_when=lambda: self.reached_target(objective))
        self.buffers = objective.supervised.buffers
        spent = result.grad_evals + (0 if result.stop.diverged else reserve)  # the reserve: after_task's
        return Learned(result.param, self.buffers, spent, result.stop, result.steps)

    def state_dict(self) -> dict:
        """What carries over to the next task: memory, buffers and the method's ``state``."""
        return {"memory": self.memory.state_dict(), "buffers": dict(self.buffers),
                **{name: getattr(self, name) for name in self.state}}

    def load_state_dict(self, state: dict) -> None:
        self.memory.load_state_dict(state["memory"])
        self.buffers = dict(state["buffers"])
        for name in self.state:
            setattr(self, name, state[name])


class Finetune(Learner):
    """Plain SGD on each task (the lower bound)."""

    name = "finetune"



def make_learner(method: str, fmodel: FunctionalModel, seq: TaskSequence, settings: ContinualSettings,
                 seed: int = 0) -> Learner:
    """The learner of ``method`` (one line naming the choices for an unknown one)."""
    return METHODS[method](fmodel, seq, settings, seed)
