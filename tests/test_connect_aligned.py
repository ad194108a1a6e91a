"""connect's aligned methods and a traverse that reaches its target (tracker issue 14, part 4).

aligned-relax / aligned-traverse permute θ_b's hidden units onto θ_a's (weight matching) and then
relax / traverse to the permuted π(θ_b): the same function as θ_b, nearer θ_a, at no gradient
evaluation. traverse's task weight fades with the remaining distance, so the walk's objective is
least at its target and the walk gets there (with a constant weight it settles short of it).
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.conftest import mlp_checkpoint_pair
from weightgeo.applications.connect import ConnectSettings, ConnectTask, run_method
from weightgeo.applications.connect.methods import aligned
from weightgeo.applications.connect.rebasin import permute_mlp
from weightgeo.applications.connect.traverse import TowardNetwork
from weightgeo.cli import main
from weightgeo.data import Data
from weightgeo.functional import FunctionalModel
from weightgeo.objectives import TargetPoint, TaskLoss
from weightgeo.paths import Path as WeightPath


def _mlp(seed: int, dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 5), nn.ReLU(),
                         nn.Linear(5, 3)).to(dtype)


def _data(n: int = 64, seed: int = 0) -> Data:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 3, generator=g)
    flat = x.flatten(1)
    return Data(x, (flat[:, 0] > 0).long() + (flat[:, 1] > 0).long(), 3, "toy")


def _shuffled_pair(dtype: torch.dtype = torch.float32, noise: float = 0.3
                   ) -> tuple[FunctionalModel, torch.Tensor, torch.Tensor]:
    """θ_a, and θ_b = a hidden permutation of θ_a + ``noise`` × N(0, I): aligned, θ_b is nearer θ_a."""
    fm = FunctionalModel(_mlp(0, dtype))
    theta_a = fm.theta()
    g = torch.Generator().manual_seed(5)
    near = theta_a + noise * torch.randn(theta_a.shape, generator=g, dtype=dtype)
    perms = [torch.randperm(8, generator=g), torch.randperm(5, generator=g)]
    return fm, theta_a, permute_mlp(fm, near, perms)


def _task(**settings) -> ConnectTask:
    fm, theta_a, theta_b = _shuffled_pair()
    train = _data()
    settings.setdefault("step_size", None)  # 1% of ||θ_b − θ_a||
    return ConnectTask(fm, theta_a, theta_b, train, _data(32, 1), ConnectSettings(**settings),
                       metric_inputs=train.x[:16])


# -- the alignment ----------------------------------------------------------------------------------
def test_the_aligned_endpoint_computes_theta_b_function_nearer_theta_a():
    fm, theta_a, theta_b = _shuffled_pair(torch.float64, noise=0.05)
    x = torch.randn(40, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    task = ConnectTask(fm, theta_a, theta_b, _data(), _data(8, 1), ConnectSettings(), metric_inputs=x)
    target, info = aligned(task)
    torch.testing.assert_close(fm(target.theta_b, x), fm(theta_b, x), atol=1e-6, rtol=0)
    before, after = float((theta_b - theta_a).norm()), float((target.theta_b - theta_a).norm())
    assert after < 0.5 * before  # the hidden permutation is undone (the noise stays)
    assert info["distance_before"] == pytest.approx(before) and info["distance_after"] == pytest.approx(after)
    assert info["units_permuted"] > 0
    assert target.theta_a is theta_a and task.theta_b is theta_b  # the task itself is left alone


# -- aligned-relax ----------------------------------------------------------------------------------
def _energy(task: ConnectTask, vertices: torch.Tensor) -> float:
    """Σ_k d²(θ_k, θ_{k+1}) under the output metric on every training input."""
    return float(task.space().segment_energies(vertices, task.train.x).sum())


def test_aligned_relax_joins_theta_a_to_the_aligned_theta_b_below_the_aligned_line_energy():
    task = _task(task_weight=0.0, budget=400, nodes=3, relax_lr=0.01)
    result = run_method("aligned-relax", task)
    permuted = aligned(task)[0].theta_b
    vertices = result.curve.vertices
    torch.testing.assert_close(vertices[0], task.theta_a, atol=0, rtol=0)
    torch.testing.assert_close(vertices[-1], permuted, atol=0, rtol=0)
    assert float((permuted - task.theta_b).norm()) > 1.0  # π(θ_b) is not θ_b
    line = task.theta_a + torch.linspace(0, 1, 5)[:, None] * (permuted - task.theta_a)
    assert _energy(task, vertices) < 0.97 * _energy(task, line)
    # the alignment costs nothing: the same spending as relax on the same budget
    assert 400 - 4 < result.grad_evals <= 400
    assert result.grad_evals == run_method("relax", _task(task_weight=0.0, budget=400, nodes=3,
                                                          relax_lr=0.01)).grad_evals
    assert result.info["end"] == "permuted theta_b" and result.info["nodes"] == 3


def test_aligned_relax_keeps_the_task_loss_lower_than_the_aligned_line():
    task = _task(task_weight=20.0, budget=400, nodes=3, relax_lr=0.01)
    nodes = run_method("aligned-relax", task).curve.vertices[1:-1]
    permuted = aligned(task)[0].theta_b
    line = [task.theta_a + t * (permuted - task.theta_a) for t in (0.25, 0.5, 0.75)]

    def worst(points):
        return max(float(F.cross_entropy(task.model(w, task.train.x), task.train.y)) for w in points)

    assert worst(nodes) < worst(line)


# -- traverse reaches its target ---------------------------------------------------------------------
@pytest.mark.parametrize("d", [2.5, None])  # None: the constant weight (--no-traverse-fade)
def test_faded_task_weight_has_the_exact_gradient(d):
    fm, theta_a, theta_b = _shuffled_pair(torch.float64)
    x = torch.randn(16, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.arange(16) % 3
    objective = TowardNetwork(TargetPoint(theta_b), TaskLoss(fm, (x, y)), 7.0, fade=d)
    theta = theta_a.clone().requires_grad_(True)
    r = (theta - theta_b).norm()
    by_hand = 0.5 * r**2 + 7.0 * (1.0 if d is None else r / d) * F.cross_entropy(fm(theta, x), y)
    (expected,) = torch.autograd.grad(by_hand, theta)
    value, grad = objective.value_and_grad(theta_a)
    torch.testing.assert_close(value, by_hand.detach())
    torch.testing.assert_close(objective.value(theta_a), by_hand.detach())
    torch.testing.assert_close(grad, expected)
    if d is None:
        return
    # at θ_b the task term vanishes with its gradient: θ_b is the objective's minimiser
    value, grad = objective.value_and_grad(theta_b)
    assert float(value) == 0.0 and float(grad.abs().max()) < 1e-9


@pytest.mark.parametrize("method", ["traverse", "aligned-traverse"])
def test_traverse_reaches_its_target_within_the_budget(method):
    task = _task(metric="output", traverse_weight=10.0, budget=600, cg_iters=3, tol=0.02)
    result = run_method(method, task)
    assert result.stop_reason == "done" and result.grad_evals <= 600
    assert result.info["final_segment_fraction"] <= 0.02
    end = aligned(task)[0].theta_b if method == "aligned-traverse" else task.theta_b
    torch.testing.assert_close(result.curve.end, end, atol=0, rtol=0)
    walk_end = result.curve.vertices[-2]
    distance = float((end - task.theta_a).norm())
    assert float((end - walk_end).norm()) <= 0.02 * distance


@pytest.mark.parametrize("method", ["traverse", "aligned-traverse"])
def test_the_image_term_keeps_the_walk_nearer_the_logit_segment_than_the_label_term(method):
    # --traverse-task image: the walk's task term is the outputs' distance from (1 − s) f_a + s f_b at its
    # progress s (no labels); at equal weight its waypoints lie nearer that curve than the label walk's,
    # and the walk still reaches its target.
    def walk(kind):
        task = _task(metric="output", traverse_weight=100.0, budget=800, cg_iters=3, tol=0.02, traverse_task=kind)
        result = run_method(method, task)
        end = aligned(task)[0].theta_b if method == "aligned-traverse" else task.theta_b
        x, d = task.train.x, float((end - task.theta_a).norm())
        f_a, f_b = task.model(task.theta_a, x), task.model(end, x)
        misfit = 0.0
        for w in result.curve.vertices[1:-1]:
            s = 1 - float((w - end).norm()) / d
            misfit += float((task.model(w, x) - ((1 - s) * f_a + s * f_b)).square().sum(-1).mean())
        return result, misfit / max(1, len(result.curve.vertices) - 2)

    (_, by_labels), (image, by_image) = walk("labels"), walk("image")
    assert by_image < 0.2 * by_labels  # 0.014 vs 0.156 (traverse), 0.007 vs 0.182 (aligned)
    assert image.stop_reason == "done" and image.grad_evals <= 800
    assert "OutputGeodesicLoss" in image.path.meta["objective"]


def test_a_constant_task_weight_settles_short_of_the_target():
    """The cause of the old runs' budget spent short of θ_b: ½r² + wL is least where θ − θ_b = −w∇L."""
    task = _task(metric="output", traverse_weight=10.0, budget=600, cg_iters=3, tol=0.02, traverse_fade=False,
                 traverse_task="labels")
    result = run_method("traverse", task)
    assert result.stop_reason == "budget" and result.info["final_segment_fraction"] > 0.1


# -- the command: resume -------------------------------------------------------------------------------
class Interrupted(BaseException):
    """Stands for a kill: nothing in the library catches it."""


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """Two MLP checkpoints (784-16-10, seeds 0 and 1) on mnist5k."""
    return mlp_checkpoint_pair(tmp_path_factory.mktemp("pair"), 16)


def _rows(out: Path) -> list[dict]:
    rows = (out / "results.csv").read_text().splitlines()
    return [{k: v for k, v in zip(rows[0].split(","), line.split(","), strict=True)
             if k not in ("seconds", "eval_seconds")} for line in rows[1:]]


@pytest.mark.parametrize("method", ["aligned-relax", "aligned-traverse"])
def test_an_interrupted_aligned_method_resumes_to_the_uninterrupted_row(pair, tmp_path, monkeypatch, method):
    relax_module = importlib.import_module("weightgeo.paths.relax")  # the module, not the function

    args = ["connect", *pair, "--method", method, "--budget", "60", "--cg-iters", "3", "--nodes", "3",
            "--checkpoint-every", "1", "--points", "5", "--plane-grid", "0", "--no-train-eval",
            "--device", "cpu"]
    main([*args, "--out", str(tmp_path / "whole")])
    if method == "aligned-relax":
        original, calls = relax_module.save_tensors, []

        def save(path, state):
            original(path, state)
            calls.append(path)
            if len(calls) == 2:
                raise Interrupted

        monkeypatch.setattr(relax_module, "save_tensors", save)
    else:
        original, calls = WeightPath.save_waypoint, []

        def save(self, k, theta, state=None):
            original(self, k, theta, state)
            if state is not None:
                calls.append(k)
            if len(calls) == 2:
                raise Interrupted

        monkeypatch.setattr(WeightPath, "save_waypoint", save)
    with pytest.raises(Interrupted):
        main([*args, "--out", str(tmp_path / "cut")])
    assert calls and (tmp_path / "cut" / "paths" / method).exists()
    monkeypatch.undo()
    main([*args, "--out", str(tmp_path / "cut"), "--resume"])
    assert _rows(tmp_path / "cut") == _rows(tmp_path / "whole")
    result = json.loads((tmp_path / "whole" / "paths" / method / "result.json").read_text())
    assert result["info"]["end"] == "permuted theta_b" and 0 < result["grad_evals"] <= 60
