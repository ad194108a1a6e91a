"""shoot: geodesics of the Euclidean and output metrics, and WeightSpace.expmap."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import DiagonalFisher, Euclidean, FisherMetric, OutputMetric
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


def test_expmap_calls_shoot_and_matches_its_end():
    fm, x = _tanh_mlp()
    space = WeightSpace(fm, OutputMetric(fm, x), damping=1e-4, cg_maxiter=8, cg_tol=1e-10)
    theta = fm.theta()
    torch.manual_seed(2)
    v = 0.1 * torch.randn(fm.n, dtype=torch.float64)
    end = space.expmap(theta, v)
    torch.testing.assert_close(end, shoot(space, theta, v, steps=10).end)
    # exp of a small velocity is θ + v up to second order: the error shrinks like |v|².
    small = 1e-2 * v
    err_small = (shoot(space, theta, small, steps=2).end - theta - small).norm()
    err = (end - theta - v).norm()
    assert float(err_small) < 3e-3 * float(err)


def test_shoot_refuses_metrics_without_a_geodesic_equation():
    fm, x = _tanh_mlp()
    space = WeightSpace(fm, DiagonalFisher(fm, x))
    with pytest.raises(WeightgeoError, match="pull-back metrics"):
        shoot(space, fm.theta(), torch.zeros(fm.n, dtype=torch.float64))
