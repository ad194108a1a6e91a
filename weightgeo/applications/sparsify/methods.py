"""Sparsification methods: the geodesic and the pruning baselines, at one budget of gradient evaluations.

Every method is a function ``method(task, levels, budget) -> list[SparseResult]`` (one
result per sparsity level, ascending) registered in :data:`METHODS` under its ``--method``
name. Accounting (:class:`Budget`): a minibatch gradient is one gradient evaluation, a
metric-vector product is one, the diagonal Fisher of a batch is one per class (one
vectorised backward pass per output unit); forward passes (evaluation, reference
outputs) are free. Each result's ``grad_evals`` is what it really spent, never more than
the budget.

Why a sparse network stays sparse: every phase that runs after a mask is chosen works in
the masked subspace — ``traverse`` on ``WeightSpace(..., mask=keep)`` (whose
``proju``/``projx`` zero the pruned coordinates and whose metric is restricted to the
subspace) and SGD with ``train(mask=keep)`` — so sparsity is a property of the space the
optimiser moves in, not a clean-up applied afterwards.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor

from weightgeo.applications.sparsify.finetune import Distillation, masked_distill, masked_finetune
from weightgeo.data import Data
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import MaskedOperator, WeightSpace
from weightgeo.metrics import DiagonalFisher, build_metric
from weightgeo.metrics.registry import METRIC_NAMES
from weightgeo.objectives.sparsity import (
    RANKINGS,
    Sparsity,
    check_sparsity,
    keep_mask,
    measured_sparsity,
)
from weightgeo.paths import Path, fip, traverse

STEPS = ("projection", "natural-gradient")


@dataclass
class SparsifySettings:
    """Knobs shared by the methods (defaults: the ones measured in BENCHMARKS.md).

    Geodesic (see :func:`geodesic_path`): ``metric`` (output | fisher | diag-fisher |
    euclidean) averaged over ``metric_batch`` unlabelled inputs, re-drawn at every stage;
    ``damping`` μ; ``cg_iters`` per step; ``step`` "projection" or "natural-gradient" (the
    papers' ``traverse``, with ``step_size``, ``step_norm``, ``path_share`` of the budget);
    ``stage_ratio`` for the gradual schedule; ``one_path``: all levels read off one path;
    ``distill_every_stage``: distil after every stage, not only at the requested levels.
    """

    metric: str = "output"
    metric_batch: int = 256
    damping: float = 0.1
    cg_iters: int = 10
    step: str = "projection"
    stage_ratio: float = 2.2
    step_size: float = 0.5
    step_norm: str = "euclidean"
    max_steps: int = 100_000
    path_share: float = 0.3
    ranking: str = "global"
    include_biases: bool = False
    rerank_every: int = 0
    one_path: bool = False
    distill_every_stage: bool = False
    finetune_share: float = 0.5
    lr_finetune: float = 0.01
    lr_distill: float = 0.003
    batch_size: int = 64
    imp_rounds: int = 4
    obd_batch: int = 256
    fip_lam: float = 1.0
    fip_lr: float = 0.01
    fip_batch: int = 200
    seed: int = 0

    def check(self) -> None:
        if self.metric not in METRIC_NAMES:
            raise WeightgeoError(f"unknown metric {self.metric!r}; choose one of {', '.join(METRIC_NAMES)}")
        if self.step not in STEPS:
            raise WeightgeoError(f"unknown geodesic step {self.step!r}; choose one of {', '.join(STEPS)}")
        if self.ranking not in RANKINGS:
            raise WeightgeoError(f"unknown ranking {self.ranking!r}; choose one of {', '.join(RANKINGS)}")
        if not 0 <= self.path_share <= 1 or not 0 <= self.finetune_share <= 1:
            raise WeightgeoError("path_share and finetune_share must be in [0, 1]")
        if self.imp_rounds < 1 or self.cg_iters < 1 or not self.stage_ratio > 1:
            raise WeightgeoError("imp_rounds and cg_iters must be ≥ 1 and stage_ratio > 1")


@dataclass
class SparseResult:
    """One sparse network: its method, target level, exact θ and mask, and what it cost."""

    method: str
    sparsity: float
    theta: Tensor
    keep: Tensor
    grad_evals: int
    seconds: float
    path: Path | None = None
    info: dict = field(default_factory=dict)
    buffers: dict[str, Tensor] | None = None

    def measured_sparsity(self, eligible: Tensor) -> float:
        return measured_sparsity(self.theta, eligible)


@dataclass
class SparsifyTask:
    """The dense network, its data and the settings every method reads.

    ``train`` holds labels (for the labelled baselines only); ``inputs`` are the unlabelled
    inputs that the label-free methods (geodesic, fip, magnitude-distill) see.
    """

    fmodel: FunctionalModel
    theta: Tensor
    train: Data
    settings: SparsifySettings = field(default_factory=SparsifySettings)
    inputs: Tensor | None = None
    on_point: Callable[[str, float, Tensor, int], None] | None = None
    _distillation: Distillation | None = None

    def __post_init__(self) -> None:
        self.settings.check()
        if self.inputs is None:
            self.inputs = self.train.x
        self.eligible = self.fmodel.weight_mask(self.settings.include_biases, device=self.theta.device)
        self.groups = None
        if self.settings.ranking == "layer":
            self.groups = [
                s for s, shape in zip(self.fmodel.slices().values(), self.fmodel.shapes, strict=True)
                if self.settings.include_biases or len(shape) >= 2
            ]

    @property
    def distillation(self) -> Distillation:
        if self._distillation is None:
            self._distillation = Distillation(self.fmodel, self.theta, self.inputs)
        return self._distillation

    def magnitude_mask(self, theta: Tensor, sparsity: float) -> Tensor:
        return keep_mask(theta.detach().abs(), self.eligible, sparsity, self.groups)

    def input_batches(self, size: int, seed: int) -> Iterator[Tensor]:
        """Fresh random batches of unlabelled inputs, forever (for metric re-estimation)."""
        generator = torch.Generator(device="cpu").manual_seed(seed)
        n = len(self.inputs)
        while True:
            yield self.inputs[torch.randperm(n, generator=generator)[: min(size, n)].to(self.inputs.device)]

    def sparsity_objective(self, sparsity: float) -> Sparsity:
        s = self.settings
        return Sparsity(
            self.fmodel, sparsity, ranking=s.ranking, include_biases=s.include_biases,
            rerank_every=s.rerank_every, tol=1e-6,
        )

    def report(self, method: str, sparsity: float, theta: Tensor, spent: int) -> None:
        if self.on_point is not None:
            self.on_point(method, sparsity, theta, spent)


def _levels(levels) -> list[float]:
    values = sorted(check_sparsity(s) for s in levels)
    if not values:
        raise WeightgeoError("no sparsity level given")
    return values


def _check_budget(budget: int) -> int:
    if not isinstance(budget, int) or budget < 0:
        raise WeightgeoError(f"the budget must be an integer number of gradient evaluations ≥ 0, got {budget!r}")
    return budget


# -- one-shot and fine-tuned baselines ---------------------------------------------------------
def magnitude(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot global magnitude pruning (no gradient evaluation at all)."""
    out = []
    for s in _levels(levels):
        started = time.perf_counter()
        keep = task.magnitude_mask(task.theta, s)
        out.append(SparseResult("magnitude", s, task.theta * keep, keep, 0, time.perf_counter() - started))
    return out


def _prune_then(name: str, task: SparsifyTask, levels, budget: int, choose, recover) -> list[SparseResult]:
    out = []
    for s in _levels(levels):
        started = time.perf_counter()
        keep, spent = choose(s)
        theta, used, buffers = recover(task.theta * keep, keep, budget - spent, None)
        task.report(name, s, theta, spent + used)
        out.append(SparseResult(name, s, theta, keep, spent + used, time.perf_counter() - started,
                                buffers=buffers))
    return out


def _finetune(task: SparsifyTask):
    s = task.settings
    return lambda theta, keep, steps, buffers: masked_finetune(
        task.fmodel, theta, keep, task.train, steps, lr=s.lr_finetune, batch_size=s.batch_size, seed=s.seed,
        buffers=buffers,
    )


def _distill(task: SparsifyTask):
    s = task.settings
    return lambda theta, keep, steps, buffers: masked_distill(
        task.fmodel, theta, keep, task.distillation, steps, lr=s.lr_distill, batch_size=s.batch_size,
        seed=s.seed, buffers=buffers,
    )


def random_prune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """A uniformly random mask (exact count per ranked set) + masked fine-tuning with labels."""
    generator = torch.Generator(device="cpu").manual_seed(task.settings.seed)

    def choose(s):
        scores = torch.rand(task.fmodel.n, generator=generator).to(task.theta.device)
        return keep_mask(scores, task.eligible, s, task.groups), 0

    return _prune_then("random", task, levels, budget, choose, _finetune(task))


def magnitude_finetune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot global magnitude pruning + masked fine-tuning with labels (Han et al. 2015)."""
    return _prune_then(
        "magnitude-finetune", task, levels, budget, lambda s: (task.magnitude_mask(task.theta, s), 0),
        _finetune(task),
    )


def magnitude_distill(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """One-shot magnitude pruning + masked distillation toward the dense outputs (no labels)."""
    return _prune_then(
        "magnitude-distill", task, levels, budget, lambda s: (task.magnitude_mask(task.theta, s), 0),
        _distill(task),
    )


def imp(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Iterative magnitude pruning (Frankle & Carbin 2019) without rewinding: R rounds, each
    pruning to 1 − (1 − s)^{r/R} and fine-tuning with labels for budget/R minibatches."""
    rounds = task.settings.imp_rounds
    finetune = _finetune(task)
    out = []
    for s in _levels(levels):
        started = time.perf_counter()
        theta, spent, buffers = task.theta, 0, None
        keep = torch.ones_like(task.eligible)
        for r in range(1, rounds + 1):
            level = 1 - (1 - s) ** (r / rounds)
            keep = task.magnitude_mask(theta, level)
            steps = budget * r // rounds - spent
            theta, used, buffers = finetune(theta * keep, keep, steps, buffers)
            spent += used
        task.report("imp", s, theta, spent)
        out.append(SparseResult("imp", s, theta, keep, spent, time.perf_counter() - started, buffers=buffers))
    return out


def obd(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """Optimal-brain-damage pruning by the diagonal-Fisher saliency ½ F_ii θ_i² + fine-tuning.

    The Fisher's diagonal on ``obd_batch`` unlabelled inputs costs one gradient evaluation
    per class; the rest of the budget fine-tunes with labels.
    """
    s = task.settings
    x = next(task.input_batches(s.obd_batch, s.seed))
    with torch.no_grad():
        classes = task.fmodel(task.theta, x[:1]).shape[-1]
    saliency: list[Tensor] = []

    def choose(level):
        if budget < classes:
            raise WeightgeoError(f"obd needs a budget of at least {classes} gradient evaluations")
        if not saliency:
            fisher = DiagonalFisher(task.fmodel, x).diagonal(task.theta)
            saliency.append(0.5 * fisher * task.theta.square())
        return keep_mask(saliency[0], task.eligible, level, task.groups), classes

    return _prune_then("obd", task, levels, budget, choose, _finetune(task))


# -- the authors' released form ----------------------------------------------------------------
def fip_method(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The FIP code's sparsification: SGD on Bhattacharyya(f, f₀) + λ·½||θ − P(θ)||² with the
    mask re-ranked every step and unit-norm steps, stopped at the hyperplane or the budget,
    then hard-pruned. Label-free."""
    s = task.settings
    out = []
    for level in _levels(levels):
        started = time.perf_counter()
        objective = Sparsity(
            task.fmodel, level, ranking=s.ranking, include_biases=s.include_biases, rerank_every=1, tol=1e-2,
        )
        path = fip(
            task.fmodel, objective, task.inputs, start=task.theta, lam=s.fip_lam, lr=s.fip_lr,
            distance="bhattacharyya", normalize=True, max_steps=budget, batch_size=s.fip_batch,
            budget=budget, seed=s.seed, save_every=10**9,
        )
        keep = objective.rank(path.end)
        theta = path.end * keep
        task.report("fip", level, theta, path.grad_evals)
        out.append(SparseResult("fip", level, theta, keep, path.grad_evals, time.perf_counter() - started,
                                info={"stop_reason": path.stop_reason}))
    return out


# -- the geodesic ---------------------------------------------------------------------------------
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


def metric_projection(space: WeightSpace, theta: Tensor, keep: Tensor, damping: float, cg_iters: int):
    """The shortest step under the metric at θ onto the sparse subspace {θ_P = 0} (P = ~keep).

    min_dθ ½ dθᵀ G dθ subject to (θ + dθ)_P = 0: the pruned coordinates go to zero and the
    kept ones compensate, d_K = (G_KK + μI)^{-1} G_KP θ_P — one product for G r (r = θ_P) and
    one damped CG solve on the subspace (:class:`MaskedOperator`, the masked WeightSpace's
    operator), all sharing one linearisation at θ. It is the papers' trust-region step with
    the target constraint enforced exactly instead of by a penalty along ∇O: the end of
    the geodesic of the linearised metric from θ to its closest point on the hyperplane.
    Under a diagonal or Euclidean metric G_KP = 0 and it is plain magnitude pruning.

    Returns (θ', products spent, squared metric length of the step).
    """
    kept = keep.to(theta.dtype)
    operator = space.operator(theta)
    r = theta * (1 - kept)
    gr = operator @ r
    solution = MaskedOperator(operator, kept).solve(gr, damping, cg_iters, space.cg_tol)
    x = solution.x
    # ||dθ||²_G = rᵀGr − xᵀ(G r)_K − μ||x||², free from the solve (dθ = x − r).
    metric_sq = (r @ gr - x @ (kept * gr) - damping * (x @ x)).clamp_min(0)
    return (theta + x) * kept, 1 + solution.products, metric_sq


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
    """One label-free path from the dense network through every level of ``levels`` in turn.

    At each stage of the gradual schedule (:func:`stage_levels`; coarsened when the budget
    is too small to project at every stage) the mask is re-ranked by
    magnitude at the current point, then the stage's step is taken under the metric
    (re-estimated on a fresh unlabelled batch at every stage):

    - ``step="projection"`` (default): :func:`metric_projection`, the least-metric-length
      step onto the stage's sparse hyperplane;
    - ``step="natural-gradient"``: the papers' step, ``traverse`` with the
      :class:`~weightgeo.objectives.Sparsity` objective (fixed mask, damped natural
      gradient, ``step_size``), for ``path_share`` of the budget spread over the stages,
      then θ is put exactly on the hyperplane.

    Later stages move inside the previous stage's masked space, so the path stays sparse.
    At each requested level the rest of its budget share goes to distillation toward the
    dense network's outputs inside the mask (no labels), and the level is read off: its
    ``grad_evals`` is the path's cumulative count there (≤ budget). ``evaluate(θ, target)``
    (logging) is recorded at every stage end and every ``evaluate_every`` points of a
    ``traverse``; ``directory`` streams the path there.
    """
    s = task.settings
    levels = _levels(levels)
    budget = _check_budget(budget)
    schedule = stage_levels(levels, s.stage_ratio)
    if s.step == "projection":
        # a small budget cannot pay for every stage: coarsen the schedule until the
        # projections take at most half of it (a stage without its projection would be
        # plain magnitude pruning, and the late, hard stages are the ones that need it)
        ratio, most = s.stage_ratio, max(1, budget // 2 // (s.cg_iters + 1))
        while len(schedule) > most and ratio < 1e6:
            ratio *= 1.25
            schedule = stage_levels(levels, ratio)
    batches = task.input_batches(s.metric_batch, s.seed)
    metric = build_metric(s.metric, task.fmodel, next(batches))
    space = WeightSpace(task.fmodel, metric, damping=s.damping, cg_maxiter=s.cg_iters)
    distill = _distill(task)
    started = time.perf_counter()
    theta, buffers = task.theta, None
    keep = torch.ones_like(task.eligible)
    path = Path(theta, directory=directory, save_every=10**9, meta={
        "tracer": "geodesic-sparsify", "step": s.step, "metric": s.metric, "damping": s.damping,
        "cg_iters": s.cg_iters, "stages": [a for a, _ in schedule], "levels": levels,
    })
    path.append(theta, metric_length=0.0, euclidean_length=0.0, grad_evals=0, stage_sparsity=0.0)
    if evaluate is not None:
        path.update_last(**evaluate(theta, 0.0))
    # budget: the path's steps first, the rest to distillation at the requested levels,
    # shared in proportion to the log-compression each level adds
    per_stage = s.cg_iters + 1 if s.step == "projection" else int(s.path_share * budget / len(schedule))
    path_cost = min(budget, per_stage * len(schedule))
    stops = [a for a, r in schedule if r is not None or s.distill_every_stage]
    gains = [math.log1p(-a) - math.log1p(-b) for a, b in zip([0.0, *stops[:-1]], stops, strict=True)]
    distill_at = {lv: (budget - path_cost) * g / sum(gains) for lv, g in zip(stops, gains, strict=True)}
    planned = 0.0
    objective = task.sparsity_objective(schedule[0][0])
    spent = 0
    results: list[SparseResult] = []
    for level, requested in schedule:
        planned += per_stage
        previous = keep
        keep = task.magnitude_mask(theta, level) & previous  # re-ranked inside the current subspace
        before = theta
        if s.metric != "euclidean":
            space = space.with_inputs(next(batches))
        if s.step == "projection":
            metric_sq = torch.zeros((), device=theta.device)
            if spent + per_stage <= budget:
                theta, used, metric_sq = metric_projection(space, theta, keep, s.damping, s.cg_iters)
                spent += used
            else:
                theta = theta * keep
            path.append(theta, metric_length=metric_sq.sqrt(), euclidean_length=torch.linalg.vector_norm(theta - before),
                        grad_evals=spent, stage_sparsity=level)
        else:
            objective.set_sparsity(level, theta)
            objective.keep = keep
            stage_space = space.with_mask(previous)
            path.begin_stage(f"sparsity {level:g}")
            path = traverse(
                stage_space, objective, step_size=s.step_size, max_steps=s.max_steps, path=path, finish=False,
                step_norm=s.step_norm, budget=min(budget, int(planned)),
                metric_inputs=batches if s.metric != "euclidean" else None,
                evaluate=None if evaluate is None else (lambda t, level=level: evaluate(t, level)),
                evaluate_every=evaluate_every,
            )
            spent = path.grad_evals
            theta = path.end * keep
            path.append(theta, euclidean_length=torch.linalg.vector_norm(theta - path.end),
                        grad_evals=spent, stage_sparsity=level)
        if evaluate is not None and requested is not None:
            path.update_last(**evaluate(theta, level))  # before the distillation
        if level in distill_at:
            planned += distill_at[level]
            theta, used, buffers = distill(theta, keep, min(budget, int(planned)) - spent, buffers)
            spent += used
            path.append(theta, euclidean_length=torch.linalg.vector_norm(theta - path.end),
                        grad_evals=spent, stage_sparsity=level, distilled=used)
        if evaluate is not None:
            path.update_last(**evaluate(theta, level))
        if requested is not None:
            task.report(label, requested, theta, spent)
            results.append(SparseResult(label, requested, theta, keep, spent,
                                        time.perf_counter() - started, buffers=buffers))
    path.finish("done")
    return path, results


def geodesic(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The geodesic at every level with the full budget each (one path per level, through the
    gradual schedule below it), or — with ``settings.one_path`` — one path for all levels,
    each read off at the evaluations spent to reach it."""
    levels = _levels(levels)
    if task.settings.one_path:
        return geodesic_path(task, levels, budget)[1]
    out = []
    for level in levels:
        path, (result,) = geodesic_path(task, [level], budget)
        result.path = path
        out.append(result)
    return out


def geodesic_finetune(task: SparsifyTask, levels, budget: int) -> list[SparseResult]:
    """The geodesic with ``1 − finetune_share`` of the budget, then masked fine-tuning with labels."""
    s = task.settings
    first = int(round((1 - s.finetune_share) * budget))
    finetune = _finetune(task)
    out = []
    for result in geodesic(task, levels, first):
        started = time.perf_counter()
        theta, used, buffers = finetune(result.theta, result.keep, budget - result.grad_evals, result.buffers)
        task.report("geodesic-finetune", result.sparsity, theta, result.grad_evals + used)
        out.append(SparseResult("geodesic-finetune", result.sparsity, theta, result.keep,
                                result.grad_evals + used, result.seconds + time.perf_counter() - started,
                                path=result.path, buffers=buffers))
    return out


METHODS: dict[str, Callable[[SparsifyTask, list, int], list[SparseResult]]] = {
    "geodesic": geodesic,
    "geodesic-finetune": geodesic_finetune,
    "fip": fip_method,
    "random": random_prune,
    "magnitude": magnitude,
    "magnitude-finetune": magnitude_finetune,
    "magnitude-distill": magnitude_distill,
    "imp": imp,
    "obd": obd,
}
"""The methods by their ``--method`` names."""

LABEL_FREE = ("geodesic", "fip", "magnitude", "magnitude-distill")
"""Methods that never read a label."""
