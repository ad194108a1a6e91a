"""The least-metric-length projection onto a sparse hyperplane, against dense solves, with its cost."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace, project_to_sparse, sparse_projection_cost
from weightgeo.metrics import DiagonalFisher, Euclidean, OutputMetric


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    fm = FunctionalModel(model)
    x = torch.randn(40, 4, dtype=torch.float64)
    return fm, x, fm.theta()


@pytest.mark.parametrize("damping", [0.0, 0.3])
def test_metric_projection_is_the_constrained_least_squares_step(net, damping: float) -> None:
    """d_K = (G_KK + μI)^{-1} G_KP θ_P, d_P = −θ_P, and the reported squared length is dθᵀ G dθ."""
    fm, x, theta = net
    space = WeightSpace(fm, OutputMetric(fm, x), cg_tol=1e-14)
    keep = theta.abs() > theta.abs().median()
    new, metric_sq, _, products = project_to_sparse(space, theta, keep, damping=damping, cg_iters=200)
    G = space.operator(theta).dense()
    K, P = keep, ~keep
    eye = torch.eye(int(K.sum()), dtype=theta.dtype)
    expected_k = theta[K] + torch.linalg.solve(G[K][:, K] + damping * eye, G[K][:, P] @ theta[P])
    assert torch.equal(new[P], torch.zeros_like(new[P]))
    assert torch.allclose(new[K], expected_k, rtol=1e-8, atol=1e-10)
    assert not torch.allclose(new[K], theta[K], rtol=0, atol=1e-2)  # the kept weights compensate
    step = new - theta
    assert torch.allclose(metric_sq, step @ G @ step, rtol=1e-8, atol=1e-12)
    # the least metric length among steps onto the hyperplane: magnitude pruning moves farther
    magnitude = theta * keep - theta
    assert float(step @ G @ step) < float(magnitude @ G @ magnitude)
    assert 2 <= products <= 201  # G r, then the CG products
    capped = project_to_sparse(space, theta, keep, damping=damping, cg_iters=3)
    assert capped.cost == 4 == capped.solution.products + 1
    assert sparse_projection_cost(space, 3) == 4  # the bound a budget tests is what it spent


def test_the_projection_minimises_the_damped_metric_length_among_steps_onto_the_hyperplane(net) -> None:
    """½dθᵀGdθ + ½μ||d_K||² is least at the projection: any other step onto the hyperplane
    (the projection plus a perturbation of the kept coordinates) costs more."""
    fm, x, theta = net
    damping = 0.05
    space = WeightSpace(fm, OutputMetric(fm, x), damping=damping, cg_maxiter=300, cg_tol=1e-14)
    keep = theta.abs() > theta.abs().quantile(0.3)
    new = project_to_sparse(space, theta, keep).point  # the space's damping and CG settings
    G = space.operator(theta).dense()

    def energy(point: torch.Tensor) -> float:
        d = point - theta
        return float(0.5 * d @ G @ d + 0.5 * damping * (d * keep).square().sum())

    generator = torch.Generator().manual_seed(3)
    for _ in range(5):
        other = new + 1e-3 * torch.randn(fm.n, dtype=theta.dtype, generator=generator) * keep
        assert energy(other) > energy(new)


def test_under_the_euclidean_metric_it_is_magnitude_pruning_and_costs_nothing(net) -> None:
    fm, _, theta = net
    space = WeightSpace(fm, Euclidean(), damping=0.1)
    keep = theta.abs() > theta.abs().median()
    projection = project_to_sparse(space, theta, keep, cg_iters=10)
    assert torch.equal(projection.point, theta * keep)
    assert projection.metric_sq == pytest.approx(float((theta * ~keep).square().sum()), rel=1e-12)
    assert projection.cost == 0 and sparse_projection_cost(space, 10) == 0  # products are free
    assert space.products_spent == 0


def test_under_a_diagonal_fisher_it_charges_the_build_once_and_zeroes_only_the_pruned(net) -> None:
    fm, x, theta = net
    space = WeightSpace(fm, DiagonalFisher(fm, x[:8]), damping=0.1)
    keep = theta.abs() > theta.abs().median()
    projection = project_to_sparse(space, theta, keep, cg_iters=10)
    diagonal = DiagonalFisher(fm, x[:8]).diagonal(theta)
    assert torch.equal(projection.point, theta * keep)  # G_KP = 0: the kept weights stay
    assert projection.metric_sq == pytest.approx(float((diagonal * (theta * ~keep).square()).sum()), rel=1e-10)
    assert projection.cost == 3  # the diagonal: one gradient evaluation per class, products free
    assert space.products_spent == 3


def test_on_a_masked_space_it_projects_inside_the_subspace(net) -> None:
    """Within the sparse subspace of a mask M (θ zero off M) the projection onto a smaller mask
    K ⊂ M is the dense projection with G restricted to M: d_K = (G_KK + μI)^{-1} G_K,M∖K θ_M∖K."""
    fm, x, theta = net
    outer = theta.abs() > theta.abs().quantile(0.2)
    keep = outer & (theta.abs() > theta.abs().quantile(0.6))
    theta = theta * outer
    metric = OutputMetric(fm, x)
    space = WeightSpace(fm, metric, mask=outer, cg_maxiter=300, cg_tol=1e-14)
    damping = 0.2
    projection = project_to_sparse(space, theta, keep, damping=damping)
    G = metric.dense(theta)
    P = outer & ~keep
    eye = torch.eye(int(keep.sum()), dtype=theta.dtype)
    expected = theta[keep] + torch.linalg.solve(G[keep][:, keep] + damping * eye, G[keep][:, P] @ theta[P])
    assert torch.allclose(projection.point[keep], expected, rtol=1e-8, atol=1e-10)
    assert torch.equal(projection.point[~keep], torch.zeros_like(projection.point[~keep]))
    assert space.products_spent == projection.cost > 1
