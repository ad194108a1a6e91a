"""Continual-learning methods checked for what they claim, on tiny hand-built task sequences.

Each test states a property that a wrong sign, scale, index, split or reference would break:
EWC's and online EWC's penalties against Fishers from a per-example loop, SI's importance
against its formula along a hand-made path, L2's anchor, fip's strength, the accuracy matrix
and the tuning split of sequences whose accuracies are known by construction, the geodesic
direction against a dense float64 solve, replay's labels and output units, the budgets, and
one end-to-end number on mnist5k (the geodesic method forgets less than fine-tuning).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from weightgeo.applications.continual import (
    ContinualSettings,
    make_learner,
    run_method,
    tune_strength,
)
from weightgeo.applications.continual.methods import ReplayBatches, empirical_fisher_diagonal
from weightgeo.data.core import Data
from weightgeo.data.streams import Fixed
from weightgeo.data.tasks import Task, TaskSequence, make_task_sequence, mask_logits
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.metrics import FisherMetric, OutputMetric, build_metric
from weightgeo.metrics.diagonal_fisher import FrozenDiagonal
from weightgeo.paths import output_distance

SHAPE = (1, 2, 3)  # six input features
CLASSES = 3  # classes per task


def synthetic_sequence(scenario: str = "domain", n_tasks: int = 2, n_train: int = 48, n_eval: int = 24,
                       seed: int = 0) -> TaskSequence:
    """Tasks of three classes each, y = argmax of a random linear teacher of Gaussian inputs.

    domain: one 3-unit head; task / class: task i owns units 3i, 3i+1, 3i+2.
    """
    generator = torch.Generator().manual_seed(seed)
    outputs = CLASSES if scenario == "domain" else CLASSES * n_tasks
    tasks = []
    for i in range(n_tasks):
        teacher = torch.randn(6, CLASSES, generator=generator)
        shift = 0 if scenario == "domain" else CLASSES * i
        splits = []
        for n in (n_train, n_eval, n_eval):
            x = torch.randn(n, *SHAPE, generator=generator)
            splits.append(Data(x, (x.reshape(n, -1) @ teacher).argmax(1) + shift, outputs, f"synthetic-{i}"))
        tasks.append(Task(i, f"synthetic {i}", *splits, tuple(range(shift, shift + CLASSES))))
    return TaskSequence("synthetic", scenario, tasks, outputs, "synthetic", seed)


def small_net(outputs: int, hidden: int = 5) -> FunctionalModel:
    torch.manual_seed(0)
    return FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, hidden), nn.Tanh(), nn.Linear(hidden, outputs)))


def config(**kw) -> ContinualSettings:
    return ContinualSettings(**{"budget": 13, "batch_size": 16, "memory": 6, **kw})


def perturbed(theta: torch.Tensor, seed: int, scale: float = 0.3) -> torch.Tensor:
    return theta + scale * torch.randn(theta.shape, generator=torch.Generator().manual_seed(seed))


def fisher_by_loop(fmodel, theta, x, y, allowed) -> torch.Tensor:
    """(1/m) Σ_i (∇ CE(masked f(x_i; θ), y_i))², one example at a time."""
    total = torch.zeros_like(theta)
    for xi, yi in zip(x, y):
        t = theta.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(mask_logits(fmodel(t, xi[None]), allowed), yi[None])
        total += torch.autograd.grad(loss, t)[0].square()
    return total / len(x)


# -- EWC, online EWC, SI, L2: the penalties -----------------------------------------------------


def test_empirical_fisher_diagonal_matches_a_per_example_loop_in_float64():
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5)).double())
    theta = fmodel.theta()
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.tensor([1, 2, 1, 3, 2, 2, 1])
    allowed = torch.tensor([False, True, True, True, False])  # a task owning units 1-3
    fisher = empirical_fisher_diagonal(fmodel, theta, x, y, allowed, chunk=3)
    expected = fisher_by_loop(fmodel, theta, x, y, allowed)
    assert torch.allclose(fisher, expected, rtol=1e-10, atol=1e-14)
    assert not torch.allclose(fisher, fisher_by_loop(fmodel, theta, x, y, None))  # the mask matters


class _DictOutput(nn.Module):
    """The same network, its logits returned under a key beside another tensor."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x):
        logits = self.net(x)
        return {"features": 2 * logits, "logits": logits}


def test_empirical_fisher_diagonal_reads_the_logits_the_output_selector_picks():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.Tanh(), nn.Linear(3, 5)).double()
    plain, keyed = FunctionalModel(net), FunctionalModel(_DictOutput(net), output="logits")
    x, y = torch.randn(7, 4, dtype=torch.float64), torch.tensor([1, 2, 1, 3, 2, 2, 1])
    expected = empirical_fisher_diagonal(plain, plain.theta(), x, y, None)
    assert torch.allclose(empirical_fisher_diagonal(keyed, keyed.theta(), x, y, None), expected, rtol=1e-12)
    doubled = FunctionalModel(_DictOutput(net), output="features")  # another selector, other logits
    assert not torch.allclose(empirical_fisher_diagonal(doubled, doubled.theta(), x, y, None), expected)


def test_ewc_penalty_gradient_is_the_fisher_weighted_pull_back_to_every_old_solution():
    seq = synthetic_sequence("task", 2, n_train=20)
    fmodel = small_net(seq.num_outputs)
    learner = make_learner("ewc", fmodel, seq, config(fisher_samples=64, strength={"ewc": 3.0}))
    anchors = [perturbed(fmodel.theta(), k) for k in range(2)]
    fishers = [fisher_by_loop(fmodel, a, seq.tasks[k].train.x, seq.tasks[k].train.y, seq.allowed(k))
               for k, a in enumerate(anchors)]
    theta = perturbed(fmodel.theta(), 7)
    assert learner.penalty_grad(theta) is None  # no earlier task, no penalty

    learner.after_task(0, anchors[0])
    grad = learner.penalty_grad(theta)
    assert torch.allclose(grad, 3.0 * fishers[0] * (theta - anchors[0]), rtol=1e-4, atol=1e-8)
    assert float((theta - anchors[0]) @ grad) > 0  # it points back toward the old weights

    learner.after_task(1, anchors[1])
    expected = 3.0 * sum(f * (theta - a) for f, a in zip(fishers, anchors))
    assert torch.allclose(learner.penalty_grad(theta), expected, rtol=1e-4, atol=1e-8)
    # ... which is the gradient of (λ/2) Σ_k F_k ⊙ (θ − θ_k)²
    t = theta.clone().requires_grad_(True)
    energy = 1.5 * sum((f * (t - a).square()).sum() for f, a in zip(fishers, anchors))
    assert torch.allclose(learner.penalty_grad(theta), torch.autograd.grad(energy, t)[0], rtol=1e-4, atol=1e-8)
    # the loss the optimiser follows: the task's masked cross-entropy plus that energy as a term
    x, y = seq.tasks[1].train.x, seq.tasks[1].train.y
    t = theta.clone().requires_grad_(True)
    loss = learner.training_loss(1)(t, (x, y))
    u = theta.clone().requires_grad_(True)
    cross_entropy = F.cross_entropy(mask_logits(fmodel(u, x), seq.allowed(1)), y)
    assert torch.allclose(loss, cross_entropy + energy, rtol=1e-5)
    assert torch.allclose(torch.autograd.grad(loss, t)[0], torch.autograd.grad(cross_entropy, u)[0] + expected,
                          rtol=1e-4, atol=1e-7)


def test_online_ewc_keeps_one_decayed_fisher_at_the_latest_solution():
    seq = synthetic_sequence("task", 3, n_train=20)
    fmodel = small_net(seq.num_outputs)
    gamma, strength = 0.5, 2.0
    learner = make_learner("online-ewc", fmodel, seq,
                           config(fisher_samples=64, online_gamma=gamma, strength={"online-ewc": strength}))
    anchors = [perturbed(fmodel.theta(), k) for k in range(3)]
    running = None
    theta = perturbed(fmodel.theta(), 7)
    for k, anchor in enumerate(anchors):
        learner.after_task(k, anchor)
        fisher = fisher_by_loop(fmodel, anchor, seq.tasks[k].train.x, seq.tasks[k].train.y, seq.allowed(k))
        running = fisher if running is None else gamma * running + fisher  # F̃ ← γF̃ + F_k
        assert torch.allclose(learner.penalty_grad(theta), strength * running * (theta - anchor),
                              rtol=1e-4, atol=1e-8), k


def test_l2_penalty_gradient_pulls_to_the_previous_task_solution():
    seq = synthetic_sequence("domain", 2, n_train=20)
    fmodel = small_net(seq.num_outputs)
    learner = make_learner("l2", fmodel, seq, config(strength={"l2": 0.7}))
    theta = perturbed(fmodel.theta(), 7)
    assert learner.penalty_grad(theta) is None
    for k in range(2):
        anchor = perturbed(fmodel.theta(), k)
        learner.after_task(k, anchor)
        assert torch.allclose(learner.penalty_grad(theta), 0.7 * (theta - anchor), rtol=1e-6, atol=1e-8)


def test_si_importance_is_the_path_integral_over_the_squared_displacement():
    # Gradient descent on L(θ) = ½ Σ a ⊙ (θ − c)², one coordinate pushed uphill by hand.
    seq = synthetic_sequence("domain", 2, n_train=20)
    fmodel = small_net(seq.num_outputs)
    xi, c_strength, lr = 0.1, 4.0, 0.2
    learner = make_learner("si", fmodel, seq, config(si_xi=xi, strength={"si": c_strength}))
    n = fmodel.theta().numel()
    generator = torch.Generator().manual_seed(3)
    omega = torch.zeros(n)
    theta = torch.randn(n, generator=generator)
    for task in range(2):
        a, centre = torch.rand(n, generator=generator) + 0.5, torch.randn(n, generator=generator)
        start, integral = theta.clone(), torch.zeros(n)
        learner.before_task(task, theta)
        for _ in range(6):
            g = a * (theta - centre)
            step = -lr * g
            step[0] = lr * g[0]  # uphill on coordinate 0: its importance is clamped to 0
            learner.after_step(theta, theta + step, g)
            integral -= g * step
            theta = theta + step
        learner.after_task(task, theta)
        omega += integral.clamp_min(0) / ((theta - start).square() + xi)  # summed over tasks
        probe = perturbed(theta, 11 + task)
        expected = 2 * c_strength * omega * (probe - theta)  # ∇ c Σ Ω (θ − θ*)²
        assert torch.allclose(learner.penalty_grad(probe), expected, rtol=1e-5, atol=1e-7)
        assert (omega[1:] > 0).all() and omega[0] == 0  # positive where the path lowered the loss


def test_si_integrates_the_task_losss_own_gradient_during_training():
    # The optimiser follows ∇(L + penalty), but SI's path integral takes ∇L of the task's own loss
    # at the point before each step (Zenke et al.): a strong penalty must not enter it.
    seq = synthetic_sequence("domain", 2, n_train=16)
    fmodel = small_net(seq.num_outputs)
    learner = make_learner("si", fmodel, seq, config(batch_size=16, budget=3, strength={"si": 50.0}))
    theta0 = learner.learn(0, fmodel.theta()).theta
    learner.after_task(0, theta0)
    start, seen = perturbed(theta0, 3), []
    original = learner.after_step
    learner.after_step = lambda before, after, g: (seen.append((before.clone(), g.clone())),  # noqa: E731
                                                   original(before, after, g))
    learner.learn(1, start)
    assert len(seen) == 3 and torch.equal(seen[0][0], start)
    data = seq.tasks[1].train  # one batch of 16 is the whole task: the gradient of its mean loss
    for before, g in seen:
        t = before.clone().requires_grad_(True)
        expected = torch.autograd.grad(F.cross_entropy(fmodel(t, data.x), data.y), t)[0]
        assert torch.allclose(g, expected, rtol=1e-4, atol=1e-7)
    assert float(learner.penalty_grad(seen[1][0]).norm()) > 0.1 * float(seen[1][1].norm())  # not negligible


# -- the penalties in training: every penalised method moves less in its own penalty --------------


@pytest.mark.parametrize(("method", "strength"), [("ewc", 20.0), ("online-ewc", 20.0), ("si", 5.0), ("l2", 1.0)])
def test_penalised_training_stays_closer_to_the_old_solution_than_finetune(method, strength):
    seq = synthetic_sequence("domain", 2, n_train=64)
    fmodel = small_net(seq.num_outputs)
    cfg = config(budget=40, lr=0.05, strength={method: strength})
    learner = make_learner(method, fmodel, seq, cfg)
    theta0 = learner.learn(0, fmodel.theta()).theta
    learner.after_task(0, theta0)
    penalised = learner.learn(1, theta0).theta
    finetuned = make_learner("finetune", fmodel, seq, cfg).learn(1, theta0).theta
    energy = lambda th: float((th - theta0) @ learner.penalty_grad(th))  # noqa: E731 - Σ M (θ − θ₀)²
    assert 0 < energy(penalised) < 0.5 * energy(finetuned)


# -- fip ------------------------------------------------------------------------------------------


def test_fip_first_two_steps_match_a_hand_computed_reference():
    # Core fip minimises D + (1/s)·CE with lr·s and momentum β: with full batches
    # θ₁ = θ₀ − lr ∇CE(θ₀) (D is flat at θ₀), θ₂ = θ₁ − lr (β ∇CE(θ₀) + ∇CE(θ₁) + s ∇D(θ₁)),
    # D the Bhattacharyya distance to f(θ₀) on the memory of BOTH earlier tasks.
    seq = synthetic_sequence("task", 3, n_train=20)
    fmodel = small_net(seq.num_outputs)
    lr, beta = 0.05, 0.9
    data = seq.tasks[2].train

    def grad_ce(theta):
        t = theta.clone().requires_grad_(True)
        return torch.autograd.grad(F.cross_entropy(mask_logits(fmodel(t, data.x), seq.allowed(2)), data.y), t)[0]

    for s in (0.3, 30.0):
        steps = {}
        for budget in (3, 5):  # the objective at θ₀, then 2 per step (D and the objective)
            learner = make_learner("fip", fmodel, seq, config(budget=budget, batch_size=64, lr=lr,
                                                              strength={"fip": s}))
            learner.after_task(0, perturbed(fmodel.theta(), 0))
            learner.after_task(1, perturbed(fmodel.theta(), 1))
            theta0 = perturbed(fmodel.theta(), 2)
            learned = learner.learn(2, theta0)
            assert learned.grad_evals == budget
            steps[budget] = learned.theta
        memory = learner.memory.inputs()
        assert memory.shape[0] == 12
        theta1 = theta0 - lr * grad_ce(theta0)
        t = theta1.clone().requires_grad_(True)
        distance = output_distance(fmodel(t, memory), fmodel(theta0, memory).detach(), "bhattacharyya")
        grad_d = torch.autograd.grad(distance, t)[0]
        theta2 = theta1 - lr * (beta * grad_ce(theta0) + grad_ce(theta1) + s * grad_d)
        assert torch.allclose(steps[3], theta1, rtol=1e-5, atol=1e-6), s
        assert torch.allclose(steps[5], theta2, rtol=1e-5, atol=1e-6), s
    assert lr * s * float(grad_d.norm()) > 1e-3  # the D term moves θ₂ far beyond the tolerance


def test_fip_larger_strength_keeps_the_memory_outputs_closer():
    seq = synthetic_sequence("domain", 2, n_train=64)
    fmodel = small_net(seq.num_outputs)
    changes = {}
    for s in (0.3, 30.0):
        learner = make_learner("fip", fmodel, seq, config(budget=41, lr=0.05, strength={"fip": s}))
        theta0 = learner.learn(0, fmodel.theta()).theta
        learner.after_task(0, theta0)
        theta1 = learner.learn(1, theta0).theta
        x = learner.memory.inputs()
        changes[s] = float((fmodel(theta1, x) - fmodel(theta0, x)).square().mean())
    assert 0 < changes[30.0] < 0.5 * changes[0.3]


# -- the geodesic method --------------------------------------------------------------------------


@pytest.mark.parametrize(("metric", "solver", "old_tasks", "per_task", "cost"), [
    ("output", "kfac", 2, 2, CLASSES + 1),  # K-FAC: C + 1 products
    ("output", "nystrom", 2, 2, 14),  # the rank
    ("fisher", "kfac", 1, 1, CLASSES + 1),
    ("diag-fisher", "kfac", 2, 2, CLASSES),  # one per-example gradient per class and stored input
])
def test_geodesic_direction_is_mu_times_the_damped_dense_solve_for_one_linear_layer(
        metric, solver, old_tasks, per_task, cost):
    # One linear layer: K-FAC of the output metric is exact (of the Fisher for one input), and G
    # has rank 3·4 = 12 < 14 = the Nyström rank, so each solver gives μ (G_old + μI)^{-1} ∇L with
    # G_old the metric of the memory of EVERY old task (for diag-fisher: G's diagonal).
    seq = synthetic_sequence("domain", 3, n_train=20)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)))
    mu = 0.05
    learner = make_learner("geodesic", fmodel, seq, config(budget=30, memory=per_task, solver=solver,
                                                           metric=metric, rank=14, strength={"geodesic": mu}))
    for k in range(old_tasks):
        learner.after_task(k, perturbed(fmodel.theta(), k))
    theta = perturbed(fmodel.theta(), 5)
    assert learner.before_task(old_tasks, theta) == cost
    g = torch.randn(theta.shape, generator=torch.Generator().manual_seed(9))
    direction = learner.direction(theta, g).double()
    inputs = learner.memory.inputs()
    assert inputs.shape[0] == old_tasks * per_task
    dense_model = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)).double())
    reference = OutputMetric if metric == "output" else FisherMetric
    G = reference(dense_model, inputs.double()).at(theta.double()).dense()
    if metric == "diag-fisher":
        G = torch.diag(G.diagonal())
    expected = mu * torch.linalg.solve(G + mu * torch.eye(len(theta), dtype=torch.float64), g.double())
    assert torch.allclose(direction, expected, rtol=1e-3, atol=1e-5)
    assert float((direction - g.double()).norm()) > 0.1 * float(g.norm())  # not the plain gradient


@pytest.mark.parametrize(("solver", "settings"), [
    ("kfac", {"budget": CLASSES + 2}),  # K-FAC (C + 1 products) and one step
    ("nystrom", {"budget": 15, "rank": 14}),  # rank 14 products and one step
    ("cg", {"budget": 41, "cg_iters": 40}),  # one step of 1 + 40 evaluations
    ("traverse", {"budget": 42, "cg_iters": 40, "step_size": 0.01}),  # room for one step only
])
def test_geodesic_first_step_on_a_new_task_follows_the_damped_natural_gradient(solver, settings):
    # Full batches, one linear layer: the step is −lr μ (G_old + μI)^{-1} ∇L (momentum SGD's
    # first step), or for the traverse tracer that direction scaled to the length step_size.
    seq = synthetic_sequence("domain", 3, n_train=20)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)))
    mu, lr = 0.05, 0.05
    learner = make_learner("geodesic", fmodel, seq, config(solver=solver, batch_size=64, memory=2, lr=lr,
                                                           strength={"geodesic": mu}, **settings))
    for k in range(2):
        learner.after_task(k, perturbed(fmodel.theta(), k))
    theta0 = perturbed(fmodel.theta(), 5)
    learned = learner.learn(2, theta0)
    data = seq.tasks[2].train
    t = theta0.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(fmodel(t, data.x), data.y), t)[0].double()
    dense_model = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)).double())
    G = OutputMetric(dense_model, learner.memory.inputs().double()).at(theta0.double()).dense()
    natural = mu * torch.linalg.solve(G + mu * torch.eye(len(g), dtype=torch.float64), g)
    step = (learned.theta - theta0).double()
    if solver == "traverse":
        expected = -settings["step_size"] * natural / natural.norm()
    else:
        expected = -lr * natural
    assert torch.allclose(step, expected, rtol=1e-3, atol=1e-6), float((step - expected).norm())
    plain = -lr * g if solver != "traverse" else -settings["step_size"] * g / g.norm()
    assert float((step - plain).norm()) > 0.1 * float(step.norm())  # not the plain gradient step


def test_geodesic_learning_changes_the_memory_outputs_less_than_finetune():
    seq = synthetic_sequence("domain", 2, n_train=64)
    fmodel = small_net(seq.num_outputs, hidden=8)
    cfg = config(budget=40, lr=0.05, memory=4, strength={"geodesic": 1e-3})
    geodesic = make_learner("geodesic", fmodel, seq, cfg)
    theta0 = geodesic.learn(0, fmodel.theta()).theta
    geodesic.after_task(0, theta0)
    theta_geo = geodesic.learn(1, theta0).theta
    theta_ft = make_learner("finetune", fmodel, seq, cfg).learn(1, theta0).theta
    x = geodesic.memory.inputs()
    change = lambda th: float((fmodel(th, x) - fmodel(theta0, x)).square().mean())  # noqa: E731
    assert change(theta_geo) < 0.2 * change(theta_ft)
    new = seq.tasks[1].train
    loss = lambda th: float(F.cross_entropy(fmodel(th, new.x), new.y))  # noqa: E731
    assert loss(theta_geo) < loss(theta0) - 0.1  # and it still learns the new task


def test_geodesic_output_anchor_pulls_the_memory_outputs_back():
    seq = synthetic_sequence("domain", 2, n_train=64)
    fmodel = small_net(seq.num_outputs, hidden=8)
    distances = {}
    for anchor in (0.0, 5.0):
        cfg = config(budget=40, lr=0.05, memory=4, anchor=anchor, strength={"geodesic": 0.1})
        learner = make_learner("geodesic", fmodel, seq, cfg)
        theta0 = learner.learn(0, fmodel.theta()).theta
        learner.after_task(0, theta0)
        theta1 = learner.learn(1, theta0).theta
        x = learner.memory.inputs()
        distances[anchor] = float(output_distance(fmodel(theta1, x), fmodel(theta0, x), "bhattacharyya"))
    assert 0 < distances[5.0] < 0.5 * distances[0.0]


def test_geodesic_anchor_is_preconditioned_like_the_task_loss():
    # One linear layer (K-FAC exact): the Riemannian gradient of L + (S/μ)·D under G_old/μ with
    # damping 1 is μ(G + μI)⁻¹∇L + S(G + μI)⁻¹∇D, D the Bhattacharyya distance on the memory to
    # the outputs at the task's start θ₀, G_old frozen at θ₀.
    seq = synthetic_sequence("domain", 3, n_train=20)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)))
    mu, anchor = 0.05, 20.0
    learner = make_learner("geodesic", fmodel, seq, config(budget=30, memory=2, batch_size=64, anchor=anchor,
                                                           strength={"geodesic": mu}))
    for k in range(2):
        learner.after_task(k, perturbed(fmodel.theta(), k))
    theta0 = perturbed(fmodel.theta(), 5)
    learner.before_task(2, theta0)
    theta = perturbed(theta0, 6, scale=0.2)  # away from the task's start: D > 0
    data = seq.tasks[2].train
    t = theta.clone().requires_grad_(True)
    direction = learner.direction(theta, torch.autograd.grad(learner.training_loss(2)(t, (data.x, data.y)), t)[0])
    memory = learner.memory.inputs().double()
    dense_model = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)).double())
    damped = OutputMetric(dense_model, memory).at(theta0.double()).dense() + mu * torch.eye(len(theta),
                                                                                          dtype=torch.float64)
    u = theta.double().clone().requires_grad_(True)
    cross_entropy = F.cross_entropy(dense_model(u, data.x.double()), data.y)
    distance = output_distance(dense_model(u, memory), dense_model(theta0.double(), memory).detach(), "bhattacharyya")
    grad_ce = torch.autograd.grad(cross_entropy, u)[0]
    pull = anchor * torch.linalg.solve(damped, torch.autograd.grad(distance, u)[0])
    expected = mu * torch.linalg.solve(damped, grad_ce) + pull
    assert torch.allclose(direction.double(), expected, rtol=1e-3, atol=1e-5)
    assert float(pull.norm()) > 0.1 * float(expected.norm())  # the anchor's part matters here


@pytest.mark.parametrize("layer", [nn.Dropout(0.5), nn.BatchNorm1d(8)], ids=["dropout", "batch-norm"])
def test_geodesic_output_anchor_is_zero_at_the_tasks_start_and_leaves_batch_norm_alone(layer):
    # The reference f(x; θ₀) is taken in eval mode, so the anchor compares eval-mode outputs:
    # D = 0 at θ₀ (no pull before θ moves), and the memory never enters the running statistics.
    seq = synthetic_sequence("domain", 2, n_train=40)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, 8), layer, nn.Tanh(), nn.Linear(8, 3)))
    learner = make_learner("geodesic", fmodel, seq, config(anchor=1.0))
    theta0 = perturbed(fmodel.theta(), 1)
    learner.after_task(0, theta0)
    learner.before_task(1, theta0)
    buffers = {name: b.clone() for name, b in learner.buffers.items()}
    assert abs(float(learner.anchor_loss(theta0))) < 1e-6
    assert float(learner.anchor_loss(perturbed(theta0, 2))) > 1e-3  # and positive once θ moves
    assert all(torch.equal(b, learner.buffers[name]) for name, b in buffers.items())


# -- replay and the output units of each scenario ------------------------------------------------


def _owner(seq: TaskSequence, row: torch.Tensor) -> tuple[int, int]:
    """(task, label) of the training example whose input is ``row``."""
    for k, task in enumerate(seq.tasks):
        flat = task.train.x.reshape(len(task.train), -1)
        hits = (flat == row.reshape(-1)).all(1).nonzero()
        if len(hits):
            return k, int(task.train.y[hits[0, 0]])
    raise AssertionError("a replayed input is no task's training input")


def _units(seq: TaskSequence, task: int, scenario: str) -> torch.Tensor | None:
    """The documented output units: task — its own; class — those of tasks 0…task; domain — all."""
    if scenario == "domain":
        return None
    mask = torch.zeros(seq.num_outputs, dtype=torch.bool)
    first = CLASSES * task if scenario == "task" else 0
    mask[first : CLASSES * (task + 1)] = True
    return mask


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_task_loss_uses_the_scenarios_output_units(scenario):
    seq = synthetic_sequence(scenario, 3, n_train=20)
    fmodel = small_net(seq.num_outputs)
    learner = make_learner("finetune", fmodel, seq, config())
    theta = perturbed(fmodel.theta(), 1)
    x, y = seq.tasks[1].train.x, seq.tasks[1].train.y
    logits = fmodel(theta, x)
    loss = learner.training_loss(1)(theta, (x, y))
    expected = F.cross_entropy(mask_logits(logits, _units(seq, 1, scenario)), y)
    assert torch.allclose(loss, expected, rtol=1e-6)
    if scenario != "domain":  # the other scenarios' units give other losses
        for other in {"task", "class", "domain"} - {scenario}:
            wrong = F.cross_entropy(mask_logits(logits, _units(seq, 1, other)), y)
            assert not torch.allclose(loss, wrong, rtol=1e-3), other


@pytest.mark.parametrize("scenario", ["task", "domain", "class"])
def test_replay_trains_on_stored_examples_with_their_labels_and_units(scenario):
    seq = synthetic_sequence(scenario, 4, n_train=20)  # at task 2 of 4 the class units are not all units
    fmodel = small_net(seq.num_outputs)
    learner = make_learner("replay", fmodel, seq, config(memory=5))
    theta = perturbed(fmodel.theta(), 1)
    learner.after_task(0, theta)
    learner.after_task(1, theta)
    x, y = seq.tasks[2].train.x[:8], seq.tasks[2].train.y[:8]
    batch = ReplayBatches(Fixed((x, y)), learner.memory, seq, 2, generator=torch.Generator().manual_seed(0)).next()
    bx, by = batch[:2]
    assert len(batch) == (3 if scenario == "task" else 2)  # per-example units only in the task scenario
    assert bx.shape[0] == 16 and torch.equal(bx[:8], x) and torch.equal(by[:8], y)
    owners = [2] * 8
    for row, label in zip(bx[8:], by[8:]):
        task, stored_label = _owner(seq, row)
        assert task in (0, 1) and int(label) == stored_label  # an earlier task's example, its own label
        owners.append(task)
    assert len(set(owners[8:])) == 2  # both earlier tasks are replayed
    logits = fmodel(theta, bx)
    if scenario == "task":  # each example on its own task's units
        per_example = [F.cross_entropy(mask_logits(logits[i : i + 1], _units(seq, k, "task")), by[i : i + 1])
                       for i, k in enumerate(owners)]
        expected = torch.stack(per_example).mean()
    else:  # class: the units of every task seen so far; domain: all
        expected = F.cross_entropy(mask_logits(logits, _units(seq, 2, scenario)), by)
    loss = learner.training_loss(2)(theta, batch)
    assert torch.allclose(loss, expected, rtol=1e-6)
    if scenario != "domain":
        assert not torch.allclose(loss, F.cross_entropy(logits, by), rtol=1e-3)  # the units matter


# -- budgets ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "settings"),
    [("finetune", {}), ("l2", {}), ("si", {}), ("ewc", {}), ("online-ewc", {}), ("replay", {}), ("fip", {}),
     ("geodesic", {}), ("geodesic", {"solver": "nystrom", "rank": 5}), ("geodesic", {"refresh": 3}),
     ("geodesic", {"anchor": 1.0}), ("lwf", {}), ("der++", {}), ("ogd", {}), ("gpm", {})],
)
def test_every_sequential_method_spends_exactly_its_budget_per_task(method, settings):
    seq = synthetic_sequence("domain", 3, n_train=40)
    result = run_method(method, seq, "mlp", config(**settings), seed=0, model_config={"hidden": [5]})
    assert result.grad_evals == [13, 13, 13]


@pytest.mark.parametrize("solver", ["cg", "traverse"])
def test_geodesic_per_step_solvers_stay_within_the_budget(solver):
    seq = synthetic_sequence("domain", 3, n_train=40)
    result = run_method("geodesic", seq, "mlp", config(solver=solver, cg_iters=2), seed=0,
                        model_config={"hidden": [5]})
    assert result.grad_evals[0] == 13 and all(10 <= spent <= 13 for spent in result.grad_evals[1:])


@pytest.mark.parametrize(
    ("method", "settings", "steps", "spent"),
    [("finetune", {}, [13] * 3, [13] * 3), ("l2", {}, [13] * 3, [13] * 3), ("si", {}, [13] * 3, [13] * 3),
     ("replay", {}, [13] * 3, [13] * 3),
     ("ewc", {}, [10] * 3, [13] * 3), ("online-ewc", {}, [10] * 3, [13] * 3),  # a Fisher of 40: ⌈40/16⌉ = 3
     ("geodesic", {}, [13, 9, 9], [13] * 3),  # K-FAC: C + 1 = 4 products
     # a rebuild every 2 steps: 4 steps + 4 (K-FAC) + 4 (one rebuild, at step 2) = 12 ≤ 13
     ("geodesic", {"refresh": 2}, [13, 4, 4], [13, 12, 12]),
     ("lwf", {}, [13] * 3, [13] * 3), ("der++", {}, [13] * 3, [13] * 3),
     ("a-gem", {}, [13, 6, 6], [13, 12, 12]),  # a step: the task's and a stored batch's gradient
     ("ogd", {}, [12] * 3, [13] * 3),  # the stored gradients of 6 examples: ⌈6/16⌉ = 1
     ("gpm", {}, [11] * 3, [13] * 3)],  # the layer bases: one forward and one backward pass
)
def test_sequential_methods_take_the_steps_their_budget_pays_for(method, settings, steps, spent):
    seq = synthetic_sequence("domain", 3, n_train=40)
    fmodel = small_net(seq.num_outputs)
    learner = make_learner(method, fmodel, seq, config(**settings))
    taken: list[int] = []
    original = learner.after_step
    learner.after_step = lambda *args: (taken.append(1), original(*args))
    theta = fmodel.theta()
    for t in range(3):
        before = len(taken)
        learned = learner.learn(t, theta)
        theta = learned.theta
        learner.after_task(t, theta)
        assert (len(taken) - before, learned.grad_evals) == (steps[t], spent[t]), t


def test_runner_anchors_each_penalty_at_the_solution_it_learned():
    # With a strong L2 pull to the previous task's weights the second task cannot move θ far:
    # task 1 keeps its accuracy. Anchored anywhere else (e.g. the initial weights) it would not.
    seq = synthetic_sequence("domain", 2, n_train=64)
    result = run_method("l2", seq, "mlp", config(budget=60, lr=0.1, strength={"l2": 10.0}), seed=0,
                        model_config={"hidden": [16]})
    assert result.matrix[0][0] > 0.7
    assert abs(result.matrix[1][0] - result.matrix[0][0]) <= 0.05, result.matrix


def test_joint_takes_the_total_budget_in_steps():
    seq = synthetic_sequence("domain", 3, n_train=40)
    result = run_method("joint", seq, "mlp", config(), seed=0, model_config={"hidden": [5]})
    assert result.grad_evals == [39]
    assert all(math.isnan(v) for row in result.matrix[:-1] for v in row)


def test_joint_learns_every_task_on_its_own_units():
    # Task-incremental: each example is trained on its own task's units (the tasks share their
    # inputs' distribution, so only the units tell them apart); a wrong mask leaves labels
    # outside the allowed units, or mixes the tasks' teachers on the same units.
    seq = synthetic_sequence("task", 3, n_train=64)
    result = run_method("joint", seq, "mlp", config(budget=60, lr=0.1), seed=0, model_config={"hidden": [16]})
    assert min(result.matrix[-1]) > 1 / CLASSES + 0.25, result.matrix[-1]


# -- the accuracy matrix and the tuning split -----------------------------------------------------


def _labels(share_of_one: float, n: int = 20) -> list[int]:
    k = round(share_of_one * n)
    return [1] * k + [0] * (n - k)


def constant_sequence() -> TaskSequence:
    """Two class-incremental tasks on one constant input; task 0 owns unit 0, task 1 unit 1.

    Every input is the same, so the network predicts one unit for all of them: unit 0 while
    only task 0 is seen (the only allowed unit), unit 1 after task 1 (trained on label 1 with
    units {0, 1}). A split's accuracy is then the share of its labels equal to that unit, so
    the matrix is known: test [[0.6, —], [0.4, 0.75]], validation [[0.2, —], [0.8, 0.9]].
    """
    def data(labels: list[int]) -> Data:
        y = torch.tensor(labels)
        return Data(torch.ones(len(y), *SHAPE), y, 3, "constant")

    task0 = Task(0, "unit 0", data([0] * 20), data(_labels(0.8)), data(_labels(0.4)), (0,))
    task1 = Task(1, "unit 1", data([1] * 20), data(_labels(0.9)), data(_labels(0.75)), (1,))
    return TaskSequence("constant", "class", [task0, task1], 3, "constant", 0)


@pytest.mark.parametrize(("split", "expected"), [("test", [[0.6, None], [0.4, 0.75]]),
                                                 ("val", [[0.2, None], [0.8, 0.9]])])
def test_accuracy_matrix_of_a_hand_built_sequence_has_the_known_entries(split, expected):
    kwargs = {} if split == "test" else {"split": split}  # R is measured on the test split by default
    result = run_method("finetune", constant_sequence(), "mlp", config(budget=30, lr=0.5, batch_size=8),
                        seed=0, model_config={"hidden": [4]}, **kwargs)
    assert math.isnan(result.matrix[0][1])
    got = [result.matrix[0][0], result.matrix[1][0], result.matrix[1][1]]
    assert got == pytest.approx([expected[0][0], expected[1][0], expected[1][1]], abs=1e-9)
    assert result.scores["avg_accuracy"] == pytest.approx((expected[1][0] + expected[1][1]) / 2)
    assert result.scores["bwt"] == pytest.approx(expected[1][0] - expected[0][0])
    assert result.scores["forgetting"] == pytest.approx(expected[0][0] - expected[1][0])  # < 0 on val
    assert result.scores["plasticity"] == pytest.approx((expected[0][0] + expected[1][1]) / 2)


def _poisoned(seq: TaskSequence, split: str) -> TaskSequence:
    """``seq`` with the labels of ``split`` moved to the next class (accuracy scrambled)."""
    def poison(data: Data) -> Data:
        return Data(data.x, (data.y + 1) % CLASSES, data.num_classes, data.name)

    return replace(seq, tasks=[replace(t, **{split: poison(getattr(t, split))}) for t in seq.tasks])


def test_tuning_reads_the_validation_split_and_never_the_test_split():
    seq = synthetic_sequence("domain", 2, n_train=64)
    grid = (1e-3, 1.0, 30.0)

    def tune(s):
        best, trials = tune_strength("l2", s, "mlp", config(budget=30, lr=0.05), 0, "cpu", grid=grid,
                                     model_config={"hidden": [5]})
        return best, [t["val_avg_accuracy"] for t in trials]

    best, clean = tune(seq)
    assert len(set(clean)) == len(grid)  # the strengths differ on validation: a real choice
    assert tune(_poisoned(seq, "test")) == (best, clean)
    best_val, poisoned = tune(_poisoned(seq, "val"))
    assert all(p != c for p, c in zip(poisoned, clean)) and best_val != best


# -- end to end on real data -------------------------------------------------------------------------


def test_geodesic_forgets_less_than_finetune_on_two_permuted_mnist5k_tasks():
    seq = make_task_sequence("permuted-mnist", "domain", 2, seed=0, max_train=1000)
    cfg = ContinualSettings(n_tasks=2, budget=100, memory=100)
    finetune = run_method("finetune", seq, "mlp", cfg, seed=0).scores
    geodesic = run_method("geodesic", seq, "mlp", cfg, seed=0).scores
    assert finetune["avg_accuracy"] > 0.75  # both learn (chance: 0.1)
    assert geodesic["forgetting"] < finetune["forgetting"] - 0.03
    assert geodesic["bwt"] > finetune["bwt"] + 0.03
    assert geodesic["avg_accuracy"] >= finetune["avg_accuracy"]


# -- the class-incremental default: the hybrid with the output anchor ----------------------------------


@pytest.mark.parametrize(("scenario", "anchor"), [("class", 1.0), ("task", 0.0), ("domain", 0.0)])
def test_geodesic_anchor_defaults_to_the_hybrid_in_the_class_scenario_only(scenario, anchor):
    settings = config(scenario=scenario)
    assert settings.anchor is None and settings.anchor_or_default == anchor
    assert config(scenario=scenario, anchor=0.5).anchor_or_default == 0.5  # a chosen value wins
    assert config(scenario="class", anchor=0.0).anchor_or_default == 0.0  # the pure step, on request
    seq = synthetic_sequence(scenario, 2, n_train=20)
    learner = make_learner("geodesic", small_net(seq.num_outputs), seq, config(scenario=scenario))
    learner.after_task(0, learner.fmodel.theta())
    learner.before_task(1, learner.fmodel.theta())
    assert (learner.reference is not None) == (anchor > 0)  # the anchor's frozen outputs, class only


@pytest.mark.parametrize(("scenario", "hybrid"), [("class", True), ("task", False)])
def test_the_report_labels_the_geodesic_hybrid_as_one(tmp_path, scenario, hybrid):
    from weightgeo.applications import RunOptions
    from weightgeo.applications.continual import run_experiment

    outcome = run_experiment(tmp_path / scenario, tasks="split-mnist", scenario=scenario, n_tasks=2,
                             method=("geodesic",), budget=14, max_train=40, memory=5, options=RunOptions())
    text = outcome.summary.read_text()
    assert ("**geodesic is a hybrid here**" in text) == hybrid
    assert ("--anchor 1" in text) == hybrid


# -- a user's metric by import path ----------------------------------------------------------------


@pytest.mark.parametrize(("solver", "settings"), [("cg", {"budget": 4, "cg_iters": 3}),
                                                   ("nystrom", {"budget": 5, "rank": 4})])
def test_geodesic_steps_under_a_users_metric_given_by_import_path(solver, settings):
    # tests.test_metrics:UserMetric is G = 2I, so the first step is −lr μ (2I + μI)⁻¹ ∇L = −lr ∇L μ/(2 + μ)
    # (the Nyström solver of rank 4 < n keeps only 4 directions of 2I: then a different step).
    seq = synthetic_sequence("domain", 2, n_train=20)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)))
    mu, lr = 0.5, 0.05
    learner = make_learner("geodesic", fmodel, seq, config(solver=solver, metric="tests.test_metrics:UserMetric",
                                                           batch_size=64, memory=2, lr=lr,
                                                           strength={"geodesic": mu}, **settings))
    learner.after_task(0, fmodel.theta())
    theta0 = perturbed(fmodel.theta(), 5)
    learned = learner.learn(1, theta0)
    data = seq.tasks[1].train
    t = theta0.clone().requires_grad_(True)
    g = torch.autograd.grad(F.cross_entropy(fmodel(t, data.x), data.y), t)[0]
    step = learned.theta - theta0
    if solver == "cg":
        assert torch.allclose(step, -lr * g * mu / (2 + mu), rtol=1e-4, atol=1e-7)
    else:
        assert not torch.allclose(step, -lr * g * mu / (2 + mu), rtol=1e-2, atol=1e-6)
        assert float(step @ g) < 0  # still a descent step


def test_the_kfac_solver_refuses_a_metric_it_cannot_factorise_in_one_line():
    with pytest.raises(WeightgeoError, match="--solver kfac factorises the output or fisher metric"):
        config(metric="tests.test_metrics:UserMetric")
    with pytest.raises(WeightgeoError, match="metric"):
        config(metric="no-such-metric", solver="cg")
    assert config(metric="diag-fisher").metric == "diag-fisher"


class UserFrozenMetric(OutputMetric):
    """A user's metric with its own exact frozen form diag(1, 2, 3, …) at a cost of 7 evaluations."""

    def freeze(self, theta, batch_size):
        return FrozenDiagonal(torch.arange(1.0, len(theta) + 1, dtype=theta.dtype)), 7


@pytest.mark.parametrize("solver", ["kfac", "nystrom"])
def test_a_user_metric_with_its_own_frozen_form_is_frozen_as_that_by_the_frozen_solvers(solver):
    # Dispatch by method: the kfac check and the frozen solvers use Metric.freeze, not the name.
    seq = synthetic_sequence("domain", 2, n_train=20)
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)))
    mu = 0.5
    learner = make_learner("geodesic", fmodel, seq, config(
        budget=30, memory=2, solver=solver, rank=5, strength={"geodesic": mu},
        metric="tests.test_continual_methods:UserFrozenMetric"))
    learner.after_task(0, fmodel.theta())
    theta = perturbed(fmodel.theta(), 5)
    assert learner.before_task(1, theta) == 7
    g = torch.randn(theta.shape, generator=torch.Generator().manual_seed(9))
    d = torch.arange(1.0, len(theta) + 1)
    assert torch.allclose(learner.direction(theta, g), mu * g / (d + mu), rtol=1e-5)


def test_the_diagonal_fishers_frozen_form_is_its_diagonal_at_c_evaluations_per_batch():
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(6, CLASSES)).double())
    inputs, theta = torch.randn(5, *SHAPE, dtype=torch.float64), perturbed(fmodel.theta(), 1)
    frozen, cost = build_metric("diag-fisher", fmodel, inputs).freeze(theta, batch_size=2)
    assert cost == CLASSES * 3  # ⌈5 / 2⌉ batches, one per-example gradient per class
    dense = FisherMetric(fmodel, inputs).at(theta).dense()
    v = torch.randn(len(theta), dtype=torch.float64)
    assert torch.allclose(frozen.mvp(theta + 1.0, v), dense.diagonal() * v, rtol=1e-10)  # constant in θ
    assert build_metric("output", fmodel, inputs).freeze(theta, 2) is None
