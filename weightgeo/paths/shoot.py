"""shoot: geodesic shooting, the exponential map exp_θ(v) of a (damped) pull-back metric.

For G(θ) = (1/B) Jᵀ H(f) J (J the Jacobian of the logits f(x; θ), H the output metric) with
damping λ, the geodesic equation of G + λI is

    (G + λI) θ'' = −(1/B) Jᵀ ( H d²f[θ', θ'] + ½ dH[Jθ'] Jθ' ),

where d²f[θ', θ'] is the second directional derivative of the logits (a jvp of a jvp) and
the last term vanishes for the output metric (H = I); for the Fisher metric H is the Hessian
of log-sum-exp, for which this form is exact. θ'' is one conjugate-gradient solve per
evaluation, on products that share the linearisation at θ. The equation is integrated
from t = 0 to 1 (classical Runge–Kutta by default), so ``shoot(space, θ, v).end`` is
exp_θ(v). Along a geodesic the damped speed √(θ'ᵀ(G + λI)θ') is constant; each record holds
it (``damped_speed``) and the undamped ``speed`` √(θ'ᵀGθ').
"""

from __future__ import annotations

import os

import torch
from torch import Tensor
from torch.func import jvp

from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.pullback import PullbackMetric
from weightgeo.paths.path import Path
from weightgeo.progress import Progress

INTEGRATORS = ("rk4", "heun")


class _Geodesic:
    """The right-hand side (θ', θ'') of the geodesic equation, with its cost counted."""

    def __init__(self, space: WeightSpace, damping: float, maxiter: int, tol: float) -> None:
        self.space = space
        self.damping = damping
        self.maxiter = maxiter
        self.tol = tol
        self.products = 0
        metric = space.metric
        self.flat = isinstance(metric, Euclidean)
        if not self.flat and not isinstance(metric, PullbackMetric):
            raise WeightgeoError(
                f"shoot integrates the geodesics of pull-back metrics (output, fisher) and of the "
                f"Euclidean metric, not of {type(metric).__name__}"
            )

    def acceleration(self, theta: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """(θ'', vᵀGv) at (θ, v = θ')."""
        space = self.space
        v = space.proju(theta, v)
        if self.flat:
            return torch.zeros_like(v), v @ v
        metric: PullbackMetric = space.metric  # type: ignore[assignment]
        x = metric.inputs

        def f(t: Tensor) -> Tensor:
            return metric.model(t, x)

        def directional(t: Tensor) -> Tensor:
            return jvp(f, (t,), (v,))[1]

        logits = f(theta.detach())
        # d²f[v, v] as the jvp of the jvp; its primal output is J v.
        jv, d2 = jvp(directional, (theta.detach(),), (v,))
        hjv = metric.output_product(logits, jv)
        _, dh = jvp(lambda out: metric.output_product(out, jv), (logits,), (jv,))
        batch = jv.shape[0]
        operator = space.operator(theta)
        inner = getattr(operator, "inner_operator", operator)
        rhs = -inner.vjp(metric.output_product(logits, d2) + 0.5 * dh) / batch
        solution = operator.solve(space.proju(theta, rhs), self.damping, self.maxiter, self.tol)
        self.products += solution.products + 3  # the jvp of a jvp (≈2) and one vjp
        speed_sq = (jv * hjv).sum() / batch
        return space.proju(theta, solution.x), speed_sq


def shoot(
    space: WeightSpace,
    theta: Tensor,
    velocity: Tensor,
    steps: int = 10,
    *,
    damping: float | None = None,
    cg_maxiter: int | None = None,
    cg_tol: float | None = None,
    integrator: str = "rk4",
    directory: str | os.PathLike | None = None,
    save_every: int | None = None,
    progress: bool = False,
) -> Path:
    """Integrate the geodesic γ with γ(0) = θ, γ'(0) = v over t ∈ [0, 1]; ``.end`` is exp_θ(v).

    Args:
        space: the weight space; its metric (Euclidean or a pull-back metric on its batch of
            inputs), damping λ and mask define the geodesic equation.
        theta, velocity: the starting point and velocity.
        steps: integration steps of length 1/steps.
        damping: λ (default: the space's).
        cg_maxiter, cg_tol: the solve of θ'' (default: the space's).
        integrator: "rk4" (classical Runge–Kutta, 4 solves a step) or "heun" (2 solves).
        directory, save_every: stream the path (default: save only the start and the end).

    Returns:
        A :class:`Path` with one point per step; records hold ``speed`` √(θ'ᵀGθ'),
        ``damped_speed`` √(θ'ᵀ(G+λI)θ'), the segment's metric length (trapezoid rule on the
        damped speed) and Euclidean length, and the products spent (``grad_evals``).
    """
    if steps < 1:
        raise WeightgeoError(f"shoot needs at least one step, got steps={steps}")
    if integrator not in INTEGRATORS:
        raise WeightgeoError(f"integrator must be one of {', '.join(INTEGRATORS)}, got {integrator!r}")
    space.check(theta)
    if velocity.shape != theta.shape:
        raise WeightgeoError(
            f"the velocity must have the shape of θ {tuple(theta.shape)}, got {tuple(velocity.shape)}"
        )
    mu = space.damping if damping is None else float(damping)
    if mu < 0:
        raise WeightgeoError(f"damping must be ≥ 0, got {mu}")
    rhs = _Geodesic(
        space, mu, space.cg_maxiter if cg_maxiter is None else cg_maxiter,
        space.cg_tol if cg_tol is None else cg_tol,
    )
    h = 1.0 / steps
    theta = space.projx(theta.detach())
    v = space.proju(theta, velocity.detach())
    path = Path(
        theta, directory=directory, save_every=save_every or steps,
        meta={"tracer": "shoot", "metric": type(space.metric).__name__, "steps": steps,
              "damping": mu, "integrator": integrator},
    )
    a, speed_sq = rhs.acceleration(theta, v)

    def speeds(sq: Tensor, vel: Tensor) -> tuple[Tensor, Tensor]:
        return sq.clamp_min(0).sqrt(), (sq + mu * (vel @ vel)).clamp_min(0).sqrt()

    speed, damped = speeds(speed_sq, v)
    path.append(theta, metric_length=0.0, euclidean_length=0.0, speed=speed, damped_speed=damped,
                grad_evals=rhs.products)
    with Progress(steps, "shoot", enabled=progress) as bar:
        for _ in range(steps):
            if integrator == "rk4":
                a1 = a
                a2, _ = rhs.acceleration(theta + 0.5 * h * v, v + 0.5 * h * a1)
                v2 = v + 0.5 * h * a1
                v3 = v + 0.5 * h * a2
                a3, _ = rhs.acceleration(theta + 0.5 * h * v2, v3)
                v4 = v + h * a3
                a4, _ = rhs.acceleration(theta + h * v3, v4)
                new_theta = theta + h / 6 * (v + 2 * v2 + 2 * v3 + v4)
                new_v = v + h / 6 * (a1 + 2 * a2 + 2 * a3 + a4)
            else:
                a2, _ = rhs.acceleration(theta + h * v, v + h * a)
                new_theta = theta + 0.5 * h * (v + (v + h * a))
                new_v = v + 0.5 * h * (a + a2)
            new_theta = space.projx(new_theta)
            new_v = space.proju(new_theta, new_v)
            a, speed_sq = rhs.acceleration(new_theta, new_v)
            new_speed, new_damped = speeds(speed_sq, new_v)
            if not bool(torch.isfinite(new_theta).all()):  # stop test
                return path.finish("non-finite")
            path.append(
                new_theta, metric_length=0.5 * h * (damped + new_damped),
                euclidean_length=torch.linalg.vector_norm(new_theta - theta),
                speed=new_speed, damped_speed=new_damped, grad_evals=rhs.products,
            )
            theta, v, speed, damped = new_theta, new_v, new_speed, new_damped
            bar.update(1)
    path.meta["final_velocity_norm"] = float(torch.linalg.vector_norm(v))  # logging
    return path.finish("done")
