"""shoot: geodesic shooting, the exponential map exp_θ(v) of a (damped) metric.

The geodesic equation of the damped metric G(θ) + λI is

    (G + λI) θ'' = −F(θ, θ'),

with F the metric's geodesic force (:meth:`~weightgeo.metrics.Metric.geodesic_force`): for a
pull-back metric G = (1/B) Jᵀ H J it is (1/B) Jᵀ ( H d²f[θ', θ'] + ½ dH[Jθ'] Jθ' ), a jvp of a
jvp; any other metric gets it from derivatives of its products. θ'' is one conjugate-gradient
solve per evaluation, on products that share the linearisation at θ. The equation is integrated
from t = 0 to 1 (classical Runge–Kutta by default), so ``shoot(space, θ, v).end`` is exp_θ(v).
Along a geodesic the damped speed √(θ'ᵀ(G + λI)θ') is constant; each record holds it
(``damped_speed``) and the undamped ``speed`` √(θ'ᵀGθ').

The step rule is :class:`GeodesicStep`; the loop and Path writing are the tracer driver's.
"""

from __future__ import annotations

import os
from typing import Literal

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.paths.driver import Observation, Proposal, StepRule, run_tracer
from weightgeo.paths.path import Path

INTEGRATORS = ("rk4", "heun")


class GeodesicStep(StepRule):
    """One integration step of the geodesic equation over t ∈ [0, 1] in ``steps`` steps."""

    name = "shoot"

    def __init__(self, space: WeightSpace, velocity: Tensor, steps: int, *, damping: float, maxiter: int,
                 tol: float, integrator: str) -> None:
        if integrator not in INTEGRATORS:
            raise WeightgeoError(f"integrator must be one of {', '.join(INTEGRATORS)}, got {integrator!r}")
        self.space, self.steps, self.integrator = space, steps, integrator
        self.damping, self.maxiter, self.tol = damping, maxiter, tol
        self.h = 1.0 / steps
        self.velocity = velocity.detach()
        self.taken = 0
        self.cache: tuple[Tensor, Tensor, Tensor, int] | None = None  # (θ, a, vᵀGv, cost) at the last point

    @property
    def meta(self) -> dict:
        return {"tracer": self.name, "metric": type(self.space.metric).__name__, "steps": self.steps,
                "damping": self.damping, "integrator": self.integrator}

    def acceleration(self, theta: Tensor, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """(θ'', vᵀGv, its cost in gradient evaluations) at (θ, v = θ')."""
        space = self.space
        v = space.proju(theta, v)
        operator = space.operator(theta)  # one linearisation for the force and the solve
        force, speed_sq, cost = operator.geodesic_force(v)
        if force is None:  # a flat metric: straight lines
            return torch.zeros_like(v), speed_sq, cost
        solution = operator.solve(space.proju(theta, force), self.damping, self.maxiter, self.tol)
        return space.proju(theta, -solution.x), speed_sq, cost + solution.cost

    def _speeds(self, speed_sq: Tensor, v: Tensor) -> dict:
        return {"speed": speed_sq.clamp_min(0).sqrt(),
                "damped_speed": (speed_sq + self.damping * (v @ v)).clamp_min(0).sqrt()}

    def observe(self, point: Tensor) -> Observation:
        if self.cache is not None and self.cache[0] is point:
            _, a, speed_sq, cost = self.cache
            cost = 0  # paid by the proposal that computed it
        else:
            a, speed_sq, cost = self.acceleration(point, self.velocity)
        self.cache = (point, a, speed_sq, 0)
        speeds = self._speeds(speed_sq, self.velocity)
        return Observation(speeds["damped_speed"], cost, a, record=speeds)

    def done(self, point: Tensor, observation: Observation) -> bool:
        return self.taken >= self.steps

    def step_cost(self) -> int:
        solves = 4 if self.integrator == "rk4" else 2
        return solves * (self.space.solve_cost(self.maxiter) + 3)

    def propose(self, point: Tensor, observation: Observation) -> Proposal:
        theta, v, a, h = point, self.velocity, observation.gradient, self.h
        cost = 0
        if self.integrator == "rk4":
            v2 = v + 0.5 * h * a
            a2, _, c2 = self.acceleration(theta + 0.5 * h * v, v2)
            v3 = v + 0.5 * h * a2
            a3, _, c3 = self.acceleration(theta + 0.5 * h * v2, v3)
            v4 = v + h * a3
            a4, _, c4 = self.acceleration(theta + h * v3, v4)
            new_theta = theta + h / 6 * (v + 2 * v2 + 2 * v3 + v4)
            new_v = v + h / 6 * (a + 2 * a2 + 2 * a3 + a4)
            cost = c2 + c3 + c4
        else:
            a2, _, cost = self.acceleration(theta + h * v, v + h * a)
            new_theta = theta + 0.5 * h * (v + (v + h * a))
            new_v = v + 0.5 * h * (a + a2)
        new_theta = self.space.projx(new_theta)
        new_v = self.space.proju(new_theta, new_v)
        new_a, speed_sq, c_new = self.acceleration(new_theta, new_v)
        damped = observation.record["damped_speed"]
        new_damped = self._speeds(speed_sq, new_v)["damped_speed"]
        self.cache = (new_theta, new_a, speed_sq, 0)
        self.velocity = new_v
        self.taken += 1
        record = {"metric_length": 0.5 * h * (damped + new_damped),
                  "euclidean_length": torch.linalg.vector_norm(new_theta - theta)}
        return Proposal(new_theta, cost + c_new, record, gradient=new_v)

    def state_dict(self) -> dict:
        return {"velocity": self.velocity, "taken": self.taken}

    def load_state_dict(self, state: dict) -> None:
        self.velocity, self.taken, self.cache = state["velocity"], int(state["taken"]), None


def shoot(
    space: WeightSpace,
    theta: Tensor,
    velocity: Tensor,
    steps: int = 10,
    *,
    damping: float | None = None,
    cg_maxiter: int | None = None,
    cg_tol: float | None = None,
    integrator: Literal["rk4", "heun"] = "rk4",
    directory: str | os.PathLike | None = None,
    save_every: int | None = None,
    progress: bool = False,
) -> Path:
    """Integrate the geodesic γ with γ(0) = θ, γ'(0) = v over t ∈ [0, 1]; ``.end`` is exp_θ(v).

    Args:
        space: the weight space; its metric (any metric: the geodesic force comes from its
            products), damping λ and mask define the geodesic equation.
        theta, velocity: the starting point and velocity.
        steps: integration steps of length 1/steps.
        damping: λ (default: the space's).
        cg_maxiter, cg_tol: the solve of θ'' (default: the space's).
        integrator: "rk4" (classical Runge–Kutta, 4 solves a step) or "heun" (2 solves).
        directory, save_every: stream the path (default: save only the start and the end).

    Returns:
        A :class:`Path` with one point per step; records hold ``speed`` √(θ'ᵀGθ'),
        ``damped_speed`` √(θ'ᵀ(G+λI)θ'), the segment's metric length (trapezoid rule on the
        damped speed) and Euclidean length, and the evaluations spent (``grad_evals``).
    """
    if not isinstance(steps, int) or steps < 1:
        raise WeightgeoError(f"shoot needs at least one step, got steps={steps!r}")
    space.check(theta)
    if velocity.shape != theta.shape:
        raise WeightgeoError(
            f"the velocity must have the shape of θ {tuple(theta.shape)}, got {tuple(velocity.shape)}"
        )
    mu = space.damping if damping is None else float(damping)
    if not mu >= 0:
        raise WeightgeoError(f"damping must be ≥ 0, got {mu}")
    theta = space.projx(theta.detach())
    rule = GeodesicStep(space, space.proju(theta, velocity.detach()), steps, damping=mu,
                        maxiter=space.cg_maxiter if cg_maxiter is None else cg_maxiter,
                        tol=space.cg_tol if cg_tol is None else cg_tol, integrator=integrator)
    path = Path(theta, directory=directory, save_every=save_every or steps, meta=rule.meta)
    path = run_tracer(rule, path, max_steps=steps, finish=False, progress=progress)
    path.meta["final_velocity_norm"] = float(torch.linalg.vector_norm(rule.velocity))  # logging
    return path.finish(path.last_stop)
