"""LowRankMetric: G ≈ U diag(λ) Uᵀ from r metric-vector products (Nyström), with an exact solve.

The pull-back metric of a memory of M stored inputs has rank ≤ M·C and a fast-decaying
spectrum, so its top r eigenpairs carry most of it. A randomised Nyström approximation
(Tropp, Yurtsever, Udell & Cevher 2017, "Fixed-rank approximation of a positive-semidefinite
matrix from streaming data", Alg. 3) needs r products G Ω for a random orthonormal n×r Ω.
The damped solve is then exact by the Woodbury identity:
(U Λ Uᵀ + μI)^{-1} g = (g − U (λ/(λ+μ) ⊙ Uᵀ g)) / μ — the damped natural gradient under the
old tasks' metric at the cost of two thin matrix products, with no further network pass.

:class:`LowRankMetric` is the approximation frozen at the θ where it was built (constant in θ:
straight geodesics, products that never run the network). :class:`NystromMetric` is a metric
of θ built from any metric: ``at(θ)`` sketches G(θ) with r products (charged once per point as
the operator's build cost) against a random Ω drawn once, so the approximation is a smooth
function of θ; its ``mvp`` is Y (ΩᵀY)⁻¹ Yᵀ v with Y = G(θ) Ω, differentiable in θ whenever the
inner metric's products are (relax's energy, shoot's geodesic force).
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.metrics.base import ConstantMetric, Metric, MetricOperator, Solution


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

    def geodesic_force(self, v: Tensor) -> tuple[Tensor | None, Tensor, int]:
        """No force: the frozen metric is constant, so geodesics are straight lines."""
        return None, v @ (self @ v), 0


class LowRankMetric(ConstantMetric):
    """G = U diag(λ) Uᵀ with orthonormal columns U (n×r) and λ ≥ 0 (independent of θ).

    Build one from any metric with :meth:`nystrom`.
    """

    product_cost = 0

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
        omega = random_basis(n, rank, generator, theta)
        y = torch.stack([operator @ omega[:, i] for i in range(rank)], dim=1)
        basis, eigenvalues = nystrom_factors(y, omega)
        return cls(basis, eigenvalues, products=rank)


def random_basis(n: int, rank: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
    """An n×r matrix with orthonormal columns, from Gaussian entries drawn on the CPU."""
    omega = torch.randn(n, rank, generator=generator, dtype=like.dtype, device="cpu")
    return torch.linalg.qr(omega.to(like.device)).Q


def _shift(y: Tensor) -> Tensor:
    """ν = √n·eps·||Y||₂, the stabilising shift of Tropp et al. (2017)."""
    return (y.shape[0] ** 0.5) * torch.finfo(y.dtype).eps * torch.linalg.matrix_norm(y.double(), ord=2)


def nystrom_factors(y: Tensor, omega: Tensor) -> tuple[Tensor, Tensor]:
    """U, λ with G ≈ U diag(λ) Uᵀ from the sketch Y = G Ω (Tropp et al. 2017, Alg. 3).

    Stable form: shift by ν before the Cholesky factorisation of Ωᵀ Y_ν and subtract it from the
    eigenvalues afterwards.
    """
    rank = y.shape[1]
    y64, omega64 = y.double(), omega.double()
    nu = _shift(y)
    y_nu = y64 + nu * omega64
    core = omega64.T @ y_nu
    core = 0.5 * (core + core.T)
    chol = torch.linalg.cholesky(core + 1e-12 * core.diagonal().abs().max() * torch.eye(
        rank, dtype=core.dtype, device=core.device))
    b = torch.linalg.solve_triangular(chol, y_nu.T, upper=False).T  # Y_ν C^{-T}
    u, s, _ = torch.linalg.svd(b, full_matrices=False)
    eigenvalues = (s.square() - nu).clamp_min(0)
    return u.to(y.dtype), eigenvalues.to(y.dtype)


class NystromOperator(LowRankOperator):
    """The Nyström approximation of G(θ) at one θ (its sketch's cost charged once)."""

    def __init__(self, metric: NystromMetric, theta: Tensor, basis: Tensor, eigenvalues: Tensor,
                 build_cost: int) -> None:
        MetricOperator.__init__(self, metric, theta)
        self.basis, self.eigenvalues = basis, eigenvalues
        self.unpaid = build_cost

    @property
    def product_cost(self) -> int:
        return 0  # two thin matrix products

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        return super().solve(g, damping, maxiter, tol).charged(self.charge(0))

    geodesic_force = MetricOperator.geodesic_force  # from derivatives of the re-sketched products


class NystromMetric(Metric):
    """The rank-r Nyström approximation of any metric, re-sketched at every θ.

    Args:
        metric: the metric G to approximate (any: its ``at(θ)`` products are the sketch).
        rank: r, the number of products per point (and the approximation's rank).
        generator: draws the random Ω (once, when the dimension is first seen).
    """

    def __init__(self, metric: Metric, rank: int, generator: torch.Generator | None = None) -> None:
        if rank < 1:
            raise WeightgeoError(f"the Nyström rank must be ≥ 1, got {rank}")
        self.metric, self.rank, self.generator = metric, rank, generator
        self.inputs = metric.inputs
        self._omega: Tensor | None = None

    @property
    def product_cost(self) -> int:  # type: ignore[override]
        """``rank`` products of the inner metric."""
        return self.rank * self.metric.product_cost

    def solve_cost(self, maxiter: int) -> int:
        """An exact solve: the sketch's ``rank`` products, whatever ``maxiter``."""
        return self.product_cost

    def with_inputs(self, inputs: Tensor) -> NystromMetric:
        return self._around(self.metric.with_inputs(inputs))

    def on_local_inputs(self, inputs: Tensor) -> NystromMetric:
        return self._around(self.metric.on_local_inputs(inputs))

    def _around(self, metric: Metric) -> NystromMetric:
        """The same approximation (rank, Ω) of ``metric`` (this metric on other inputs)."""
        other = NystromMetric(metric, self.rank, self.generator)
        other._omega = self._omega
        return other

    def omega(self, theta: Tensor) -> Tensor:
        """The random n×r Ω with orthonormal columns (fixed: the metric is a function of θ)."""
        n = theta.numel()
        if not 1 <= self.rank <= n:
            raise WeightgeoError(f"the Nyström rank must be in [1, {n}], got {self.rank}")
        if self._omega is None or self._omega.shape[0] != n:
            self._omega = random_basis(n, self.rank, self.generator, theta.detach())
        return self._omega.to(device=theta.device, dtype=theta.dtype)

    def at(self, theta: Tensor) -> NystromOperator:
        omega = self.omega(theta)
        inner = self.metric.at(theta.detach())
        y = inner @ omega  # one linearisation shared by the r products
        basis, eigenvalues = nystrom_factors(y, omega)
        return NystromOperator(self, theta, basis, eigenvalues, build_cost=inner.charge(self.rank))

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """Y (ΩᵀY + νI)⁻¹ Yᵀ v with Y = G(θ) Ω: differentiable in θ (Cholesky, no SVD)."""
        omega = self.omega(theta)
        y = torch.stack([self.metric.mvp(theta, column) for column in omega.unbind(1)], dim=1)
        core = omega.T @ y
        core = 0.5 * (core + core.T)
        eye = torch.eye(self.rank, dtype=core.dtype, device=core.device)
        chol = torch.linalg.cholesky(core + _shift(y.detach()).to(core.dtype) * eye)
        return y @ torch.cholesky_solve((y.T @ v)[:, None], chol)[:, 0]

    def frozen_at(self, theta: Tensor) -> LowRankMetric:
        """The approximation at θ, frozen (constant in θ)."""
        operator = self.at(theta)
        return LowRankMetric(operator.basis, operator.eigenvalues, products=self.product_cost)
