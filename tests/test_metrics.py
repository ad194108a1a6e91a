"""Metric-vector products against dense Jacobians, in float64, for every model of the table."""

from __future__ import annotations

import pytest
import torch
from torch.func import jacrev

from weightgeo import DiagonalFisher, Euclidean, FisherMetric, FunctionalModel, OutputMetric
from weightgeo.errors import WeightgeoError
from weightgeo.metrics import Metric, build_metric, conjugate_gradient


def dense_jacobian(fmodel, theta, x):
    """B×C×n Jacobian of the logits (the reference)."""
    return jacrev(lambda t: fmodel(t, x))(theta)


def dense_output_metric(fmodel, theta, x):
    J = dense_jacobian(fmodel, theta, x)
    return torch.einsum("bcn,bcm->nm", J, J) / x.shape[0]


def dense_fisher(fmodel, theta, x):
    J = dense_jacobian(fmodel, theta, x)
    p = fmodel(theta, x).softmax(-1)
    H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return torch.einsum("bcn,bcd,bdm->nm", J, H, J) / x.shape[0]


def rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


@pytest.mark.parametrize(
    "metric_cls, reference", [(OutputMetric, dense_output_metric), (FisherMetric, dense_fisher)]
)
def test_pullback_products_match_dense_jacobian(model_case, metric_cls, reference):
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    G = reference(fmodel, theta, x)
    metric = metric_cls(model, x)
    torch.manual_seed(1)
    for _ in range(3):  # repeated products at one θ give the right answer each time
        v = torch.randn_like(theta)
        assert rel(metric.mvp(theta, v), G @ v) < 1e-8
    op = metric.at(theta)
    V = torch.randn(theta.numel(), 4, dtype=theta.dtype)
    assert rel(op @ V, G @ V) < 1e-8
    assert rel(op @ V[:, 0], G @ V[:, 0]) < 1e-8
    assert rel(metric.dense(theta), G) < 1e-8
    # symmetric positive semi-definite, and the inner product is vᵀGv
    assert rel(G, G.T) < 1e-12
    v = V[:, 1]
    assert abs(float(metric.inner(theta, v)) - float(v @ G @ v)) < 1e-8 * float(v @ G @ v)
    assert abs(float(metric.norm(theta, v)) ** 2 - float(v @ G @ v)) < 1e-8 * float(v @ G @ v)


def test_fisher_is_the_ggn_of_cross_entropy(model_case):
    """Jᵀ H J with H the Hessian of the cross-entropy in the logits (H does not depend on y)."""
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    z = fmodel(theta, x)
    y = torch.zeros(x.shape[0], dtype=torch.long)
    H = torch.func.hessian(lambda logits: torch.nn.functional.cross_entropy(logits, y, reduction="sum"))(z)
    J = dense_jacobian(fmodel, theta, x)
    ggn = torch.einsum("bcn,bcad,adm->nm", J, H, J) / x.shape[0]
    assert rel(FisherMetric(model, x).dense(theta), ggn) < 1e-8


def test_diagonal_fisher_is_the_exact_diagonal(model_case):
    _, model, x = model_case
    theta = FunctionalModel(model).theta()
    full = FisherMetric(model, x).dense(theta)
    diag = DiagonalFisher(model, x, chunk_size=3).diagonal(theta)
    assert float((diag - torch.diagonal(full)).abs().max()) < 1e-8 * float(full.abs().max())
    g = torch.randn_like(theta)
    sol = DiagonalFisher(model, x).solve(theta, g, damping=0.1)
    assert rel(sol.x, g / (torch.diagonal(full) + 0.1)) < 1e-10


def test_empirical_diagonal_fisher(model_case):
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    y = torch.arange(x.shape[0]) % 3

    def log_likelihood(t, i):
        return fmodel(t, x[i : i + 1]).log_softmax(-1)[0, y[i]]

    grads = torch.stack([torch.func.grad(log_likelihood)(theta, i) for i in range(x.shape[0])])
    expected = grads.square().mean(0)
    assert rel(DiagonalFisher(model, x, targets=y).diagonal(theta), expected) < 1e-10


@pytest.mark.parametrize("name", ["output", "fisher"])
def test_damped_solve_matches_dense_solve(model_case, name):
    _, model, x = model_case
    theta = FunctionalModel(model).theta()
    metric = build_metric(name, model, x)
    G = metric.dense(theta)
    g = torch.randn_like(theta)
    sol = metric.solve(theta, g, damping=0.05, maxiter=500, tol=1e-12)
    expected = torch.linalg.solve(G + 0.05 * torch.eye(len(theta), dtype=G.dtype), g)
    assert rel(sol.x, expected) < 1e-6
    assert float(sol.residual) < 1e-10
    assert sol.products == sol.iterations
    # a capped solve reports the residual it stopped at
    capped = metric.solve(theta, g, damping=0.05, maxiter=2)
    true_residual = rel((G + 0.05 * torch.eye(len(theta), dtype=G.dtype)) @ capped.x, g)
    assert abs(float(capped.residual) - true_residual) < 1e-8
    assert capped.iterations == 2


def test_euclidean_metric():
    theta = torch.randn(6, dtype=torch.float64)
    v = torch.randn(6, dtype=torch.float64)
    metric = Euclidean()
    assert torch.equal(metric.mvp(theta, v), v)
    assert torch.allclose(metric.dense(theta), torch.eye(6, dtype=torch.float64))
    assert torch.allclose(metric.solve(theta, v, damping=1.0).x, v / 2)


def test_batch_norm_in_train_mode_is_evaluated_without_side_effects():
    """A train-mode BN model: products work and its running statistics stay unchanged."""
    from tests.conftest import TinyCNN

    torch.manual_seed(0)
    model = TinyCNN(batch_norm=True).double().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(5, 1, 8, 8, dtype=torch.float64)
    theta = FunctionalModel(model).theta()
    v = torch.randn_like(theta)
    for metric in (OutputMetric(model, x), FisherMetric(model, x), DiagonalFisher(model, x)):
        out = metric.mvp(theta, v)
        assert torch.isfinite(out).all()
    assert model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_dropout_is_off_inside_products():
    """Products of a network with dropout equal the dense metric of the same network without it."""
    torch.manual_seed(0)
    first, last = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
    model = torch.nn.Sequential(first, torch.nn.Dropout(0.5), last).double().train()
    without = FunctionalModel(torch.nn.Sequential(first, last))  # same θ, no dropout
    x = torch.randn(6, 4, dtype=torch.float64)
    theta = FunctionalModel(model).theta()
    G = dense_output_metric(without, theta, x)
    F = dense_fisher(without, theta, x)
    for _ in range(2):
        v = torch.randn_like(theta)
        assert rel(OutputMetric(model, x).mvp(theta, v), G @ v) < 1e-10
        assert rel(OutputMetric(model, x).at(theta) @ v, G @ v) < 1e-10
        assert rel(FisherMetric(model, x).mvp(theta, v), F @ v) < 1e-10


@pytest.mark.parametrize("name", ["output", "fisher", "diag-fisher", "euclidean"])
def test_metric_names_build_the_metric_they_name(model_case, name):
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    reference = {
        "output": lambda: dense_output_metric(fmodel, theta, x),
        "fisher": lambda: dense_fisher(fmodel, theta, x),
        "diag-fisher": lambda: torch.diag(torch.diagonal(dense_fisher(fmodel, theta, x))),
        "euclidean": lambda: torch.eye(len(theta), dtype=theta.dtype),
    }[name]()
    metric = build_metric(name, model, x)
    assert rel(metric.dense(theta), reference) < 1e-8
    v = torch.randn_like(theta)
    assert rel(metric.mvp(theta, v), reference @ v) < 1e-8


def test_diagonal_fisher_on_new_inputs(model_case):
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    x2 = torch.randn_like(x)
    other = DiagonalFisher(model, x, chunk_size=2).with_inputs(x2)
    expected = torch.diagonal(dense_fisher(fmodel, theta, x2))
    assert rel(other.diagonal(theta), expected) < 1e-8
    y = torch.arange(len(x)) % 3
    empirical = DiagonalFisher(model, x, targets=y)
    with pytest.raises(WeightgeoError, match="needs targets"):
        empirical.with_inputs(x2)
    moved = empirical.with_inputs(x2, y.flip(0))
    assert rel(moved.diagonal(theta), DiagonalFisher(model, x2, targets=y.flip(0)).diagonal(theta)) < 1e-12
    assert rel(moved.diagonal(theta), empirical.diagonal(theta)) > 1e-3


def test_with_inputs_reestimates_on_a_new_batch(model_case):
    _, model, x = model_case
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    x2 = torch.randn_like(x)
    metric = OutputMetric(model, x)
    other = metric.with_inputs(x2)
    assert other is not metric and metric.inputs is x and other.model is metric.model
    assert rel(other.dense(theta), dense_output_metric(fmodel, theta, x2)) < 1e-8


def test_mean_over_batch_makes_duplicated_batches_equal(model_case):
    _, model, x = model_case
    theta = FunctionalModel(model).theta()
    v = torch.randn_like(theta)
    single = OutputMetric(model, x).mvp(theta, v)
    doubled = OutputMetric(model, torch.cat([x, x])).mvp(theta, v)
    assert rel(doubled, single) < 1e-12


def test_conjugate_gradient_on_a_known_system():
    A = torch.tensor([[4.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    b = torch.tensor([1.0, 2.0], dtype=torch.float64)
    sol = conjugate_gradient(lambda v: A @ v, b, maxiter=10, tol=1e-14)
    assert torch.allclose(sol.x, torch.tensor([1 / 11, 7 / 11], dtype=torch.float64))
    assert sol.iterations == 2  # CG is exact in n steps
    warm = conjugate_gradient(lambda v: A @ v, b, maxiter=10, tol=1e-14, x0=sol.x + 0.1)
    assert torch.allclose(warm.x, sol.x) and warm.products == warm.iterations + 1  # r₀ = b − A x₀
    started = conjugate_gradient(lambda v: A @ v, b, maxiter=10, tol=1e-14, x0=sol.x)
    assert started.iterations == 0 and torch.equal(started.x, sol.x)
    with pytest.raises(WeightgeoError):
        conjugate_gradient(lambda v: A @ v, b, maxiter=0)


def test_negative_damping_is_refused(model_case):
    _, model, x = model_case
    theta = FunctionalModel(model).theta()
    with pytest.raises(WeightgeoError, match="damping"):
        OutputMetric(model, x).solve(theta, torch.randn_like(theta), damping=-1.0)


def test_unknown_metric_name():
    with pytest.raises(WeightgeoError, match="unknown metric 'nope'"):
        build_metric("nope", torch.nn.Linear(2, 2), torch.zeros(1, 2))


# -- the README's example of a user-defined metric (kept identical to README.md) ----------
README_EXAMPLE = '''
import torch
from weightgeo.metrics import Metric

class ScaledEuclidean(Metric):
    """G = diag(s): a fixed positive weight per coordinate."""

    def __init__(self, scales: torch.Tensor) -> None:
        self.scales = scales

    def mvp(self, theta, v):
        return self.scales * v
'''


def test_readme_custom_metric_example():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    assert README_EXAMPLE.strip() in readme, "the README's custom-metric example changed: update the test"
    namespace: dict = {}
    exec(README_EXAMPLE, namespace)
    scales = torch.tensor([1.0, 2.0, 4.0], dtype=torch.float64)
    metric = namespace["ScaledEuclidean"](scales)
    assert isinstance(metric, Metric)
    theta = torch.zeros(3, dtype=torch.float64)
    g = torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64)
    sol = metric.solve(theta, g, damping=0.0, maxiter=10, tol=1e-14)  # CG, derived by the base
    assert torch.allclose(sol.x, 1 / scales)
    assert torch.allclose(metric.dense(theta), torch.diag(scales))
    assert float(metric.norm(theta, g)) == pytest.approx(7**0.5)


def test_diagonal_fisher_charges_its_construction_once(model_case):
    """The diagonal costs about one batch gradient per class: the first solve reports it."""
    _, model, x = model_case
    theta = FunctionalModel(model).theta()
    op = DiagonalFisher(model, x).at(theta)
    classes = FunctionalModel(model)(theta, x).shape[-1]
    g = torch.randn_like(theta)
    assert op.solve(g, 0.1).cost == classes
    assert op.solve(g, 0.1).cost == 0
    assert DiagonalFisher(model, x, targets=torch.zeros(len(x), dtype=torch.long)).at(theta).solve(g, 0.1).cost == 1


# -- metrics by name or import path -------------------------------------------------------------
class UserMetric(Metric):
    """A user's metric as ``--metric tests.test_metrics:UserMetric`` builds it: G = 2 I."""

    product_cost = 0

    def __init__(self, model, inputs) -> None:
        self.inputs = inputs

    def mvp(self, theta, v):
        return 2 * v


def not_a_metric(model, inputs):
    return "output"


def test_the_registry_holds_every_built_in_metric():
    from weightgeo.metrics import METRIC_HELP, METRICS

    assert list(METRICS) == ["output", "fisher", "diag-fisher", "euclidean", "kfac", "nystrom"]
    assert all(name in METRIC_HELP for name in METRICS) and "package.module:Name" in METRIC_HELP
    model, x = torch.nn.Linear(3, 2).double(), torch.randn(4, 3, dtype=torch.float64)
    theta = FunctionalModel(model).theta()
    assert type(build_metric("kfac", model, x)).__name__ == "KFACMetric"
    nystrom = build_metric("nystrom", model, x)
    assert nystrom.rank == len(theta)  # the default rank 20, capped at the dimension (8)
    v = torch.randn_like(theta)
    assert torch.equal(nystrom.at(theta) @ v, build_metric("nystrom", model, x).at(theta) @ v)  # seeded


def test_a_metric_by_import_path():
    model, x = torch.nn.Linear(3, 2), torch.zeros(4, 3)
    metric = build_metric("tests.test_metrics:UserMetric", model, x)
    assert type(metric).__name__ == "UserMetric" and metric.inputs is x
    theta = torch.ones(8)
    assert torch.equal(metric.at(theta) @ theta, 2 * theta)
    with pytest.raises(WeightgeoError, match="cannot import 'tests.nowhere'"):
        build_metric("tests.nowhere:UserMetric", model, x)
    with pytest.raises(WeightgeoError, match="has no 'Missing'"):
        build_metric("tests.test_metrics:Missing", model, x)
    with pytest.raises(WeightgeoError, match="built a str, not a weightgeo Metric"):
        build_metric("tests.test_metrics:not_a_metric", model, x)
    with pytest.raises(WeightgeoError, match="is a float, not a class or function"):
        build_metric("math:pi", model, x)
    with pytest.raises(WeightgeoError, match="must build the metric from \\(model, inputs\\)"):
        build_metric("weightgeo.metrics:Euclidean", model, x)


def test_the_metric_option_takes_names_and_import_paths():
    import click

    from weightgeo.commands.options import metric_name

    assert metric_name(None, None, "kfac") == "kfac"
    assert metric_name(None, None, "tests.test_metrics:UserMetric") == "tests.test_metrics:UserMetric"
    with pytest.raises(click.BadParameter, match="unknown metric 'nope'; choose one of output, fisher"):
        metric_name(None, None, "nope")
    with pytest.raises(click.BadParameter, match="cannot import"):
        metric_name(None, None, "tests.nowhere:X")


def test_a_constant_metric_of_a_users_matrix_is_flat_with_closed_form_distance_and_exponential():
    from weightgeo.metrics import ConstantMetric

    torch.manual_seed(3)
    a = torch.randn(5, 5, dtype=torch.float64)
    G = a @ a.T + 0.1 * torch.eye(5, dtype=torch.float64)

    class Fixed(ConstantMetric):
        product_cost = 0

        def mvp(self, theta, v):
            return G @ v

    x, y, u = (torch.randn(5, dtype=torch.float64) for _ in range(3))
    metric = Fixed()
    assert torch.allclose(metric.distance(x, y), torch.sqrt((y - x) @ G @ (y - x)), atol=1e-12)
    assert torch.equal(metric.exponential(x, u), x + u)
    assert metric.energy_cost(7) == 0
    points = torch.stack([x, 0.5 * (x + y), y])  # the straight line's two halves: each d²/4
    assert torch.allclose(metric.segment_energies(points), metric.distance(x, y) ** 2 / 4 * torch.ones(2, dtype=torch.float64))


@pytest.mark.parametrize("kind", ["output", "fisher"])
def test_segment_energies_are_the_metrics_quadratic_form_for_short_segments(kind):
    # relax's output distances (squared logits difference; 4 Σ(Δ√p)² for the Fisher metric) must be
    # Δθᵀ G(θ̄) Δθ to second order: the ratio → 1 as the segment shrinks, with an O(ε²) error
    torch.manual_seed(5)
    fmodel = FunctionalModel(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                                                 torch.nn.Linear(6, 3)).double())
    x = torch.randn(10, 4, dtype=torch.float64)
    metric = build_metric(kind, fmodel, x)
    theta = fmodel.theta()
    d = torch.randn_like(theta)
    for eps in (1e-2, 1e-3):
        points = torch.stack([theta - 0.5 * eps * d, theta + 0.5 * eps * d])
        energy = metric.segment_energies(points)[0]
        quadratic = eps**2 * (d @ metric.mvp(theta, d))
        assert abs(float(energy / quadratic) - 1) < 10 * eps**2


@pytest.mark.parametrize("inputs", [[[0.0, 1.0]], torch.zeros(0, 2)])  # not a tensor; an empty batch
@pytest.mark.parametrize("metric_cls", [OutputMetric, FisherMetric])
def test_a_pullback_metric_refuses_inputs_that_are_not_a_non_empty_tensor(metric_cls, inputs):
    with pytest.raises(WeightgeoError, match="needs a non-empty batch of inputs"):
        metric_cls(torch.nn.Linear(2, 3), inputs)
