"""The newer continual baselines checked for what they claim, on tiny deterministic cases.

A-GEM's step never conflicts with the memory gradient (and is the closest such vector); OGD's and
GPM's directions are orthogonal to what they protect, against dense float64 computations, and are
the μ → 0 limit of a damped solve; GPM's energy rule takes the fewest eigenvectors; LwF's target is
the previous model's outputs on the NEW inputs, over the earlier tasks' units of each scenario;
DER++'s stored logits are those of the network when the examples were stored.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from test_continual_methods import CLASSES, config, perturbed, synthetic_sequence
from torch import nn

from weightgeo.applications.continual import make_learner, run_method
from weightgeo.applications.continual.distill import distilled_units
from weightgeo.applications.continual.projection import LIMIT, extend_basis, grow_layer_basis
from weightgeo.data.streams import RandomSubsets
from weightgeo.functional import FunctionalModel, mask_logits
from weightgeo.manifolds.conflict import project_off_conflict


class ToDouble(nn.Module):
    """Casts the (float32) inputs to float64: a float64 network on the sequences' data."""

    def forward(self, x):
        return x.double()


def net64(outputs: int, hidden: int = 4) -> FunctionalModel:
    torch.manual_seed(0)
    return FunctionalModel(nn.Sequential(ToDouble(), nn.Flatten(), nn.Linear(6, hidden), nn.Tanh(),
                                         nn.Linear(hidden, outputs)).double())


def gradient(loss, theta):
    t = theta.detach().clone().requires_grad_(True)
    return torch.autograd.grad(loss(t), t)[0]


# -- A-GEM --------------------------------------------------------------------------------------------


def test_project_off_conflict_is_the_closest_vector_that_agrees_with_the_reference():
    generator = torch.Generator().manual_seed(3)
    r = torch.randn(20, generator=generator, dtype=torch.float64)
    for _ in range(5):
        g = torch.randn(20, generator=generator, dtype=torch.float64) - 2 * r  # conflicting: gᵀr < 0
        assert float(g @ r) < 0
        projected = project_off_conflict(g, r)
        assert abs(float(projected @ r)) < 1e-12 * float(g.norm() * r.norm())
        # the closest point of {v : vᵀr ≥ 0}: the change is along r, of length |gᵀr| / ‖r‖
        change = g - projected
        assert torch.allclose(change, (g @ r) / (r @ r) * r, rtol=1e-12)
    agreeing = r + 0.1 * torch.randn(20, generator=generator, dtype=torch.float64)
    assert torch.equal(project_off_conflict(agreeing, r), agreeing)


def stored_batch_loss(fmodel, batch, allowed):
    """The mean cross-entropy of a stored batch, one example at a time on its own units."""
    x, y, *units = batch

    def loss(t):
        rows = [units[0][i] if units else allowed for i in range(len(y))]
        return sum(F.cross_entropy(mask_logits(fmodel(t, x[i : i + 1]), rows[i]), y[i : i + 1])
                   for i in range(len(y))) / len(y)

    return loss


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_agem_step_has_a_non_negative_inner_product_with_the_memory_batchs_gradient(scenario):
    seq = synthetic_sequence(scenario, 3, n_train=20)
    fmodel = net64(seq.num_outputs)
    learner = make_learner("a-gem", fmodel, seq, config(memory=5, batch_size=4))
    for k in range(2):
        learner.after_task(k, perturbed(fmodel.theta(), k))
    learner.before_task(2, fmodel.theta())
    space = learner.conflict_space
    theta = perturbed(fmodel.theta(), 9)
    # the stored batches the space will draw: replay the stream from its state
    replica = RandomSubsets(tuple(learner.stored.columns), learner.stored.size)
    replica.load_state_dict(learner.stored.state_dict())
    r = gradient(stored_batch_loss(fmodel, replica.next(), seq.allowed(2)), theta)
    conflicting = -r + 0.3 * torch.randn(r.shape, generator=torch.Generator().manual_seed(1), dtype=r.dtype)
    assert float(conflicting @ r) < 0
    step = space.egrad2rgrad(theta, conflicting)
    assert float(step @ r) >= -1e-10 * float(r.norm() ** 2)
    assert torch.allclose(step, conflicting - (conflicting @ r) / (r @ r) * r, rtol=1e-9, atol=1e-12)
    assert space.products_spent == 1  # the memory gradient costs one evaluation
    agreeing = gradient(stored_batch_loss(fmodel, replica.next(), seq.allowed(2)), theta)  # gᵀr = ‖r‖² > 0
    assert torch.equal(space.egrad2rgrad(theta, agreeing), agreeing)
    assert space.products_spent == 2


def test_agem_pays_two_evaluations_per_step_once_there_is_a_memory():
    seq = synthetic_sequence("domain", 3, n_train=40)
    result = run_method("a-gem", seq, "mlp", config(), seed=0, model_config={"hidden": [5]})
    assert result.grad_evals == [13, 12, 12]  # 6 steps × (task + memory gradient) after the first task


# -- OGD ----------------------------------------------------------------------------------------------


def true_logit_gradient_loop(fmodel, theta, x, y):
    return torch.stack([gradient(lambda t, i=i: fmodel(t, x[i : i + 1])[0, y[i]], theta) for i in range(len(y))], 1)


@pytest.mark.parametrize("scenario", ["domain", "class"])
def test_ogd_direction_is_orthogonal_to_every_stored_output_gradient(scenario):
    seq = synthetic_sequence(scenario, 3, n_train=20)
    fmodel = net64(seq.num_outputs)
    learner = make_learner("ogd", fmodel, seq, config(memory=4))
    anchors = [perturbed(fmodel.theta(), k) for k in range(2)]
    for k in range(2):
        learner.after_task(k, anchors[k])
    stored = torch.cat([true_logit_gradient_loop(fmodel, anchors[k], learner.memory.x[k], learner.memory.y[k])
                        for k in range(2)], 1)  # n × 8, each at the weights its task ended with
    learner.before_task(2, anchors[1])
    g = torch.randn(fmodel.n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    direction = learner.space(2).egrad2rgrad(anchors[1], g)
    assert (stored.T @ direction).abs().max() < 1e-5 * float(stored.norm(dim=0).max() * g.norm())
    # … and it is g minus its orthogonal projection onto the stored gradients' span (dense), but for
    # the share μ/(1 + μ) of that projection that the μ → 0 limit keeps at μ = LIMIT
    q = torch.linalg.qr(stored).Q
    along = q @ (q.T @ g)
    assert torch.allclose(direction, g - along / (1 + LIMIT), rtol=1e-9, atol=1e-12)
    assert float((direction - (g - along)).norm()) < 2 * LIMIT * float(g.norm())
    # the μ → 0 limit of the damped step μ(G + μI)⁻¹g under G = Σ g_i g_iᵀ
    dense = stored @ stored.T
    mu = 1e-9
    limit = mu * torch.linalg.solve(dense + mu * torch.eye(fmodel.n, dtype=torch.float64), g)
    assert float((direction - limit).norm()) < 2 * LIMIT * float(g.norm())
    assert float(direction.norm()) > 0.1 * float(g.norm())  # not the zero vector


def test_extend_basis_keeps_the_old_basis_and_adds_only_new_directions():
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(30, 3, generator=generator, dtype=torch.float64)
    basis = extend_basis(None, a)
    assert basis.shape == (30, 3) and torch.allclose(basis.T @ basis, torch.eye(3, dtype=torch.float64))
    b = torch.cat([a[:, :2] @ torch.randn(2, 2, generator=generator, dtype=torch.float64),
                   torch.randn(30, 1, generator=generator, dtype=torch.float64)], 1)  # 2 old + 1 new direction
    grown = extend_basis(basis, b)
    assert grown.shape == (30, 4) and torch.equal(grown[:, :3], basis)
    assert torch.allclose(grown.T @ grown, torch.eye(4, dtype=torch.float64), atol=1e-12)
    residual = b - grown @ (grown.T @ b)
    assert float(residual.norm()) < 1e-10 * float(b.norm())


# -- GPM ----------------------------------------------------------------------------------------------


def test_gpm_energy_rule_takes_the_fewest_eigenvectors_beyond_the_basis():
    a = torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0], dtype=torch.float64))  # energy 10
    basis = grow_layer_basis(None, a, energy_left=0.25)  # need 7.5: 4 + 3 = 7 < 7.5 ≤ 9
    assert basis.shape == (4, 3)
    assert torch.allclose(basis.abs(), torch.eye(4, dtype=torch.float64)[:, :3])
    assert grow_layer_basis(None, a, energy_left=0.35).shape == (4, 2)  # need 6.5 ≤ 7
    # with e_4 (energy 1) held already: need 7.5 − 1 = 6.5 from 4, 3, 2 → two more
    held = torch.eye(4, dtype=torch.float64)[:, 3:]
    grown = grow_layer_basis(held, a, energy_left=0.25)
    assert grown.shape == (4, 3) and torch.equal(grown[:, :1], held)
    assert torch.allclose(grown[:, 1:].abs(), torch.eye(4, dtype=torch.float64)[:, :2])
    assert grow_layer_basis(torch.eye(4, dtype=torch.float64)[:, :3], a, 0.25).shape == (4, 3)  # 9 ≥ 7.5
    # from the m input rows (A = rowsᵀrows / m, fewer rows than inputs): the same bases
    rows = torch.randn(5, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    second = rows.T @ rows / 5
    for held in (None, torch.linalg.qr(torch.randn(9, 2, dtype=torch.float64)).Q):
        for left in (0.3, 0.05, 1e-9):
            from_rows = grow_layer_basis(held, second, left, rows)
            from_a = grow_layer_basis(held, second, left)
            assert from_rows.shape == from_a.shape and from_rows.shape[1] > (0 if held is None else 2)
            assert torch.allclose(from_rows @ from_rows.T, from_a @ from_a.T, atol=1e-8)


def test_gpm_direction_leaves_every_layers_protected_inputs_unchanged():
    seq = synthetic_sequence("class", 3, n_train=20)
    fmodel = net64(seq.num_outputs, hidden=8)
    learner = make_learner("gpm", fmodel, seq, config(memory=3, strength={"gpm": 1e-9}))  # all the energy
    anchors = [perturbed(fmodel.theta(), k) for k in range(2)]
    for k in range(2):
        learner.after_task(k, anchors[k])
    learner.before_task(2, anchors[1])
    g = torch.randn(fmodel.n, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    direction = learner.space(2).egrad2rgrad(anchors[1], g)
    slices = fmodel.slices()
    first, second = fmodel.module[2], fmodel.module[4]
    for layer, name, inputs in [
        (first, "2", [learner.memory.x[k].flatten(1).double() for k in range(2)]),
        (second, "4", [_hidden(fmodel, anchors[k], learner.memory.x[k]) for k in range(2)]),
    ]:
        w = direction[slices[f"{name}.weight"]].view(layer.out_features, layer.in_features)
        b = direction[slices[f"{name}.bias"]]
        for a in inputs:  # every stored input of every earlier task, at the weights it was stored with
            assert (a @ w.T + b).abs().max() < 1e-6 * float(g.norm())
        assert float(w.norm()) > 0  # the layer still moves, off the protected inputs
    assert float(direction.norm()) > 0.05 * float(g.norm())


def _hidden(fmodel, theta, x):
    params = fmodel.unflatten(theta)
    return torch.tanh(F.linear(x.flatten(1).double(), params["2.weight"], params["2.bias"]))


# -- LwF ----------------------------------------------------------------------------------------------


def kl_by_hand(logits, target, units, temperature):
    p = (logits[:, units] / temperature).softmax(-1)
    q = (target[:, units] / temperature).softmax(-1)
    return temperature**2 * (q * (q.log() - p.log())).sum(-1).mean()


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_lwf_distils_the_previous_models_outputs_on_the_new_inputs(scenario):
    seq = synthetic_sequence(scenario, 3, n_train=20)
    fmodel = net64(seq.num_outputs)
    lam, temperature = 0.7, 3.0
    learner = make_learner("lwf", fmodel, seq, config(strength={"lwf": lam}, lwf_temperature=temperature))
    previous = perturbed(fmodel.theta(), 1)  # the weights task 2 starts from
    learner.before_task(2, previous)
    theta = perturbed(previous, 2)
    data = seq.tasks[2].train
    batch = (data.x[:10], data.y[:10])
    value = learner.training_loss(2)(theta, batch)
    logits, target = fmodel(theta, batch[0]), fmodel(previous, batch[0])
    cross_entropy = F.cross_entropy(mask_logits(logits, seq.allowed(2)), batch[1])
    groups = {"task": [list(range(0, 3)), list(range(3, 6))], "class": [list(range(0, 6))],
              "domain": [list(range(CLASSES))]}[scenario]
    expected = cross_entropy + lam * sum(kl_by_hand(logits, target, units, temperature) for units in groups)
    assert torch.allclose(value, expected, rtol=1e-10)
    assert float(value - cross_entropy) > 1e-4  # the term is there
    # at the task's start the previous model agrees with itself: no distillation term
    assert torch.allclose(learner.training_loss(2)(previous, batch),
                          F.cross_entropy(mask_logits(fmodel(previous, batch[0]), seq.allowed(2)), batch[1]))
    assert [None if u is None else u.nonzero().flatten().tolist() for u in distilled_units(seq, 2)] == (
        [None] if scenario == "domain" else groups)


def test_lwf_keeps_no_memory_and_its_first_task_is_plain_training():
    seq = synthetic_sequence("class", 2, n_train=20)
    fmodel = net64(seq.num_outputs)
    learner = make_learner("lwf", fmodel, seq, config())
    learner.before_task(0, fmodel.theta())
    assert learner.previous is None
    learner.after_task(0, fmodel.theta())
    assert len(learner.memory) == 0


# -- DER++ --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["task", "class"])
def test_derpp_stores_the_logits_of_the_network_that_stored_the_examples(scenario):
    seq = synthetic_sequence(scenario, 3, n_train=20)
    fmodel = net64(seq.num_outputs)
    alpha, beta = 0.4, 0.6
    learner = make_learner("der++", fmodel, seq, config(memory=5, strength={"der++": alpha}, der_beta=beta))
    anchors = [perturbed(fmodel.theta(), k) for k in range(2)]
    for k in range(2):
        learner.after_task(k, anchors[k])
    for k in range(2):  # each task's examples with the logits of the weights they were stored at
        assert torch.allclose(learner.logits[k], fmodel(anchors[k], learner.memory.x[k]), rtol=0, atol=0)
    assert not torch.allclose(learner.logits[0], fmodel(anchors[1], learner.memory.x[0]))
    learner.before_task(2, anchors[1])
    replica = RandomSubsets(tuple(learner.stored.columns), learner.stored.size)
    replica.load_state_dict(learner.stored.state_dict())
    x, y, z, *units = replica.next()
    theta = perturbed(anchors[1], 5)
    data = seq.tasks[2].train
    batch = (data.x[:6], data.y[:6])
    value = learner.training_loss(2)(theta, batch)
    logits = fmodel(theta, x)
    allowed = units[0] if units else seq.allowed(2)
    where = [int((learner.memory.inputs().flatten(1) - xi.flatten()).abs().sum(1).argmin()) for xi in x]
    assert torch.equal(z, torch.cat(learner.logits)[where])  # each example drawn with its own stored logits
    if scenario == "task":  # … and scored on its own task's units
        tasks = learner.memory.task_ids()[where]
        assert [u.nonzero().flatten().tolist() for u in units[0]] == [list(range(3 * k, 3 * k + 3))
                                                                      for k in tasks.tolist()]
    expected = (F.cross_entropy(mask_logits(fmodel(theta, batch[0]), seq.allowed(2)), batch[1])
                + alpha * ((logits - z) ** 2).mean() + beta * F.cross_entropy(mask_logits(logits, allowed), y))
    assert torch.allclose(value, expected, rtol=1e-10)


# -- every new method, every scenario ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["lwf", "a-gem", "der++", "ogd", "gpm"])
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_every_new_baseline_runs_in_every_scenario_within_its_budget(method, scenario):
    seq = synthetic_sequence(scenario, 3, n_train=40)
    result = run_method(method, seq, "mlp", config(), seed=0, model_config={"hidden": [5]})
    assert not result.diverged and all(12 <= spent <= 13 for spent in result.grad_evals)
    assert 0 <= result.scores["avg_accuracy"] <= 1


# -- the split-CIFAR sequences (fake files in torchvision's format) ------------------------------------

NEW = ("lwf", "a-gem", "der++", "ogd", "gpm")


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    from weightgeo.data.testing import write_fake_cifar

    where = tmp_path_factory.mktemp("cifar")
    write_fake_cifar(where, "cifar10", n_train=100, n_test=50, seed=0)
    write_fake_cifar(where, "cifar100", n_train=200, n_test=100, seed=1)
    return where


@pytest.mark.slow
@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_new_baselines_learn_split_cifar10_with_a_resnet18(cifar_root, scenario):
    from weightgeo.data import make_task_sequence
    from weightgeo.data.testing import fake_cifar_checksums

    with fake_cifar_checksums():
        seq = make_task_sequence("split-cifar10", scenario, 2, root=cifar_root, max_train=16)
    settings = config(budget=4, batch_size=8, memory=2)
    for method in NEW:  # batch norm, convolutions (GPM's patches), 2 tasks of 5 classes
        result = run_method(method, seq, "resnet18", settings, seed=0, model_config={"width": 0.125})
        assert result.grad_evals == [4, 4] and not result.diverged, method
        assert all(0 <= a <= 1 for row in result.matrix for a in row[: len(row)] if a == a)


def test_cli_runs_the_new_baselines_on_split_cifar100_class_incremental(cifar_root, tmp_path):
    import csv

    from click.testing import CliRunner

    from weightgeo.cli import cli
    from weightgeo.data.testing import fake_cifar_checksums

    with fake_cifar_checksums():
        result = CliRunner().invoke(cli, [
            "continual", "--tasks", "split-cifar100", "--scenario", "class", "--n-tasks", "2", "--model", "mlp",
            "--method", ",".join(NEW), "--budget", "6", "--batch-size", "8", "--memory", "2", "--max-train", "20",
            "--data-root", str(cifar_root), "--device", "cpu", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(tmp_path / "run" / "results.csv")))
    assert [r["method"] for r in rows] == list(NEW)
    assert [int(r["grad_evals"]) for r in rows] == [12, 12, 12, 12, 12]  # 6 per task (A-GEM: 2 × 3 steps)
