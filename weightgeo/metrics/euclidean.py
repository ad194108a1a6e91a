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
        return Solution(g / (1.0 + damping), torch.zeros((), device=g.device), 0, 0)

    def dense(self) -> Tensor:
        return torch.eye(self.shape[0], dtype=self.theta.dtype, device=self.theta.device)

    def diagonal(self) -> Tensor:
        return torch.ones_like(self.theta)


class Euclidean(Metric):
    """The Euclidean metric G = I on weight space (no data needed)."""

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return v

    def at(self, theta: Tensor) -> EuclideanOperator:
        return EuclideanOperator(self, theta)
