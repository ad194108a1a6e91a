"""The Metric base class: a Riemannian metric G(θ) on weight space, given by G v.

A subclass writes one method, the metric-vector product ``mvp(theta, v) = G(θ) v``.
Everything else is derived here once, and every tracer uses only this contract:

- inner products, norms, the damped solve (G + μI)^{-1} g by conjugate gradients, the dense
  matrix (for tests and small models) and its diagonal;
- the discrete path energy that ``relax`` minimises, :meth:`Metric.segment_energies`:
  Σ_k Δθ_kᵀ G(θ̄_k) Δθ_k at the segments' midpoints, from products;
- the geodesic force that ``shoot``/``expmap`` integrate, :meth:`MetricOperator.geodesic_force`:
  F(θ, v) = dG[v] v − ½ ∇_θ(vᵀ G(θ) v), so that (G + λI) θ'' = −F is the geodesic equation
  (Christoffel symbols from derivatives of the product);
- the cost of a product in gradient evaluations, :attr:`Metric.product_cost` (1 by default:
  a product that runs the network; 0 for a metric that never does), which budgets charge.

Subclasses override what they know better: the pull-back metrics bind one linearisation to θ
(:meth:`Metric.at`) and give the energy and the force in closed form; metrics with an exact
inverse (diagonal, Kronecker-factored, low-rank) override :meth:`MetricOperator.solve`.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import NamedTuple

import torch
from torch import Tensor

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.kernels import higher_derivatives
from weightgeo.metrics.derivatives import explain_missing_derivatives


class Solution(NamedTuple):
    """The result of a damped solve (G + μI) x = g.

    ``residual`` is the relative residual ||g − (G + μI) x|| / ||g|| (a 0-dim tensor,
    left on the device); ``products`` the number of metric-vector products spent; ``cost``
    what they cost in gradient evaluations (products × the metric's product cost, plus any
    one-off cost of building the operator, paid by its first solve).
    """

    x: Tensor
    residual: Tensor
    iterations: int
    products: int
    cost: int = 0

    def charged(self, cost: int) -> Solution:
        """The same solution with its cost in gradient evaluations."""
        return Solution(self.x, self.residual, self.iterations, self.products, cost)

    def moved(self, x: Tensor) -> Solution:
        """The same solve with another x (e.g. masked)."""
        return Solution(x, self.residual, self.iterations, self.products, self.cost)


def conjugate_gradient(
    matvec, b: Tensor, maxiter: int = 20, tol: float = 1e-6, x0: Tensor | None = None
) -> Solution:
    """Solve A x = b for symmetric positive definite A given by ``matvec`` (Hestenes–Stiefel CG).

    Stops after ``maxiter`` products or when ||r|| ≤ tol·||b||. The stop test reads one
    scalar per iteration from the device (the only host sync in the loop).
    """
    if maxiter < 1:
        raise WeightgeoError(f"CG needs at least one iteration, got maxiter={maxiter}")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - matvec(x) if x0 is not None else b.clone()
    products = 1 if x0 is not None else 0
    p = r.clone()
    rs = r @ r
    b_norm = torch.linalg.vector_norm(b).clamp_min(torch.finfo(b.dtype).tiny)
    threshold = (tol * b_norm) ** 2
    iterations = 0
    for iterations in range(1, maxiter + 1):  # noqa: B007 - the count is returned
        if bool(rs <= threshold):  # stop test: one host sync per iteration
            iterations -= 1
            break
        ap = matvec(p)
        products += 1
        curvature = p @ ap
        alpha = rs / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rs_new = r @ r
        p = r + (rs_new / rs) * p
        rs = rs_new
    return Solution(x, torch.sqrt(rs) / b_norm, iterations, products)


class MetricOperator:
    """G(θ) bound to one point θ: supports ``G @ v``, ``solve`` and ``dense``.

    The base implementation calls ``metric.mvp(theta, v)`` for every product;
    subclasses of :class:`Metric` return operators that reuse the forward pass.
    """

    build_cost: int = 0
    """Gradient evaluations spent building the operator at θ (charged to its first solve)."""

    def __init__(self, metric: Metric, theta: Tensor) -> None:
        self.metric = metric
        self.theta = theta
        self.unpaid = self.build_cost

    @property
    def product_cost(self) -> int:
        """Gradient evaluations per product ``G @ v`` (the metric's)."""
        return self.metric.product_cost

    def charge(self, products: int) -> int:
        """The cost of ``products`` products, plus the build cost the first time it is asked."""
        cost, self.unpaid = products * self.product_cost + self.unpaid, 0
        return cost

    @property
    def shape(self) -> tuple[int, int]:
        n = self.theta.numel()
        return (n, n)

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return torch.stack([self @ column for column in v.unbind(1)], dim=1)
        with self.metric.higher_derivatives():  # a user's mvp may differentiate the network
            return self.metric.mvp(self.theta, v)

    def inner(self, u: Tensor, v: Tensor | None = None) -> Tensor:
        """g_θ(u, v) = uᵀ G v (v defaults to u)."""
        v = u if v is None else v
        return u @ (self @ v)

    def solve(
        self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6
    ) -> Solution:
        """(G + damping·I)^{-1} g by conjugate gradients on products with this operator."""
        if damping < 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {damping}")
        solution = conjugate_gradient(lambda v: self @ v + damping * v, g, maxiter=maxiter, tol=tol)
        return solution.charged(self.charge(solution.products))

    def solve_masked(
        self, mask: Tensor, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6
    ) -> Solution:
        """(P G P + μI)⁻¹ P g with P = diag(mask): the solve on the subspace of the unmasked
        coordinates (CG on masked products; metrics whose solve commutes with masks — diagonal
        ones — override it with their exact form)."""
        if damping < 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {damping}")
        solution = conjugate_gradient(lambda v: mask * (self @ (mask * v)) + damping * v, mask * g,
                                      maxiter=maxiter, tol=tol)
        return solution.charged(self.charge(solution.products))

    def geodesic_force(self, v: Tensor) -> tuple[Tensor | None, Tensor, int]:
        """(F(θ, v), vᵀG(θ)v, cost): the force of the geodesic equation (G + λI)θ'' = −F at (θ, v = θ').

        F = dG[v] v − ½ ∇_θ(vᵀ G(θ) v) from derivatives of the product (``torch.func``), so any
        metric whose ``mvp`` is differentiable in θ has geodesics. None means F = 0 (a metric
        that does not depend on θ), so geodesics are straight lines.
        """
        metric, theta = self.metric, self.theta.detach()
        v = v.detach()
        with metric.higher_derivatives(), explain_missing_derivatives(
                f"the geodesic force of {type(metric).__name__} (shoot, expmap) needs",
                "trace with traverse or relax instead"):
            gv, dgv = torch.func.jvp(lambda t: metric.mvp(t, v), (theta,), (v,))
            grad_quadratic = torch.func.grad(lambda t: v @ metric.mvp(t, v))(theta)
        return dgv - 0.5 * grad_quadratic, v @ gv, 3 * self.product_cost

    def dense(self) -> Tensor:
        """The n×n matrix G(θ), one product per column (small models only)."""
        eye = torch.eye(self.shape[0], dtype=self.theta.dtype, device=self.theta.device)
        return torch.stack([self @ e for e in eye.unbind(0)], dim=1)

    def diagonal(self) -> Tensor:
        """diag G(θ) (from :meth:`dense` unless a subclass knows better)."""
        return torch.diagonal(self.dense())


class Metric(ABC):
    """A Riemannian metric on the weight space of one model.

    Subclass and implement :meth:`mvp`. Metrics that depend on data keep their
    inputs in ``self.inputs``; :meth:`with_inputs` returns a copy on a new batch
    (a stochastic estimate of the same metric) without rebuilding anything.
    Metrics average over the batch (mean over examples).
    """

    inputs: Tensor | None = None
    product_cost: int = 1
    """Gradient evaluations one product costs (1: it runs the network once; 0: it never does)."""

    @abstractmethod
    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """The metric-vector product G(θ) v."""

    sharded: bool = False
    """Whether ``inputs`` are already this rank's shard (:meth:`on_local_inputs`)."""

    @property
    def local_inputs(self) -> Tensor | None:
        """This rank's shard of ``inputs`` under ``torchrun`` (all of them in one process): the
        data-dependent metrics compute on it and average their results over the ranks."""
        if self.inputs is None or self.sharded:
            return self.inputs
        return distributed.shard(self.inputs)

    def on_local_inputs(self, inputs: Tensor) -> Metric:
        """The same metric on ``inputs`` that are already this rank's shard of a batch (a loop that
        shards its batches itself, as :func:`~weightgeo.optim.fit` does): they are not sharded again."""
        other = self.with_inputs(inputs)
        if other.inputs is not None:
            other.sharded = True
        return other

    def segment_energies(self, points: Tensor) -> Tensor:
        """d²(θ_k, θ_{k+1}) for consecutive rows of ``points`` (N×n): N − 1 values, differentiable.

        By default Δθ_kᵀ G(θ̄_k) Δθ_k at the midpoint θ̄_k (the midpoint rule of the length of a
        segment, exact to second order); pull-back metrics override it with a distance between
        the network's outputs that needs no Jacobian.
        """
        diff = points[1:] - points[:-1]
        middle = 0.5 * (points[1:] + points[:-1])
        with self.higher_derivatives():  # relax differentiates the products in θ
            pairs = zip(diff.unbind(0), middle.unbind(0), strict=True)
            return torch.stack([d @ self.mvp(m, d) for d, m in pairs])

    def higher_derivatives(self):
        """The context in which this metric's products are differentiated (forward mode, second
        order): the network's own (``FunctionalModel.higher_derivatives``) when the metric has a
        ``model``, else the math attention kernel for any network its ``mvp`` runs."""
        model = getattr(self, "model", None)
        return model.higher_derivatives() if hasattr(model, "higher_derivatives") else higher_derivatives()

    def solve_cost(self, maxiter: int) -> int:
        """The most gradient evaluations one damped solve at a new point may spend (a budget
        test): ``maxiter`` CG products by default; a metric with an exact solve charges its build."""
        return maxiter * self.product_cost

    def energy_cost(self, segments: int) -> int:
        """Gradient evaluations of one :meth:`segment_energies` call over ``segments`` segments
        and its backward pass (relax's budget)."""
        return 2 * segments * self.product_cost

    def distance(self, x: Tensor, y: Tensor) -> Tensor | None:
        """The geodesic distance in closed form, or None where there is none."""
        return None

    def exponential(self, x: Tensor, u: Tensor) -> Tensor | None:
        """exp_x(u) in closed form, or None where the geodesic equation must be integrated."""
        return None

    def at(self, theta: Tensor) -> MetricOperator:
        """G bound to θ; repeated products reuse what does not depend on v."""
        return MetricOperator(self, theta)

    def inner(self, theta: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        """g_θ(u, v) = uᵀ G(θ) v (v defaults to u)."""
        return self.at(theta).inner(u, v)

    def norm(self, theta: Tensor, u: Tensor) -> Tensor:
        """√(uᵀ G(θ) u)."""
        return torch.sqrt(self.inner(theta, u).clamp_min(0))

    def solve(
        self,
        theta: Tensor,
        g: Tensor,
        damping: float = 0.0,
        maxiter: int = 20,
        tol: float = 1e-6,
    ) -> Solution:
        """(G(θ) + damping·I)^{-1} g: CG on products at θ, or exact where a subclass can."""
        return self.at(theta).solve(g, damping=damping, maxiter=maxiter, tol=tol)

    def dense(self, theta: Tensor) -> Tensor:
        """The n×n matrix G(θ) (small models and tests only)."""
        return self.at(theta).dense()

    def output_geodesic(self, start: Tensor, end: Tensor, t: Tensor) -> Tensor | None:
        """The outputs along the geodesic of the output space's metric from the outputs ``start``
        to ``end`` (B×C logits each) at the fractions ``t`` (K values): K×B×C logits, for a metric
        pulled back from the outputs whose output-space geodesics are known in closed form; None
        for any other metric (the default).

        A discrete geodesic under a pull-back metric maps onto this curve wherever the network
        can realise it, which ``relax(objective="image")`` fits directly.
        """
        return None

    def freeze(self, theta: Tensor, batch_size: int) -> tuple[Metric, int] | None:
        """G(θ) frozen exactly as a constant metric, and its cost in gradient evaluations of
        ``batch_size`` examples, where the metric has a cheap exact frozen form (the diagonal
        Fisher: its diagonal); None by default, and a solver then factorises G (K-FAC, Nyström).

        Args:
            theta: the point at which G is frozen.
            batch_size: the examples one gradient evaluation covers (the cost's unit).
        """
        return None

    def with_inputs(self, inputs: Tensor) -> Metric:
        """The same metric evaluated on another batch of inputs."""
        if self.inputs is None:
            return self
        other = copy.copy(self)
        other.inputs, other.sharded = inputs, False
        return other

    def __repr__(self) -> str:
        batch = "" if self.inputs is None else f"(batch={len(self.inputs)})"
        return f"{type(self).__name__}{batch}"


def has_output_geodesic(metric: Metric) -> bool:
    """Whether the metric overrides :meth:`Metric.output_geodesic` (a pull-back metric with a
    closed-form output geodesic: output, fisher, or a user's)."""
    return type(metric).output_geodesic is not Metric.output_geodesic


class ConstantMetric(Metric):
    """A metric that does not depend on θ (a frozen factorisation, a fixed matrix): the space is
    flat, its geodesics are straight lines, d(x, y) = √((y − x)ᵀ G (y − x)) and exp_x(u) = x + u,
    and its energies never run the network (cost 0)."""

    def distance(self, x: Tensor, y: Tensor) -> Tensor:
        return torch.sqrt(((y - x) @ self.mvp(x, y - x)).clamp_min(0))

    def exponential(self, x: Tensor, u: Tensor) -> Tensor:
        return x + u

    def energy_cost(self, segments: int) -> int:
        return 0
