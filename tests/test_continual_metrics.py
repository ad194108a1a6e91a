"""The metric wrappers the continual-learning geodesic step runs on, against dense float64 matrices.

ScaledMetric (c·G): products, dense matrix, exact and CG solves, costs, energies and the
geodesic force of a scaled metric; the Riemannian gradient under G/μ with damping 1 is
μ(G + μI)⁻¹g. ResampledMetric: every binding to a point draws the next batch of its stream, and
a WeightSpace charges its solves' products.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo.data.streams import RandomSubsets
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import DiagonalFisher, OutputMetric
from weightgeo.metrics.resampled import ResampledMetric
from weightgeo.metrics.scaled import ScaledMetric


@pytest.fixture
def net():
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 3)).double())
    x = torch.randn(5, 4, dtype=torch.float64)
    return fmodel, fmodel.theta(), x


def eye(n: int) -> torch.Tensor:
    return torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("factor", [0.25, 7.0])
def test_scaled_metric_products_dense_and_cg_solve_are_c_times_the_metrics(net, factor):
    fmodel, theta, x = net
    inner = OutputMetric(fmodel, x)
    scaled = ScaledMetric(inner, factor)
    dense = inner.at(theta).dense()
    v = torch.randn_like(theta)
    assert torch.allclose(scaled.at(theta).dense(), factor * dense, atol=1e-12)
    assert torch.allclose(scaled.mvp(theta, v), factor * (dense @ v), atol=1e-12)
    assert torch.allclose(scaled.at(theta).diagonal(), factor * dense.diagonal(), atol=1e-12)
    g, mu = torch.randn_like(theta), 0.3
    solution = scaled.at(theta).solve(g, mu, maxiter=200, tol=1e-12)
    expected = torch.linalg.solve(factor * dense + mu * eye(len(theta)), g)
    assert torch.allclose(solution.x, expected, atol=1e-9)
    # the inner CG runs on (G + (μ/c) I): same products, same cost as the metric's own solve
    own = inner.at(theta).solve(g, mu / factor, maxiter=200, tol=1e-12)
    assert (solution.products, solution.cost) == (own.products, own.cost) and solution.cost > 0


def test_scaled_metric_keeps_an_exact_solve_exact_and_its_build_cost(net):
    fmodel, theta, x = net
    inner = DiagonalFisher(fmodel, x)
    d = inner.diagonal(theta)
    g = torch.randn_like(theta)
    solution = ScaledMetric(inner, 4.0).at(theta).solve(g, 0.5)
    assert torch.allclose(solution.x, g / (4.0 * d + 0.5), atol=1e-12)
    assert solution.products == 0 and solution.cost == 3  # the diagonal's build: one pass per class


def test_riemannian_gradient_under_g_over_mu_with_damping_one_is_mu_times_the_damped_solve(net):
    fmodel, theta, x = net
    mu = 0.1
    space = WeightSpace(fmodel, ScaledMetric(OutputMetric(fmodel, x), 1 / mu), damping=1.0,
                        cg_maxiter=200, cg_tol=1e-12)
    g = torch.randn_like(theta)
    dense = OutputMetric(fmodel, x).at(theta).dense()
    expected = mu * torch.linalg.solve(dense + mu * eye(len(theta)), g)
    assert torch.allclose(space.egrad2rgrad(theta, g), expected, atol=1e-9)
    assert not torch.allclose(expected, g, atol=1e-3)  # the metric matters


def test_scaled_metric_energies_force_and_geodesics(net):
    fmodel, theta, x = net
    inner, c = OutputMetric(fmodel, x), 3.0
    scaled = ScaledMetric(inner, c)
    points = torch.stack([theta, theta + 0.01 * torch.randn_like(theta), theta + 0.02 * torch.randn_like(theta)])
    assert torch.allclose(scaled.segment_energies(points), c * inner.segment_energies(points), rtol=1e-10)
    v = torch.randn_like(theta)
    force, speed_sq, cost = scaled.at(theta).geodesic_force(v)
    inner_force, inner_speed, inner_cost = inner.at(theta).geodesic_force(v)
    assert torch.allclose(force, c * inner_force, rtol=1e-10) and cost == inner_cost
    assert torch.allclose(speed_sq, c * inner_speed, rtol=1e-10)
    flat = ScaledMetric(WeightSpace(fmodel).metric, 4.0)  # c·I: straight lines, lengths × 2
    assert torch.allclose(flat.distance(theta, theta + v), 2 * v.norm())
    assert torch.equal(flat.exponential(theta, v), theta + v)


@pytest.mark.parametrize("factor", [0.0, -1.0, float("inf"), float("nan"), True])
def test_scaled_metric_refuses_a_factor_that_is_not_a_positive_number(factor):
    with pytest.raises(WeightgeoError, match="scale factor must be a positive number"):
        ScaledMetric(OutputMetric(nn.Linear(2, 2), torch.zeros(1, 2)), factor)


def test_resampled_metric_binds_each_point_to_the_next_batch_of_its_stream(net):
    fmodel, theta, _ = net
    pool = torch.randn(12, 4, dtype=torch.float64)
    metric = ResampledMetric(OutputMetric(fmodel, pool[:1]), RandomSubsets(pool, 4, seed=5))
    expected_batches = RandomSubsets(pool, 4, seed=5)
    for _ in range(3):
        batch = expected_batches.next()
        operator = metric.at(theta)
        assert torch.equal(metric.inputs, batch)
        assert torch.allclose(operator.dense(), OutputMetric(fmodel, batch).at(theta).dense(), atol=1e-12)
        v = torch.randn_like(theta)  # products between bindings use the current batch, draw nothing
        assert torch.allclose(metric.mvp(theta, v), OutputMetric(fmodel, batch).mvp(theta, v), atol=1e-12)
    state = metric.state_dict()
    following = metric.at(theta).dense()
    metric.load_state_dict(state)
    assert torch.equal(metric.at(theta).dense(), following)  # resumes to the same batch


def test_a_weight_space_under_a_resampled_metric_charges_every_solves_products(net):
    fmodel, theta, _ = net
    pool = torch.randn(12, 4, dtype=torch.float64)
    mu = 0.2
    metric = ScaledMetric(ResampledMetric(OutputMetric(fmodel, pool), RandomSubsets(pool, 4, seed=1)), 1 / mu)
    space = WeightSpace(fmodel, metric, damping=1.0, cg_maxiter=3, cg_tol=1e-14)
    batches = RandomSubsets(pool, 4, seed=1)
    g = torch.randn_like(theta)
    for step in range(2):
        inner = OutputMetric(fmodel, batches.next())
        got = space.natural_gradient(theta, g)
        own = inner.at(theta).solve(g, mu, maxiter=3, tol=1e-14)
        assert torch.allclose(got.x, mu * own.x, atol=1e-12)  # the solve on this step's batch
        assert space.products_spent == 3 * (step + 1)  # three products per solve, charged
