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
        """The exact line minimiser: t* = (θ_t − θ)·s / ||s||², clipped to [0, 1].

        Computed on s scaled by its largest entry m (s = m u, ||u||_∞ = 1): t* = (θ_t − θ)·u /
        (m ||u||²), so a huge step (||s||² beyond the float range) still lands on the line
        minimiser instead of overflowing to a factor of 0, and a tiny one does not underflow.
        A step with a non-finite entry gives a non-finite factor (the tracer then refuses it).
        """
        tiny = torch.finfo(step.dtype).tiny
        scale = step.abs().amax()
        unit = step / scale.clamp_min(tiny)
        t = ((self.target - theta.detach()) @ unit) / (scale * (unit @ unit)).clamp_min(tiny)
        return t.clamp(0.0, 1.0)

    def distance(self, theta: Tensor) -> Tensor:
        return torch.linalg.vector_norm(theta.detach() - self.target)

    def done(self, theta: Tensor) -> bool:
        return bool(self.distance(theta) <= self.tol)  # stop test

    def __repr__(self) -> str:
        return f"TargetPoint(n={self.target.numel()})"
