"""Each sparsification method checked for what it claims, on a tiny network.

Properties a wrong sign, scale, index, split or reference would break: magnitude pruning
ranks |θ|; OBD ranks ½ F_ii θ_i² (against a dense Fisher); random pruning counts exactly
and depends on its seed; imp follows 1 − (1 − s)^{r/R} with budget/R per round;
distillation's target is aligned with its inputs; fip's λ changes its path; the geodesic's
stage is the metric projection under its settings; every method spends what it documents;
the label-free methods never read a label.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from weightgeo.applications.sparsify import (
    LABEL_FREE,
    METHODS,
    Distillation,
    SparsifySettings,
    SparsifyTask,
    geodesic_path,
    masked_distill,
    masked_finetune,
    stage_levels,
)
from weightgeo.data import Data
from weightgeo.data.streams import Minibatches, RandomSubsets
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace, project_to_sparse
from weightgeo.metrics import OutputMetric, build_metric
from weightgeo.objectives.sparsity import keep_mask

N_INPUTS = 24
CLASSES = 3


def _fmodel(dtype: torch.dtype = torch.float64, seed: int = 0) -> FunctionalModel:
    """4 → 5 → 3 with tanh: 35 prunable weights (20 + 15) and 8 biases."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, CLASSES)).to(dtype)
    return FunctionalModel(net)


def _data(shuffle_labels: bool = False) -> Data:
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(N_INPUTS, 1, 2, 2, generator=generator)
    y = x.flatten(1)[:, :CLASSES].argmax(1)
    if shuffle_labels:
        y = y[torch.randperm(N_INPUTS, generator=generator)]
    return Data(x, y, CLASSES, "toy")


def _task(dtype: torch.dtype = torch.float64, theta: torch.Tensor | None = None, shuffle_labels: bool = False,
          **settings) -> SparsifyTask:
    """A task on the tiny network; float64 unless a method trains with labels (Data is float32)."""
    fm = _fmodel(dtype)
    data = _data(shuffle_labels)
    defaults = {"metric_batch": N_INPUTS, "obd_batch": N_INPUTS, "fip_batch": N_INPUTS, "batch_size": 8}
    return SparsifyTask(fm, fm.theta() if theta is None else theta, data,
                        SparsifySettings(**{**defaults, **settings}), inputs=data.x.to(dtype))


def _pruned(keep: torch.Tensor, eligible: torch.Tensor) -> set[int]:
    return set((eligible & ~keep).nonzero().squeeze(1).tolist())


def _smallest(scores: torch.Tensor, index: torch.Tensor, count: int) -> set[int]:
    """The ``count`` coordinates of ``index`` with the smallest ``scores`` (a sort, not topk)."""
    order = torch.argsort(scores[index], stable=True)
    return set(index[order[:count]].tolist())


def _output_distance(fm: FunctionalModel, theta: torch.Tensor, theta0: torch.Tensor, x: torch.Tensor) -> float:
    with torch.no_grad():
        return float(0.5 * (fm(theta, x) - fm(theta0, x)).square().sum(-1).mean())


def _layers(task: SparsifyTask) -> list[torch.Tensor]:
    """The eligible coordinates of each weight matrix."""
    slices = [s for s, shape in zip(task.fmodel.slices().values(), task.fmodel.shapes) if len(shape) >= 2]
    return [torch.arange(s.start, s.stop) for s in slices]


# -- magnitude ---------------------------------------------------------------------------------
def test_magnitude_prunes_exactly_the_smallest_magnitudes_and_keeps_large_negative_weights() -> None:
    fm = _fmodel()
    theta = fm.theta()
    eligible = fm.weight_mask()
    index = eligible.nonzero().squeeze(1)
    big_negative, tiny_positive = int(index[3]), int(index[20])
    theta[big_negative], theta[tiny_positive] = -10.0, 1e-4
    task = _task(theta=theta)
    levels = [0.2, 0.5, 0.9]
    results = METHODS["magnitude"](task, levels, 50)
    for r in results:
        count = round(r.sparsity * 35)
        assert _pruned(r.keep, eligible) == _smallest(theta.abs(), index, count)
        assert bool(r.keep[big_negative]) and not bool(r.keep[tiny_positive])
        assert torch.equal(r.theta, theta * r.keep)  # kept weights and biases untouched
        assert bool(r.keep[~eligible].all())
        assert r.grad_evals == 0
    # the case discriminates: a signed ranking would prune the −10 weight first
    signed = keep_mask(theta, eligible, 0.2)
    assert not bool(signed[big_negative])


def test_layer_ranking_prunes_every_layer_to_the_level_by_its_own_magnitudes() -> None:
    theta = _fmodel().theta()
    first, second = _layers(_task())
    theta[second] = theta[second] * 100  # globally, the second layer would never be pruned
    task = _task(theta=theta.clone(), ranking="layer")
    (r,) = METHODS["magnitude"](task, [0.5], 0)
    for layer in (first, second):
        assert _pruned(r.keep, task.eligible) & set(layer.tolist()) == _smallest(
            theta.abs(), layer, round(0.5 * len(layer)))
    (g,) = METHODS["magnitude"](_task(theta=theta.clone()), [0.5], 0)
    assert bool(g.keep[second].all())  # the global ranking differs here


# -- random ------------------------------------------------------------------------------------
@pytest.mark.parametrize("ranking", ["global", "layer"])
def test_random_prunes_the_exact_count_and_its_mask_depends_on_the_seed(ranking: str) -> None:
    def masks(seed: int) -> list[torch.Tensor]:
        return [r.keep for r in METHODS["random"](_task(ranking=ranking, seed=seed), [0.3, 0.7], 0)]

    task = _task(ranking=ranking)
    first, again, other = masks(0), masks(0), masks(1)
    for level, keep in zip([0.3, 0.7], first):
        if ranking == "global":
            assert len(_pruned(keep, task.eligible)) == round(level * 35)
        else:
            for layer in _layers(task):
                assert int((~keep[layer]).sum()) == round(level * len(layer))
        assert bool(keep[~task.eligible].all())
        assert not torch.equal(keep, task.magnitude_mask(task.theta, level))
    assert all(torch.equal(a, b) for a, b in zip(first, again))  # reproducible
    assert all(not torch.equal(a, b) for a, b in zip(first, other))  # and drawn from the seed


# -- imp ---------------------------------------------------------------------------------------
def test_imp_prunes_on_the_geometric_schedule_with_an_equal_budget_per_round() -> None:
    task = _task(torch.float32, imp_rounds=4, lr_finetune=0.05)
    ranked: list[tuple[float, torch.Tensor]] = []
    magnitude_mask = task.magnitude_mask

    def spy(theta: torch.Tensor, level: float) -> torch.Tensor:
        ranked.append((level, theta.clone()))
        return magnitude_mask(theta, level)

    task.magnitude_mask = spy
    (result,) = METHODS["imp"](task, [0.9], 40)
    levels = [level for level, _ in ranked]
    assert levels == pytest.approx([1 - 0.1 ** (r / 4) for r in range(1, 5)], abs=1e-12)
    assert result.grad_evals == 40
    # the reference: R rounds of (rank |θ| at the round's level, fine-tune budget/R minibatches)
    s = task.settings
    theta, keep = task.theta, None
    for r, level in enumerate(levels, start=1):
        assert torch.equal(ranked[r - 1][1], theta)  # each round ranks the previous round's result
        keep = keep_mask(theta.abs(), task.eligible, level)
        theta, used, *_ = masked_finetune(task.fmodel, theta * keep, keep, task.train, 10, lr=s.lr_finetune,
                                         batch_size=s.batch_size, seed=s.seed)
        assert used == 10
    assert torch.equal(result.keep, keep)
    assert torch.allclose(result.theta, theta, rtol=0, atol=1e-7)
    assert len(_pruned(result.keep, task.eligible)) == round(0.9 * 35)


# -- obd ---------------------------------------------------------------------------------------
def _dense_fisher_diagonal(fm: FunctionalModel, theta: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """diag of (1/B) Σ_x J_xᵀ (diag p − p pᵀ) J_x from dense per-example logit Jacobians."""
    total = torch.zeros_like(theta)
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda t, xi=xi: fm(t, xi[None])[0], theta)  # C × n
        p = fm(theta, xi[None])[0].softmax(-1)
        h = torch.diag(p) - torch.outer(p, p)
        total += torch.einsum("ci,cd,di->i", jac, h, jac)
    return total / len(x)


def test_obd_ranks_by_half_fisher_diagonal_times_theta_squared() -> None:
    task = _task()
    theta, eligible = task.theta, task.eligible
    index = eligible.nonzero().squeeze(1)
    fisher = _dense_fisher_diagonal(task.fmodel, theta, task.inputs)
    saliency = 0.5 * fisher * theta.square()
    ordered = saliency[index].sort().values
    assert bool((ordered[1:] - ordered[:-1] > 1e-9 * ordered[-1]).all())  # no near-ties: the ranking is sharp
    levels = [k / 35 for k in range(1, 35)]
    results = METHODS["obd"](task, levels, CLASSES)
    differs_from_fisher = differs_from_magnitude = False
    for level, r in zip(levels, results):
        k = round(level * 35)
        assert _pruned(r.keep, eligible) == _smallest(saliency, index, k), k
        assert torch.equal(r.theta, theta * r.keep)  # no budget left to fine-tune
        assert r.grad_evals == CLASSES
        differs_from_fisher |= _pruned(r.keep, eligible) != _smallest(fisher, index, k)
        differs_from_magnitude |= _pruned(r.keep, eligible) != _smallest(theta.abs(), index, k)
    assert differs_from_fisher and differs_from_magnitude  # the case tells the three rankings apart


@pytest.mark.parametrize(("metric_batch", "obd_batch", "used"), [(5, None, 5), (5, 9, 9)])
def test_obd_estimates_its_fisher_on_metric_batch_inputs_unless_obd_batch_is_given(metric_batch, obd_batch,
                                                                                    used) -> None:
    task = _task(metric_batch=metric_batch, obd_batch=obd_batch)
    x = next(RandomSubsets(task.inputs, used, task.settings.seed))  # the batch obd draws
    saliency = 0.5 * _dense_fisher_diagonal(task.fmodel, task.theta, x) * task.theta.square()
    index = task.eligible.nonzero().squeeze(1)
    levels = [0.2, 0.5, 0.8]
    for level, r in zip(levels, METHODS["obd"](task, levels, CLASSES)):
        assert _pruned(r.keep, task.eligible) == _smallest(saliency, index, round(level * 35))
    everything = 0.5 * _dense_fisher_diagonal(task.fmodel, task.theta, task.inputs) * task.theta.square()
    assert any(_smallest(everything, index, round(level * 35)) != _smallest(saliency, index, round(level * 35))
               for level in levels)  # the batch matters: a Fisher on other inputs ranks differently


def test_obd_charges_one_gradient_evaluation_per_class_then_fine_tunes() -> None:
    with pytest.raises(WeightgeoError, match="obd"):
        METHODS["obd"](_task(), [0.5], CLASSES - 1)
    task = _task(torch.float32, lr_finetune=0.05)
    (charged,) = METHODS["obd"](task, [0.5], CLASSES)
    (tuned,) = METHODS["obd"](task, [0.5], CLASSES + 7)
    assert charged.grad_evals == CLASSES and tuned.grad_evals == CLASSES + 7
    assert torch.equal(tuned.keep, charged.keep)
    reference, used, *_ = masked_finetune(task.fmodel, charged.theta, charged.keep, task.train, 7,
                                         lr=0.05, batch_size=8, seed=0)
    assert used == 7 and torch.allclose(tuned.theta, reference, rtol=0, atol=1e-7)


# -- distillation ------------------------------------------------------------------------------
def test_distillation_target_is_aligned_with_its_inputs_on_every_shuffled_batch() -> None:
    fm = _fmodel()
    theta0, x = fm.theta(), _data().x.double()
    loss = Distillation(fm, theta0, x).loss()
    theta = theta0 + 0.1 * torch.randn(fm.n, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    batches = Minibatches(torch.arange(N_INPUTS), 5, seed=3)
    seen = []
    for _ in range(batches.per_epoch):
        index = batches.next()
        seen += index.tolist()
        xb = x[index]
        assert float(loss(theta0, xb)) == 0.0  # exactly: the target is f(x_b; θ₀)
        expected = 0.5 * (fm(theta, xb) - fm(theta0, xb)).square().sum(-1).mean()
        assert torch.allclose(loss(theta, xb), expected, rtol=1e-12, atol=0)
    assert sorted(seen) == list(range(N_INPUTS)) and seen != sorted(seen)  # a shuffled epoch


def test_masked_distill_stays_at_the_dense_network_and_pulls_a_pruned_one_toward_it() -> None:
    fm = _fmodel()
    theta0, x = fm.theta(), _data().x.double()
    distillation = Distillation(fm, theta0, x)
    everything = torch.ones(fm.n, dtype=torch.bool)
    still, used, *_ = masked_distill(fm, theta0, everything, distillation, 12, lr=0.1, batch_size=5)
    assert used == 12 and torch.equal(still, theta0)  # zero loss, zero gradient, no motion
    keep = keep_mask(theta0.abs(), fm.weight_mask(), 0.5)
    pruned = theta0 * keep
    before = _output_distance(fm, pruned, theta0, x)
    after_theta, used, *_ = masked_distill(fm, pruned, keep, distillation, 60, lr=0.1, batch_size=8)
    assert used == 60
    assert _output_distance(fm, after_theta, theta0, x) < 0.5 * before
    assert torch.equal(after_theta[~keep], torch.zeros_like(after_theta[~keep]))


def test_a_recovery_with_no_steps_is_the_pruned_point_and_a_steps_stop_at_step_zero() -> None:
    from weightgeo.stopping import StopReason

    fm = _fmodel()
    theta0, data = fm.theta(), _data()
    keep = keep_mask(theta0.abs(), fm.weight_mask(), 0.5)
    distillation = Distillation(fm, theta0, data.x.double())
    for recovery in (masked_finetune(fm, theta0, keep, data, 0), masked_distill(fm, theta0, keep, distillation, 0)):
        assert torch.equal(recovery.theta, theta0 * keep) and recovery.grad_evals == 0
        assert recovery.stop.reason is StopReason.STEPS and recovery.stop.step == 0


# -- labels ------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", sorted(METHODS))
def test_label_free_methods_never_read_a_label_and_the_others_do(method: str) -> None:
    settings = {"lr_finetune": 0.05, "cg_iters": 3, "fip_lr": 0.05}
    clean = METHODS[method](_task(torch.float32, **settings), [0.7], 20)[0]
    poisoned = METHODS[method](_task(torch.float32, shuffle_labels=True, **settings), [0.7], 20)[0]
    if method in LABEL_FREE:
        assert torch.equal(clean.theta, poisoned.theta)
    else:
        assert not torch.allclose(clean.theta, poisoned.theta)


def test_magnitude_distill_brings_the_outputs_closer_than_magnitude_alone() -> None:
    task = _task(lr_distill=0.1)
    (plain,) = METHODS["magnitude"](task, [0.6], 40)
    (distilled,) = METHODS["magnitude-distill"](task, [0.6], 40)
    assert torch.equal(plain.keep, distilled.keep) and distilled.grad_evals == 40
    x = task.inputs
    assert _output_distance(task.fmodel, distilled.theta, task.theta, x) < 0.5 * _output_distance(
        task.fmodel, plain.theta, task.theta, x)


# -- fip ---------------------------------------------------------------------------------------
def test_fip_lambda_changes_the_path_and_only_a_large_one_reaches_the_hyperplane() -> None:
    """D + λ·O has its minimiser off the hyperplane, nearer to it as λ grows: a small λ runs out
    of budget short of it, a large one gets there; either way the result is hard-pruned."""
    def run(lam: float):
        return METHODS["fip"](_task(fip_lam=lam, fip_lr=0.05), [0.7], 400)[0]

    weak, strong = run(0.3), run(3.0)
    assert weak.stop_reason != "done" and weak.grad_evals == 400
    assert strong.stop_reason == "done" and strong.grad_evals < 100
    assert not torch.allclose(weak.theta, strong.theta)
    eligible = _task().eligible
    for r in (weak, strong):
        assert len(_pruned(r.keep, eligible)) == round(0.7 * 35)
        assert torch.equal(r.theta, r.theta * r.keep)
        assert bool(r.keep[~eligible].all())


# -- the geodesic ------------------------------------------------------------------------------
@pytest.mark.parametrize(("metric", "damping", "cg_iters"), [
    ("output", 0.1, 10), ("output", 1.0, 3), ("fisher", 0.01, 5), ("output", 1e-3, 1),
])
def test_one_stage_geodesic_is_the_metric_projection_under_its_settings(metric, damping, cg_iters) -> None:
    """One stage, a budget of one projection: θ is the projection of θ₀ onto the magnitude mask
    under ``metric`` on the inputs, with ``damping`` and ``cg_iters`` — each override honoured."""
    task = _task(metric=metric, damping=damping, cg_iters=cg_iters, stage_ratio=100.0)
    path, (result,) = geodesic_path(task, [0.5], cg_iters + 1)
    keep = task.magnitude_mask(task.theta, 0.5)
    space = WeightSpace(task.fmodel, build_metric(metric, task.fmodel, task.inputs))
    expected, metric_sq, _, products = project_to_sparse(space, task.theta, keep, damping=damping, cg_iters=cg_iters)
    assert products == cg_iters + 1 == result.grad_evals  # CG ran to its cap: the cap is the setting's
    assert torch.equal(result.keep, keep)
    assert torch.allclose(result.theta, expected, rtol=1e-9, atol=1e-12)
    assert not torch.allclose(result.theta, task.theta * keep, rtol=0, atol=1e-3)  # it is not magnitude
    assert path.records[1]["metric_length"] == pytest.approx(float(metric_sq.sqrt()), rel=1e-9)
    assert (path.meta["metric"], path.meta["damping"], path.meta["cg_iters"]) == (metric, damping, cg_iters)


@pytest.mark.parametrize("step", ["projection", "natural-gradient"])
def test_geodesic_result_changes_with_each_override(step: str) -> None:
    base = {"damping": 0.1, "cg_iters": 4, "metric": "output", "metric_batch": N_INPUTS, "stage_ratio": 2.2,
            "step_size": 0.2, "path_share": 0.6}
    changed = {"damping": 1.0, "cg_iters": 2, "metric": "fisher", "metric_batch": 4, "stage_ratio": 1.5}
    if step == "natural-gradient":
        changed |= {"step_size": 0.05, "path_share": 0.3}

    def end(**settings) -> torch.Tensor:
        return METHODS["geodesic"](_task(step=step, **settings), [0.8], 40)[0].theta  # 4 stages affordable

    reference = end(**base)
    for name, value in changed.items():
        assert not torch.allclose(end(**{**base, name: value}), reference), name


@pytest.mark.parametrize("metric", ["euclidean", "diag-fisher"])
def test_geodesic_under_a_diagonal_metric_projects_like_magnitude_pruning(metric: str) -> None:
    """Under a diagonal G, G_KP = 0: the projection zeroes θ_P and leaves θ_K, a step of
    metric length √(Σ_P G_ii θ_i²)."""
    task = _task(metric=metric, cg_iters=4, stage_ratio=100.0)
    before: list[torch.Tensor] = []
    path, (result,) = geodesic_path(task, [0.6], 10, evaluate=lambda t, level: before.append(t.clone()) or {})
    keep = task.magnitude_mask(task.theta, 0.6)
    assert torch.equal(result.keep, keep)
    assert torch.equal(before[1], task.theta * keep)  # the projection, before the distillation
    diagonal = build_metric(metric, task.fmodel, task.inputs).at(task.theta).diagonal()
    expected = (diagonal * (task.theta * ~keep).square()).sum().sqrt()
    assert path.records[1]["metric_length"] == pytest.approx(float(expected), rel=1e-9)
    # the projection costs the metric's products: none under the Euclidean metric, one evaluation per
    # class for the diagonal Fisher; the rest of the budget went to the distillation
    assert path.records[1]["grad_evals"] == {"euclidean": 0, "diag-fisher": CLASSES}[metric]
    assert path.records[2]["distilled"] == 10 - path.records[1]["grad_evals"] == result.grad_evals - path.records[1]["grad_evals"]
    for k in (1, 2):  # each segment's recorded Euclidean length is the step between the points
        assert path.records[k]["euclidean_length"] == pytest.approx(float(torch.linalg.vector_norm(before[k] - before[k - 1])), rel=1e-6)


def test_a_projection_that_is_not_finite_ends_the_path_at_the_last_finite_point(monkeypatch) -> None:
    """A non-finite projection is never accepted: the stage is magnitude pruning of the last
    finite point, the path and every later level end non-finite with the hint to raise --damping."""
    from weightgeo.applications.sparsify import geodesic as module

    calls = []

    def poisoned(space, theta, keep, **solve):
        projection = project_to_sparse(space, theta, keep, **solve)
        calls.append(theta.clone())
        return projection._replace(point=projection.point * float("nan")) if len(calls) == 2 else projection

    monkeypatch.setattr(module, "project_to_sparse", poisoned)
    task = _task(one_path=True, cg_iters=2)
    path, (first, second) = geodesic_path(task, [0.5, 0.9], 60)
    assert len(calls) == 2 and path.stop_reason == "non-finite"
    assert not first.diverged and second.diverged and "— raise --damping" in second.message
    reached, stage = calls[1], path.meta["stages"][1]  # the poisoned stage: the first one inserted after 50%
    assert path.meta["stages"][0] == 0.5 and 0.5 < stage < 0.9
    stage_keep = keep_mask(reached.abs(), task.eligible, stage) & first.keep
    assert torch.equal(path.end, reached * stage_keep)  # the stage: magnitude pruning of the last finite point
    assert path.records[-1]["metric_length"] == 0.0 and path.records[-1]["stage_sparsity"] == stage
    expected = keep_mask((reached * stage_keep).abs(), task.eligible, 0.9) & stage_keep  # 90% read off it
    assert torch.equal(second.keep, expected) and torch.equal(second.theta, reached * expected)
    assert len(_pruned(second.keep, task.eligible)) == round(0.9 * 35)


@pytest.mark.parametrize("ratio", [1.5, 3.0])
def test_stage_ratio_sets_the_stages_each_exact_nested_and_paid_for(ratio: float) -> None:
    cg_iters, budget = 2, 60
    task = _task(stage_ratio=ratio, cg_iters=cg_iters)
    stages = [level for level, _ in stage_levels([0.9], ratio)]
    assert len(stages) == math.ceil(math.log(10) / math.log(ratio))
    seen: list[tuple[float, torch.Tensor]] = []

    def record(theta: torch.Tensor, level: float) -> dict:
        seen.append((level, theta.clone()))
        return {}

    path, (result,) = geodesic_path(task, [0.9], budget, evaluate=record)
    assert path.meta["stages"] == stages
    projections = [r for r in path.records[1:] if "distilled" not in r]
    assert [r["stage_sparsity"] for r in projections] == stages
    costs = [b["grad_evals"] - a["grad_evals"] for a, b in zip(path.records, projections)]
    assert all(1 <= c <= cg_iters + 1 for c in costs)  # G r and at most cg_iters CG products
    ends: dict[float, torch.Tensor] = {}
    for level, theta in seen[1:]:
        ends.setdefault(level, theta)  # each stage's end (at 90%: before the distillation)
    assert list(ends) == stages
    previous = task.theta
    for level, theta in ends.items():
        # each stage prunes the smallest |θ| of the previous stage's end: what was pruned stays pruned
        ranked = keep_mask(previous.abs(), task.eligible, level)
        assert torch.equal((theta == 0) & task.eligible, task.eligible & ~ranked)
        previous = theta
    assert result.grad_evals == budget  # the rest went to distillation at 90%


def test_geodesic_re_estimates_the_metric_on_a_fresh_batch_at_every_stage() -> None:
    """Each stage is the projection from the previous stage's end under the output metric on
    one of the unlabelled batches drawn (``metric_batch`` of them), a different one each stage."""
    damping, cg_iters = 0.1, 3
    task = _task(metric_batch=6, damping=damping, cg_iters=cg_iters)
    drawn: list[torch.Tensor] = []
    input_batches = task.input_batches

    def spy(size: int, seed: int):
        for batch in input_batches(size, seed):
            drawn.append(batch)
            yield batch

    task.input_batches = spy
    ends: dict[float, torch.Tensor] = {}

    def record(theta: torch.Tensor, level: float) -> dict:
        ends.setdefault(level, theta.clone())  # each stage's end (at 80%: before the distillation)
        return {}

    path, _ = geodesic_path(task, [0.8], 24, evaluate=record)
    assert list(ends)[1:] == path.meta["stages"] and len(ends) == 4  # the start and three stages
    assert all(len(batch) == 6 for batch in drawn)
    used = []
    previous = task.theta
    for level, theta in list(ends.items())[1:]:
        keep = keep_mask(previous.abs(), task.eligible, level)
        matches = [
            k for k, batch in enumerate(drawn)
            if torch.allclose(project_to_sparse(WeightSpace(task.fmodel, OutputMetric(task.fmodel, batch)), previous,
                                                keep, damping=damping, cg_iters=cg_iters).point,
                              theta, rtol=1e-9, atol=1e-12)
        ]
        assert len(matches) == 1, (level, matches)
        used += matches
        previous = theta
    assert len(set(used)) == len(used)  # a fresh batch at every stage


def test_small_budget_coarsens_the_schedule_so_projections_take_at_most_half() -> None:
    task = _task(cg_iters=2)
    path, (result,) = geodesic_path(task, [0.9], 12)
    assert len(path.meta["stages"]) == 2  # 3 stages at ratio 2.2 would cost 9 of 12
    assert result.grad_evals == 12
    projections = [r for r in path.records[1:] if "distilled" not in r]
    assert projections[-1]["grad_evals"] == 6


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_spends_what_it_documents(method: str) -> None:
    budget = 30
    task = _task(torch.float32, lr_finetune=0.05, cg_iters=3, fip_lr=0.001)
    results = METHODS[method](task, [0.5, 0.8], budget)
    for r in results:
        if method == "magnitude":
            assert r.grad_evals == 0
        elif method == "fip":  # one minibatch per step, stopped at the hyperplane or the budget
            assert r.grad_evals == budget or r.stop_reason == "done"
            assert r.grad_evals <= budget
        else:  # every other method spends its whole budget
            assert r.grad_evals == budget


def test_geodesic_finetune_splits_its_budget_by_finetune_share() -> None:
    budget = 24

    def run(method: str, **settings):
        return METHODS[method](_task(torch.float32, lr_finetune=0.05, cg_iters=3, **settings), [0.7], budget)[0]

    # all to fine-tuning: the geodesic gets nothing (magnitude pruning), then labels do the rest
    assert torch.allclose(run("geodesic-finetune", finetune_share=1.0).theta,
                          run("magnitude-finetune").theta, rtol=0, atol=1e-7)
    # none to fine-tuning: it is the geodesic
    assert torch.equal(run("geodesic-finetune", finetune_share=0.0).theta, run("geodesic").theta)
    # half and half: the geodesic on half the budget, then fine-tuning with the other half
    task = _task(torch.float32, lr_finetune=0.05, cg_iters=3)
    (geodesic_half,) = METHODS["geodesic"](task, [0.7], budget // 2)
    reference, used, *_ = masked_finetune(task.fmodel, geodesic_half.theta, geodesic_half.keep, task.train,
                                         budget // 2, lr=0.05, batch_size=8, seed=0)
    assert used == budget // 2
    assert torch.allclose(run("geodesic-finetune", finetune_share=0.5).theta, reference, rtol=0, atol=1e-7)


@pytest.mark.parametrize(("name", "value"), [("ranking", "per-neuron"), ("metric", "hessian"), ("step", "leap")])
def test_an_unknown_choice_in_the_settings_is_refused_naming_the_choices(name: str, value: str) -> None:
    with pytest.raises(WeightgeoError, match=f"{value!r}.*choose one of"):
        _task(**{name: value})


def test_a_geodesic_that_diverges_keeps_its_last_finite_point_and_reads_later_levels_off_it() -> None:
    """Distillation with a huge rate diverges at the first level: the path ends there (non-finite),
    that level is the last finite point, the later one is that point pruned to its level by
    magnitude (still exact), and geodesic-finetune does not fine-tune a diverged level."""
    task = _task(torch.float32, one_path=True, lr_distill=1e30, cg_iters=3, lr_finetune=0.05)
    path, (first, second) = geodesic_path(task, [0.5, 0.9], 40)
    assert path.stop_reason == "non-finite" and path.finished
    assert first.diverged and second.diverged and first.grad_evals == second.grad_evals <= 40
    assert "— lower --lr-distill" in first.message and first.message.startswith("geodesic at 50% sparsity")
    for r in (first, second):
        assert bool(torch.isfinite(r.theta).all())
        assert len(_pruned(r.keep, task.eligible)) == round(r.sparsity * 35)
        assert torch.equal(r.theta, r.theta * r.keep)
    assert torch.equal(second.keep, keep_mask(first.theta.abs(), task.eligible, 0.9) & first.keep)
    assert torch.equal(second.theta, first.theta * second.keep)
    tuned = METHODS["geodesic-finetune"](_task(torch.float32, one_path=True, lr_distill=1e30, cg_iters=3,
                                               lr_finetune=0.05, finetune_share=0.5), [0.5, 0.9], 80)
    assert [r.stop_reason for r in tuned] == ["non-finite", "non-finite"]
    assert torch.equal(tuned[0].theta, first.theta)  # the same 40-evaluation geodesic, not fine-tuned
    assert "— lower --lr-distill" in tuned[0].message
