"""A weight space whose Riemannian gradient never raises a reference loss to first order (A-GEM).

At each point θ a reference gradient r(θ) is evaluated (A-GEM: the gradient of the loss on a
batch of stored examples of earlier tasks). The Riemannian gradient of a loss with Euclidean
gradient g is g itself when gᵀr ≥ 0, else its projection onto the half-space {v : vᵀr ≥ 0}:

    g̃ = g − min(0, gᵀr) / ‖r‖² · r,      so that g̃ᵀr = max(0, gᵀr) ≥ 0

(Chaudhry et al. 2019). A descent step −η g̃ therefore never increases the reference loss to
first order. ``geoopt.optim.RiemannianSGD`` over a ``ManifoldParameter`` on this space (that is,
``weightgeo.optim.fit(space=...)``) is A-GEM with momentum; each reference gradient is charged
to ``products_spent`` like a metric-vector product, at ``cost`` gradient evaluations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace


def project_off_conflict(g: Tensor, r: Tensor) -> Tensor:
    """g − min(0, gᵀr)/‖r‖² · r: g where it agrees with r, else its projection onto rᵀv = 0."""
    tiny = torch.finfo(g.dtype).tiny
    return g - ((g @ r).clamp(max=0) / (r @ r).clamp_min(tiny)) * r


class ConflictFreeSpace(WeightSpace):
    """The flat weight space of ``model`` with A-GEM's projected gradient (see the module docstring).

    Args:
        model: the network whose flattened parameters are the points.
        reference: θ ↦ r(θ), the reference gradient at θ (called once per Riemannian gradient,
            with gradients enabled; θ arrives detached).
        cost: gradient evaluations one call of ``reference`` costs (charged to ``products_spent``).
    """

    def __init__(self, model: nn.Module | FunctionalModel, reference: Callable[[Tensor], Tensor],
                 cost: int = 1) -> None:
        super().__init__(model, damping=0.0)
        self.reference = reference
        self.cost = int(cost)

    def egrad2rgrad(self, x: Tensor, u: Tensor) -> Tensor:
        """g projected off its conflict with the reference gradient at x."""
        with torch.enable_grad():  # geoopt's step runs under no_grad
            r = self.reference(x.detach())
        self.products_spent += self.cost
        return project_off_conflict(u, r.to(u.dtype))

    def solve_cost(self, maxiter: int | None = None) -> int:
        """One reference gradient per Riemannian gradient."""
        return self.cost

    def extra_repr(self) -> str:
        return f"n={self.model.n}, A-GEM projection, {self.cost} evaluation(s) per reference gradient"
