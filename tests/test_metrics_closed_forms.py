"""Closed forms and block products of the metrics against dense references (float64).

Each test here was written for a generated mutant that survived the suite (TESTING.md, the
sample of 2026-11-26): a product or diagonal that no other test reached.
"""

from __future__ import annotations

import torch
from torch import nn

from weightgeo.functional import FunctionalModel
from weightgeo.metrics import Euclidean, FisherMetric, LowRankMetric, OutputMetric
from weightgeo.metrics.diagonal_fisher import FrozenDiagonal
from weightgeo.metrics.resampled import ResampledMetric


def _model() -> FunctionalModel:
    torch.manual_seed(0)
    return FunctionalModel(nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double())


def test_a_block_of_vectors_is_multiplied_column_by_column():
    fmodel = _model()
    metric = OutputMetric(fmodel, torch.randn(6, 3, dtype=torch.float64))
    theta, block = fmodel.theta(), torch.randn(fmodel.n, 3, dtype=torch.float64)
    columns = torch.stack([metric.mvp(theta, block[:, j]) for j in range(3)], 1)
    assert torch.allclose(metric.mvp(theta, block), columns, rtol=1e-10, atol=1e-12)
    assert torch.allclose(metric.mvp(theta, block), metric.dense(theta) @ block, rtol=1e-10, atol=1e-12)


def test_the_frozen_diagonal_metric_is_diag_d():
    d = torch.rand(5, dtype=torch.float64) + 0.1
    v, theta = torch.randn(5, dtype=torch.float64), torch.zeros(5, dtype=torch.float64)
    metric = FrozenDiagonal(d)
    assert torch.allclose(metric.mvp(theta, v), torch.diag(d) @ v, rtol=1e-14)
    assert torch.allclose(metric.at(theta) @ v, torch.diag(d) @ v, rtol=1e-14)


def test_the_low_rank_metrics_diagonal_is_the_dense_diagonal():
    torch.manual_seed(1)
    basis, _ = torch.linalg.qr(torch.randn(7, 3, dtype=torch.float64))
    eigenvalues = torch.tensor([3.0, 1.0, 0.5], dtype=torch.float64)
    operator = LowRankMetric(basis, eigenvalues).at(torch.zeros(7, dtype=torch.float64))
    dense = basis @ torch.diag(eigenvalues) @ basis.T
    assert torch.allclose(operator.diagonal(), torch.diagonal(dense), rtol=1e-12)


def test_euclidean_segment_energies_are_the_squared_lengths_of_every_segment():
    points = torch.randn(5, 4, dtype=torch.float64)
    expected = torch.stack([(points[k + 1] - points[k]).square().sum() for k in range(4)])
    assert torch.allclose(Euclidean().segment_energies(points), expected, rtol=1e-14)


def test_a_resampled_metric_reads_the_inputs_of_labelled_batches():
    fmodel = _model()
    x, y = torch.randn(4, 3, dtype=torch.float64), torch.tensor([0, 1, 1, 0])
    theta, v = fmodel.theta(), torch.randn(fmodel.n, dtype=torch.float64)
    base = OutputMetric(fmodel, torch.randn(4, 3, dtype=torch.float64))
    labelled = ResampledMetric(base, [(x, y)]).at(theta) @ v
    assert torch.allclose(labelled, OutputMetric(fmodel, x).mvp(theta, v), rtol=1e-10, atol=1e-12)


# -- the output-space geodesics of the pull-back metrics (relax's image objective) ----------------
def _logit_pair():
    g = torch.Generator().manual_seed(3)
    return torch.randn(7, 4, dtype=torch.float64, generator=g), 3 * torch.randn(7, 4, dtype=torch.float64, generator=g)


def test_the_output_metrics_output_geodesic_is_the_logits_straight_segment():
    a, b = _logit_pair()
    metric = OutputMetric(nn.Linear(2, 4), torch.zeros(1, 2))
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    curve = metric.output_geodesic(a, b, t)
    assert curve.shape == (3, 7, 4)
    assert torch.allclose(curve[0], a) and torch.allclose(curve[2], b)
    assert torch.allclose(curve[1], 0.75 * a + 0.25 * b, rtol=1e-14)


def test_the_fisher_metrics_output_geodesic_is_the_great_circle_of_root_p_at_constant_speed():
    # r = √p on the unit sphere: r(t) has unit norm, ⟨r(t), r_a⟩ = cos(tω), ⟨r(t), r_b⟩ = cos((1 − t)ω),
    # and its softmax is r(t)² (the logits are 2 log r up to a constant).
    a, b = _logit_pair()
    metric = FisherMetric(nn.Linear(2, 4), torch.zeros(1, 2))
    t = torch.tensor([0.0, 0.3, 0.5, 1.0], dtype=torch.float64)
    curve = metric.output_geodesic(a, b, t)
    r_a, r_b = a.softmax(-1).sqrt(), b.softmax(-1).sqrt()
    omega = (r_a * r_b).sum(-1).clamp(-1, 1).acos()
    r = curve.softmax(-1).sqrt()
    assert torch.allclose(r.norm(dim=-1), torch.ones(4, 7, dtype=torch.float64), rtol=1e-12)
    for k, tk in enumerate(t.tolist()):
        assert torch.allclose((r[k] * r_a).sum(-1), torch.cos(tk * omega), atol=1e-10)
        assert torch.allclose((r[k] * r_b).sum(-1), torch.cos((1 - tk) * omega), atol=1e-10)
    same = metric.output_geodesic(a, a, t)  # ω = 0: the constant curve, not 0/0
    assert torch.allclose(same.softmax(-1), a.softmax(-1).expand(4, -1, -1), rtol=1e-10)


def test_paired_distances_are_the_output_distances_of_each_pair():
    a, b = _logit_pair()
    outputs, targets = torch.stack([a, b, a]), torch.stack([b, b, 2 * a])
    for metric in (OutputMetric(nn.Linear(2, 4), torch.zeros(1, 2)), FisherMetric(nn.Linear(2, 4), torch.zeros(1, 2))):
        paired = metric.paired_distances(outputs, targets)
        expected = torch.stack([metric.output_distances(torch.stack([o, g]))[0] for o, g in zip(outputs, targets)])
        assert paired.shape == (3,) and torch.allclose(paired, expected, rtol=1e-14)
        assert float(paired[1]) == 0.0


def test_the_output_geodesics_take_fractions_as_a_list_at_the_logits_precision():
    # t given as Python floats must be read in the logits' dtype (float64), not as float32 fractions.
    a, b = _logit_pair()
    metric = OutputMetric(nn.Linear(2, 4), torch.zeros(1, 2))
    curve = metric.output_geodesic(a, b, [0.3])
    assert torch.allclose(curve[0], a + 0.3 * (b - a), rtol=0, atol=1e-14)


def test_the_fisher_output_geodesic_between_nearly_equal_outputs_is_the_midway_chord():
    # ω below 1e-6: the straight chord of √p, renormalised; at t = 0.5 it lies midway between the ends.
    a, _ = _logit_pair()
    b = a + 1e-8 * torch.randn(a.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    metric = FisherMetric(nn.Linear(2, 4), torch.zeros(1, 2))
    r = metric.output_geodesic(a, b, torch.tensor([0.5], dtype=torch.float64))[0].softmax(-1).sqrt()
    r_a, r_b = a.softmax(-1).sqrt(), b.softmax(-1).sqrt()
    to_a, to_b = (r - r_a).norm(dim=-1), (r - r_b).norm(dim=-1)
    assert torch.allclose(to_a, to_b, rtol=1e-3, atol=0)


def test_the_fisher_output_geodesic_takes_fractions_as_a_list_at_the_logits_precision():
    a, b = _logit_pair()
    metric = FisherMetric(nn.Linear(2, 4), torch.zeros(1, 2))
    r = metric.output_geodesic(a, b, [0.3])[0].softmax(-1).sqrt()
    r_a, r_b = a.softmax(-1).sqrt(), b.softmax(-1).sqrt()
    omega = (r_a * r_b).sum(-1).clamp(-1, 1).acos()
    assert torch.allclose((r * r_a).sum(-1), torch.cos(0.3 * omega), rtol=0, atol=1e-13)
