"""Layer-wise OBS (OBC) and iterative magnitude pruning with rewinding, against dense references.

OBC's claims: H is the damped second moment of each layer's inputs (with the bias column when
the bias compensates; unfolded patches for a Conv2d); every greedy removal is the one that adds
the least exact layer-wise error, and adds exactly what it records; a pruned row is the exact
constrained least-squares minimiser; each layer takes its cheapest prefixes; obs-distill spends
nothing on the pruning and its whole budget on distillation. imp-rewind's claims: each round
rewinds the kept weights to the rewind point and retrains them for budget/R minibatches.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightgeo.applications.sparsify import (
    METHODS,
    SparsifySettings,
    SparsifyTask,
    masked_distill,
    masked_finetune,
)
from weightgeo.applications.sparsify.obs import (
    LayerwiseOBS,
    allocate,
    greedy_removals,
    observe_layers,
    reconstruct,
    refit_in_sequence,
    saliency_removals,
)
from weightgeo.data import Data
from weightgeo.functional import FunctionalModel

CLASSES = 3


def _net(seed: int = 0, dtype: torch.dtype = torch.float64) -> FunctionalModel:
    torch.manual_seed(seed)
    return FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, CLASSES)).to(dtype))


def _inputs(n: int = 40) -> torch.Tensor:
    return torch.randn(n, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)


def _task(dtype=torch.float64, **settings) -> SparsifyTask:
    fm = _net(dtype=dtype)
    x = _inputs().to(dtype)
    y = x.flatten(1)[:, :CLASSES].argmax(1)
    data = Data(x.float(), y, CLASSES, "toy")
    return SparsifyTask(fm, fm.theta(), data, SparsifySettings(batch_size=8, **settings), inputs=x)


def _problem(d: int = 6, n: int = 30, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs X (n × d, last column ones: a bias), H = XᵀX/n + λI and one row w."""
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([torch.randn(n, d - 1, generator=g, dtype=torch.float64),
                   torch.ones(n, 1, dtype=torch.float64)], dim=1)
    h = x.T @ x / n + 0.05 * torch.eye(d, dtype=torch.float64)
    return x, h, torch.randn(d, generator=g, dtype=torch.float64)


def _error(h: torch.Tensor, w: torch.Tensor, pruned: list[int]) -> float:
    """min over w' with w'_P = 0 of (w' − w)ᵀ H (w' − w), by a dense solve on the kept coordinates."""
    kept = [i for i in range(len(w)) if i not in pruned]
    if not pruned:
        return 0.0
    d_p = -w[pruned]
    h_kk, h_kp, h_pp = h[kept][:, kept], h[kept][:, pruned], h[pruned][:, pruned]
    d_k = -torch.linalg.solve(h_kk, h_kp @ d_p)
    return float(d_p @ h_pp @ d_p + 2 * d_k @ h_kp @ d_p + d_k @ h_kk @ d_k)


# -- the layer Hessians --------------------------------------------------------------------------
def test_each_layers_hessian_is_the_damped_second_moment_of_its_inputs_with_the_bias_column() -> None:
    fm, x = _net(), _inputs()
    theta = fm.theta()
    layers = observe_layers(fm, theta, x, fm.weight_mask(), dampening=0.1, batch_size=16)
    assert [(layer.rows, layer.columns) for layer in layers] == [(5, 4), (CLASSES, 5)]
    first, second = fm.module[1], fm.module[3]
    a0 = torch.cat([x.flatten(1), torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    a1 = torch.cat([torch.tanh(first(x.flatten(1))), torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    for layer, a in zip(layers, (a0, a1), strict=True):
        second_moment = a.T @ a / len(a)
        expected = second_moment + 0.1 * second_moment.diagonal().mean() * torch.eye(len(second_moment),
                                                                                     dtype=x.dtype)
        assert torch.allclose(layer.hessian, expected, rtol=1e-12, atol=1e-12)
    assert torch.equal(layers[1].matrix(theta), torch.cat([second.weight, second.bias[:, None]], dim=1))
    # a pruned (eligible) bias does not compensate: no bias column
    (first_again, _) = observe_layers(fm, theta, x, fm.weight_mask(include_biases=True), dampening=0.1)
    assert first_again.bias is None and first_again.hessian.shape == (4, 4)


def test_a_conv_layers_hessian_is_over_its_unfolded_patches() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 3 * 3, 2))
    fm = FunctionalModel(net.double())
    x = torch.randn(6, 2, 5, 5, dtype=torch.float64)
    (conv, _) = observe_layers(fm, fm.theta(), x, fm.weight_mask(), dampening=0.0)
    patches = F.unfold(x, 3, padding=1, stride=2).transpose(1, 2).reshape(-1, 18)
    patches = torch.cat([patches, torch.ones(len(patches), 1, dtype=x.dtype)], dim=1)
    assert conv.columns == 18 and conv.rows == 3
    assert torch.allclose(conv.hessian, patches.T @ patches / len(patches), rtol=1e-12, atol=1e-12)


# -- the greedy removals -------------------------------------------------------------------------
def test_every_greedy_removal_adds_the_least_exact_error_and_exactly_what_it_records() -> None:
    _, h, w = _problem()
    order, increments = greedy_removals(w[None], h, columns=5, compact_every=2)
    pruned: list[int] = []
    for step in range(5):
        base = _error(h, w, pruned)
        added = {q: _error(h, w, pruned + [q]) - base for q in range(5) if q not in pruned}
        best = min(added, key=added.get)
        assert int(order[0, step]) == best
        assert float(increments[0, step]) == pytest.approx(added[best], rel=1e-9, abs=1e-12)
        pruned.append(best)
    assert 5 not in order[0].tolist()  # the bias column is never removed
    # and the order is not the magnitude order (the case discriminates)
    assert order[0].tolist() != torch.argsort(w[:5].abs()).tolist()


def test_rows_are_pruned_independently_whatever_the_chunk() -> None:
    _, h, _ = _problem(d=7)
    rows = torch.randn(5, 7, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    together = greedy_removals(rows, h, 6, chunk=16, compact_every=3)
    for r in range(5):
        alone = greedy_removals(rows[r:r + 1], h, 6, chunk=1, compact_every=100)
        assert torch.equal(together[0][r], alone[0][0])
        assert torch.allclose(together[1][r], alone[1][0], rtol=1e-10, atol=1e-14)


def test_saliency_order_is_the_dense_rows_w_squared_over_the_inverse_diagonal() -> None:
    _, h, w = _problem()
    order, values = saliency_removals(w[None], h, 5)
    score = w[:5].square() / torch.linalg.inv(h).diagonal()[:5]
    assert order[0].tolist() == torch.argsort(score).tolist()
    assert torch.allclose(values[0], score.sort().values)


def test_reconstruction_is_the_constrained_least_squares_row() -> None:
    x, h, w = _problem()
    pruned = torch.tensor([0, 3])
    out = reconstruct(w, h, pruned)
    assert float(out[pruned].abs().max()) == 0.0
    # the same minimiser by lstsq on the damped data [X/√n; √λ I] over the kept coordinates
    kept = [1, 2, 4, 5]
    n, lam = len(x), 0.05
    design = torch.cat([x / n ** 0.5, lam ** 0.5 * torch.eye(6, dtype=x.dtype)])
    target = design @ w
    solution = torch.linalg.lstsq(design[:, kept], target[:, None]).solution[:, 0]
    assert torch.allclose(out[kept], solution, rtol=1e-9, atol=1e-12)
    assert float((out - w) @ h @ (out - w)) == pytest.approx(_error(h, w, [0, 3]), rel=1e-9)


def test_allocation_takes_the_cheapest_prefixes() -> None:
    increments = torch.tensor([[0.1, 0.5, 0.9, 2.0], [0.2, 0.3, 0.4, 3.0], [0.05, 1.0, 1.1, 1.2]],
                              dtype=torch.float64)
    for count in range(13):
        taken = allocate(increments, count)
        assert int(taken.sum()) == count
        cost = sum(float(increments[r, :int(k)].sum()) for r, k in enumerate(taken))
        best = min(sum(float(increments[r, :k].sum()) for r, k in enumerate(ks))
                   for ks in itertools.product(range(5), repeat=3) if sum(ks) == count)
        assert cost == pytest.approx(best)
    # a later removal cheaper than an earlier one is taken only with it (prefixes)
    assert allocate(torch.tensor([[1.0, 0.0], [0.5, 0.6]]), 1).tolist() == [0, 1]


# -- the pruner and the method ----------------------------------------------------------------------
def test_the_pruner_keeps_the_references_layer_counts_and_each_layer_error_is_its_increments() -> None:
    task = _task()
    pruner = LayerwiseOBS(task.fmodel, task.theta, task.inputs, task.eligible, dampening=0.01)
    reference = task.magnitude_mask(task.theta, 0.6)
    theta, keep = pruner.prune(reference)
    assert torch.equal(theta, theta * keep) and bool(keep[~task.eligible].all())
    for layer, (order, increments) in zip(pruner.layers, pruner.orders(), strict=True):
        assert int((~keep[layer.weight]).sum()) == int((~reference[layer.weight]).sum())
        before, after = layer.matrix(task.theta), layer.matrix(theta)
        for r in range(layer.rows):
            pruned = (after[r, :layer.columns] == 0).nonzero().squeeze(1)
            count = len(pruned)
            assert set(pruned.tolist()) == set(order[r, :count].tolist())  # a prefix of its order
            delta = after[r] - before[r]
            assert float(delta @ layer.hessian @ delta) == pytest.approx(float(increments[r, :count].sum()),
                                                                          rel=1e-8, abs=1e-12)


def test_obs_distill_spends_nothing_on_pruning_and_its_budget_on_distillation() -> None:
    task = _task()
    (zero,) = METHODS["obs-distill"](task, [0.6], 0)
    pruned, keep = task.layerwise_obs.prune(task.magnitude_mask(task.theta, 0.6))
    assert zero.grad_evals == 0 and torch.equal(zero.theta, pruned) and torch.equal(zero.keep, keep)
    (spent,) = METHODS["obs-distill"](task, [0.6], 12)
    reference = masked_distill(task.fmodel, pruned, keep, task.distillation, 12, lr=task.settings.lr_distill,
                               batch_size=8, seed=0)
    assert spent.grad_evals == 12 and torch.allclose(spent.theta, reference.theta, rtol=0, atol=1e-12)
    # the layer-wise surgeon keeps the outputs closer than magnitude pruning at the same counts
    x = task.inputs
    with torch.no_grad():
        dense = task.fmodel(task.theta, x)
        obs_gap = (task.fmodel(pruned, x) - dense).square().mean()
        magnitude_gap = (task.fmodel(task.theta * task.magnitude_mask(task.theta, 0.6), x) - dense).square().mean()
    assert float(obs_gap) < 0.5 * float(magnitude_gap)


def test_obs_uses_obs_batch_inputs() -> None:
    few = _task(obs_batch=10).layerwise_obs.layers[0].hessian
    every = _task().layerwise_obs.layers[0].hessian
    by_hand = LayerwiseOBS(_net(), _net().theta(), _inputs()[:10], _net().weight_mask()).layers[0].hessian
    assert torch.allclose(few, by_hand) and not torch.allclose(few, every)


# -- the layer-wise geodesic step: OBC's mask, every layer refit in sequence -----------------------------
def _hidden(theta: torch.Tensor, fm: FunctionalModel, x: torch.Tensor) -> torch.Tensor:
    """The toy net's second layer's inputs [tanh(W₁x + b₁), 1], by hand."""
    sl = fm.slices()
    z = x.flatten(1) @ theta[sl["1.weight"]].view(5, 4).T + theta[sl["1.bias"]]
    return torch.cat([torch.tanh(z), torch.ones(len(x), 1, dtype=x.dtype)], dim=1)


def test_refit_is_each_layers_damped_least_squares_fit_to_the_dense_outputs_on_its_new_inputs() -> None:
    task = _task()
    pruner, fm, x = task.layerwise_obs, task.fmodel, task.inputs
    pruned, keep = pruner.prune(task.magnitude_mask(task.theta, 0.6))
    refit = pruner.refit(pruned, keep)
    assert torch.equal(refit, refit * keep) and bool((refit[~keep] == 0).all())
    first, second = pruner.layers
    # the first layer sees the dense inputs: its refit is OBS's reconstruction
    assert torch.allclose(first.matrix(refit), first.matrix(pruned), rtol=0, atol=1e-10)
    # the second: min mean (w'·ā' − w·ā)² + λ||w' − w||² over the kept coordinates, by a dense lstsq
    now, dense = _hidden(refit, fm, x), _hidden(task.theta, fm, x)
    lam = 0.01 * float((now.T @ now / len(x)).diagonal().mean())
    w, got = second.matrix(task.theta), second.matrix(refit)
    kept = torch.cat([keep[second.weight].view(second.rows, second.columns),
                      torch.ones(second.rows, 1, dtype=torch.bool)], dim=1)
    for r in range(second.rows):
        k = kept[r].nonzero().squeeze(1)
        a = torch.cat([now[:, k] / len(x) ** 0.5, lam ** 0.5 * torch.eye(len(k), dtype=torch.float64)])
        b = torch.cat([dense @ w[r] / len(x) ** 0.5, lam ** 0.5 * w[r, k]])
        expected = torch.zeros_like(w[r])
        expected[k] = torch.linalg.lstsq(a, b[:, None]).solution[:, 0]
        assert torch.allclose(got[r], expected, rtol=0, atol=1e-10)
    # the refit reads the pruned first layer's outputs, not the dense ones (OBS's rows differ)
    assert not torch.allclose(second.matrix(refit), second.matrix(pruned), atol=1e-6)
    direct = refit_in_sequence(fm, task.theta, pruned, keep, pruner.layers, x, dampening=0.01, batch_size=7)
    assert torch.allclose(direct, refit, rtol=0, atol=1e-10)  # batched sums, same fit


def test_layerwise_geodesic_is_obcs_mask_refit_then_its_whole_budget_distilled() -> None:
    task = _task(step="layerwise")
    pruned, keep = task.layerwise_obs.prune(task.magnitude_mask(task.theta, 0.6))
    refit = task.layerwise_obs.refit(pruned, keep)
    (zero,) = METHODS["geodesic"](task, [0.6], 0)
    assert zero.grad_evals == 0 and torch.equal(zero.keep, keep)
    assert torch.allclose(zero.theta, refit, rtol=0, atol=1e-12)
    (spent,) = METHODS["geodesic"](task, [0.6], 12)
    reference = masked_distill(task.fmodel, refit, keep, task.distillation, 12, lr=task.settings.lr_distill,
                               batch_size=8, seed=0)
    assert spent.grad_evals == 12 and torch.allclose(spent.theta, reference.theta, rtol=0, atol=1e-12)


# -- imp with rewinding ------------------------------------------------------------------------------
@pytest.mark.parametrize("rewind_steps", [0, 4])
def test_imp_rewind_rewinds_every_round_to_the_rewind_point(rewind_steps: int) -> None:
    budget, level = 24, 0.75
    task = _task(torch.float32, imp_rounds=2, lr_finetune=0.05, rewind_steps=rewind_steps)
    (result,) = METHODS["imp-rewind"](task, [level], budget)

    def finetune(theta, keep, steps):
        return masked_finetune(task.fmodel, theta, keep, task.train, steps, lr=0.05, batch_size=8, seed=0)

    every = torch.ones_like(task.eligible)
    rewind = finetune(task.theta, every, rewind_steps).theta if rewind_steps else task.theta
    per_round = (budget - rewind_steps) // 2
    first_keep = task.magnitude_mask(rewind, 1 - (1 - level) ** 0.5)
    first = finetune(rewind * first_keep, first_keep, per_round).theta
    second_keep = task.magnitude_mask(first, level) & first_keep
    second = finetune(rewind * second_keep, second_keep, budget - rewind_steps - per_round)
    assert result.grad_evals == budget
    assert torch.equal(result.keep, second_keep)
    assert torch.allclose(result.theta, second.theta, rtol=0, atol=1e-6)
    # the second round starts again from the rewind point, not from the first round's weights
    assert not torch.allclose((first * second_keep), (rewind * second_keep))
