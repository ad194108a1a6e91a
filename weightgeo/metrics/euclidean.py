"""Euclidean: G = I, the flat metric of the papers' straight-line baseline."""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.metrics.base import Metric, MetricOperator, Solution


class EuclideanOperator(MetricOperator):
    """I at any θ, with the exact solve (1 + μ)^{-1} g."""

    def __matmul__(self, v: Tensor) -> Tensor:
        return v

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        return Solution(g / (1.0 + damping), torch.zeros((), device=g.device), 0, 0, 0)

    def solve_masked(self, mask: Tensor, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        """(P + μI)⁻¹ P g = P g / (1 + μ): exact."""
        return self.solve(mask * g, damping)

    def geodesic_force(self, v: Tensor) -> tuple[None, Tensor, int]:
        """No force: geodesics are straight lines."""
        return None, v @ v, 0

    def dense(self) -> Tensor:
        return torch.eye(self.shape[0], dtype=self.theta.dtype, device=self.theta.device)

    def diagonal(self) -> Tensor:
        return torch.ones_like(self.theta)


class Euclidean(Metric):
    """The Euclidean metric G = I on weight space (no data needed; products cost nothing)."""

    product_cost = 0

    def segment_energies(self, points: Tensor) -> Tensor:
        return (points[1:] - points[:-1]).square().sum(-1)

    def energy_cost(self, segments: int) -> int:
        return 0

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.linalg.vector_norm(y - x)

    def exponential(self, x: Tensor, u: Tensor) -> Tensor:
        return x + u

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return v

    def at(self, theta: Tensor) -> EuclideanOperator:
        return EuclideanOperator(self, theta)
