"""LowRankMetric: G ≈ U diag(λ) Uᵀ from r metric-vector products (Nyström), with an exact solve.

The pull-back metric of a memory of M stored inputs has rank ≤ M·C and a fast-decaying
spectrum, so its top r eigenpairs carry most of it. A randomised Nyström approximation
(Tropp, Yurtsever, Udell & Cevher 2017, "Fixed-rank approximation of a positive-semidefinite
matrix from streaming data", Alg. 3) needs r products G Ω for a random orthonormal n×r Ω.
The damped solve is then exact by the Woodbury identity:
(U Λ Uᵀ + μI)^{-1} g = (g − U (λ/(λ+μ) ⊙ Uᵀ g)) / μ — the damped natural gradient under the
old tasks' metric at the cost of two thin matrix products, with no further network pass.
The approximation is frozen at the θ where it was built (re-build it to re-estimate).
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.metrics.base import Metric, MetricOperator, Solution


class LowRankOperator(MetricOperator):
    """U diag(λ) Uᵀ bound to θ: products are two thin matrix products; solves are exact."""

    def __init__(self, metric: LowRankMetric, theta: Tensor) -> None:
        super().__init__(metric, theta)
        self.basis = metric.basis
        self.eigenvalues = metric.eigenvalues

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return self.basis @ (self.eigenvalues[:, None] * (self.basis.T @ v))
        return self.basis @ (self.eigenvalues * (self.basis.T @ v))

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        if not damping > 0:
            raise WeightgeoError("a low-rank metric is singular: its solve needs damping > 0")
        shrink = self.eigenvalues / (self.eigenvalues + damping)
        x = (g - self.basis @ (shrink * (self.basis.T @ g))) / damping
        # Built once at θ: the build's cost is in ``products``; solves cost nothing more.
        return Solution(x, torch.zeros((), device=g.device), 0, 0, cost=0)

    def diagonal(self) -> Tensor:
        return (self.basis.square() * self.eigenvalues).sum(1)


class LowRankMetric(Metric):
    """G = U diag(λ) Uᵀ with orthonormal columns U (n×r) and λ ≥ 0 (independent of θ).

    Build one from any metric with :meth:`nystrom`.
    """

    def __init__(self, basis: Tensor, eigenvalues: Tensor, products: int = 0) -> None:
        if basis.dim() != 2 or eigenvalues.shape != (basis.shape[1],):
            raise WeightgeoError("LowRankMetric needs an n×r basis and r eigenvalues")
        self.basis = basis
        self.eigenvalues = eigenvalues
        self.products = products

    @property
    def rank(self) -> int:
        return self.basis.shape[1]

    def at(self, theta: Tensor) -> LowRankOperator:
        return LowRankOperator(self, theta)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.at(theta) @ v

    @classmethod
    def nystrom(
        cls, metric: Metric, theta: Tensor, rank: int, generator: torch.Generator | None = None
    ) -> LowRankMetric:
        """The rank-``rank`` Nyström approximation of ``metric`` at θ (``rank`` products).

        Stable form: shift by ν = √n·eps·||Y|| before the Cholesky factorisation and
        subtract it from the eigenvalues afterwards (Tropp et al. 2017, Alg. 3).
        """
        n = theta.numel()
        if not 1 <= rank <= n:
            raise WeightgeoError(f"the Nyström rank must be in [1, {n}], got {rank}")
        operator = metric.at(theta.detach())
        omega = torch.randn(n, rank, generator=generator, dtype=theta.dtype, device="cpu")
        omega = torch.linalg.qr(omega.to(theta.device)).Q
        y = torch.stack([operator @ omega[:, i] for i in range(rank)], dim=1)
        y64, omega64 = y.double(), omega.double()
        nu = (n**0.5) * torch.finfo(theta.dtype).eps * torch.linalg.matrix_norm(y64, ord=2)
        y_nu = y64 + nu * omega64
        core = omega64.T @ y_nu
        core = 0.5 * (core + core.T)
        chol = torch.linalg.cholesky(core + 1e-12 * core.diagonal().abs().max() * torch.eye(
            rank, dtype=core.dtype, device=core.device))
        b = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T  # Y_ν C^{-T}
        u, s, _ = torch.linalg.svd(b, full_matrices=False)
        eigenvalues = (s.square() - nu).clamp_min(0)
        return cls(u.to(theta.dtype), eigenvalues.to(theta.dtype), products=rank)
