"""Objectives: values, gradients against finite differences, sums, stop tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo import FunctionalModel, TargetPoint, TaskLoss
from weightgeo.objectives import Objective, Sum


def finite_difference(objective, theta, eps=1e-6, n=6):
    torch.manual_seed(3)
    directions = torch.randn(n, theta.numel(), dtype=theta.dtype)
    grad = objective.grad(theta)
    for d in directions:
        numeric = (objective.value(theta + eps * d) - objective.value(theta - eps * d)) / (2 * eps)
        assert float(numeric) == pytest.approx(float(grad @ d), rel=1e-6, abs=1e-9)


def test_target_point():
    theta = torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)
    target = torch.tensor([1.0, 0.0, 3.0], dtype=torch.float64)
    objective = TargetPoint(target, tol=1e-3)
    assert float(objective.value(theta)) == pytest.approx(2.0)
    assert torch.allclose(objective.grad(theta), theta - target)
    assert not objective.done(theta) and objective.done(target)
    assert objective.cost == 0
    finite_difference(objective, theta)
    step = torch.tensor([0.0, -5.0, 0.0], dtype=torch.float64)
    assert float(objective.step_limit(theta, step)) == pytest.approx(0.4)  # lands on the target


def test_task_loss_fixed_batch_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    theta = FunctionalModel(model).theta()
    objective = TaskLoss(model, (x, y))
    assert float(objective.value(theta)) == pytest.approx(float(nn.functional.cross_entropy(model(x).detach(), y)))
    finite_difference(objective, theta)
    assert objective.cost == 1


def test_task_loss_draws_fresh_batches_and_restarts():
    torch.manual_seed(0)
    model = nn.Linear(2, 2).double()
    theta = FunctionalModel(model).theta()
    batches = [(torch.randn(3, 2, dtype=torch.float64), torch.tensor([0, 1, 0])) for _ in range(2)]
    objective = TaskLoss(model, batches)
    values = [float(objective.value(theta)) for _ in range(4)]
    assert values[0] != values[1]
    assert values[0] == values[2] and values[1] == values[3]


def test_task_loss_target_accuracy_stop():
    model = nn.Linear(2, 2, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    objective = TaskLoss(model, (x, torch.tensor([0, 1])), target_accuracy=1.0)
    theta = FunctionalModel(model).theta()
    assert not objective.done(theta)  # nothing evaluated yet
    objective.value_and_grad(theta)
    assert objective.done(theta)


def test_weighted_sums():
    theta = torch.tensor([1.0, -1.0], dtype=torch.float64)
    a = TargetPoint(torch.zeros(2, dtype=torch.float64))
    b = TargetPoint(torch.ones(2, dtype=torch.float64))
    total = 0.5 * a + b
    assert isinstance(total, Sum)
    assert float(total.value(theta)) == pytest.approx(0.5 * 1.0 + 2.0)
    value, grad = total.value_and_grad(theta)
    assert torch.allclose(grad, 0.5 * theta + (theta - 1))
    assert float(value) == pytest.approx(float(total.value(theta)))
    nested = 2 * total
    assert [w for w, _ in nested.terms] == [1.0, 2.0]
    finite_difference(total, theta)


def test_target_point_step_limit_lands_on_the_line_minimiser():
    theta = torch.zeros(2, dtype=torch.float64)
    objective = TargetPoint(torch.tensor([3.0, 4.0], dtype=torch.float64))
    # the closest point to the target along θ + t·s is t* = (θ_t − θ)·s / ||s||²
    s = torch.tensor([2.0, 0.0], dtype=torch.float64)
    assert float(objective.step_limit(theta, s)) == pytest.approx(1.0)  # t* = 1.5, clipped
    assert float(objective.step_limit(theta, 10 * s)) == pytest.approx(0.15)
    assert float(objective.step_limit(theta, -s)) == 0.0  # a step away: none of it
    assert float(objective.distance(theta)) == pytest.approx(5.0)
    assert not objective.done(theta + torch.tensor([3.0, 3.9], dtype=torch.float64))
    assert TargetPoint(objective.target, tol=0.2).done(theta + torch.tensor([3.0, 3.9], dtype=torch.float64))


def test_task_loss_applies_its_logit_transform():
    torch.manual_seed(0)
    model = nn.Linear(3, 4).double()
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0, 1, 0])
    theta = FunctionalModel(model).theta()
    objective = TaskLoss(model, (x, y), transform_logits=lambda z: z[:, 2:])
    expected = nn.functional.cross_entropy(model(x).detach()[:, 2:], y)
    assert float(objective.value(theta)) == pytest.approx(float(expected), rel=1e-12)
    finite_difference(objective, theta)
    accuracy = float((model(x).detach()[:, 2:].argmax(-1) == y).double().mean())
    assert float(objective.last_accuracy) == pytest.approx(accuracy)


def test_sum_cost_done_and_default_gradient():
    torch.manual_seed(0)
    model = nn.Linear(2, 2).double()
    theta = FunctionalModel(model).theta()
    x, y = torch.randn(4, 2, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    near = TargetPoint(theta + 1e-3, tol=1.0)
    far = TargetPoint(theta + 10.0, tol=1.0)
    task = TaskLoss(model, (x, y))
    assert (near + task + 2 * task).cost == 2  # one gradient per TaskLoss term, none for the target
    assert (near + near).done(theta) and not (near + far).done(theta)

    class Quartic(TargetPoint):  # only value(): the gradient comes from autograd
        def value_and_grad(self, theta):
            return Objective.value_and_grad(self, theta)

        def value(self, theta):
            return ((theta - self.target) ** 4).sum()

    quartic = Quartic(torch.ones_like(theta))
    torch.testing.assert_close(quartic.grad(theta), 4 * (theta - 1) ** 3)
    finite_difference(quartic, theta)


# -- OutputGeodesicLoss: the walk's label-free term ------------------------------------------------
def _geodesic_case():
    from weightgeo.metrics import FisherMetric, OutputMetric
    from weightgeo.objectives import OutputGeodesicLoss

    torch.manual_seed(0)
    fm = FunctionalModel(nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).double())
    x = torch.randn(6, 3, dtype=torch.float64)
    theta_a = fm.theta()
    theta_b = theta_a + torch.randn(fm.n, dtype=torch.float64)
    return fm, x, theta_a, theta_b, OutputMetric, FisherMetric, OutputGeodesicLoss


@pytest.mark.parametrize("kind", ["output", "fisher"])
def test_the_output_geodesic_loss_is_the_distance_to_the_curve_at_the_progress_with_its_exact_gradient(kind):
    fm, x, theta_a, theta_b, OutputMetric, FisherMetric, OutputGeodesicLoss = _geodesic_case()
    metric = (OutputMetric if kind == "output" else FisherMetric)(fm, x)
    loss = OutputGeodesicLoss(metric, theta_a, theta_b, x)
    theta = theta_a + 0.3 * (theta_b - theta_a) + 0.05 * torch.randn(fm.n, dtype=torch.float64)
    s = 1 - float((theta - theta_b).norm() / (theta_b - theta_a).norm())
    target = metric.output_geodesic(fm(theta_a, x), fm(theta_b, x), torch.tensor([s], dtype=torch.float64))[0]
    expected = metric.output_distances(torch.stack([fm(theta, x), target]))[0]
    value, grad = loss.value_and_grad(theta)
    assert float(value) == pytest.approx(float(expected), rel=1e-12)
    e = torch.randn(fm.n, dtype=torch.float64)  # the gradient includes the path through s(θ)
    h = 1e-6
    numeric = (float(loss.value(theta + h * e)) - float(loss.value(theta - h * e))) / (2 * h)
    assert float(grad @ e) == pytest.approx(numeric, rel=1e-6)
    assert float(loss.value(theta_a)) == pytest.approx(0.0, abs=1e-24)  # s = 0: f_a itself
    assert float(loss.value(theta_b)) == pytest.approx(0.0, abs=1e-24)


def test_the_output_geodesic_loss_refuses_a_metric_without_one_and_equal_ends():
    from weightgeo.errors import WeightgeoError
    from weightgeo.metrics import Euclidean

    fm, x, theta_a, theta_b, OutputMetric, _, OutputGeodesicLoss = _geodesic_case()
    with pytest.raises(WeightgeoError, match="needs a metric with an output geodesic"):
        OutputGeodesicLoss(Euclidean(), theta_a, theta_b, x)
    with pytest.raises(WeightgeoError, match="two different networks"):
        OutputGeodesicLoss(OutputMetric(fm, x), theta_a, theta_a, x)
