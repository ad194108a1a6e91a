"""What every sparsification method reads (:class:`SparsifyTask`) and returns (:class:`SparseResult`).

Accounting (:class:`~weightgeo.stopping.Budget`): a minibatch gradient is one gradient
evaluation, a metric-vector product is one (or the metric's declared cost), the diagonal Fisher
of a batch one per class; forward passes (evaluation, reference outputs) are free. A result's
``grad_evals`` is what it really spent, never more than the budget; its ``stop`` says how it
ended, and a method that stopped on a non-finite value carries a one-line ``message`` naming the
option to change (the last finite point is its θ).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property

from torch import Tensor

from weightgeo.applications.sparsify.finetune import Distillation
from weightgeo.applications.sparsify.obs import LayerwiseOBS
from weightgeo.applications.sparsify.settings import SparsifySettings
from weightgeo.data import Data
from weightgeo.data.streams import RandomSubsets
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.objectives.sparsity import Sparsity, check_sparsity, keep_mask, measured_sparsity
from weightgeo.paths import Path
from weightgeo.stopping import Stop, StopReason

FINISHED = Stop(StopReason.DONE, 0)


@dataclass
class SparseResult:
    """One sparse network: its method, target level, exact θ and mask, what it cost, how it ended."""

    method: str
    sparsity: float
    theta: Tensor
    keep: Tensor
    grad_evals: int
    seconds: float
    path: Path | None = None
    buffers: dict[str, Tensor] | None = None
    stop: Stop = FINISHED
    hint: str | None = None

    @property
    def stop_reason(self) -> str:
        return self.stop.reason.value

    @property
    def message(self) -> str | None:
        """For a result that ended on a non-finite value, one line naming the option to change
        ("fip at 90% sparsity stopped at step 3: non-finite gradient — lower --fip-lr")."""
        if not self.stop.diverged:
            return None
        return self.stop.message(f"{self.method} at {100 * self.sparsity:g}% sparsity", self.hint)

    @property
    def diverged(self) -> bool:
        return self.stop.diverged

    def measured_sparsity(self, eligible: Tensor) -> float:
        return measured_sparsity(self.theta, eligible)


def sparse_result(
    method: str,
    level: float,
    theta: Tensor,
    keep: Tensor,
    grad_evals: int,
    started: float,
    *,
    stop: Stop = FINISHED,
    hint: str | None = None,
    buffers: dict[str, Tensor] | None = None,
    path: Path | None = None,
) -> SparseResult:
    """A :class:`SparseResult` timed from ``started``; ``hint`` names the option that tames the
    phase that diverged (read only if ``stop`` is non-finite)."""
    return SparseResult(method, level, theta, keep, grad_evals, time.perf_counter() - started, path, buffers,
                        stop, hint if stop.diverged else None)


def worse(first: Stop, second: Stop) -> Stop:
    """The stop that describes two phases run one after the other: a divergence, else the later."""
    return first if first.diverged else second


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

    def __post_init__(self) -> None:
        if self.inputs is None:
            self.inputs = self.train.x
        s = self.settings
        self.eligible = self.fmodel.weight_mask(s.include_biases, device=self.theta.device)
        self.groups = None if s.ranking == "global" else [
            piece for piece, shape in zip(self.fmodel.slices().values(), self.fmodel.shapes, strict=True)
            if s.include_biases or len(shape) >= 2
        ]

    @cached_property
    def layerwise_obs(self) -> LayerwiseOBS:
        """OBC on the dense network, its layer Hessians from ``obs_batch`` unlabelled inputs (the
        first ones; all by default) and its greedy orders computed once, at the first prune."""
        s = self.settings
        inputs = self.inputs if s.obs_batch is None else self.inputs[:s.obs_batch]
        return LayerwiseOBS(self.fmodel, self.theta, inputs, self.eligible, dampening=s.obs_damping)

    @cached_property
    def distillation(self) -> Distillation:
        """The label-free target: the dense network's outputs on ``inputs``."""
        return Distillation(self.fmodel, self.theta, self.inputs)

    def magnitude_mask(self, theta: Tensor, sparsity: float) -> Tensor:
        return keep_mask(theta.detach().abs(), self.eligible, sparsity, self.groups)

    def input_batches(self, size: int, seed: int) -> RandomSubsets:
        """Fresh random batches of unlabelled inputs, forever (for metric re-estimation)."""
        return RandomSubsets(self.inputs, size, seed)

    def sparsity_objective(self, sparsity: float) -> Sparsity:
        s = self.settings
        return Sparsity(self.fmodel, sparsity, ranking=s.ranking, include_biases=s.include_biases,
                        rerank_every=s.rerank_every, tol=1e-6)


def check_levels(levels) -> list[float]:
    """The target sparsities, each in [0, 1), ascending; none is one line."""
    values = sorted(check_sparsity(s) for s in levels)
    if not values:
        raise WeightgeoError("no sparsity level given")
    return values


def check_budget(budget: int) -> int:
    """``budget`` if it is a whole number of gradient evaluations ≥ 0, else one line."""
    if not isinstance(budget, int) or isinstance(budget, bool) or budget < 0:
        raise WeightgeoError(f"the budget must be an integer number of gradient evaluations ≥ 0, got {budget!r}")
    return budget
