"""traverse's less-used options, each checked against a dense float64 reference.

Every explicit override (damping, cg_maxiter, cg_tol, step_norm, budget, metric_inputs)
must change what traverse does in the way its docstring says: the step at θ_k is
−ε·d/||d|| with d = (G_x(θ_k) + μI)⁻¹ ∇O(θ_k) for the batch x of that step.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import jacrev

from weightgeo import FunctionalModel, OutputMetric, TargetPoint, WeightSpace, traverse

DTYPE = torch.float64


@pytest.fixture
def case():
    """A float64 tanh MLP (n = 31), two input batches and a target network."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    fmodel = FunctionalModel(model)
    theta_a = fmodel.theta()
    theta_b = theta_a + 0.5 * torch.randn(fmodel.n, dtype=DTYPE)
    x1 = torch.randn(6, 3, dtype=DTYPE)
    x2 = 3.0 * torch.randn(6, 3, dtype=DTYPE) + 1.0
    return fmodel, theta_a, theta_b, x1, x2


def dense_g(fmodel, theta, x):
    """G = (1/B) Σ_x J_xᵀ J_x from the dense Jacobian (the reference)."""
    J = jacrev(lambda t: fmodel(t, x))(theta)
    return torch.einsum("bcn,bcm->nm", J, J) / x.shape[0]


def dense_step(fmodel, theta, x, target, mu, eps):
    """−ε d/||d||, d = (G + μI)⁻¹ (θ − θ_b): the Euclidean-length step toward the target."""
    G = dense_g(fmodel, theta, x)
    d = torch.linalg.solve(G + mu * torch.eye(len(theta), dtype=DTYPE), theta - target)
    return -eps * d / d.norm()


def points(path):
    return [w for _, w in path.waypoints()]


def exact_space(fmodel, x, damping=1e-3):
    return WeightSpace(fmodel, OutputMetric(fmodel, x), damping=damping, cg_maxiter=200, cg_tol=1e-13)


def test_each_step_uses_the_next_metric_batch(case):
    fmodel, theta_a, theta_b, x1, x2 = case
    space = exact_space(fmodel, x1, damping=1e-2)
    path = traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=4, start=theta_a,
                    save_every=1, metric_inputs=[x1, x2])
    thetas = points(path)
    assert len(thetas) == 5
    for k in range(4):
        x = (x1, x2)[k % 2]
        expected = dense_step(fmodel, thetas[k], x, theta_b, 1e-2, 0.05)
        torch.testing.assert_close(thetas[k + 1] - thetas[k], expected, atol=1e-10, rtol=0)


def test_alternating_batches_change_the_path_and_identical_batches_do_not(case):
    fmodel, theta_a, theta_b, x1, x2 = case
    space = exact_space(fmodel, x1)

    def run(**kw):
        return traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=6, start=theta_a, **kw).end

    fixed = run()
    same = run(metric_inputs=[x1, x1])
    alternating = run(metric_inputs=[x1, x2])
    second_only = run(metric_inputs=[(x2, torch.zeros(6))])  # (x, y) pairs: the inputs are used
    torch.testing.assert_close(same, fixed, atol=1e-12, rtol=0)
    assert float((alternating - fixed).norm()) > 1e-3
    assert float((second_only - fixed).norm()) > 1e-3
    assert float((second_only - alternating).norm()) > 1e-3


def test_explicit_damping_overrides_the_space(case):
    fmodel, theta_a, theta_b, x1, _ = case
    space = exact_space(fmodel, x1, damping=1e-4)
    path = traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=2, start=theta_a,
                    save_every=1, damping=1.0)
    thetas = points(path)
    for k in range(2):
        step = thetas[k + 1] - thetas[k]
        torch.testing.assert_close(step, dense_step(fmodel, thetas[k], x1, theta_b, 1.0, 0.05),
                                   atol=1e-10, rtol=0)
        other = dense_step(fmodel, thetas[k], x1, theta_b, 1e-4, 0.05)
        assert float((step - other).norm()) > 1e-3  # the space's damping would go elsewhere
        G = dense_g(fmodel, thetas[k], x1)
        assert path.records[k + 1]["metric_length"] == pytest.approx(float(step @ G @ step) ** 0.5,
                                                                     rel=1e-8)
    assert path.meta["damping"] == 1.0


def test_explicit_cg_iterations_and_tolerance_override_the_space(case):
    fmodel, theta_a, theta_b, x1, _ = case
    space = WeightSpace(fmodel, OutputMetric(fmodel, x1), damping=1e-3, cg_maxiter=50, cg_tol=1e-13)
    capped = traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=3, start=theta_a,
                      cg_maxiter=3)
    assert [r["cg_products"] for r in capped.records[1:]] == [3, 3, 3]
    assert capped.grad_evals == 9
    exact = traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=3, start=theta_a)
    assert all(r["cg_products"] > 3 for r in exact.records[1:])
    assert float((capped.end - exact.end).norm()) > 1e-4  # three CG iterations are not the solve
    loose = traverse(space, TargetPoint(theta_b), step_size=0.05, max_steps=3, start=theta_a, cg_tol=0.3)
    for r_loose, r_exact in zip(loose.records[1:], exact.records[1:], strict=True):
        assert r_loose["cg_residual"] <= 0.3
        assert r_loose["cg_products"] < r_exact["cg_products"]
        assert r_exact["cg_residual"] < 1e-10


def test_metric_step_norm_gives_steps_of_metric_length_epsilon(case):
    fmodel, theta_a, theta_b, x1, _ = case
    theta_b = theta_a + 10 * (theta_b - theta_a)  # far: no step is shortened to land on it
    space = exact_space(fmodel, x1)
    path = traverse(space, TargetPoint(theta_b), step_size=0.02, max_steps=3, start=theta_a,
                    save_every=1, step_norm="metric")
    thetas = points(path)
    for k in range(3):
        step = thetas[k + 1] - thetas[k]
        G = dense_g(fmodel, thetas[k], x1)
        assert float(step @ G @ step) ** 0.5 == pytest.approx(0.02, rel=1e-7)
        direction = dense_step(fmodel, thetas[k], x1, theta_b, 1e-3, 1.0)
        torch.testing.assert_close(step / step.norm(), direction, atol=1e-9, rtol=0)
        assert path.records[k + 1]["euclidean_length"] == pytest.approx(float(step.norm()), rel=1e-9)


def test_euclidean_step_norm_gives_steps_of_length_epsilon(case):
    fmodel, theta_a, theta_b, x1, _ = case
    path = traverse(exact_space(fmodel, x1), TargetPoint(theta_b), step_size=0.03, max_steps=3,
                    start=theta_a, save_every=1)
    thetas = points(path)
    for k in range(3):
        assert float((thetas[k + 1] - thetas[k]).norm()) == pytest.approx(0.03, rel=1e-12)


def test_budget_allows_exactly_the_steps_it_pays_for(case):
    fmodel, theta_a, theta_b, x1, _ = case
    space = WeightSpace(fmodel, OutputMetric(fmodel, x1), cg_maxiter=5, cg_tol=1e-30)
    for budget, steps in ((4, 0), (5, 1), (23, 4), (25, 5)):
        path = traverse(space, TargetPoint(theta_b), step_size=0.01, max_steps=1000, start=theta_a,
                        budget=budget)
        assert path.stop_reason == "budget"
        assert len(path) == steps + 1 and path.grad_evals == 5 * steps
