"""The Sparsity objective: exact masks, gradient vs finite differences, line limit, re-ranking."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.objectives import Sparsity
from weightgeo.objectives.sparsity import check_sparsity, keep_mask, measured_sparsity


def _model() -> FunctionalModel:
    torch.manual_seed(0)
    return FunctionalModel(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double())


def test_keep_mask_prunes_exactly_the_smallest_eligible() -> None:
    scores = torch.tensor([5.0, 0.1, 3.0, 0.2, 9.0, 0.05, 1.0, 7.0])
    eligible = torch.tensor([True, True, True, True, True, False, True, True])
    keep = keep_mask(scores, eligible, 0.5)
    # 7 eligible → round(3.5) = 4 pruned: 0.1, 0.2, 1.0, 3.0; the ineligible 0.05 is kept
    assert keep.tolist() == [True, False, False, False, True, True, False, True]
    layer = keep_mask(scores, eligible, 0.5, groups=[slice(0, 4), slice(4, 8)])
    # each group pruned on its own: {0.1, 0.2} of the first four, {1.0} and one more of {9, 1, 7}
    assert layer[:4].tolist() == [True, False, True, False]
    assert int((~layer[4:]).sum()) == round(0.5 * 3)


@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_rank_prunes_the_smallest_magnitudes_and_keeps_a_large_negative_weight(ranking: str) -> None:
    fm = _model()
    theta = fm.theta()
    eligible = fm.weight_mask()
    layers = [s for s, shape in zip(fm.slices().values(), fm.shapes) if len(shape) >= 2]
    theta[layers[0].start + 2], theta[layers[1].start + 4] = -10.0, -7.0
    keep = Sparsity(fm, 0.8, ranking=ranking).rank(theta)
    assert bool(keep[layers[0].start + 2]) and bool(keep[layers[1].start + 4])
    pruned = set((eligible & ~keep).nonzero().squeeze(1).tolist())
    sets = [eligible.nonzero().squeeze(1)] if ranking == "global" else [torch.arange(s.start, s.stop) for s in layers]
    for index in sets:  # each ranked set loses exactly its smallest |θ|
        smallest = index[torch.argsort(theta[index].abs(), stable=True)[: round(0.8 * len(index))]]
        assert pruned & set(index.tolist()) == set(smallest.tolist())
    assert bool(keep[~eligible].all())


@pytest.mark.parametrize("level", [0.0, 0.5, 0.9, 0.98])
@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_apply_is_exact_and_reported_sparsity_counts_zeros(level: float, ranking: str) -> None:
    fm = _model()
    theta = fm.theta()
    objective = Sparsity(fm, level, ranking=ranking)
    sparse = objective.apply(theta)
    eligible = fm.weight_mask()
    zeros = int(((sparse == 0) & eligible).sum())
    assert measured_sparsity(sparse, eligible) == zeros / int(eligible.sum())
    if ranking == "global":
        assert zeros == round(level * int(eligible.sum()))
    # biases (not eligible) are untouched; kept weights unchanged
    assert torch.equal(sparse[~eligible], theta[~eligible])
    kept = objective.mask(theta)
    assert torch.equal(sparse[kept], theta[kept])
    assert float(objective.distance(sparse)) == 0.0 and objective.done(sparse)


def test_include_biases_makes_biases_prunable() -> None:
    fm = _model()
    objective = Sparsity(fm, 0.5, include_biases=True)
    assert int(objective.eligible.sum()) == fm.n
    sparse = objective.apply(fm.theta())
    assert int((sparse == 0).sum()) == round(0.5 * fm.n)


def test_gradient_matches_finite_differences_float64() -> None:
    fm = _model()
    torch.manual_seed(1)
    theta = fm.theta() + 0.01 * torch.randn(fm.n, dtype=torch.float64)
    objective = Sparsity(fm, 0.6)
    value, grad = objective.value_and_grad(theta)  # fixes the mask at θ
    assert torch.allclose(value, objective.value(theta))
    direction = torch.randn(fm.n, dtype=torch.float64)
    h = 1e-6
    fd = (objective.value(theta + h * direction) - objective.value(theta - h * direction)) / (2 * h)
    assert torch.allclose(fd, grad @ direction, rtol=1e-7, atol=1e-10)
    # and the closed form agrees with autograd through value()
    t = theta.clone().requires_grad_(True)
    (auto,) = torch.autograd.grad(objective.value(t), t)
    assert torch.allclose(auto, grad)


def test_step_limit_is_the_line_minimiser() -> None:
    fm = _model()
    theta = fm.theta()
    objective = Sparsity(fm, 0.7)
    r = objective.pruned(theta)
    # the full step −r reaches the hyperplane exactly: a longer step is cut to it
    assert torch.allclose(objective.step_limit(theta, -3.0 * r), torch.tensor(1 / 3, dtype=theta.dtype))
    t = objective.step_limit(theta, -0.5 * r)
    assert float(t) == 1.0  # a short step is not lengthened
    assert float(objective.step_limit(theta, r)) == 0.0  # moving away: no step


def test_fixed_mask_versus_reranking() -> None:
    fm = _model()
    theta = fm.theta()
    fixed = Sparsity(fm, 0.5)
    rerank = Sparsity(fm, 0.5, rerank_every=1)
    fixed.value_and_grad(theta)
    rerank.value_and_grad(theta)
    # shrink the kept weights below the pruned ones: only the re-ranking objective follows
    moved = theta * (1 - 0.99 * fixed.mask(theta).double() * fm.weight_mask().double())
    fixed.value_and_grad(moved)
    rerank.value_and_grad(moved)
    assert torch.equal(fixed.keep, keep_mask(theta.abs(), fm.weight_mask(), 0.5))
    assert not torch.equal(rerank.keep, fixed.keep)
    assert torch.equal(rerank.keep, keep_mask(moved.abs(), fm.weight_mask(), 0.5))


def test_set_sparsity_raises_the_level_along_one_path() -> None:
    fm = _model()
    theta = fm.theta()
    objective = Sparsity(fm, 0.5)
    first = objective.apply(theta)
    objective.set_sparsity(0.8, first)
    second = objective.apply(first)
    eligible = fm.weight_mask()
    assert measured_sparsity(second, eligible) > measured_sparsity(first, eligible)
    assert bool(((first == 0) <= (second == 0)).all())  # what was pruned stays pruned


@pytest.mark.parametrize("bad", [1.0, -0.1, "abc", None, float("nan")])
def test_bad_sparsity_is_refused(bad) -> None:
    with pytest.raises(WeightgeoError, match="sparsity"):
        check_sparsity(bad)
    with pytest.raises(WeightgeoError):
        Sparsity(_model(), bad)
