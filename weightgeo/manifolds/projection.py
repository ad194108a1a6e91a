"""The least-metric-length step from θ onto a sparse hyperplane {θ : θ_P = 0} of weight space.

min_dθ ½ dθᵀ G(θ) dθ  subject to  (θ + dθ)_P = 0, with P the pruned coordinates and K = ~P the
kept ones. The pruned coordinates must move by d_P = −θ_P; the kept ones compensate for it,
d_K = (G_KK + μI)⁻¹ G_KP θ_P (the stationarity condition G_KK d_K + G_KP d_P = 0, damped as every
solve of the library is). It costs one product G r (r = θ_P, zero elsewhere) and one damped solve
on the kept coordinates (the :class:`~weightgeo.manifolds.MaskedOperator`), all sharing one
linearisation at θ. It is the end of the geodesic of the linearised metric from θ to its closest
point on the hyperplane; under a diagonal or Euclidean metric G_KP = 0 and it is plain magnitude
pruning. The work is charged at the metric's own product cost (nothing under the Euclidean metric,
where products are free; a diagonal Fisher's one-off build cost once).
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import MaskedOperator, WeightSpace
from weightgeo.metrics.base import Solution


class SparseProjection(NamedTuple):
    """The projected point, the squared metric length of the step, the solve, and the cost.

    ``cost`` counts every gradient evaluation of the projection: the product G r and the solve's
    products at the metric's product cost, plus any one-off cost of building G at θ.
    """

    point: Tensor
    metric_sq: Tensor
    solution: Solution
    cost: int


def sparse_projection_cost(space: WeightSpace, cg_iters: int | None = None) -> int:
    """The most gradient evaluations one :func:`project_to_sparse` may spend at the metric's
    product cost: the product G r plus a solve of ``cg_iters`` iterations (a budget test)."""
    return space.solve_cost(cg_iters) + space.metric.product_cost


def project_to_sparse(
    space: WeightSpace,
    theta: Tensor,
    keep: Tensor,
    *,
    damping: float | None = None,
    cg_iters: int | None = None,
    tol: float | None = None,
) -> SparseProjection:
    """The shortest step under the space's metric at θ onto the subspace where ``keep`` is False.

    Args:
        space: the weight space (its metric; a masked space projects within its own subspace).
        theta: θ, a point of the space.
        keep: bool (or 0/1) vector over θ: True where a coordinate may stay non-zero.
        damping, cg_iters, tol: the solve (default: the space's damping, CG iterations, tolerance).

    Returns:
        :class:`SparseProjection`: θ' = (θ + dθ) ⊙ keep, ||dθ||²_G = rᵀGr − xᵀ(G r)_K − μ||x||²
        (free from the solve, dθ = x − r), the solve and its cost. The cost is also added to
        the space's ledger ``products_spent``.

    Raises:
        WeightgeoError: ``keep`` does not fit θ.
    """
    if keep.shape != theta.shape:
        raise WeightgeoError(f"the keep-mask has shape {tuple(keep.shape)}, θ has {tuple(theta.shape)}")
    mu = space.damping if damping is None else float(damping)
    maxiter = space.cg_maxiter if cg_iters is None else int(cg_iters)
    tol = space.cg_tol if tol is None else float(tol)
    # the kept coordinates of the space (inside its own mask, if any), and G on the whole space:
    # one MaskedOperator over G, never one over another (whose exact solve would ignore the outer mask)
    kept = space.projx(keep.to(dtype=theta.dtype, device=theta.device))
    operator = space.with_mask(None).operator(theta)
    r = theta * (1 - kept)
    gr = operator @ r
    cost = operator.charge(1)  # G r at the metric's product cost (and its build cost, if any)
    solution = MaskedOperator(operator, kept).solve(gr, mu, maxiter, tol)
    x = solution.x
    metric_sq = (r @ gr - x @ (kept * gr) - mu * (x @ x)).clamp_min(0)
    cost += solution.cost
    space.products_spent += cost
    return SparseProjection((theta + x) * kept, metric_sq, solution, cost)
