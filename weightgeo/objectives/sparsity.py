"""Sparsity: O(θ) = ½||θ − P(θ)||², the squared distance to the p-sparse hyperplane.

P zeroes all but the largest-magnitude weights (Raghavan & Thomson 2020, "Sparsifying
networks by traversing geodesics"): a fraction ``sparsity`` of the eligible weights is
pruned, ranked globally (the papers' and the authors' code) or within each layer. The
gradient is θ − P(θ) (P is locally constant almost everywhere), so a tracer that
follows it pushes exactly the pruned coordinates toward zero while the metric decides
how the kept ones compensate.

The mask is fixed when the objective first sees a point (the papers' set-up) or
re-ranked every ``rerank_every`` gradient calls (the authors' code); :meth:`set_sparsity`
raises the level along one path (a gradual schedule: 50%, 80%, 90%, … read off in turn),
ranking the new mask at the current point. :meth:`apply` puts θ exactly on the hyperplane.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.objectives.base import Objective

RANKINGS = ("global", "layer")


def check_sparsity(value: float) -> float:
    """Return ``value`` as a float if it is a valid target sparsity in [0, 1); else raise one line."""
    try:
        s = float(value)
    except (TypeError, ValueError):
        raise WeightgeoError(f"sparsity must be a number in [0, 1), got {value!r}") from None
    if not 0.0 <= s < 1.0:
        raise WeightgeoError(f"sparsity must be in [0, 1) (the fraction of weights set to zero), got {value!r}")
    return s


def keep_mask(
    scores: Tensor,
    eligible: Tensor,
    sparsity: float,
    groups: list[slice] | None = None,
) -> Tensor:
    """Boolean mask over θ: False on the ``sparsity`` fraction of eligible coordinates with the
    smallest ``scores`` (ties broken by position), True everywhere else.

    ``groups`` (slices of θ) rank each group on its own (layer-wise); None ranks globally.
    Exactly ``round(sparsity · count)`` coordinates of each ranked set are pruned.
    """
    sparsity = check_sparsity(sparsity)
    keep = torch.ones_like(eligible, dtype=torch.bool)
    sets = [eligible.nonzero().squeeze(1)] if groups is None else [
        (eligible[g].nonzero().squeeze(1) + g.start) for g in groups
    ]
    for index in sets:
        if index.numel() == 0:
            continue
        n_prune = int(round(sparsity * index.numel()))
        if n_prune == 0:
            continue
        smallest = torch.topk(scores[index], n_prune, largest=False, sorted=False).indices
        keep[index[smallest]] = False
    return keep


class Sparsity(Objective):
    """½||θ − P(θ)||² toward the p-sparse hyperplane; closed form, costs no network pass.

    Args:
        model: the network (its parameter shapes say which coordinates are weights).
        sparsity: the target fraction of eligible weights set to zero, in [0, 1).
        ranking: "global" (one magnitude ranking over all eligible weights) or "layer"
            (each parameter tensor pruned to the same fraction).
        include_biases: also prune biases and batch-norm parameters (the authors' code
            does); by default only weights of dimension ≥ 2 are eligible.
        rerank_every: 0 fixes the mask at the first point seen (the papers' set-up); k > 0
            re-ranks it by magnitude every k gradient calls (the code's, with k = 1).
        tol: ``done`` when ||θ − P(θ)|| ≤ tol.
        mask: a keep-mask to start from instead of ranking the first point.
    """

    cost = 0

    def __init__(
        self,
        model: nn.Module | FunctionalModel,
        sparsity: float,
        *,
        ranking: str = "global",
        include_biases: bool = False,
        rerank_every: int = 0,
        tol: float = 1e-2,
        mask: Tensor | None = None,
    ) -> None:
        fmodel = as_functional(model)
        if ranking not in RANKINGS:
            raise WeightgeoError(f"ranking must be one of {', '.join(RANKINGS)}, got {ranking!r}")
        if not isinstance(rerank_every, int) or rerank_every < 0:
            raise WeightgeoError(f"rerank_every must be an integer ≥ 0, got {rerank_every!r}")
        if not tol >= 0:
            raise WeightgeoError(f"tol must be ≥ 0, got {tol}")
        self.sparsity = check_sparsity(sparsity)
        self.ranking = ranking
        self.include_biases = include_biases
        self.rerank_every = rerank_every
        self.tol = float(tol)
        self.eligible = fmodel.weight_mask(include_biases=include_biases)
        if not bool(self.eligible.any()):
            raise WeightgeoError("the model has no prunable weights (no parameter of dimension ≥ 2)")
        self.groups = None if ranking == "global" else [
            s for s, shape in zip(fmodel.slices().values(), fmodel.shapes, strict=True)
            if include_biases or len(shape) >= 2
        ]
        self.keep: Tensor | None = None
        if mask is not None:
            if mask.shape != self.eligible.shape:
                raise WeightgeoError(f"mask must have length {fmodel.n}, got shape {tuple(mask.shape)}")
            self.keep = mask.detach().bool() | ~self.eligible.to(mask.device)
        self._calls = 0

    # -- the mask -----------------------------------------------------------------------
    def rank(self, theta: Tensor) -> Tensor:
        """Re-rank the mask by magnitude at θ and return it (True = kept)."""
        eligible = self.eligible.to(theta.device)
        self.keep = keep_mask(theta.detach().abs(), eligible, self.sparsity, self.groups)
        return self.keep

    def mask(self, theta: Tensor) -> Tensor:
        """The current keep-mask (ranked at θ if none is fixed yet)."""
        if self.keep is None or self.keep.device != theta.device:
            return self.rank(theta)
        return self.keep

    def set_sparsity(self, sparsity: float, theta: Tensor | None = None) -> None:
        """Move the target to a new level; the mask is re-ranked at θ (or at the next point)."""
        self.sparsity = check_sparsity(sparsity)
        self.keep = None
        if theta is not None:
            self.rank(theta)

    def pruned(self, theta: Tensor) -> Tensor:
        """θ − P(θ): the pruned coordinates of θ, zeros elsewhere."""
        return theta.detach() * ~self.mask(theta)

    def apply(self, theta: Tensor) -> Tensor:
        """P(θ): θ with the pruned coordinates set exactly to zero."""
        return theta.detach() * self.mask(theta)

    # -- the objective --------------------------------------------------------------------
    def value(self, theta: Tensor) -> Tensor:
        drop = ~self.mask(theta)
        return 0.5 * (theta * drop).square().sum()

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        if self.keep is not None and self.rerank_every and self._calls % self.rerank_every == 0:
            self.rank(theta)
        self._calls += 1
        r = self.pruned(theta)
        return 0.5 * r.square().sum(), r

    def step_limit(self, theta: Tensor, step: Tensor) -> Tensor:
        """The line minimiser of the quadratic on the current mask, clipped to [0, 1]."""
        drop = ~self.mask(theta)
        s = step * drop
        t = -(self.pruned(theta) @ s) / (s @ s).clamp_min(torch.finfo(step.dtype).tiny)
        return t.clamp(0.0, 1.0)

    def distance(self, theta: Tensor) -> Tensor:
        """||θ − P(θ)||."""
        return torch.linalg.vector_norm(self.pruned(theta))

    def done(self, theta: Tensor) -> bool:
        return bool(self.distance(theta) <= self.tol)  # stop test

    def __repr__(self) -> str:
        rerank = "fixed mask" if not self.rerank_every else f"re-ranked every {self.rerank_every}"
        return f"Sparsity({self.sparsity:g}, {self.ranking}, {rerank})"


def measured_sparsity(theta: Tensor, eligible: Tensor) -> float:
    """The real fraction of exact zeros among the eligible coordinates of θ (a report)."""
    eligible = eligible.to(theta.device)
    zeros = ((theta == 0) & eligible).sum()
    return float(zeros) / max(int(eligible.sum()), 1)
