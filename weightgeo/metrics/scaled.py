"""ScaledMetric: c·G for a metric G and a constant c > 0, with G's products, solves and costs.

Scaling a metric by a constant changes lengths by √c and nothing else: geodesics are the same
curves (the Christoffel symbols of c·G are G's), and the damped solve reduces to G's own,
(c G + μI)⁻¹ g = (1/c) (G + (μ/c) I)⁻¹ g, so an exact solver stays exact and a CG solve
costs what G's costs. Its use: damped natural-gradient SGD with step μ(G + μI)⁻¹∇L is the
Riemannian gradient (G/μ + I)⁻¹∇L under ``ScaledMetric(G, 1/μ)`` with damping 1, which is how a
WeightSpace turns the continual-learning geodesic step into ``geoopt.optim.RiemannianSGD``.
"""

from __future__ import annotations

import math

from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.metrics.base import Metric, MetricOperator, Solution


class ScaledOperator(MetricOperator):
    """c·G(θ) bound to θ: every product and solve is the inner operator's, rescaled."""

    def __init__(self, metric: ScaledMetric, inner: MetricOperator) -> None:
        super().__init__(metric, inner.theta)
        self.inner = inner
        self.factor = metric.factor
        self.inverse = metric.inverse

    @property
    def product_cost(self) -> int:
        return self.inner.product_cost

    def charge(self, products: int) -> int:
        return self.inner.charge(products)

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.factor * (self.inner @ v)

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6) -> Solution:
        """(c G + μI)⁻¹ g = (1/c)(G + (μ/c) I)⁻¹ g: the inner solve, its residual and cost."""
        if damping < 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {damping}")
        solution = self.inner.solve(g, damping * self.inverse, maxiter, tol)
        return Solution(solution.x * self.inverse, solution.residual, solution.iterations, solution.products,
                        solution.cost)

    def solve_masked(self, mask: Tensor, g: Tensor, damping: float = 0.0, maxiter: int = 20,
                     tol: float = 1e-6) -> Solution:
        """(c P G P + μI)⁻¹ P g = (1/c)(P G P + (μ/c) I)⁻¹ P g: the inner masked solve, rescaled."""
        if damping < 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {damping}")
        solution = self.inner.solve_masked(mask, g, damping * self.inverse, maxiter, tol)
        return solution.moved(solution.x * self.inverse)

    def geodesic_force(self, v: Tensor) -> tuple[Tensor | None, Tensor, int]:
        force, speed_sq, cost = self.inner.geodesic_force(v)
        return (None if force is None else self.factor * force), self.factor * speed_sq, cost

    def dense(self) -> Tensor:
        return self.factor * self.inner.dense()

    def diagonal(self) -> Tensor:
        return self.factor * self.inner.diagonal()


class ScaledMetric(Metric):
    """The metric c·G (see the module docstring).

    Args:
        metric: G.
        factor: c, a positive finite number. Solves multiply by 1/c, computed once, so
            ``ScaledMetric(G, 1 / mu)`` reproduces μ (G + μI)⁻¹ g to the last bit whenever
            1/(1/μ) == μ in floating point (true of 0.1, 1e-3 and most decimal values).

    Raises:
        WeightgeoError: ``factor`` is not a positive finite number.
    """

    def __init__(self, metric: Metric, factor: float) -> None:
        if isinstance(factor, bool) or not isinstance(factor, int | float) or not (
                math.isfinite(factor) and factor > 0):
            raise WeightgeoError(f"a metric's scale factor must be a positive number, got {factor!r}")
        self.metric = metric
        self.factor = float(factor)
        self.inverse = 1.0 / self.factor

    @property
    def product_cost(self) -> int:  # type: ignore[override]
        return self.metric.product_cost

    @property
    def inputs(self) -> Tensor | None:  # type: ignore[override]
        return self.metric.inputs

    def higher_derivatives(self):
        return self.metric.higher_derivatives()

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.factor * self.metric.mvp(theta, v)

    def at(self, theta: Tensor) -> ScaledOperator:
        return ScaledOperator(self, self.metric.at(theta))

    def with_inputs(self, inputs: Tensor) -> ScaledMetric:
        return ScaledMetric(self.metric.with_inputs(inputs), self.factor)

    def on_local_inputs(self, inputs: Tensor) -> ScaledMetric:
        return ScaledMetric(self.metric.on_local_inputs(inputs), self.factor)

    def segment_energies(self, points: Tensor) -> Tensor:
        return self.factor * self.metric.segment_energies(points)

    def energy_cost(self, segments: int) -> int:
        return self.metric.energy_cost(segments)

    def distance(self, x: Tensor, y: Tensor) -> Tensor | None:
        d = self.metric.distance(x, y)
        return None if d is None else math.sqrt(self.factor) * d

    def exponential(self, x: Tensor, u: Tensor) -> Tensor | None:
        return self.metric.exponential(x, u)  # c·G has G's geodesics, parametrised alike

    def __repr__(self) -> str:
        return f"{self.factor:g}·{self.metric!r}"
