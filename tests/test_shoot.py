"""shoot: geodesics of the Euclidean and output metrics, and WeightSpace.expmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import grad, jacrev, jvp

from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import DiagonalFisher, Euclidean, FisherMetric, Metric, OutputMetric
from weightgeo.paths import shoot


def _tanh_mlp(seed: int = 0) -> tuple[FunctionalModel, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(64, 4, dtype=torch.float64)
    return FunctionalModel(model), x


def test_euclidean_geodesic_is_a_straight_line_at_constant_speed():
    fm, _ = _tanh_mlp()
    space = WeightSpace(fm, Euclidean())
    theta = fm.theta()
    v = torch.randn(fm.n, dtype=torch.float64)
    path = shoot(space, theta, v, steps=10, save_every=1)
    points = torch.stack([w for _, w in path.waypoints()])
    t = torch.linspace(0, 1, 11, dtype=torch.float64)[:, None]
    torch.testing.assert_close(points, theta + t * v)
    speeds = torch.tensor(path.column("speed"))
    torch.testing.assert_close(speeds, torch.full_like(speeds, float(v.norm())))
    assert path.euclidean_length == pytest.approx(float(v.norm()), rel=1e-12)
    torch.testing.assert_close(space.expmap(theta, v), theta + v)


@pytest.mark.parametrize(
    ("metric_cls", "damping", "column"),
    [(OutputMetric, 1e-6, "speed"), (FisherMetric, 1e-3, "damped_speed")],
)
def test_pullback_geodesic_keeps_metric_speed_constant(metric_cls, damping, column):
    # Float64 tanh MLP (51 weights, G of full rank on 64 inputs), 5 RK4 steps, 25 CG iterations.
    fm, x = _tanh_mlp()
    space = WeightSpace(fm, metric_cls(fm, x), damping=damping, cg_maxiter=25, cg_tol=1e-10)
    theta = fm.theta()
    torch.manual_seed(1)
    v = torch.randn(fm.n, dtype=torch.float64)
    v = 0.5 * v / space.norm(theta, v)  # metric speed 0.5
    path = shoot(space, theta, v, steps=5)
    speeds = torch.tensor(path.column(column))
    assert float((speeds.max() - speeds.min()) / speeds.mean()) < 0.01
    # The path bends far from the straight line θ + v.
    assert float((path.end - theta - v).norm()) > 0.1 * float(v.norm())
    assert path.metric_length == pytest.approx(float(speeds[0]), rel=0.01)


def test_output_geodesic_is_not_a_straight_line_at_constant_speed_of_the_line():
    # The straight line θ + t v changes its metric speed: the geodesic's constancy is not trivial.
    fm, x = _tanh_mlp()
    metric = OutputMetric(fm, x)
    theta = fm.theta()
    torch.manual_seed(1)
    v = torch.randn(fm.n, dtype=torch.float64)
    v = 0.5 * v / metric.norm(theta, v)
    speeds = torch.stack([metric.norm(theta + t * v, v) for t in torch.linspace(0, 1, 7)])
    assert float((speeds.max() - speeds.min()) / speeds.mean()) > 0.05


def _small_case():
    """A float64 tanh MLP with n = 31 weights on 8 inputs, for dense references."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    return FunctionalModel(model), torch.randn(8, 3, dtype=torch.float64)


def _dense_metric(fm, x, kind):
    """θ ↦ G(θ) as a dense, differentiable matrix: (1/B) Σ J_xᵀ H J_x."""

    def G(theta):
        J = jacrev(lambda t: fm(t, x))(theta)
        if kind == "output":
            return torch.einsum("bcn,bcm->nm", J, J) / len(x)
        p = fm(theta, x).softmax(-1)
        H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
        return torch.einsum("bcn,bcd,bdm->nm", J, H, J) / len(x)

    return G


def _dense_acceleration(G, theta, v, mu):
    """θ'' of the geodesic of M = G + μI from the Euler–Lagrange equation of ½ θ'ᵀMθ':
    M θ'' = −(dM[θ'] θ' − ½ ∇_θ (θ'ᵀ M θ'))."""
    dGv = jvp(lambda t: G(t) @ v, (theta,), (v,))[1]
    gradient = grad(lambda t: v @ G(t) @ v)(theta)
    M = G(theta) + mu * torch.eye(len(theta), dtype=theta.dtype)
    return -torch.linalg.solve(M, dGv - 0.5 * gradient)


def test_euclidean_expmap_is_theta_plus_v_exactly():
    fm, _ = _tanh_mlp()
    theta = fm.theta()
    v = torch.randn(fm.n, dtype=torch.float64)
    assert torch.equal(WeightSpace(fm, Euclidean()).expmap(theta, v), theta + v)
    mask = (torch.arange(fm.n) % 2).double()
    masked = WeightSpace(fm, Euclidean(), mask=mask)
    assert torch.equal(masked.expmap(masked.projx(theta), v), masked.projx(theta) + mask * v)


@pytest.mark.parametrize(("kind", "metric_cls"), [("output", OutputMetric), ("fisher", FisherMetric)])
def test_expmap_second_order_term_is_the_dense_geodesic_acceleration(kind, metric_cls):
    """exp_θ(εu) = θ + εu + ½ε² a(θ, u) + O(ε³), with a from the dense Christoffel symbols."""
    fm, x = _small_case()
    theta = fm.theta()
    torch.manual_seed(3)
    u = torch.randn(fm.n, dtype=torch.float64)
    G = _dense_metric(fm, x, kind)
    space = WeightSpace(fm, metric_cls(fm, x), damping=1e-2, cg_maxiter=60, cg_tol=1e-11)
    a = _dense_acceleration(G, theta, u, 1e-2)
    eps = 1e-3
    second_order = 2 * (space.expmap(theta, eps * u) - theta - eps * u) / eps**2
    assert float((second_order - a).norm() / a.norm()) < 0.02
    # an explicit damping overrides the space's: the geodesic of G + I
    a_damped = _dense_acceleration(G, theta, u, 1.0)
    end = shoot(space, theta, eps * u, steps=2, damping=1.0).end
    assert float((2 * (end - theta - eps * u) / eps**2 - a_damped).norm() / a_damped.norm()) < 0.02
    assert float((a_damped - a).norm() / a.norm()) > 0.2


@pytest.mark.parametrize(("kind", "metric_cls"), [("output", OutputMetric), ("fisher", FisherMetric)])
def test_short_geodesic_has_metric_length_eps_times_the_norm_of_u(kind, metric_cls):
    fm, x = _small_case()
    theta = fm.theta()
    torch.manual_seed(4)
    u = torch.randn(fm.n, dtype=torch.float64)
    G = _dense_metric(fm, x, kind)
    mu = 1e-2
    eye = torch.eye(fm.n, dtype=torch.float64)
    norm_u = float(u @ (G(theta) + mu * eye) @ u) ** 0.5
    space = WeightSpace(fm, metric_cls(fm, x), damping=mu, cg_maxiter=60, cg_tol=1e-11)
    for eps in (0.1, 0.01):
        path = shoot(space, theta, eps * u, steps=5, save_every=1)
        pts = [w for _, w in path.waypoints()]
        dense_length = sum(
            float(d @ (G(0.5 * (p + q)) + mu * eye) @ d) ** 0.5
            for p, q in zip(pts[:-1], pts[1:], strict=True) for d in [q - p]
        )
        assert dense_length == pytest.approx(eps * norm_u, rel=1e-3)
        assert path.metric_length == pytest.approx(dense_length, rel=1e-3)
        assert path.records[0]["damped_speed"] == pytest.approx(eps * norm_u, rel=1e-9)
        speed = float(u @ G(theta) @ u) ** 0.5
        assert path.records[0]["speed"] == pytest.approx(eps * speed, rel=1e-9)


def test_heun_and_rk4_integrate_the_same_geodesic():
    fm, x = _small_case()
    theta = fm.theta()
    torch.manual_seed(5)
    u = 0.1 * torch.randn(fm.n, dtype=torch.float64)
    space = WeightSpace(fm, OutputMetric(fm, x), damping=1e-2, cg_maxiter=40, cg_tol=1e-10)
    rk4 = shoot(space, theta, u, steps=2)
    heun = shoot(space, theta, u, steps=8, integrator="heun")
    bend = float((rk4.end - theta - u).norm())
    assert bend > 0.05
    assert float((heun.end - rk4.end).norm()) < 0.02 * bend
    # an explicit CG cap is honoured: 2 products per solve, 4 solves per RK4 step and 1 at the end
    capped = shoot(space, theta, u, steps=2, cg_maxiter=2)
    assert capped.grad_evals == (4 * 2 + 1) * (2 + 3) and rk4.grad_evals > capped.grad_evals


class _Warped(Metric):
    """A user's metric with only ``mvp``: G(θ) = diag(1 + θ²), whose geodesics bend."""

    product_cost = 0

    def mvp(self, theta, v):
        return (1 + theta.square()) * v


def test_any_metric_has_the_geodesic_force_of_its_christoffel_symbols():
    """For g_i = 1 + θ_i², the Euler–Lagrange equation gives g θ'' = −θ θ'²: F = θ v²."""
    fm, _ = _tanh_mlp()
    theta = fm.theta()
    v = torch.randn(fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    force, speed_sq, _ = _Warped().at(theta).geodesic_force(v)
    torch.testing.assert_close(force, theta * v.square())
    assert float(speed_sq) == pytest.approx(float(((1 + theta.square()) * v.square()).sum()), rel=1e-12)


def test_shoot_integrates_a_user_metric_like_a_fine_ode_solver():
    fm, _ = _tanh_mlp()
    space = WeightSpace(fm, _Warped(), damping=0.0, cg_maxiter=200, cg_tol=1e-14)
    theta = fm.theta()
    v = torch.randn(fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    end = shoot(space, theta, v, steps=20).end
    x, u = theta.clone(), v.clone()
    for _ in range(4000):  # explicit Euler on θ'' = −θ θ'² / (1 + θ²), step 1/4000
        a = -x * u.square() / (1 + x.square())
        x, u = x + u / 4000, u + a / 4000
    torch.testing.assert_close(end, x, atol=2e-3, rtol=0)
    assert float((end - (theta + v)).norm()) > 0.05  # it bends: not the straight line
    speeds = torch.tensor(shoot(space, theta, v, steps=20, save_every=1).column("damped_speed"))
    assert float((speeds.max() - speeds.min()) / speeds.mean()) < 1e-4  # constant speed


def test_diagonal_fisher_geodesics_come_from_its_products():
    fm, x = _tanh_mlp()
    space = WeightSpace(fm, DiagonalFisher(fm, x[:8]), damping=1e-3, cg_maxiter=1)
    theta = fm.theta()
    v = 1e-2 * torch.randn(fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    path = shoot(space, theta, v, steps=2)
    assert path.stop_reason == "done" and bool(torch.isfinite(path.end).all())
