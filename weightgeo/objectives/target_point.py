"""TargetPoint: O(θ) = ½||θ − θ_t||², the pull toward a second network (mode connectivity)."""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.objectives.base import Objective


class TargetPoint(Objective):
    """½||θ − θ_t||²; done when ||θ − θ_t|| ≤ ``tol``. Closed form: costs no network pass."""

    cost = 0

    def __init__(self, target: Tensor, tol: float = 1e-6) -> None:
        self.target = target.detach()
        self.tol = tol

    def value(self, theta: Tensor) -> Tensor:
        return 0.5 * (theta - self.target).square().sum()

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        diff = theta.detach() - self.target
        return 0.5 * diff.square().sum(), diff

    def step_limit(self, theta: Tensor, step: Tensor) -> Tensor:
        """The exact line minimiser: t* = (θ_t − θ)·s / ||s||², clipped to [0, 1]."""
        t = ((self.target - theta.detach()) @ step) / (step @ step).clamp_min(1e-30)
        return t.clamp(0.0, 1.0)

    def distance(self, theta: Tensor) -> Tensor:
        return torch.linalg.vector_norm(theta.detach() - self.target)

    def done(self, theta: Tensor) -> bool:
        return bool(self.distance(theta) <= self.tol)  # stop test

    def __repr__(self) -> str:
        return f"TargetPoint(n={self.target.numel()})"
