"""K-FAC and Nyström metrics against dense references: exact cases, Conv2d factors computed by
hand, the frozen variants' API (continual learning), costs, and their use by tracers."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo import FisherMetric, FunctionalModel, OutputMetric, WeightSpace
from weightgeo.errors import WeightgeoError
from weightgeo.metrics import KFACMetric, KroneckerMetric, LowRankMetric, Metric, NystromMetric
from weightgeo.objectives import TargetPoint
from weightgeo.paths import relax, traverse


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def _linear(batch: int = 9, inputs: int = 6, classes: int = 4):
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Linear(inputs, classes).double())
    return fmodel, fmodel.theta(), torch.randn(batch, inputs, dtype=torch.float64)


@pytest.mark.parametrize("batch", [9, 3])  # more rows than inputs, and fewer (the Gram route)
def test_kfac_is_exact_for_one_linear_layer_under_the_output_metric(batch):
    fmodel, theta, x = _linear(batch)
    dense = OutputMetric(fmodel, x).dense(theta)
    metric = KFACMetric(fmodel, x)
    operator = metric.at(theta)
    assert rel(operator.dense(), dense) < 1e-12
    g = torch.randn_like(theta)
    assert rel(metric.mvp(theta, g), dense @ g) < 1e-12
    eye = torch.eye(len(theta), dtype=theta.dtype)
    solution = operator.solve(g, 0.05)
    assert rel(solution.x, torch.linalg.solve(dense + 0.05 * eye, g)) < 1e-10
    assert solution.cost == 5 and operator.solve(g, 0.05).cost == 0  # C + 1, charged once per point
    assert metric.product_cost == 5 and metric.uncovered == []


def test_kfac_of_the_fisher_for_one_linear_layer_is_the_mean_input_moment_times_the_mean_h():
    """One layer: δ_c = √p_c (e_c − p), so S = E_x[diag p − p pᵀ] and A = E[ā āᵀ]."""
    fmodel, theta, x = _linear()
    p = fmodel(theta, x).softmax(-1)
    h = (torch.diag_embed(p) - p[:, :, None] * p[:, None, :]).mean(0)
    a_bar = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    (block,) = KFACMetric(fmodel, x, kind="fisher").factors(theta)
    assert rel(block.s, h) < 1e-12 and rel(block.a, a_bar.T @ a_bar / len(x)) < 1e-12
    exact = FisherMetric(fmodel, x).dense(theta)
    assert rel(KFACMetric(fmodel, x, kind="fisher").at(theta).dense(), exact) > 1e-3  # only approximate


class TinyConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.head = nn.Linear(3 * 3 * 3, 4)

    def forward(self, x):
        return self.head(torch.tanh(self.conv(x)).flatten(1))


def test_conv2d_factors_match_a_dense_computation():
    """KFC: A = mean over examples and output pixels of the patches ā āᵀ, S = (1/B) Σ_x Σ_c Σ_t δ δᵀ;
    patches cut by hand and δ = ∂f_c/∂z by autograd, independently of the metric's code."""
    torch.manual_seed(0)
    model = TinyConv().double()
    fmodel = FunctionalModel(model)
    theta, x = fmodel.theta(), torch.randn(4, 2, 6, 6, dtype=torch.float64)
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    patches = torch.stack([padded[:, :, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].reshape(4, -1)
                           for i in range(3) for j in range(3)], dim=1)  # B × pixels × 18
    rows = torch.cat([patches, torch.ones(4, 9, 1, dtype=x.dtype)], -1).reshape(-1, 19)
    a = rows.T @ rows / rows.shape[0]
    z = model.conv(x).detach().requires_grad_(True)
    logits = model.head(torch.tanh(z).flatten(1))
    s = torch.zeros(3, 3, dtype=x.dtype)
    for c in range(4):
        (delta,) = torch.autograd.grad(logits[:, c].sum(), z, retain_graph=True)
        d = delta.permute(0, 2, 3, 1).reshape(-1, 3)
        s += d.T @ d / 4
    conv_block, head_block = KFACMetric(fmodel, x).factors(theta)
    assert conv_block.name == "conv" and head_block.name == "head"
    assert rel(conv_block.a, a) < 1e-12 and rel(conv_block.s, s) < 1e-12
    # the operator's conv block is A ⊗ S in θ's layout (weight row-major, then bias)
    operator = KFACMetric(fmodel, x).at(theta)
    weight, bias = fmodel.slices()["conv.weight"], fmodel.slices()["conv.bias"]
    block = operator.dense()[weight.start : bias.stop, weight.start : bias.stop]
    kron = torch.kron(s, a)  # rows (o, i) with i over 18 patch entries + 1 bias
    order = [o * 19 + i for o in range(3) for i in range(18)] + [o * 19 + 18 for o in range(3)]
    assert rel(block, kron[order][:, order]) < 1e-12


def test_what_kfac_does_not_cover_is_listed_and_has_no_metric():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, groups=2), nn.Flatten(), nn.LayerNorm(16), nn.Linear(16, 3)).double()
    fmodel = FunctionalModel(model)
    theta, x = fmodel.theta(), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    metric = KFACMetric(fmodel, x)
    assert metric.uncovered == ["0.weight", "0.bias", "2.weight", "2.bias"]
    operator = metric.at(theta)
    free = torch.zeros_like(theta)
    free[: fmodel.slices()["2.bias"].stop] = 1.0
    assert float((operator @ free).abs().max()) == 0.0
    assert torch.allclose(operator.solve(free, 0.5).x, free / 0.5)  # the plain step g / μ there
    with pytest.raises(WeightgeoError, match="covers nn.Linear and nn.Conv2d"):
        KFACMetric(nn.Sequential(nn.LayerNorm(3)), x)
    with pytest.raises(WeightgeoError, match="output and fisher"):
        KFACMetric(fmodel, x, kind="hessian")


def test_sampled_directions_for_many_classes():
    """With C > samples: ``samples`` Gaussian directions u_k, drawn once from the generator and
    weighted 1/samples; for one layer δ = u_k, so S = (1/(B·K)) Σ_k Σ_x u_k(x) u_k(x)ᵀ."""
    fmodel, theta, x = _linear(classes=12)
    metric = KFACMetric(fmodel, x, samples=3, generator=torch.Generator().manual_seed(4))
    (block,) = metric.factors(theta)
    generator = torch.Generator().manual_seed(4)
    draws = torch.stack([torch.randn(len(x), 12, generator=generator, dtype=x.dtype) for _ in range(3)])
    assert rel(block.s, torch.einsum("kbc,kbd->cd", draws, draws) / (3 * len(x))) < 1e-12
    assert rel(metric.factors(theta)[0].s, block.s) == 0  # the same directions at every point
    assert metric.at(theta).solve(torch.ones_like(theta), 1.0).cost == 4 and metric.product_cost == 4


def test_the_frozen_metric_keeps_the_continual_api():
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4)).double())
    theta, x = fmodel.theta(), torch.randn(9, 6, dtype=torch.float64)
    frozen = KroneckerMetric.build(fmodel, theta, x, "output", buffers=fmodel.clone_buffers())
    assert frozen.products == 5 and frozen.product_cost == 0
    live = KFACMetric(fmodel, x)
    other = theta + 0.3 * torch.randn_like(theta)
    v = torch.randn_like(theta)
    assert rel(frozen.at(other) @ v, live.at(theta) @ v) < 1e-14  # frozen at θ
    assert rel(live.at(other) @ v, live.at(theta) @ v) > 1e-3  # the live metric moves
    assert rel(live.frozen_at(theta).mvp(other, v), frozen.mvp(other, v)) < 1e-14
    force, speed_sq, cost = frozen.at(other).geodesic_force(v)
    assert force is None and cost == 0 and float(speed_sq) == pytest.approx(float(v @ (frozen.at(theta) @ v)))
    space = WeightSpace(fmodel, frozen, damping=0.1)
    assert torch.equal(space.expmap(theta, v), theta + v)
    assert float(space.dist(theta, theta + v)) == pytest.approx(float(v @ frozen.mvp(theta, v)) ** 0.5)


def test_the_kfac_product_is_differentiable_in_theta():
    """The product's θ-derivative (relax, shoot) against central differences."""
    torch.manual_seed(0)
    fmodel = FunctionalModel(TinyConv().double())
    theta, x = fmodel.theta(), torch.randn(3, 2, 6, 6, dtype=torch.float64)
    metric = KFACMetric(fmodel, x, kind="fisher")
    v, w = torch.randn(2, len(theta), dtype=theta.dtype).unbind(0)
    point = theta.clone().requires_grad_(True)
    (gradient,) = torch.autograd.grad(v @ metric.mvp(point, v), point)
    h = 1e-4
    slope = (v @ metric.mvp(theta + h * w, v) - v @ metric.mvp(theta - h * w, v)) / (2 * h)
    assert float(gradient @ w) == pytest.approx(float(slope), rel=1e-6)


class LowRank(Metric):
    """A fixed metric of rank 4 (the Nyström exactness case)."""

    product_cost = 0

    def __init__(self, n: int) -> None:
        torch.manual_seed(0)
        basis = torch.linalg.qr(torch.randn(n, 4, dtype=torch.float64)).Q
        self.matrix = basis @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ basis.T

    def mvp(self, theta, v):
        return self.matrix @ v


def test_nystrom_is_exact_for_a_low_rank_metric():
    n = 30
    inner = LowRank(n)
    theta, g = torch.zeros(n, dtype=torch.float64), torch.randn(n, dtype=torch.float64)
    metric = NystromMetric(inner, rank=6, generator=torch.Generator().manual_seed(1))
    operator = metric.at(theta)
    assert rel(operator.dense(), inner.matrix) < 1e-10
    assert rel(metric.mvp(theta, g), inner.matrix @ g) < 1e-10
    x = operator.solve(g, 0.1).x
    assert rel(inner.matrix @ x + 0.1 * x, g) < 1e-10
    frozen = metric.frozen_at(theta)
    assert isinstance(frozen, LowRankMetric) and rel(frozen.at(theta + 1).dense(), inner.matrix) < 1e-10
    old_api = LowRankMetric.nystrom(inner, theta, 6, torch.Generator().manual_seed(1))
    assert old_api.products == 6 and rel(old_api.at(theta).dense(), inner.matrix) < 1e-10
    with pytest.raises(WeightgeoError, match="rank must be in"):
        NystromMetric(inner, rank=31).at(theta)


def test_nystrom_of_the_output_metric_charges_its_sketch_once_per_point():
    fmodel, theta, x = _linear(batch=2)  # G has rank B·C = 8 ≤ r: the sketch is exact
    dense = OutputMetric(fmodel, x).dense(theta)
    metric = NystromMetric(OutputMetric(fmodel, x), rank=10, generator=torch.Generator().manual_seed(0))
    operator = metric.at(theta)
    assert rel(operator.dense(), dense) < 1e-10
    g = torch.randn_like(theta)
    assert operator.solve(g, 0.1).cost == 10 and operator.solve(g, 0.1).cost == 0
    assert metric.product_cost == 10


@pytest.mark.parametrize("build", [lambda f, x: KFACMetric(f, x),
                                   lambda f, x: NystromMetric(OutputMetric(f, x), 4, torch.Generator().manual_seed(0))])
def test_traverse_and_relax_run_under_kfac_and_nystrom(build):
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double())
    theta, x = fmodel.theta(), torch.randn(6, 4, dtype=torch.float64)
    target = theta + 0.5 * torch.randn_like(theta)
    space = WeightSpace(fmodel, build(fmodel, x), damping=0.1)
    path = traverse(space, TargetPoint(target), step_size=0.1, max_steps=5)
    assert len(path) == 6 and path.grad_evals > 0
    assert float(torch.linalg.vector_norm(path.end - target)) < float(torch.linalg.vector_norm(theta - target))
    straight = torch.stack([theta + t * (target - theta) for t in torch.linspace(0, 1, 5, dtype=theta.dtype)])
    before = float(space.segment_energies(straight).sum())
    relaxed = relax(space, theta, target, nodes=3, steps=8, lr=1e-2)
    after = float(space.segment_energies(torch.stack([p for _, p in relaxed.waypoints()])).sum())
    assert after < before  # the energy of the metric (from its products) went down
