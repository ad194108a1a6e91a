"""Objective strategies: the second goal O(θ) that a tracer moves toward.

An objective gives ``value(θ)``, ``grad(θ)`` and ``done(θ)``; ``cost`` is the number of
network gradient evaluations one ``grad`` call spends (0 for closed forms such as a
distance to a point, 1 for a loss on a batch), so tracers can report compute honestly.
Objectives combine linearly: ``0.5 * a + b`` is a :class:`Sum`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor


class Objective(ABC):
    """A differentiable objective O(θ) on weight space, to be decreased."""

    cost: int = 0

    @abstractmethod
    def value(self, theta: Tensor) -> Tensor:
        """O(θ) as a 0-dim tensor (differentiable in θ unless ``grad`` is overridden)."""

    def grad(self, theta: Tensor) -> Tensor:
        """∇O(θ) (by autograd through :meth:`value` unless overridden)."""
        return self.value_and_grad(theta)[1]

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """(O(θ), ∇O(θ)) in one pass."""
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            value = self.value(t)
            (g,) = torch.autograd.grad(value, t)
        return value.detach(), g

    def done(self, theta: Tensor) -> bool:
        """Whether the goal is reached (a stop test: may read one value from the device)."""
        return False

    def report(self, theta: Tensor) -> dict[str, float]:
        """Scores worth reporting at θ beside the objective (e.g. an accuracy); logging only."""
        return {}

    def step_limit(self, theta: Tensor, step: Tensor) -> Tensor | None:
        """A factor in [0, 1] to shorten ``step`` so it does not overshoot (None: no limit).

        Objectives with a known minimiser along a line (a quadratic) override this, so
        a fixed-length tracer lands on the goal instead of oscillating around it.
        """
        return None

    def __add__(self, other: Objective) -> Sum:
        if not isinstance(other, Objective):
            return NotImplemented
        return Sum([(1.0, self), (1.0, other)])

    def __mul__(self, weight: float) -> Sum:
        if not isinstance(weight, int | float):
            return NotImplemented
        return Sum([(float(weight), self)])

    __rmul__ = __mul__


class Sum(Objective):
    """Σ_i w_i O_i(θ); done when every term is done."""

    def __init__(self, terms: list[tuple[float, Objective]]) -> None:
        flat: list[tuple[float, Objective]] = []
        for w, term in terms:
            if isinstance(term, Sum):
                flat.extend((w * w2, t2) for w2, t2 in term.terms)
            else:
                flat.append((w, term))
        self.terms = flat

    @property
    def cost(self) -> int:  # type: ignore[override]
        return sum(term.cost for _, term in self.terms)

    def value(self, theta: Tensor) -> Tensor:
        return sum(w * term.value(theta) for w, term in self.terms)

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        value = torch.zeros((), dtype=theta.dtype, device=theta.device)
        grad = torch.zeros_like(theta)
        for w, term in self.terms:
            v, g = term.value_and_grad(theta)
            value = value + w * v
            grad = grad + w * g
        return value, grad

    def done(self, theta: Tensor) -> bool:
        return all(term.done(theta) for _, term in self.terms)

    def __repr__(self) -> str:
        return " + ".join(f"{w:g}·{term!r}" for w, term in self.terms)
