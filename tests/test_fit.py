"""The one optimisation loop: plain and Riemannian SGD/Adam, schedules, budgets, non-finite stops,
hooks and exact resumption."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightgeo.data.streams import Fixed, Minibatches
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import Euclidean, Metric
from weightgeo.optim import OptimizerSpec, fit, schedule_factor
from weightgeo.stopping import Budget, StopReason


def _least_squares(n: int = 40, d: int = 3):
    torch.manual_seed(0)
    a = torch.randn(n, d, dtype=torch.float64)
    b = torch.randn(n, dtype=torch.float64)
    return a, b, lambda theta, batch: 0.5 * (batch[0] @ theta - batch[1]).square().mean()


def test_sgd_steps_match_the_update_rule_written_out():
    a, b, loss = _least_squares()
    lr, momentum, wd = 0.1, 0.9, 0.01
    result = fit(torch.zeros(3, dtype=torch.float64), loss, Fixed((a, b)), 5,
                 optimizer=OptimizerSpec("sgd", lr=lr, momentum=momentum, weight_decay=wd, schedule="constant"))
    theta, buf = torch.zeros(3, dtype=torch.float64), None
    for _ in range(5):
        g = a.T @ (a @ theta - b) / len(b) + wd * theta
        buf = g if buf is None else momentum * buf + g
        theta = theta - lr * buf
    torch.testing.assert_close(result.param, theta)
    assert result.steps == 5 and result.grad_evals == 5 and result.stop.reason is StopReason.STEPS


def test_cosine_schedule_is_applied_per_step():
    a, b, loss = _least_squares()
    lr, steps = 0.2, 4
    result = fit(torch.zeros(3, dtype=torch.float64), loss, Fixed((a, b)), steps,
                 optimizer=OptimizerSpec("sgd", lr=lr, momentum=0.0, schedule="cosine"))
    theta = torch.zeros(3, dtype=torch.float64)
    for t in range(steps):
        theta = theta - lr * 0.5 * (1 + math.cos(math.pi * t / steps)) * (a.T @ (a @ theta - b) / len(b))
    torch.testing.assert_close(result.param, theta)
    assert schedule_factor("garipov", 10)(4) == 1.0 and schedule_factor("garipov", 10)(10) == pytest.approx(0.01)


class _Diagonal(Metric):
    """G = diag(s), a metric with a known inverse."""

    def __init__(self, scales: torch.Tensor) -> None:
        self.scales = scales

    def mvp(self, theta, v):
        return self.scales * v


def test_riemannian_sgd_is_natural_gradient_descent_from_the_first_step():
    torch.manual_seed(1)
    model = nn.Linear(2, 1, bias=False).double()
    fm = FunctionalModel(model)
    scales = torch.tensor([4.0, 0.5], dtype=torch.float64)
    space = WeightSpace(fm, _Diagonal(scales), damping=0.1, cg_maxiter=50, cg_tol=1e-14)
    target = torch.tensor([1.0, -2.0], dtype=torch.float64)
    loss = lambda theta, batch: 0.5 * (theta - target).square().sum()  # noqa: E731
    lr, momentum = 0.3, 0.9
    result = fit(fm.theta(), loss, Fixed(None), 3, space=space,
                 optimizer=OptimizerSpec("sgd", lr=lr, momentum=momentum, schedule="constant"))
    theta, buf = fm.theta(), None
    for _ in range(3):
        natural = (theta - target) / (scales + 0.1)
        buf = natural if buf is None else momentum * buf + natural
        theta = theta - lr * buf
    torch.testing.assert_close(result.param, theta)


def test_a_masked_space_keeps_the_zeros_and_equals_masked_sgd():
    a, b, loss = _least_squares()
    fm = FunctionalModel(nn.Linear(3, 1, bias=False).double())
    mask = torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64)
    space = WeightSpace(fm, Euclidean(), damping=0.0, mask=mask)
    start = torch.tensor([0.5, 0.7, -0.2], dtype=torch.float64)
    spec = OptimizerSpec("sgd", lr=0.1, momentum=0.9, schedule="constant")
    result = fit(start, loss, Fixed((a, b)), 6, space=space, optimizer=spec)
    assert result.param[1] == 0.0
    theta, buf = start * mask, None
    for _ in range(6):
        g = mask * (a.T @ (a @ theta - b) / len(b))
        buf = g if buf is None else 0.9 * buf + g
        theta = theta - 0.1 * buf
    torch.testing.assert_close(result.param, theta)


def test_budget_stops_before_overspending_and_counts_the_space_products():
    a, b, loss = _least_squares()
    budget = Budget(10)
    result = fit(torch.zeros(3, dtype=torch.float64), loss, Fixed((a, b)), None, budget=budget,
                 cost_per_step=3)
    assert result.steps == 3 and result.grad_evals == 9 and result.stop.reason is StopReason.BUDGET


def test_non_finite_loss_stops_and_keeps_the_last_finite_point():
    a, b, loss = _least_squares()
    result = fit(torch.zeros(3, dtype=torch.float64), loss, Fixed((a, b)), 50,
                 optimizer=OptimizerSpec("sgd", lr=1e6, momentum=0.0, schedule="constant"))
    assert result.stop.reason is StopReason.NON_FINITE
    assert result.stop.cause in ("loss", "gradient", "step")
    assert bool(torch.isfinite(result.param).all())
    assert result.steps < 50
    assert "non-finite" in result.stop.message("train", "lower --lr") and "lower --lr" in result.stop.message(
        "train", "lower --lr")


def test_hooks_run_every_k_steps_and_can_stop():
    a, b, loss = _least_squares()
    seen = []

    def hook(state):
        seen.append(state.step)
        return {"loss": float(state.loss)} if state.step < 6 else True

    result = fit(torch.zeros(3, dtype=torch.float64), loss, Fixed((a, b)), 20, hooks=[(3, hook)])
    assert seen == [3, 6] and result.steps == 6 and result.stop.reason is StopReason.CALLBACK
    assert [row["step"] for row in result.history] == [3]


def test_resume_from_a_checkpoint_gives_the_uninterrupted_result():
    a, b, loss = _least_squares()
    spec = OptimizerSpec("sgd", lr=0.05, momentum=0.9, schedule="cosine")
    full = fit(torch.zeros(3, dtype=torch.float64), loss, Minibatches((a, b), 7, seed=3), 25, optimizer=spec)
    saved = []
    fit(torch.zeros(3, dtype=torch.float64), loss, Minibatches((a, b), 7, seed=3), 25, optimizer=spec,
        checkpoint=saved.append, checkpoint_every=10, hooks=[(12, lambda s: True)])
    assert [s["step"] for s in saved] == [10]
    resumed = fit(torch.zeros(3, dtype=torch.float64), loss, Minibatches((a, b), 7, seed=3), 25,
                  optimizer=spec, resume=saved[0])
    assert torch.equal(resumed.param, full.param) and resumed.grad_evals == full.grad_evals


def test_bad_settings_are_one_line():
    with pytest.raises(WeightgeoError, match="optimizer"):
        OptimizerSpec("lbfgs")
    with pytest.raises(WeightgeoError, match="schedule"):
        OptimizerSpec(schedule="step")
    with pytest.raises(WeightgeoError, match="learning rate"):
        OptimizerSpec(lr=0.0)
    with pytest.raises(WeightgeoError, match="steps or a budget"):
        fit(torch.zeros(2), lambda t, b: t.sum(), Fixed(None), None)


@pytest.mark.parametrize("values", [[1.0, -2.0], [3e38, 3e38, -3e38], [], [1.0, float("nan")],
                                    [float("inf"), 0.0], [-float("inf")], [1e-45, 0.0]])
def test_the_finiteness_test_agrees_with_isfinite_and_never_overflows(values):
    from weightgeo.stopping import all_finite, finite, first_non_finite

    t = torch.tensor(values, dtype=torch.float32)
    expected = bool(torch.isfinite(t).all())
    assert bool(finite(t)) == expected  # Σ 0·t: three huge finite values must not read as ∞
    assert bool(all_finite(torch.ones(2), t, None)) == expected
    assert first_non_finite(ok=torch.zeros(3), tested=t) == (None if expected else "tested")
