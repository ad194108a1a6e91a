"""Paths and tracers: lengths, straight lines, persistence and resumption, fip."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from weightgeo import (
    Euclidean,
    FunctionalModel,
    OutputMetric,
    Path,
    TargetPoint,
    TaskLoss,
    WeightSpace,
    fip,
    traverse,
)
from weightgeo.errors import WeightgeoError
from weightgeo.paths import output_distance


@pytest.fixture
def net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    fmodel = FunctionalModel(model)
    theta_a = fmodel.theta()
    theta_b = theta_a + 0.5 * torch.randn_like(theta_a)
    x = torch.randn(16, 3, dtype=torch.float64)
    return model, fmodel, theta_a, theta_b, x


def test_euclidean_traverse_is_the_straight_line(net):
    model, _, theta_a, theta_b, _ = net
    space = WeightSpace(model, Euclidean(), damping=0.0)
    path = traverse(space, TargetPoint(theta_b, tol=1e-10), step_size=0.05, max_steps=10_000,
                    start=theta_a, save_every=1)
    assert path.stop_reason == "done"
    assert torch.allclose(path.end, theta_b, atol=1e-10)
    distance = float(torch.linalg.vector_norm(theta_b - theta_a))
    assert path.euclidean_length == pytest.approx(distance, rel=1e-9)
    assert path.metric_length == pytest.approx(distance, rel=1e-9)
    direction = (theta_b - theta_a) / distance
    for _, theta in path.waypoints():
        offset = theta - theta_a
        residual = offset - (offset @ direction) * direction  # collinear with θ_b − θ_a
        assert float(torch.linalg.vector_norm(residual)) < 1e-10
    assert len(path) == int(distance // 0.05) + 2


def test_output_metric_lengths_match_dense_metric(net):
    model, fmodel, theta_a, theta_b, x = net
    metric = OutputMetric(model, x)
    space = WeightSpace(model, metric, damping=1e-2, cg_maxiter=200, cg_tol=1e-12)
    path = traverse(space, TargetPoint(theta_b), step_size=0.02, max_steps=5, start=theta_a, save_every=1)
    thetas = [t for _, t in path.waypoints()]
    for k in range(1, len(thetas)):
        step = thetas[k] - thetas[k - 1]
        G = metric.dense(thetas[k - 1])
        expected = float(step @ G @ step) ** 0.5
        assert path.records[k]["metric_length"] == pytest.approx(expected, rel=1e-6)
        assert path.records[k]["euclidean_length"] == pytest.approx(0.02, rel=1e-9)
    # grad evals: 0 for the target point, one per CG product
    products = [r["cg_products"] for r in path.records[1:]]
    assert path.grad_evals == sum(products) and all(p > 1 for p in products)


def test_metric_step_norm(net):
    model, _, theta_a, theta_b, x = net
    space = WeightSpace(model, OutputMetric(model, x), damping=1e-2, cg_maxiter=100, cg_tol=1e-12)
    path = traverse(space, TargetPoint(theta_b), step_size=0.01, max_steps=3, start=theta_a, step_norm="metric")
    assert all(r["metric_length"] == pytest.approx(0.01, rel=1e-6) for r in path.records[1:])


def test_path_streams_to_disk_and_loads_back(net, tmp_path):
    model, _, theta_a, theta_b, x = net
    space = WeightSpace(model, OutputMetric(model, x), damping=1e-2)
    path = traverse(space, TargetPoint(theta_b), step_size=0.01, max_steps=23, start=theta_a,
                    directory=tmp_path / "p", save_every=5,
                    evaluate=lambda t: {"norm": float(t.norm())}, evaluate_every=10)
    assert path.saved_points == [0, 5, 10, 15, 20, 23]
    lines = (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 24 and json.loads(lines[10])["norm"] == pytest.approx(float(path.waypoint(10).norm()))
    assert "norm" in path.records[23]  # the last point is always evaluated
    loaded = Path.load(tmp_path / "p")
    assert torch.equal(loaded.end, path.end) and torch.equal(loaded.start, path.start)
    assert loaded.euclidean_length == pytest.approx(path.euclidean_length)
    assert loaded.stop_reason == "max-steps"
    assert torch.equal(loaded.waypoint(15), path.waypoint(15))


def test_interrupted_path_resumes_from_last_waypoint(net, tmp_path):
    model, _, theta_a, theta_b, x = net
    space = WeightSpace(model, Euclidean(), damping=0.0)
    objective = TargetPoint(theta_b, tol=1e-10)

    def interrupt(k, theta, path):
        if k == 12:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        traverse(space, objective, step_size=0.05, max_steps=1000, start=theta_a,
                 directory=tmp_path / "p", save_every=5, callback=interrupt)
    resumed = Path.resume(tmp_path / "p")
    assert len(resumed) == 11 and resumed.saved_points[-1] == 10  # points 11, 12 are redone
    path = traverse(space, objective, step_size=0.05, max_steps=1000, path=resumed)
    reference = traverse(space, objective, step_size=0.05, max_steps=1000, start=theta_a)
    assert path.stop_reason == "done" and len(path) == len(reference)
    assert torch.allclose(path.end, reference.end)
    assert Path.load(tmp_path / "p").euclidean_length == pytest.approx(reference.euclidean_length)


def test_a_callback_that_returns_true_stops_the_path_at_that_point(net):
    model, _, theta_a, theta_b, _ = net
    seen = []

    def enough(k, theta, path):
        seen.append(k)
        return k == 7

    path = traverse(WeightSpace(model, Euclidean()), TargetPoint(theta_b), step_size=0.01, max_steps=100,
                    start=theta_a, callback=enough)
    assert seen == list(range(8)) and len(path) == 8
    assert path.stop_reason == "callback" and path.last_stop.step == 7
    assert torch.equal(path.end, path.waypoint(7))


def test_in_memory_path_keeps_only_saved_waypoints(net):
    model, _, theta_a, theta_b, _ = net
    path = traverse(WeightSpace(model), TargetPoint(theta_b), step_size=0.001, max_steps=100,
                    start=theta_a, save_every=50)
    assert path.saved_points == [0, 50, 100]
    with pytest.raises(WeightgeoError, match="not saved"):
        path.waypoint(7)


def test_non_finite_objective_stops_and_keeps_last_good_point(net):
    model, _, theta_a, _, _ = net

    class Explodes(TargetPoint):
        def value_and_grad(self, theta):
            value, grad = super().value_and_grad(theta)
            if float(torch.linalg.vector_norm(theta - self.start)) > 0.3:
                return torch.tensor(float("nan"), dtype=theta.dtype), grad
            return value, grad

    objective = Explodes(theta_a + 10.0)
    objective.start = theta_a
    path = traverse(WeightSpace(model), objective, step_size=0.1, max_steps=100, start=theta_a)
    assert path.stop_reason == "non-finite"
    assert torch.isfinite(path.end).all()


def test_budget_stops_traverse(net):
    model, _, theta_a, theta_b, x = net
    space = WeightSpace(model, OutputMetric(model, x), cg_maxiter=5)
    path = traverse(space, TargetPoint(theta_b), step_size=0.01, max_steps=1000, start=theta_a, budget=23)
    assert path.stop_reason == "budget" and path.grad_evals <= 23


def test_traverse_refuses_bad_settings(net):
    model, _, theta_a, theta_b, _ = net
    space = WeightSpace(model)
    for bad in (0, -1.0, float("nan"), "abc"):
        with pytest.raises(WeightgeoError, match="step_size"):
            traverse(space, TargetPoint(theta_b), step_size=bad)
    with pytest.raises(WeightgeoError, match="length"):
        traverse(space, TargetPoint(theta_b), start=theta_a[:2])


def test_fip_keeps_outputs_and_reduces_objective(net):
    model, fmodel, theta_a, theta_b, x = net
    y = torch.randint(0, 4, (16,))
    objective = TaskLoss(model, (x, y))
    path = fip(model, objective, x, start=theta_a, lam=1.0, lr=0.05, max_steps=30, distance="squared")
    assert path.grad_evals == 30 * 2 + 1  # D and the task loss per step, and the last objective
    assert path.column("objective")[-1] < path.column("objective")[0]


# -- the output distances of fip -------------------------------------------------------------
def _logits(seed: int, shape=(9, 5)) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_squared_output_distance_is_the_mean_squared_logit_change():
    a, b = _logits(0), _logits(1)
    expected = sum(float(((a[i] - b[i]) ** 2).sum()) for i in range(len(a))) / len(a)
    assert float(output_distance(a, b, "squared")) == pytest.approx(expected, rel=1e-12)
    assert float(output_distance(a, b, "squared")) == pytest.approx(
        float(output_distance(b, a, "squared")), rel=1e-12)


def test_bhattacharyya_distance_is_minus_log_of_the_coefficient():
    a, b = _logits(0), _logits(1)
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = [-float(torch.log((p[i] * q[i]).sqrt().sum())) for i in range(len(a))]
    assert float(output_distance(a, b, "bhattacharyya")) == pytest.approx(
        sum(by_hand) / len(by_hand), rel=1e-12)
    assert all(d > 0 for d in by_hand)  # different softmax outputs: a positive distance


def test_bhattacharyya_distance_is_a_symmetric_nonnegative_divergence():
    for seed in range(5):
        a, b = _logits(2 * seed), 3 * _logits(2 * seed + 1)
        d_ab = float(output_distance(a, b, "bhattacharyya"))
        assert d_ab > 1e-3
        assert d_ab == pytest.approx(float(output_distance(b, a, "bhattacharyya")), rel=1e-12)
        # zero exactly for equal outputs (a logit shift per example leaves the softmax unchanged)
        shifted = a + torch.randn(len(a), 1, dtype=torch.float64)
        assert abs(float(output_distance(a, shifted, "bhattacharyya"))) < 1e-12
    # nearly disjoint outputs, p ≈ (1, e⁻⁶⁰), q ≈ (e⁻⁶⁰, 1): Σ√(pq) ≈ 2e⁻³⁰, D ≈ 30 − log 2
    far = torch.tensor([[60.0, 0.0]], dtype=torch.float64)
    assert float(output_distance(far, far.flip(-1), "bhattacharyya")) == pytest.approx(
        30.0 - math.log(2.0), rel=1e-9)


def test_bhattacharyya_distance_is_an_eighth_of_the_fisher_form_for_small_changes():
    """D(z + Δz, z) = (1/8) Δzᵀ (diag p − p pᵀ) Δz + O(|Δz|³) (PAPER.md)."""
    z, direction = _logits(3, (1, 6))[0], _logits(4, (1, 6))[0]
    p = z.softmax(-1)
    fisher = torch.diag(p) - torch.outer(p, p)
    for eps in (1e-2, 1e-3):
        dz = eps * direction
        expected = float(dz @ fisher @ dz) / 8
        got = float(output_distance((z + dz)[None], z[None], "bhattacharyya"))
        assert got == pytest.approx(expected, rel=10 * eps)


def test_fip_converges_to_the_minimiser_of_the_penalty_on_a_linear_model():
    """f = Wx: D = ΔθᵀGΔθ with G = mean JᵀJ, so D + λ·½||θ − θ_b||² has one minimiser
    θ* = θ₀ + λ(2G + λI)⁻¹(θ_b − θ₀), reached only if λ is used and the reference is θ₀'s."""
    torch.manual_seed(0)
    model = nn.Linear(3, 2, bias=False).double()
    fmodel = FunctionalModel(model)
    x = torch.randn(10, 3, dtype=torch.float64)
    theta0 = fmodel.theta()
    target = theta0 + torch.tensor([1.0, -0.5, 0.3, 0.8, 0.2, -1.0], dtype=torch.float64)
    G = torch.kron(torch.eye(2, dtype=torch.float64), x.T @ x / len(x))  # J_x = I ⊗ xᵀ
    for lam in (0.5, 2.0):
        expected = theta0 + lam * torch.linalg.solve(2 * G + lam * torch.eye(6, dtype=torch.float64),
                                                      target - theta0)
        path = fip(model, TargetPoint(target), x, lam=lam, lr=0.05, momentum=0.5, max_steps=600,
                   distance="squared", evaluate_every=1000)
        torch.testing.assert_close(path.end, expected, atol=1e-8, rtol=0)


def test_fip_first_step_is_lambda_times_the_objective_gradient(net):
    """At θ₀ the distance term has zero gradient, so the first SGD step is −lr·λ·∇O(θ₀)."""
    model, _, theta_a, theta_b, x = net
    for lam in (0.25, 3.0):
        for distance in ("squared", "bhattacharyya"):
            path = fip(model, TargetPoint(theta_b), x, start=theta_a, lam=lam, lr=0.01,
                       max_steps=1, distance=distance)
            torch.testing.assert_close(path.end, theta_a - 0.01 * lam * (theta_a - theta_b),
                                       atol=1e-12, rtol=0)


def test_fip_normalized_steps_have_length_lr(net):
    model, _, theta_a, theta_b, x = net
    path = fip(model, TargetPoint(theta_b), x, start=theta_a, lr=0.01, momentum=0.0, max_steps=5, normalize=True)
    assert all(r["euclidean_length"] == pytest.approx(0.01, rel=1e-9) for r in path.records[1:])
    assert path.grad_evals == 5


def test_fip_refuses_unknown_settings(net):
    model, _, _, theta_b, x = net
    with pytest.raises(WeightgeoError, match="distance"):
        fip(model, TargetPoint(theta_b), x, distance="kl")
    with pytest.raises(WeightgeoError, match="optimizer"):
        fip(model, TargetPoint(theta_b), x, optimizer="lbfgs")


def test_streamed_path_holds_no_waypoints_in_memory(net, tmp_path):
    """On disk, a path keeps two copies of θ in memory (start, end), however long it is."""
    model, _, theta_a, theta_b, _ = net
    path = traverse(WeightSpace(model), TargetPoint(theta_b), step_size=0.001, max_steps=60,
                    start=theta_a, directory=tmp_path / "p", save_every=1)
    assert len(path.saved_points) == 61
    tensors = [v for v in vars(path).values() if isinstance(v, torch.Tensor)]
    assert len(tensors) == 2 and not path._memory_waypoints
    assert len(list((tmp_path / "p" / "waypoints").glob("point_*.pt"))) == 61


def test_a_new_path_replaces_one_in_the_same_directory(net, tmp_path):
    model, _, theta_a, theta_b, _ = net
    traverse(WeightSpace(model), TargetPoint(theta_b), step_size=0.01, max_steps=12, start=theta_a,
             directory=tmp_path / "p", save_every=5)
    second = traverse(WeightSpace(model), TargetPoint(theta_b), step_size=0.01, max_steps=3,
                      start=theta_a, directory=tmp_path / "p", save_every=5)
    loaded = Path.load(tmp_path / "p")
    assert len(loaded) == 4 and loaded.saved_points == [0, 3]  # nothing appended to the old one
    assert loaded.euclidean_length == pytest.approx(second.euclidean_length)


def test_functional_model_of_a_functional_model_shares_it(net):
    _, fmodel, theta_a, _, x = net
    again = FunctionalModel(fmodel)
    assert again.n == fmodel.n and again.names == fmodel.names
    assert torch.equal(again(theta_a, x), fmodel(theta_a, x))


def test_evaluate_runs_every_k_points_and_once_at_an_unevaluated_end_never_twice(net):
    # Points 0, 10, 20 are evaluated on schedule and the end (23) once more; continuing the open path
    # where the walk is done at once records nothing new and so evaluates nothing.
    model, _, theta_a, theta_b, _ = net
    space = WeightSpace(model, Euclidean())
    calls = []

    def evaluate(theta):
        calls.append(theta.clone())
        return {"probe": float(theta.sum())}

    path = traverse(space, TargetPoint(theta_b), step_size=0.01, max_steps=23, start=theta_a, finish=False,
                    evaluate=evaluate, evaluate_every=10)
    assert len(path) == 24 and len(calls) == 4
    assert torch.equal(calls[-1], path.end)
    traverse(space, TargetPoint(path.end, tol=1.0), step_size=0.01, max_steps=5, path=path, evaluate=evaluate,
             evaluate_every=10)
    assert len(calls) == 4
