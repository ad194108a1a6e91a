"""Properties every registered metric must have, checked on small float64 models (as geoopt tests
its manifolds): symmetry, positive semi-definiteness, the solve inverts G + μI, ``at(θ) @ v``
equals ``mvp``, a duplicated batch changes nothing, the geodesic force is the Christoffel term
of the products, and a short geodesic's metric length is the norm of its initial velocity."""

from __future__ import annotations

import pytest
import torch

from tests.model_zoo import ZOO
from weightgeo import WeightSpace
from weightgeo.metrics import METRICS, build_metric
from weightgeo.paths import shoot

NAMES = sorted(METRICS)
MODELS = ("mlp", "cnn-bn")
DAMPING = 0.1


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-300))


def _setup(name: str, model: str):
    _, fmodel, theta, x = ZOO[model].make()
    generator = torch.Generator().manual_seed(7)
    u, v = torch.randn(2, theta.numel(), generator=generator, dtype=theta.dtype).unbind(0)
    return fmodel, theta, x, build_metric(name, fmodel, x), u, v


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_symmetric_positive_semidefinite_and_at_equals_mvp(name, model):
    _, theta, _, metric, u, v = _setup(name, model)
    operator = metric.at(theta)
    assert float(u @ (operator @ v)) == pytest.approx(float(v @ (operator @ u)), rel=1e-10, abs=1e-14)
    G = operator.dense()
    assert rel(G, G.T) < 1e-10
    eigenvalues = torch.linalg.eigvalsh(0.5 * (G + G.T))
    assert float(eigenvalues.min()) >= -1e-10 * float(eigenvalues.abs().max())
    assert float(eigenvalues.max()) > 0
    assert rel(operator @ v, metric.mvp(theta, v)) < 1e-8
    assert rel(operator.diagonal(), torch.diagonal(G)) < 1e-10


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_the_solve_inverts_the_damped_metric(name, model):
    _, theta, _, metric, g, _ = _setup(name, model)
    operator = metric.at(theta)
    solution = operator.solve(g, damping=DAMPING, maxiter=300, tol=1e-14)
    assert rel(operator @ solution.x + DAMPING * solution.x, g) < 1e-8


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("name", NAMES)
def test_a_duplicated_batch_changes_nothing(name, model):
    fmodel, theta, x, metric, _, v = _setup(name, model)
    doubled = build_metric(name, fmodel, torch.cat([x, x]))
    assert rel(doubled.at(theta) @ v, metric.at(theta) @ v) < 1e-10
    assert rel(doubled.mvp(theta, v), metric.mvp(theta, v)) < 1e-10


@pytest.mark.parametrize("name", NAMES)
def test_the_geodesic_force_is_the_christoffel_term_of_the_products(name):
    """wᵀF(θ, v) = wᵀ dG[v] v − ½ ∂_w(vᵀ G(θ) v) along random w, by central differences of products."""
    _, theta, _, metric, w, v = _setup(name, "mlp")
    h = 1e-4
    dgv = (metric.mvp(theta + h * v, v) - metric.mvp(theta - h * v, v)) / (2 * h)
    directions = torch.stack([w, v, torch.randn(theta.numel(), generator=torch.Generator().manual_seed(9),
                                                dtype=theta.dtype)])
    slopes = torch.stack([(v @ metric.mvp(theta + h * d, v) - v @ metric.mvp(theta - h * d, v)) / (2 * h)
                          for d in directions])
    expected = directions @ dgv - 0.5 * slopes
    force, speed_sq, _ = metric.at(theta).geodesic_force(v)
    assert float(speed_sq) == pytest.approx(float(v @ metric.mvp(theta, v)), rel=1e-10)
    if force is None:  # a metric that does not depend on θ
        assert float(expected.abs().max()) < 1e-7 * (float(dgv.abs().max()) + 1)
        return
    assert float(expected.abs().max()) > 1e-6  # the metric does depend on θ here
    assert rel(directions @ force, expected) < 1e-6


@pytest.mark.parametrize("name", NAMES)
def test_a_short_geodesic_is_as_long_as_its_initial_velocity(name):
    """Geodesics of G + λI have constant speed, so the metric length of exp_θ(u) is |u|."""
    fmodel, theta, _, metric, u, _ = _setup(name, "mlp")
    u = 0.05 * u / torch.linalg.vector_norm(u)
    space = WeightSpace(fmodel, metric, damping=DAMPING, cg_maxiter=200, cg_tol=1e-13)
    path = shoot(space, theta, u, steps=1)
    norm = float(torch.sqrt(u @ metric.mvp(theta, u) + DAMPING * u @ u))
    assert float(path.metric_length) == pytest.approx(norm, rel=1e-6)
