"""relax: the discrete geodesic between two networks, batched over nodes."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import DiagonalFisher, Euclidean, FisherMetric, Metric, OutputMetric
from weightgeo.paths import relax, resample_polyline


def _model(seed: int = 0, batch_norm: bool = False) -> FunctionalModel:
    torch.manual_seed(seed)
    layers = [nn.Linear(4, 8)] + ([nn.BatchNorm1d(8)] if batch_norm else []) + [nn.Tanh(), nn.Linear(8, 3)]
    return FunctionalModel(nn.Sequential(*layers).double())


def _points(fm: FunctionalModel) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(5)
    theta_a = fm.theta()
    theta_b = theta_a + torch.randn(fm.n, dtype=torch.float64)
    return theta_a, theta_b


def test_euclidean_relax_returns_the_straight_line_at_even_spacing():
    fm = _model()
    theta_a, theta_b = _points(fm)
    space = WeightSpace(fm, Euclidean())
    k = 4
    t = torch.linspace(0, 1, k + 2, dtype=torch.float64)[1:-1, None]
    bent = theta_a + t * (theta_b - theta_a) + 0.5 * torch.randn(k, fm.n, dtype=torch.float64)
    path = relax(space, theta_a, theta_b, nodes=k, init=bent, steps=400, lr=0.02, optimizer="sgd", normalize=False,
                 momentum=0.0)
    nodes = torch.stack([w for _, w in path.waypoints()])
    expected = theta_a + torch.linspace(0, 1, k + 2, dtype=torch.float64)[:, None] * (theta_b - theta_a)
    torch.testing.assert_close(nodes, expected, atol=1e-8, rtol=0)
    distance = float((theta_b - theta_a).norm())
    assert path.euclidean_length == pytest.approx(distance, rel=1e-9)
    assert path.metric_length == pytest.approx(distance, rel=1e-9)
    assert path.grad_evals == 0  # no network was evaluated
    assert len(path) == k + 2 and path.stop_reason == "max-steps"


def test_batched_nodes_equal_the_loop_and_the_model():
    fm = _model()
    theta_a, theta_b = _points(fm)
    stack = torch.stack([theta_a, 0.5 * (theta_a + theta_b), theta_b])
    x = torch.randn(7, 4, dtype=torch.float64)
    fn = fm.stacked()
    torch.testing.assert_close(fn(stack, x), fn.loop(stack, x))
    torch.testing.assert_close(fn(stack, x)[0], fm(theta_a, x))


def test_batch_norm_nodes_use_batch_statistics():
    fm = _model(batch_norm=True)
    x = torch.randn(9, 4, dtype=torch.float64)
    out = fm.stacked()(fm.theta()[None], x)[0]
    module = fm.to_module(fm.theta()).train()
    torch.testing.assert_close(out, module(x))
    assert torch.equal(fm.buffers["1.running_mean"], torch.zeros(8, dtype=torch.float64))  # untouched


def test_output_relax_shortens_the_path_in_function_space():
    fm = _model()
    theta_a, theta_b = _points(fm)
    x = torch.randn(32, 4, dtype=torch.float64)
    space = WeightSpace(fm, OutputMetric(fm, x))
    k = 6
    straight = theta_a + torch.linspace(0, 1, k + 2, dtype=torch.float64)[:, None] * (theta_b - theta_a)
    before = space.segment_energies(straight).sqrt().sum()
    path = relax(space, theta_a, theta_b, nodes=k, steps=150, lr=3e-3)
    assert path.metric_length < 0.97 * float(before)
    torch.testing.assert_close(path.start, theta_a)
    torch.testing.assert_close(path.end, theta_b)
    assert path.grad_evals == 150 * (k + 1)
    energies = [row["energy"] for row in path.meta["history"]]
    assert energies[-1] < energies[0]


def test_relax_with_task_loss_and_budget():
    fm = _model()
    theta_a, theta_b = _points(fm)
    x = torch.randn(32, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (32,))
    space = WeightSpace(fm, OutputMetric(fm, x))
    path = relax(space, theta_a, theta_b, nodes=3, task=(x, y), steps=100, budget=41)
    assert path.stop_reason == "budget" and path.grad_evals == 40  # 10 steps of 3 nodes + 1


def test_resample_polyline_is_even_by_arc_length():
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 3.0]], dtype=torch.float64)
    lengths = (points[1:] - points[:-1]).norm(dim=-1)
    out, fractions = resample_polyline(points, lengths, 5)
    expected = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0, 2.0], [1.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(fractions, torch.linspace(0, 1, 5, dtype=torch.float64))


class _Warped(Metric):
    """A user's metric written as the README shows (only ``mvp``): G(θ) = diag(1 + θ²)."""

    product_cost = 0

    def mvp(self, theta, v):
        return (1 + theta.square()) * v


def test_relax_uses_the_midpoint_energy_of_any_metric_from_its_products():
    fm = _model()
    theta_a, theta_b = _points(fm)
    x = torch.randn(8, 4, dtype=torch.float64)
    for metric in (_Warped(), DiagonalFisher(fm, x)):
        space = WeightSpace(fm, metric)
        path = relax(space, theta_a, theta_b, nodes=2, steps=3, lr=1e-2, normalize=False)
        nodes = torch.stack([w for _, w in path.waypoints()])
        for k in range(1, len(nodes)):
            d, middle = nodes[k] - nodes[k - 1], 0.5 * (nodes[k] + nodes[k - 1])
            dense = metric.dense(middle) if hasattr(metric, "dense") else None
            expected = float(d @ dense @ d) ** 0.5
            assert path.records[k]["metric_length"] == pytest.approx(expected, rel=1e-9)
    with pytest.raises(WeightgeoError, match="at least one interior node"):
        relax(WeightSpace(fm), theta_a, theta_b, nodes=0)


def test_relax_with_a_user_metric_bends_toward_its_geodesic():
    """Under G = diag(1 + θ²) straight lines are not geodesics: relax lowers the energy."""
    fm = _model()
    theta_a, theta_b = _points(fm)
    space = WeightSpace(fm, _Warped())
    path = relax(space, theta_a, theta_b, nodes=3, steps=100, lr=1e-2, normalize=False)
    line = torch.stack([theta_a + t * (theta_b - theta_a) for t in torch.linspace(0, 1, 5, dtype=torch.float64)])
    nodes = torch.stack([w for _, w in path.waypoints()])
    assert float(space.segment_energies(nodes).sum()) < 0.99 * float(space.segment_energies(line).sum())


# -- reported segment lengths against dense metrics ------------------------------------------
def _linear_case():
    """f(x; W) = W x (no bias): J_x = I_C ⊗ xᵀ does not depend on θ, so G_output is constant."""
    torch.manual_seed(0)
    fm = FunctionalModel(nn.Linear(4, 3, bias=False).double())
    x = torch.randn(10, 4, dtype=torch.float64)
    theta_a = fm.theta()
    theta_b = theta_a + torch.randn(fm.n, dtype=torch.float64)
    bent = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)
    bent = bent + 0.3 * torch.randn(3, fm.n, dtype=torch.float64)
    return fm, x, theta_a, theta_b, bent


def _nodes(path) -> torch.Tensor:
    return torch.stack([w for _, w in path.waypoints()])


def _check_lengths(path, dense_sq, rel):
    nodes = _nodes(path)
    assert path.records[0]["metric_length"] == 0.0
    for k in range(1, len(nodes)):
        d = nodes[k] - nodes[k - 1]
        assert path.records[k]["metric_length"] == pytest.approx(dense_sq(nodes[k - 1], nodes[k]) ** 0.5, rel=rel)
        assert path.records[k]["euclidean_length"] == pytest.approx(float(d.norm()), rel=1e-12)


def test_relax_reports_euclidean_lengths_of_its_segments():
    fm, _, theta_a, theta_b, bent = _linear_case()
    path = relax(WeightSpace(fm, Euclidean()), theta_a, theta_b, nodes=3, init=bent, steps=3, lr=1e-2)
    _check_lengths(path, lambda p, q: float((q - p) @ (q - p)), 1e-12)
    assert path.metric_length == pytest.approx(path.euclidean_length, rel=1e-12)


def test_relax_output_lengths_are_exact_for_a_model_linear_in_theta():
    fm, x, theta_a, theta_b, bent = _linear_case()
    G = torch.kron(torch.eye(3, dtype=torch.float64), x.T @ x / len(x))  # mean_x J_xᵀ J_x, by hand
    path = relax(WeightSpace(fm, OutputMetric(fm, x)), theta_a, theta_b, nodes=3, init=bent, steps=3, lr=1e-2)
    _check_lengths(path, lambda p, q: float((q - p) @ G @ (q - p)), 1e-10)
    # relaxing the output energy of a linear model straightens the path in G's norm: the
    # discrete geodesic of a constant metric is the evenly spaced straight line
    long = relax(WeightSpace(fm, OutputMetric(fm, x)), theta_a, theta_b, nodes=3, init=bent, steps=300,
                 lr=0.02, optimizer="sgd", momentum=0.9, normalize=False)
    line = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[:, None] * (theta_b - theta_a)
    torch.testing.assert_close(_nodes(long), line, atol=1e-6, rtol=0)
    straight = float((theta_b - theta_a) @ G @ (theta_b - theta_a)) ** 0.5
    assert long.metric_length == pytest.approx(straight, rel=1e-6)


def test_relax_fisher_lengths_match_the_dense_fisher_on_short_segments():
    fm, x, theta_a, _, _ = _linear_case()
    torch.manual_seed(1)
    theta_b = theta_a + 0.05 * torch.randn(fm.n, dtype=torch.float64)
    bent = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)
    bent = bent + 0.01 * torch.randn(3, fm.n, dtype=torch.float64)

    def fisher_sq(p, q):
        # J_x = I ⊗ xᵀ, so G = mean_x (diag p − ppᵀ) ⊗ x xᵀ at the segment's midpoint
        probs = fm(0.5 * (p + q), x).softmax(-1)
        H = torch.diag_embed(probs) - probs[:, :, None] * probs[:, None, :]
        G = torch.einsum("bcd,bi,bj->cidj", H, x, x).reshape(fm.n, fm.n) / len(x)
        return float((q - p) @ G @ (q - p))

    path = relax(WeightSpace(fm, FisherMetric(fm, x)), theta_a, theta_b, nodes=3, init=bent, steps=2, lr=1e-3)
    _check_lengths(path, fisher_sq, 1e-3)


def test_reparametrizing_spaces_the_nodes_evenly_by_arc_length():
    fm, _, theta_a, theta_b, _ = _linear_case()
    uneven = theta_a + torch.tensor([0.05, 0.1, 0.9], dtype=torch.float64)[:, None] * (theta_b - theta_a)
    path = relax(WeightSpace(fm, Euclidean()), theta_a, theta_b, nodes=3, init=uneven, steps=1, lr=1e-12,
                 optimizer="sgd", momentum=0.0, reparametrize_every=1)
    expected = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[:, None] * (theta_b - theta_a)
    torch.testing.assert_close(_nodes(path), expected, atol=1e-9, rtol=0)
    kept = relax(WeightSpace(fm, Euclidean()), theta_a, theta_b, nodes=3, init=uneven, steps=1, lr=1e-12,
                 optimizer="sgd", momentum=0.0)
    torch.testing.assert_close(_nodes(kept)[1:-1], uneven, atol=1e-9, rtol=0)


def test_masked_relax_keeps_every_node_in_the_subspace():
    fm, x, theta_a, theta_b, bent = _linear_case()
    mask = (torch.arange(fm.n) % 3 != 0).double()
    space = WeightSpace(fm, OutputMetric(fm, x), mask=mask)
    path = relax(space, theta_a * mask, theta_b * mask, nodes=3, init=bent, steps=5, lr=1e-2)
    nodes = _nodes(path)
    assert torch.all(nodes[:, mask == 0] == 0)
    assert float((nodes[1:-1] - bent * mask).norm()) > 1e-4  # the free coordinates moved


def test_damped_relax_energy_is_the_energy_under_g_plus_lambda_identity():
    # (K + 1) Σ_k Δθ_kᵀ (G(θ̄_k) + λI) Δθ_k against the dense warped metric, in float64.
    from weightgeo.paths.relax import PathEnergy

    fm = _model()
    theta_a, theta_b = _points(fm)
    space, lam, nodes = WeightSpace(fm, _Warped()), 0.37, 3
    z = theta_a + torch.rand(nodes, 1, dtype=torch.float64) * (theta_b - theta_a)
    z = z + 0.1 * torch.randn(nodes, fm.n, dtype=torch.float64)
    loss = PathEnergy(space, theta_a, theta_b, nodes, task_weight=0.0, normalize=False, damping=lam)
    full = torch.cat([theta_a[None], z, theta_b[None]])
    expected = 0.0
    for k in range(nodes + 1):
        d, middle = full[k + 1] - full[k], 0.5 * (full[k + 1] + full[k])
        expected += float(d @ (_Warped().dense(middle) + lam * torch.eye(fm.n, dtype=torch.float64)) @ d)
    assert float(loss(z, (None, None))) == pytest.approx((nodes + 1) * expected, rel=1e-10)


def test_damping_holds_the_relaxed_path_near_the_straight_line():
    # Under the warped metric relax bends away from the line; the damped energy's minimiser tends to
    # the line as λ grows (G + λI → λI up to scale), and a negative λ is refused.
    fm = _model()
    theta_a, theta_b = _points(fm)
    space = WeightSpace(fm, _Warped())
    line = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)

    def bend(lam):
        path = relax(space, theta_a, theta_b, nodes=3, steps=150, lr=1e-2, normalize=False, damping=lam)
        return float((_nodes(path)[1:-1] - line).norm())

    free, damped = bend(0.0), bend(100.0)
    assert free > 0.05 and damped < 0.2 * free
    with pytest.raises(WeightgeoError, match="damping must be ≥ 0"):
        relax(space, theta_a, theta_b, nodes=1, damping=-1.0)


def test_the_image_objective_reaches_the_constant_speed_line_of_a_model_linear_in_theta():
    # f(x; W) = W x with x of full column rank: the logits' straight segment is realised by exactly one
    # node per t_k, θ_a + t_k (θ_b − θ_a), so from a bent start the image fit must land there (float64),
    # and its loss there is zero.
    fm, x, theta_a, theta_b, bent = _linear_case()
    space = WeightSpace(fm, OutputMetric(fm, x))
    path = relax(space, theta_a, theta_b, nodes=3, init=bent, objective="image", steps=400, lr=0.05,
                 normalize=False)
    line = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)
    assert float((bent - line).norm()) > 0.5
    assert torch.allclose(_nodes(path)[1:-1], line, atol=1e-3)
    assert path.meta["objective"] == "image"


def test_the_image_objective_refuses_a_metric_without_an_output_geodesic():
    fm = _model()
    theta_a, theta_b = _points(fm)
    with pytest.raises(WeightgeoError, match="image objective needs a metric pulled back from the outputs"):
        relax(WeightSpace(fm, _Warped()), theta_a, theta_b, nodes=2, steps=1, objective="image")
    with pytest.raises(WeightgeoError, match="takes no reparametrize_every"):
        relax(WeightSpace(fm, OutputMetric(fm, torch.randn(4, 4, dtype=torch.float64))), theta_a, theta_b,
              nodes=2, objective="image", reparametrize_every=5)
    with pytest.raises(WeightgeoError, match="objective must be one of energy, image"):
        relax(WeightSpace(fm, _Warped()), theta_a, theta_b, nodes=2, objective="shape")


def test_the_image_objective_converges_where_the_energy_crawls_along_a_long_chain():
    # Same minimisers (the constant-speed line of a model linear in θ), different conditioning: with
    # K = 15 nodes and 40 plain gradient steps, the image fit closes 94% of the gap to the line, the
    # energy (whose gradient couples neighbours only) closes 61% at lr 3e-3, near its stability edge
    # (lr 0.01 diverges).
    fm, x, theta_a, theta_b, _ = _linear_case()
    nodes = 15
    line = theta_a + torch.linspace(0, 1, nodes + 2, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)
    bent = line + 0.3 * torch.randn(nodes, fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    space = WeightSpace(fm, OutputMetric(fm, x))

    def gap(objective, lr):
        path = relax(space, theta_a, theta_b, nodes=nodes, init=bent, objective=objective, steps=40, lr=lr,
                     optimizer="sgd", momentum=0.0, normalize=False)
        return float((_nodes(path)[1:-1] - line).norm() / (bent - line).norm())

    assert gap("image", 0.01) < 0.1
    assert gap("energy", 3e-3) > 0.3


def test_the_auto_objective_fits_the_image_where_the_metric_has_one_and_the_energy_elsewhere():
    fm, x, theta_a, theta_b, bent = _linear_case()
    chosen = {type(metric).__name__: relax(WeightSpace(fm, metric), theta_a, theta_b, nodes=2, steps=2,
                                           objective="auto").meta["objective"]
              for metric in (OutputMetric(fm, x), FisherMetric(fm, x), _Warped())}
    assert chosen == {"OutputMetric": "image", "FisherMetric": "image", "_Warped": "energy"}


@pytest.mark.parametrize("steps", [2.5, -1])  # each half of the check on its own: not whole, negative
def test_relax_refuses_steps_that_are_not_a_whole_number_at_least_zero(steps):
    fm = _model()
    theta_a, theta_b = _points(fm)
    with pytest.raises(WeightgeoError, match="steps must be a whole number ≥ 0"):
        relax(WeightSpace(fm), theta_a, theta_b, nodes=1, steps=steps)


def test_resampling_a_path_whose_points_coincide_gives_copies_of_the_point():
    point = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64).expand(4, -1)
    out, fractions = resample_polyline(point, torch.zeros(3, dtype=torch.float64), 5)
    assert out.shape == (5, 3) and torch.equal(out, point[:1].expand(5, -1))
    assert torch.allclose(fractions, torch.linspace(0, 1, 5, dtype=torch.float64))


@pytest.mark.parametrize("objective", ["energy", "image"])
def test_masked_relax_projects_unmasked_ends_onto_the_subspace(objective):
    # Ends given off the mask: every point of the path, the ends included, lies in the subspace.
    fm, x, theta_a, theta_b, bent = _linear_case()
    mask = (torch.arange(fm.n) % 3 != 0).double()
    space = WeightSpace(fm, OutputMetric(fm, x), mask=mask)
    path = relax(space, theta_a, theta_b, nodes=3, init=bent, steps=5, lr=1e-2, damping=0.1, objective=objective)
    assert torch.all(_nodes(path)[:, mask == 0] == 0)


def test_the_normalised_image_fit_of_a_model_linear_in_theta_stays_finite_and_reaches_the_line():
    # The line is its own image: its misfit is rounding noise (≈ 1e-30), which must not become the divisor.
    fm, x, theta_a, theta_b, bent = _linear_case()
    space = WeightSpace(fm, OutputMetric(fm, x))
    path = relax(space, theta_a, theta_b, nodes=3, init=bent, objective="image", steps=400, lr=0.05,
                 optimizer="sgd", momentum=0.0)
    line = theta_a + torch.linspace(0, 1, 5, dtype=torch.float64)[1:-1, None] * (theta_b - theta_a)
    assert path.stop_reason == "max-steps" and path.meta["line_energy"] == 1.0
    assert torch.allclose(_nodes(path)[1:-1], line, atol=1e-3)


def test_relax_under_a_resampled_metric_uses_its_inner_metric_on_the_batch():
    from weightgeo.metrics.resampled import ResampledMetric

    fm, x, theta_a, theta_b, bent = _linear_case()
    inner = OutputMetric(fm, x)
    plain = relax(WeightSpace(fm, inner), theta_a, theta_b, nodes=3, init=bent, steps=5, lr=1e-2)
    resampled = relax(WeightSpace(fm, ResampledMetric(inner, [x])), theta_a, theta_b, nodes=3, init=bent, steps=5,
                      lr=1e-2)
    assert torch.equal(_nodes(resampled), _nodes(plain))
