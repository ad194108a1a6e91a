"""The geodesic method: natural-gradient SGD on the new task under the earlier tasks' metric.

Every step moves down the new task's loss along μ(G_old + μI)⁻¹∇L = (G_old/μ + I)⁻¹∇L, the
direction that changes the old tasks' outputs least per unit of progress (Raghavan & Thomson
2021): plain SGD along directions the old tasks do not see, shrunk by μ/(λ + μ) along those
they see. That is the Riemannian gradient under the scaled metric G_old/μ with damping 1, so the
method is ``fit`` with ``space=WeightSpace(model, ScaledMetric(G_old, 1/μ), damping=1)`` —
``geoopt.optim.RiemannianSGD``, whose momentum starts at zero so the first step is −lr times the
natural gradient, as SGD's first step is −lr times the gradient. G_old is the output (or Fisher)
metric of a memory of the earlier tasks' inputs (labels unused), at the current θ. Solvers
(:data:`SOLVERS`):

- ``kfac``: G_old Kronecker-factored per layer at the task's start (C + 1 passes), exact solves;
- ``nystrom``: its top ``rank`` eigenpairs at the task's start (``rank`` products), exact solves;
- ``cg``: G_old re-estimated on a fresh memory batch at every step (:class:`ResampledMetric`), CG
  with ``cg_iters`` products (charged through the space's ``products_spent``);
- ``traverse``: the core tracer's fixed-length steps (the papers' form; the length ``step_size``
  makes μ's scale irrelevant there).

A metric with an exact frozen form (:meth:`Metric.freeze`: diag-fisher's diagonal, one per-example
gradient per output unit and stored input) is frozen as that under kfac and nystrom. ``--refresh K`` rebuilds a frozen metric every K
steps. ``--anchor S`` adds (S/μ)·D(f(x; θ), f(x; θ₀)) on a memory minibatch (θ₀ the task's start, eval
mode) to the loss, its gradient preconditioned like the task's (:meth:`Geodesic.anchor_loss`).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from weightgeo.applications.continual.learner import Learned, Learner
from weightgeo.data.streams import RandomSubsets
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, mask_logits
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import KroneckerMetric, LowRankMetric, Metric, build_metric
from weightgeo.metrics.kfac import KINDS as KFAC_KINDS
from weightgeo.metrics.registry import freezes_exactly
from weightgeo.metrics.resampled import ResampledMetric
from weightgeo.metrics.scaled import ScaledMetric
from weightgeo.objectives import TaskLoss
from weightgeo.optim.loop import FitState
from weightgeo.paths import output_distance, traverse
from weightgeo.registry import Registry


def damped_space(fmodel: FunctionalModel, metric: Metric, mu: float, cg_iters: int = 10) -> WeightSpace:
    """The weight space under G/μ with damping 1, whose Riemannian gradient is μ(G + μI)⁻¹g: the
    geodesic method's step (and, as μ → 0, the projection off G's range: OGD, GPM)."""
    return WeightSpace(fmodel, ScaledMetric(metric, 1 / mu), damping=1.0, cg_maxiter=cg_iters)


class Solver:
    """How the geodesic step solves with G_old: a frozen metric per task, per-step CG, or a tracer."""

    frozen: ClassVar[bool] = False
    traces: ClassVar[bool] = False
    hint: ClassVar[str] = "lower --lr"

    def check_metric(self, name: str) -> None:
        """Refuse a ``--metric`` this solver cannot use (one line); any metric by default, since the
        solver reaches it only through ``build_metric`` and its products."""

    def factorise(self, learner: Geodesic, theta: Tensor, generator: torch.Generator) -> tuple[Metric, int]:
        """The frozen G_old at θ and its cost (frozen solvers)."""
        raise NotImplementedError

    def planned_steps(self, learner: Geodesic, available: int) -> int:
        return available


class KroneckerSolver(Solver):
    """K-FAC factors of G_old at the task's start, exact damped solves."""

    frozen = True

    def check_metric(self, name: str) -> None:
        if name not in KFAC_KINDS and not freezes_exactly(name):
            raise WeightgeoError(f"--solver kfac factorises the {' or '.join(KFAC_KINDS)} metric (or takes a "
                                 f"metric's exact frozen form, as diag-fisher's diagonal), not {name!r}: use "
                                 "--solver cg, nystrom or traverse for another metric")

    def factorise(self, learner, theta, generator):
        metric = KroneckerMetric.build(learner.fmodel, theta, learner.memory.inputs(), learner.settings.metric,
                                       generator=generator, buffers=learner.buffers)
        return metric, metric.products


class NystromSolver(Solver):
    """The top ``rank`` eigenpairs of G_old at the task's start, exact damped solves."""

    frozen = True

    def factorise(self, learner, theta, generator):
        metric = LowRankMetric.nystrom(learner.metric_on(learner.memory.inputs()), theta.detach(),
                                       learner.settings.rank, generator)
        return metric, metric.products


class ResampledSolver(Solver):
    """G_old on a fresh memory batch at every step, CG with ``cg_iters`` products per step."""

    def planned_steps(self, learner, available):
        return available // (1 + learner.settings.cg_iters)


class TraverseSolver(Solver):
    """The core tracer: fixed-length steps down the task loss (the papers' form)."""

    traces = True
    hint = "lower --step-size"


SOLVERS: Registry[Solver] = Registry("solver")
SOLVERS.register("kfac", KroneckerSolver(), help="K-FAC factors of the old tasks' metric, exact solves")
SOLVERS.register("nystrom", NystromSolver(), help="its top --rank eigenpairs, exact solves")
SOLVERS.register("cg", ResampledSolver(), help="re-estimated on a memory batch every step, --cg-iters products")
SOLVERS.register("traverse", TraverseSolver(), help="the core's fixed-length tracer (the papers' step)")


class Geodesic(Learner):
    """Damped natural-gradient descent on the new task under the earlier tasks' metric."""

    name = "geodesic"
    default_strength = 0.1
    grid = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.solver = SOLVERS[self.settings.solver]
        self.hint = self.solver.hint
        self.anchor = self.settings.anchor_or_default
        self.metric_space: WeightSpace | None = None
        self.reference: Tensor | None = None
        self.anchor_batches: RandomSubsets | None = None
        self.build_cost = 0
        self.planned = 0

    def metric_on(self, inputs: Tensor) -> Metric:
        """The chosen metric (output, fisher, diag-fisher) averaged over ``inputs``."""
        return build_metric(self.settings.metric, self.fmodel, inputs)

    def frozen_metric(self, theta: Tensor, step: int) -> tuple[Metric, int]:
        """G_old frozen at θ and its cost: the metric's own exact frozen form (:meth:`Metric.freeze`;
        diag-fisher: its diagonal) where it has one, else the solver's factorisation."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + 77 + len(self.memory) + step)
        frozen = self.metric_on(self.memory.inputs()).freeze(theta, self.settings.batch_size)
        return frozen if frozen is not None else self.solver.factorise(self, theta, generator)

    def scaled(self, metric: Metric) -> WeightSpace:
        """The space under G/μ with damping 1: its Riemannian gradient is μ(G + μI)⁻¹g."""
        return damped_space(self.fmodel, metric, self.strength, self.settings.cg_iters)

    def memory_batches(self, t: int) -> RandomSubsets:
        """Fresh random batches of the stored inputs (seeded per task)."""
        return RandomSubsets(self.memory.inputs(), self.settings.metric_batch, self.seed * 1000 + 300 + t)

    def before_task(self, t, theta):
        self.metric_space, self.reference, self.build_cost = None, None, 0
        if len(self.memory) == 0 or self.solver.traces:
            return 0
        if not self.solver.frozen:
            first = self.metric_on(self.memory.inputs()[: self.settings.metric_batch])
            self.metric_space = self.scaled(ResampledMetric(first, self.memory_batches(t)))
            return 0
        if self.anchor > 0:
            inputs = self.memory.inputs()
            with torch.no_grad():  # the frozen outputs of the task's start on the memory, in eval mode
                self.reference = self.fmodel(theta.detach(), inputs, self.buffers)
            self.anchor_batches = RandomSubsets((inputs, self.reference), self.settings.batch_size,
                                                self.seed * 1000 + 600 + t)
        metric, self.build_cost = self.frozen_metric(theta, 0)
        self.metric_space = self.scaled(metric)
        return self.build_cost

    def space(self, t):
        return self.metric_space

    def direction(self, theta: Tensor, g: Tensor) -> Tensor:
        """The step direction for the task gradient g: μ(G_old + μI)⁻¹g (g before the first task)."""
        return g if self.metric_space is None else self.metric_space.egrad2rgrad(theta, g)

    def planned_steps(self, available: int) -> int:
        """Steps that fit ``available`` evaluations (with a rebuild every ``refresh`` steps)."""
        refresh, steps = self.settings.refresh, available
        if self.metric_space is not None and not self.solver.frozen:
            steps = self.solver.planned_steps(self, available)
        while (self.metric_space is not None and self.solver.frozen and refresh > 0 and steps > 0
               and steps + self.build_cost * ((steps - 1) // refresh) > available):
            steps -= 1
        self.planned = steps
        return steps

    def hooks(self, t, objective):
        refresh = self.settings.refresh
        if self.metric_space is None or not self.solver.frozen or refresh <= 0:
            return []

        def rebuild(state: FitState) -> None:  # G_old re-estimated at the current θ, its cost charged
            if state.step < self.planned and not self.reached_target(objective):  # a step follows
                metric, cost = self.frozen_metric(state.param.detach(), state.step)
                self.metric_space.metric = ScaledMetric(metric, 1 / self.strength)
                state.budget.charge(cost)

        return [(refresh, rebuild)]

    def anchor_loss(self, theta: Tensor) -> Tensor | None:
        """(S/μ)·D(f(x; θ), f(x; θ₀)) on a memory minibatch, S = ``--anchor`` (> 0 only).

        A term of the loss like any other, so the Riemannian step preconditions its gradient too:
        (G/μ + I)⁻¹∇(L + (S/μ)D) = μ(G + μI)⁻¹∇L + S(G + μI)⁻¹∇D, the task's step and S times
        the anchor's damped natural gradient. Dividing by μ keeps S's meaning across μ: D's
        Hessian at θ₀ is a metric of the same memory's outputs, so along the directions the old
        tasks see the pull is about S·(θ − θ₀) whatever μ (undivided, it would shrink with μ).
        Counted with the task gradient as one evaluation (like a replay step). In eval mode, like
        its reference: D is 0 at θ₀ and the memory never enters batch-norm statistics.
        """
        if self.reference is None:  # None without --anchor or before a metric exists
            return None
        x, reference = self.anchor_batches.next()
        logits = self.fmodel(theta, x, self.buffers)
        return self.anchor / self.strength * output_distance(logits, reference, self.settings.fip_distance)

    def extra_loss(self, theta, batch, objective):
        return self.anchor_loss(theta)

    def learn(self, t, theta):
        if len(self.memory) == 0 or not self.solver.traces:
            return super().learn(t, theta)
        return self.trace(t, theta)

    def trace(self, t: int, theta: Tensor) -> Learned:
        """The core's tracer: fixed-length steps (Euclidean, ``step_size``) down the task loss."""
        s = self.settings
        allowed = self.seq.allowed(t)
        objective = TaskLoss(self.fmodel, self.batches(t), target_accuracy=s.target_accuracy,
                             transform_logits=lambda logits: mask_logits(logits, allowed))
        batches = self.memory_batches(t)
        space = WeightSpace(self.fmodel, self.metric_on(self.memory.inputs()[: s.metric_batch]),
                            damping=self.strength, cg_maxiter=s.cg_iters)
        path = traverse(space, objective, step_size=s.step_size, max_steps=s.budget, start=theta.detach(),
                        metric_inputs=batches, budget=s.budget, save_every=10**9)
        return Learned(path.end.detach().clone(), self.buffers, path.grad_evals, path.stop, len(path) - 1)
