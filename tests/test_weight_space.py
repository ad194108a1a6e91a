"""WeightSpace as a geoopt manifold: metric, natural gradient, masks, checks, optimisers."""

from __future__ import annotations

import geoopt
import pytest
import torch
from torch import nn

from weightgeo import DiagonalFisher, Euclidean, FunctionalModel, OutputMetric, WeightSpace
from weightgeo.errors import WeightgeoError


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(9, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (9,))
    fmodel = FunctionalModel(model)
    return model, fmodel, x, y, fmodel.theta()


def test_inner_norm_and_natural_gradient(setup):
    model, fmodel, x, _, theta = setup
    metric = OutputMetric(model, x)
    space = WeightSpace(model, metric, damping=0.1, cg_maxiter=200, cg_tol=1e-12)
    G = metric.dense(theta)
    u, v = torch.randn_like(theta), torch.randn_like(theta)
    assert float(space.inner(theta, u, v)) == pytest.approx(float(u @ G @ v), rel=1e-10)
    assert float(space.norm(theta, u)) == pytest.approx(float(u @ G @ u) ** 0.5, rel=1e-10)
    expected = torch.linalg.solve(G + 0.1 * torch.eye(len(theta), dtype=G.dtype), u)
    assert torch.allclose(space.egrad2rgrad(theta, u), expected, rtol=1e-6, atol=1e-9)


def test_natural_gradient_honours_explicit_damping_iterations_and_tolerance(setup):
    model, _, x, _, theta = setup
    metric = OutputMetric(model, x)
    space = WeightSpace(model, metric, damping=1e-3, cg_maxiter=200, cg_tol=1e-13)
    G = metric.dense(theta)
    eye = torch.eye(len(theta), dtype=G.dtype)
    g = torch.randn_like(theta)
    for mu in (0.0, 0.5, 3.0):  # none of them the space's own
        if mu == 0.0:
            g_range = G @ g  # a right-hand side in the range of the singular G
            sol = space.natural_gradient(theta, g_range, damping=mu)
            torch.testing.assert_close(G @ sol.x, g_range, atol=1e-9, rtol=0)
            continue
        sol = space.natural_gradient(theta, g, damping=mu)
        torch.testing.assert_close(sol.x, torch.linalg.solve(G + mu * eye, g), atol=1e-10, rtol=0)
        assert float(sol.residual) < 1e-11
    # the space's own damping when none is given
    torch.testing.assert_close(space.natural_gradient(theta, g).x,
                               torch.linalg.solve(G + 1e-3 * eye, g), atol=1e-7, rtol=1e-7)
    capped = space.natural_gradient(theta, g, damping=0.5, maxiter=2)
    assert capped.iterations == 2 and capped.products == 2
    true_residual = ((G + 0.5 * eye) @ capped.x - g).norm() / g.norm()
    assert float(capped.residual) == pytest.approx(float(true_residual), rel=1e-8)
    loose = space.natural_gradient(theta, g, damping=0.5, tol=0.2)
    assert float(loose.residual) <= 0.2 and loose.products < space.natural_gradient(theta, g, 0.5).products


def test_masked_natural_gradient_with_explicit_damping(setup):
    model, _, x, _, theta = setup
    metric = OutputMetric(model, x)
    mask = (torch.arange(len(theta)) % 2 == 0).double()
    space = WeightSpace(model, metric, damping=1e-3, mask=mask, cg_maxiter=200, cg_tol=1e-13)
    free = mask.bool()
    G = metric.dense(theta)[free][:, free]
    g = torch.randn_like(theta)
    got = space.natural_gradient(theta, g, damping=2.0).x
    expected = torch.zeros_like(theta)
    expected[free] = torch.linalg.solve(G + 2.0 * torch.eye(int(free.sum()), dtype=G.dtype), g[free])
    torch.testing.assert_close(got, expected, atol=1e-10, rtol=0)
    # metrics with an exact solve take the explicit damping too, masked or not
    euclidean = WeightSpace(model, damping=1e-3)
    torch.testing.assert_close(euclidean.natural_gradient(theta, g, damping=1.0).x, g / 2)
    torch.testing.assert_close(euclidean.with_mask(mask).natural_gradient(theta, g, damping=3.0).x,
                               mask * g / 4)
    diagonal = DiagonalFisher(model, x)
    d = diagonal.diagonal(theta)
    diag_space = WeightSpace(model, diagonal, damping=1e-3, mask=mask)
    torch.testing.assert_close(diag_space.natural_gradient(theta, g, damping=0.7).x,
                               mask * g / (d + 0.7), atol=1e-12, rtol=0)


def test_riemannian_sgd_is_natural_gradient_descent(setup):
    model, fmodel, x, y, theta = setup
    metric = OutputMetric(model, x)
    space = WeightSpace(model, metric, damping=0.1, cg_maxiter=200, cg_tol=1e-12)
    point = geoopt.ManifoldParameter(theta.clone(), manifold=space)
    optimizer = geoopt.optim.RiemannianSGD([point], lr=0.3)
    loss = nn.functional.cross_entropy(fmodel(point, x), y)
    loss.backward()
    grad = point.grad.clone()
    optimizer.step()
    G = metric.dense(theta)
    expected = theta - 0.3 * torch.linalg.solve(G + 0.1 * torch.eye(len(theta), dtype=G.dtype), grad)
    assert torch.allclose(point.detach(), expected, rtol=1e-6, atol=1e-9)
    # and a few steps decrease the loss
    for _ in range(5):
        optimizer.zero_grad()
        nn.functional.cross_entropy(fmodel(point, x), y).backward()
        optimizer.step()
    assert float(nn.functional.cross_entropy(fmodel(point.detach(), x), y)) < float(loss.detach())


def test_riemannian_sgd_with_momentum_runs_and_stays_on_mask(setup):
    model, fmodel, x, y, theta = setup
    mask = (torch.rand_like(theta) > 0.5).double()
    space = WeightSpace(model, OutputMetric(model, x), damping=0.1, mask=mask)
    point = geoopt.ManifoldParameter(space.projx(theta), manifold=space)
    optimizer = geoopt.optim.RiemannianSGD([point], lr=0.1, momentum=0.9)
    for _ in range(3):
        optimizer.zero_grad()
        nn.functional.cross_entropy(fmodel(point, x), y).backward()
        optimizer.step()
    assert torch.all(point.detach()[mask == 0] == 0)


def test_masked_space_restricts_the_metric(setup):
    model, fmodel, x, _, theta = setup
    metric = OutputMetric(model, x)
    mask = (torch.arange(len(theta)) % 3 != 0).double()
    space = WeightSpace(model, metric, damping=0.05, mask=mask, cg_maxiter=500, cg_tol=1e-13)
    G = metric.dense(theta)
    P = torch.diag(mask)
    g = torch.randn_like(theta)
    free = mask.bool()
    sub = G[free][:, free] + 0.05 * torch.eye(int(free.sum()), dtype=G.dtype)
    expected = torch.zeros_like(theta)
    expected[free] = torch.linalg.solve(sub, g[free])
    got = space.egrad2rgrad(theta, g)
    assert torch.allclose(got, expected, rtol=1e-6, atol=1e-9)
    assert torch.all(got[~free] == 0)
    assert torch.equal(space.projx(theta), theta * mask)
    assert torch.equal(space.projx(space.projx(theta)), space.projx(theta))  # idempotent
    u = torch.randn_like(theta)
    assert float(space.inner(theta, u)) == pytest.approx(float(u @ P @ G @ P @ u), rel=1e-10)


def test_retraction_and_euclidean_distance(setup):
    model, _, _, _, theta = setup
    space = WeightSpace(model)
    u = torch.randn_like(theta)
    y = space.retr(theta, u)
    assert torch.allclose(y, theta + u)
    assert float(space.dist(theta, y)) == pytest.approx(float(space.norm(theta, u)), rel=1e-12)
    assert torch.allclose(space.expmap(theta, u), y)


def test_dist_is_refused_where_undefined(setup):
    model, _, x, _, theta = setup
    space = WeightSpace(model, OutputMetric(model, x))
    with pytest.raises(WeightgeoError, match="no closed form"):
        space.dist(theta, theta + 1)


def test_readable_point_checks(setup):
    model, _, _, _, theta = setup
    space = WeightSpace(model)
    ok, reason = space.check_point_on_manifold(theta, explain=True)
    assert ok and reason is None
    ok, reason = space.check_point_on_manifold(theta[:-1], explain=True)
    assert not ok and f"length {len(theta)}" in reason
    ok, reason = space.check_point_on_manifold(theta.float(), explain=True)
    assert not ok and "dtype" in reason
    ok, reason = space.check_point_on_manifold(torch.zeros(len(theta), dtype=torch.long), explain=True)
    assert not ok and "floating-point" in reason
    masked = space.with_mask(torch.zeros_like(theta))
    ok, reason = masked.check_point_on_manifold(theta, explain=True)
    assert not ok and "outside the mask" in reason
    with pytest.raises(WeightgeoError, match="length"):
        space.check(theta[:3])
    with pytest.raises(WeightgeoError, match="damping"):
        WeightSpace(model, damping=-1)
    with pytest.raises(WeightgeoError, match="mask must have length"):
        WeightSpace(model, mask=torch.ones(3))


def test_variants_keep_settings(setup):
    model, _, x, _, theta = setup
    space = WeightSpace(model, Euclidean(), damping=0.2, cg_maxiter=7)
    other = space.with_metric(OutputMetric(model, x))
    assert other.damping == 0.2 and other.cg_maxiter == 7 and isinstance(other.metric, OutputMetric)
    assert space.with_inputs(x).metric is space.metric  # Euclidean has no inputs
    assert other.with_inputs(x[:3]).metric.inputs.shape[0] == 3


def test_user_module_is_never_mutated(setup):
    model, _, x, y, theta = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    space = WeightSpace(model, OutputMetric(model, x))
    space.egrad2rgrad(theta, torch.randn_like(theta))
    fm = FunctionalModel(model)
    fm(theta + 1, x)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    assert all(p.requires_grad for p in model.parameters())


# -- the README's examples (kept identical to README.md) -----------------------------------------
README_USER_METRIC = '''
import torch
from weightgeo.metrics import Metric

class CostlyLargeWeights(Metric):
    """G(θ) = diag(1 + θ²): moving a large weight costs more."""

    product_cost = 0  # its products never run the network

    def mvp(self, theta, v):
        return (1 + theta**2) * v
'''

README_TRANSFORMER = '''
import torch
from torch import nn
import weightgeo as wg

class TextClassifier(nn.Module):
    """Token embeddings → 2-layer transformer encoder → mean over tokens → 4 classes."""

    def __init__(self, vocabulary=1000, width=32, classes=4):
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        layer = nn.TransformerEncoderLayer(width, nhead=4, dim_feedforward=64, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2)
        self.head = nn.Linear(width, classes)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens)).mean(1))

torch.manual_seed(0)
model = TextClassifier()
keep = torch.randint(0, 1000, (32, 16))                  # inputs whose outputs should not change
new_x, new_y = torch.randint(0, 1000, (32, 16)), torch.randint(0, 4, (32,))

metric = wg.OutputMetric(model, keep)                    # G = JᵀJ through attention and LayerNorm
space = wg.WeightSpace(model, metric, damping=1e-3)
path = wg.traverse(space, wg.TaskLoss(model, (new_x, new_y)), step_size=0.05, max_steps=10)
'''


def _readme_block(code: str) -> None:
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert code.strip() in readme, "a README example changed: update the test"


def _arc_length(x: torch.Tensor, a: float) -> torch.Tensor:
    """s(x) = ∫₀ˣ √(a + t²) dt, the arc length of the 1-D metric a + t²."""
    return 0.5 * (x * torch.sqrt(a + x**2) + a * torch.asinh(x / a**0.5))


def _inverse_arc_length(s: torch.Tensor, a: float) -> torch.Tensor:
    x = torch.zeros_like(s)
    for _ in range(60):  # Newton on s(x) = s, s' = √(a + x²)
        x = x - (_arc_length(x, a) - s) / torch.sqrt(a + x**2)
    return x


def test_the_readme_user_metric_runs_in_every_tracer_and_geoopt():
    """G = diag(1 + θ²) is a product of 1-D metrics: geodesics of G + λI move each coordinate at
    constant speed in its arc length s(x) = ∫√(1 + λ + t²) dt, and d(x, y)² = Σ (s(y) − s(x))²."""
    from weightgeo.objectives import TaskLoss
    from weightgeo.paths import relax, traverse

    _readme_block(README_USER_METRIC)
    namespace: dict = {}
    exec(README_USER_METRIC, namespace)
    metric = namespace["CostlyLargeWeights"]()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    fmodel = FunctionalModel(model)
    theta, x, y = fmodel.theta(), torch.randn(12, 3, dtype=torch.float64), torch.randint(0, 2, (12,))
    damping = 0.01
    space = WeightSpace(fmodel, metric, damping=damping, cg_maxiter=50, cg_tol=1e-14)
    a = 1 + damping
    u = 0.3 * torch.randn_like(theta)
    exact = _inverse_arc_length(_arc_length(theta, a) + torch.sqrt(a + theta**2) * u, a)
    assert rel(space.expmap(theta, u, steps=40), exact) < 1e-7
    # relax: its length approaches the geodesic distance from above
    far = exact + 0.5 * torch.randn_like(theta)
    distance = float(torch.linalg.vector_norm(_arc_length(far, 1.0) - _arc_length(theta, 1.0)))
    straight = WeightSpace(fmodel, metric).segment_energies(
        torch.stack([theta + t * (far - theta) for t in torch.linspace(0, 1, 17, dtype=theta.dtype)]))
    path = relax(WeightSpace(fmodel, metric), theta, far, nodes=15, steps=300, lr=1e-2)
    assert path.metric_length < float(straight.sqrt().sum())
    assert path.metric_length == pytest.approx(distance, rel=2e-3)
    # traverse lowers a task loss; geoopt's RiemannianSGD is the damped natural-gradient step
    walk = traverse(space, TaskLoss(fmodel, (x, y)), step_size=0.05, max_steps=5)
    assert walk.records[-1]["objective"] < walk.records[0]["objective"] and walk.grad_evals == 6
    point = geoopt.ManifoldParameter(theta.clone(), manifold=space)
    nn.functional.cross_entropy(fmodel(point, x), y).backward()
    grad = point.grad.clone()
    geoopt.optim.RiemannianSGD([point], lr=0.5).step()
    assert rel(point.detach(), theta - 0.5 * grad / (1 + theta**2 + damping)) < 1e-12


def test_the_readme_transformer_example():
    _readme_block(README_TRANSFORMER)
    namespace: dict = {}
    exec(README_TRANSFORMER, namespace)
    path = namespace["path"]
    assert len(path) == 11
    assert path.records[-1]["objective"] < path.records[0]["objective"]


def test_solve_costs_are_the_metrics_own():
    """A budget test reads each metric's solve cost: CG products, or an exact solve's build."""
    from weightgeo.metrics import KFACMetric, NystromMetric

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    assert WeightSpace(model, OutputMetric(model, x), cg_maxiter=7).solve_cost() == 7
    assert WeightSpace(model, Euclidean(), cg_maxiter=7).solve_cost() == 0
    assert WeightSpace(model, DiagonalFisher(model, x)).solve_cost(50) == 3  # one per class
    kfac = KFACMetric(model, x)
    space = WeightSpace(model, kfac)
    theta = space.model.theta()
    assert space.solve_cost(50) == 4 == space.natural_gradient(theta, torch.ones_like(theta)).cost
    nystrom = WeightSpace(model, NystromMetric(OutputMetric(model, x), rank=5))
    assert nystrom.solve_cost(50) == 5 == nystrom.natural_gradient(theta, torch.ones_like(theta)).cost


def test_masked_solves_are_the_dense_subspace_solve_for_every_kind_of_solve():
    """(P G P + μI)⁻¹ P g for a CG solve (output metric), exact solves that do not commute with
    the mask (K-FAC) and ones that do (diagonal Fisher, Euclidean), and a subspace of a subspace."""
    from weightgeo.metrics import DiagonalFisher, Euclidean, KFACMetric, OutputMetric
    from weightgeo.metrics.scaled import ScaledMetric

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2)).double()
    fm = FunctionalModel(model)
    x = torch.randn(6, 3, dtype=torch.float64)
    theta = fm.theta()
    g = torch.randn(fm.n, dtype=torch.float64)
    outer = (torch.arange(fm.n) % 3 != 0).double()
    inner = (torch.arange(fm.n) % 2 == 0).double()
    metrics = [OutputMetric(fm, x), KFACMetric(fm, x), DiagonalFisher(fm, x), Euclidean(),
               ScaledMetric(KFACMetric(fm, x), 0.5)]
    for metric in metrics:
        dense = metric.dense(theta) if not isinstance(metric, Euclidean) else torch.eye(fm.n, dtype=torch.float64)
        for mask in (outer, outer * inner):
            p = torch.diag(mask)
            expected = torch.linalg.solve(p @ dense @ p + 0.1 * torch.eye(fm.n, dtype=torch.float64), mask * g)
            space = WeightSpace(fm, metric, damping=0.1, mask=outer, cg_maxiter=200, cg_tol=1e-13)
            if mask is not outer:  # a subspace of the subspace
                space = WeightSpace(fm, metric, damping=0.1, mask=outer, cg_maxiter=200, cg_tol=1e-13)
                got = space.operator(theta).solve_masked(inner, g, 0.1, 200, 1e-13).x
            else:
                got = space.natural_gradient(theta, g).x
            torch.testing.assert_close(got, expected, rtol=1e-8, atol=1e-10, msg=type(metric).__name__)
