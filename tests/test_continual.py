"""Continual learning: scores on a hand-made matrix, memory, budgets, metrics' solves, the CLI."""

from __future__ import annotations

import csv
import io
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from weightgeo.applications import RunOptions
from weightgeo.applications.continual import (
    ContinualSettings,
    KroneckerMetric,
    LowRankMetric,
    make_learner,
    run_experiment,
    run_method,
    scores,
    tune_strength,
)
from weightgeo.cli import cli, main
from weightgeo.data.tasks import make_task_sequence
from weightgeo.data.testing import write_fake_mnist
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.metrics import OutputMetric
from weightgeo.metrics.base import Metric

NAN = math.nan


def test_scores_on_a_hand_made_matrix():
    # Task 1 rises from 50% to 80% while task 2 is learned, then falls to 60%.
    r = [[0.50, NAN, NAN], [0.80, 0.90, NAN], [0.60, 0.70, 0.95]]
    s = scores(r)
    assert s["avg_accuracy"] == pytest.approx((0.60 + 0.70 + 0.95) / 3)
    # BWT = mean(R[2][j] − R[j][j]) = ((0.6 − 0.5) + (0.7 − 0.9)) / 2 = −0.05
    assert s["bwt"] == pytest.approx(-0.05)
    # forgetting = mean(max earlier − final) = ((0.8 − 0.6) + (0.9 − 0.7)) / 2 = 0.2 ≠ −BWT
    assert s["forgetting"] == pytest.approx(0.20)
    assert s["plasticity"] == pytest.approx((0.50 + 0.90 + 0.95) / 3)
    # Task 1 ends ABOVE its earlier best: forgetting counts only the rows before the last (−0.1)
    rising = scores([[0.50, NAN], [0.60, 0.90]])
    assert rising["forgetting"] == pytest.approx(-0.10) and rising["bwt"] == pytest.approx(0.10)
    one = scores([[0.7]])
    assert one["avg_accuracy"] == pytest.approx(0.7) and math.isnan(one["bwt"]) and math.isnan(one["forgetting"])


@pytest.fixture(scope="module")
def tiny_seq():
    return make_task_sequence("permuted-mnist", "domain", 3, seed=0, max_train=200)


def _config(**kw):
    return ContinualSettings(**{"budget": 12, "batch_size": 32, "memory": 7, **kw})


def test_memory_holds_the_requested_inputs_per_earlier_task(tiny_seq):
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)))
    learner = make_learner("geodesic", fmodel, tiny_seq, _config(), seed=0)
    theta = fmodel.theta()
    for t in range(3):
        assert len(learner.memory) == t
        assert learner.memory.inputs().shape[0] == 7 * t if t else True
        theta = learner.learn(t, theta).theta
        learner.after_task(t, theta)
    assert [len(x) for x in learner.memory.x] == [7, 7, 7]
    for t, stored in enumerate(learner.memory.x):
        train = tiny_seq.tasks[t].train.x.reshape(len(tiny_seq.tasks[t].train), -1)
        for row in stored.reshape(7, -1):  # every stored input is one of that task's inputs
            assert (train == row).all(1).any()
        assert len({tuple(r.tolist()) for r in stored.reshape(7, -1)}) == 7  # no repeats


def test_geodesic_with_an_output_anchor_keeps_the_budget_and_the_frozen_reference(tiny_seq):
    config = _config(anchor=5.0)
    result = run_method("geodesic", tiny_seq, "mlp", config, seed=0, model_config={"hidden": [16]})
    assert result.grad_evals == [12, 12, 12]
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)))
    learner = make_learner("geodesic", fmodel, tiny_seq, config, seed=0)
    theta0 = learner.learn(0, fmodel.theta()).theta
    learner.after_task(0, theta0)
    learner.learn(1, theta0)
    # the reference stays the outputs of the task's start, not of the moving network
    assert torch.equal(learner.reference, fmodel(theta0, learner.memory.inputs()))


def test_a_target_accuracy_stops_a_task_early(tiny_seq):
    reached = run_method("finetune", tiny_seq, "mlp", _config(target_accuracy=0.0), seed=0,
                         model_config={"hidden": [16]})
    assert reached.grad_evals == [1, 1, 1]  # the first minibatch already has accuracy ≥ 0
    never = run_method("finetune", tiny_seq, "mlp", _config(target_accuracy=1.0), seed=0,
                       model_config={"hidden": [16]})
    assert never.grad_evals == [12, 12, 12]


def test_joint_gets_the_total_budget(tiny_seq):
    result = run_method("joint", tiny_seq, "mlp", _config(), seed=0, model_config={"hidden": [16]})
    assert result.grad_evals == [36]
    assert math.isnan(result.scores["bwt"])


def test_nystrom_is_exact_for_a_low_rank_metric_and_solves_exactly():
    torch.manual_seed(0)
    n, r = 30, 4
    u = torch.linalg.qr(torch.randn(n, r, dtype=torch.float64)).Q
    dense = u @ torch.diag(torch.tensor([5.0, 2.0, 1.0, 0.5], dtype=torch.float64)) @ u.T

    class Dense(Metric):
        def mvp(self, theta, v):
            return dense @ v

    theta = torch.zeros(n, dtype=torch.float64)
    low = LowRankMetric.nystrom(Dense(), theta, 6, torch.Generator().manual_seed(1))
    assert low.products == 6
    assert torch.allclose(low.at(theta).dense(), dense, atol=1e-8)
    g = torch.randn(n, dtype=torch.float64)
    x = low.at(theta).solve(g, 0.1).x
    assert torch.allclose((dense + 0.1 * torch.eye(n, dtype=torch.float64)) @ x, g, atol=1e-8)


def test_kronecker_metric_is_exact_for_one_linear_layer_under_the_output_metric():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 4)).double()
    fmodel = FunctionalModel(model)
    theta, x = fmodel.theta(), torch.randn(9, 6, dtype=torch.float64)
    kron = KroneckerMetric.build(fmodel, theta, x, "output")
    assert kron.products == 5  # one forward pass and one backward pass per output unit
    dense = OutputMetric(fmodel, x).at(theta).dense()
    assert torch.allclose(kron.at(theta).dense(), dense, atol=1e-10)
    g = torch.randn_like(theta)
    sol = kron.at(theta).solve(g, 0.05).x
    assert torch.allclose((dense + 0.05 * torch.eye(len(theta), dtype=torch.float64)) @ sol, g, atol=1e-9)


def test_geodesic_direction_changes_old_outputs_far_less_than_sgd(tiny_seq):
    torch.manual_seed(0)
    fmodel = FunctionalModel(nn.Sequential(nn.Flatten(), nn.Linear(784, 32), nn.ReLU(), nn.Linear(32, 10)))
    learner = make_learner("geodesic", fmodel, tiny_seq, _config(memory=50,
                                                                   strength={"geodesic": 1e-3}), seed=0)
    theta = learner.learn(0, fmodel.theta()).theta
    learner.after_task(0, theta)
    learner.before_task(1, theta)
    x, y = tiny_seq.tasks[1].train.x[:64], tiny_seq.tasks[1].train.y[:64]
    t = theta.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(fmodel(t, x), y), t)
    d = learner.direction(theta, g)
    old = OutputMetric(fmodel, learner.memory.inputs()).at(theta)
    change = lambda v: float(old.inner(v)) / float(v @ v)  # noqa: E731 - mean squared output change per unit step
    assert change(d) < 0.05 * change(g)
    assert float(d @ g) > 0  # still a descent direction for the new task


def test_tuning_picks_the_best_validation_value(tiny_seq):
    best, trials = tune_strength("l2", tiny_seq, "mlp", _config(), 0, "cpu", grid=(1e-3, 1e-1, 10.0, 1e3),
                                 model_config={"hidden": [16]})
    assert [t["strength"] for t in trials] == [1e-3, 1e-1, 10.0, 1e3]
    assert best == max(trials, key=lambda t: t["val_avg_accuracy"])["strength"]


def test_cli_mnist_fashion_end_to_end_on_fake_idx_files(tmp_path):
    root = tmp_path / "data"
    write_fake_mnist(root, "mnist", n_train=120, n_test=40, seed=0)
    write_fake_mnist(root, "fashion-mnist", n_train=120, n_test=40, seed=1)
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "continual", "--tasks", "mnist-fashion", "--base", "mnist", "--data-root", str(root),
        "--model", "fashion-cnn", "--scenario", "task", "--method", "geodesic,finetune,joint",
        "--budget", "14", "--memory", "5", "--batch-size", "16", "--seed", "3",
        "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert {"method", "scenario", "seed", "avg_accuracy", "bwt", "forgetting", "plasticity",
            "grad_evals", "seconds"} <= set(rows[0])
    assert {r["seed"] for r in rows} == {"3"}
    assert {r["method"] for r in rows} == {"geodesic", "finetune", "joint"}
    assert all(r["scenario"] == "task" for r in rows)
    for method in ("geodesic", "joint"):
        assert (out / f"heatmap_{method}.png").stat().st_size > 0
    assert (out / "accuracy_over_tasks.png").exists() and (out / "matrices" / "geodesic_seed3.csv").exists()
    assert "| geodesic |" in (out / "summary.md").read_text()
    # the numbers: the fake classes are easy (chance 10%), and ACC is the matrix's last row mean
    acc = {r["method"]: float(r["avg_accuracy"]) for r in rows}
    assert acc["finetune"] >= 90 and acc["joint"] >= 90
    matrix = list(csv.DictReader(open(out / "matrices" / "geodesic_seed3.csv")))
    assert float(matrix[0]["task_1"]) >= 90 and matrix[0]["task_2"] == ""
    last = [float(matrix[1]["task_1"]), float(matrix[1]["task_2"])]
    assert acc["geodesic"] == pytest.approx(sum(last) / 2, rel=1e-5)


def test_cli_tune_lr_tunes_every_method_jointly_and_runs_each_at_its_choice(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "continual", "--n-tasks", "2", "--method", "finetune,l2", "--budget", "5", "--max-train", "120",
        "--memory", "5", "--tune", "--tune-lr", "0.001,0.2", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    trials = list(csv.DictReader(open(out / "tuning.csv")))
    # finetune has no strength: tuned on the learning rate alone; l2 on its 5 strengths × 2 rates
    assert sorted((t["method"], t["strength"], t["lr"]) for t in trials if t["method"] == "finetune") == [
        ("finetune", "", "0.001"), ("finetune", "", "0.2")]
    assert len([t for t in trials if t["method"] == "l2"]) == 10
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    for method in ("finetune", "l2"):
        mine = [t for t in trials if t["method"] == method]
        (chosen,) = [t for t in mine if t["chosen"] == "True"]
        assert float(chosen["val_avg_accuracy"]) == max(float(t["val_avg_accuracy"]) for t in mine)
        assert rows[method]["lr"] == chosen["lr"] and rows[method]["strength"] == chosen["strength"]
    # the run used the chosen rate: the library's finetune at that rate gives the same scores
    seq = make_task_sequence("permuted-mnist", "domain", 2, seed=0, max_train=120)
    lr = float(rows["finetune"]["lr"])
    direct = run_method("finetune", seq, "mlp", ContinualSettings(n_tasks=2, budget=5, memory=5, lr=lr), seed=0)
    assert float(rows["finetune"]["avg_accuracy"]) == pytest.approx(100 * direct.scores["avg_accuracy"], abs=1e-4)
    other = run_method("finetune", seq, "mlp", ContinualSettings(n_tasks=2, budget=5, memory=5,
                                                                  lr=0.201 - lr), seed=0)
    assert other.scores["avg_accuracy"] != direct.scores["avg_accuracy"]  # the rate changes the result
    assert "| finetune | — | " + rows["finetune"]["lr"] + " |" in (out / "summary.md").read_text()


def test_the_tuning_chooses_the_best_validation_trial_first_of_ties_never_a_diverged_one():
    from weightgeo.applications.continual.runner import choose_strength, choose_trial

    trials = [{"strength": 1.0, "lr": 0.01, "val_avg_accuracy": 80.0},
              {"strength": 10.0, "lr": 0.05, "val_avg_accuracy": None},  # diverged
              {"strength": 0.1, "lr": 0.03, "val_avg_accuracy": 90.0},
              {"strength": 0.01, "lr": 0.05, "val_avg_accuracy": 90.0}]
    assert choose_trial(trials) is trials[2] and choose_strength(trials) == 0.1
    assert choose_trial(trials[3:] + trials[:3]) is trials[3]  # ties: the first in the list
    assert choose_trial([trials[1]]) is None and choose_strength([]) is None


def test_tune_lr_without_tune_is_refused_in_one_line():
    with pytest.raises(WeightgeoError, match="^--tune-lr tunes the learning rate with --tune: add --tune$"):
        ContinualSettings(tune_lr=(0.01, 0.05))
    assert ContinualSettings(tune=True, tune_lr=(0.05, 0.01, 0.05)).tune_lr == (0.05, 0.01)


def test_cli_seeds_run_s_to_s_plus_n_minus_1(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "continual", "--n-tasks", "2", "--method", "finetune,l2", "--budget", "5", "--max-train", "120",
        "--memory", "5", "--seeds", "2", "--seed", "7", "--strength", "l2=0.5", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["seed"]) for r in rows] == [("finetune", "7"), ("l2", "7"), ("finetune", "8"), ("l2", "8")]
    assert all(r["grad_evals"] == "10" and r["scenario"] == "domain" for r in rows)
    assert {r["strength"] for r in rows if r["method"] == "l2"} == {"0.5"}
    # the CLI ran the library's l2 with these settings on seed 8's sequence and network
    seq = make_task_sequence("permuted-mnist", "domain", 2, seed=8, max_train=120)
    config = ContinualSettings(n_tasks=2, budget=5, memory=5, strength={"l2": 0.5})
    direct = run_method("l2", seq, "mlp", config, seed=8).scores
    for key in ("avg_accuracy", "bwt", "plasticity"):
        assert float(rows[3][key]) == pytest.approx(100 * direct[key], rel=1e-5, abs=1e-4), key


def test_cli_geodesic_forgets_less_than_finetune_on_two_permuted_mnist5k_tasks(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, [
        "continual", "--n-tasks", "2", "--method", "finetune,geodesic", "--budget", "100",
        "--max-train", "1000", "--seed", "3", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    rows = {r["method"]: r for r in csv.DictReader(open(out / "results.csv"))}
    finetune, geodesic = rows["finetune"], rows["geodesic"]
    assert float(finetune["avg_accuracy"]) > 75  # both learn (chance 10%)
    assert float(geodesic["forgetting"]) < float(finetune["forgetting"]) - 3  # points
    assert float(geodesic["avg_accuracy"]) >= float(finetune["avg_accuracy"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tasks", "rotated-mnist"], "--tasks: unknown value 'rotated-mnist'"),
        (["--n-tasks", "0"], "--n-tasks must be at least 1, got 0"),
        (["--tasks", "mnist-fashion", "--scenario", "domain"], "mnist-fashion cannot be domain-incremental"),
        (["--method", "geodesic,magic"], "--method: unknown value 'magic'"),
        (["--strength", "ewc=abc"], "--strength expects a number, got 'abc'"),
    ],
)
def test_cli_refuses_bad_input_in_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["continual", *args, "--out", str(tmp_path / "run")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: ") and message in err and "\n" not in err


# -- faults: a killed run resumes to the uninterrupted numbers; a diverging method is one line ----------


class _Killed(Exception):
    """Stands for kill -9 right after a save."""


class MemoryStore:
    """A method's saved progress, kept as the bytes torch.save writes (read back weights-only)."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.saved: bytes | None = None
        self.saves = 0
        self.kill_after = kill_after

    def load(self):
        return None if self.saved is None else torch.load(io.BytesIO(self.saved), weights_only=True)

    def save(self, state) -> None:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        self.saved, self.saves = buffer.getvalue(), self.saves + 1
        if self.saves == self.kill_after:
            raise _Killed


def _plain(matrix):
    return [[None if math.isnan(a) else a for a in row] for row in matrix]


@pytest.mark.parametrize(("method", "settings"), [
    ("si", {}), ("ewc", {}), ("online-ewc", {}), ("l2", {}), ("replay", {}), ("fip", {}),
    ("geodesic", {"refresh": 4, "budget": 30}), ("geodesic", {"solver": "cg", "cg_iters": 2}),
    ("lwf", {}), ("der++", {}), ("a-gem", {}), ("ogd", {}), ("gpm", {}),
])
def test_a_method_stopped_after_a_task_resumes_from_it_to_the_uninterrupted_numbers(tiny_seq, method, settings):
    config = _config(**settings)
    net = {"model_config": {"hidden": [16]}, "seed": 1}
    whole = run_method(method, tiny_seq, "mlp", config, **net)
    store = MemoryStore(kill_after=1)  # dies right after saving task 1
    with pytest.raises(_Killed):
        run_method(method, tiny_seq, "mlp", config, store=store, **net)
    store.kill_after = None
    learned: list[str] = []
    resumed = run_method(method, tiny_seq, "mlp", config, store=store, log=learned.append, **net)
    assert [line.split(" (")[0] for line in learned] == [f"{method}: task 2/3", f"{method}: task 3/3"]
    assert _plain(resumed.matrix) == _plain(whole.matrix)  # to the last bit
    assert resumed.grad_evals == whole.grad_evals and resumed.scores == whole.scores
    state = store.load()  # what was saved: finite, and the learner's state with it
    assert state["done"] == 2 and bool(torch.isfinite(state["theta"]).all())
    assert len(state["learner"]["memory"]["x"]) == (0 if method == "lwf" else 3)  # LwF keeps no memory


def test_a_network_with_dropout_resumes_with_the_random_state_of_its_last_task(tiny_seq):
    # Dropout draws from the global generator: the resumed run restores it as it was after task 1.
    from dataclasses import replace

    small = replace(tiny_seq, tasks=[replace(t, test=t.test.subset(slice(0, 100))) for t in tiny_seq.tasks[:2]])
    config = _config(budget=3, batch_size=16)
    whole = run_method("finetune", small, "fashion-cnn", config, seed=2)
    store = MemoryStore(kill_after=1)
    with pytest.raises(_Killed):
        run_method("finetune", small, "fashion-cnn", config, seed=2, store=store)
    store.kill_after = None
    resumed = run_method("finetune", small, "fashion-cnn", config, seed=2, store=store)
    assert _plain(resumed.matrix) == _plain(whole.matrix)


def test_a_diverging_method_stops_in_one_line_and_saves_nothing_non_finite(tiny_seq):
    store = MemoryStore()
    result = run_method("l2", tiny_seq, "mlp", _config(lr=1e6), seed=0, model_config={"hidden": [16]},
                        store=store)
    assert result.diverged and result.stop.reason.value == "non-finite"
    assert result.message.startswith("l2 (seed 0, task ") and "non-finite" in result.message
    assert result.message.endswith("— lower --lr or the method's --strength") and "\n" not in result.message
    row = result.row()
    assert row["stop_reason"] == "non-finite" and row["avg_accuracy"] is None and row["stop_message"]
    saved = store.load()
    if saved is not None:  # only finished tasks are saved, all finite
        assert bool(torch.isfinite(saved["theta"]).all())
        assert all(bool(torch.isfinite(t).all()) for t in saved["learner"]["buffers"].values())


def test_cli_a_diverging_method_exits_3_with_one_line_and_writes_the_others(tmp_path):
    out = tmp_path / "run"
    process = subprocess.run(
        [sys.executable, "-m", "weightgeo", "continual", "--n-tasks", "2", "--budget", "6", "--max-train", "120",
         "--memory", "5", "--method", "finetune,geodesic,fip", "--lr", "1e6", "--out", str(out)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert process.returncode == 3, process.stderr
    errors = [line for line in process.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 3 and "Traceback" not in process.stderr
    assert errors[0].startswith("Error: finetune (seed 0, task 1) stopped at step ") and errors[0].endswith(
        "non-finite loss — lower --lr")
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [(r["method"], r["stop_reason"]) for r in rows] == [
        ("finetune", "non-finite"), ("geodesic", "non-finite"), ("fip", "non-finite")]
    assert all(r["avg_accuracy"] == "" and r["stop_message"] for r in rows)
    assert "Diverged" in (out / "summary.md").read_text()
    assert not (out / "state").exists() or not any((out / "state").iterdir())


_KILL_INSIDE_A_UNIT = """
import os, signal, sys
from pathlib import Path
from weightgeo.data.streams import Minibatches
state, unit = Path(sys.argv[sys.argv.index("--out") + 1]) / "state", os.environ["KILL_INSIDE"]
draw = Minibatches.next
def draw_or_die(self):  # the first minibatch after ``unit`` saved a finished task: kill -9 mid-task
    if (state / (unit + ".pt")).exists():
        os.kill(os.getpid(), signal.SIGKILL)
    return draw(self)
Minibatches.next = draw_or_die
from weightgeo.cli import main
main(sys.argv[1:])
"""
_ARGS = ["continual", "--n-tasks", "2", "--budget", "15", "--max-train", "100", "--memory", "5",
         "--method", "si,replay", "--tune", "--device", "cpu"]


def _cli(out: Path, *extra: str, kill_inside: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KILL_INSIDE": kill_inside or ""}
    script = ["-c", _KILL_INSIDE_A_UNIT] if kill_inside else ["-m", "weightgeo"]
    return subprocess.run([sys.executable, *script, *_ARGS, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True, timeout=600)


def _without_seconds(path: Path) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(open(path))]


@pytest.mark.slow
def test_cli_killed_with_sigkill_inside_tuning_and_inside_a_run_resumes_to_the_uninterrupted_results(tmp_path):
    whole = _cli(tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr
    cut = tmp_path / "cut"
    first = _cli(cut, kill_inside="tune_si_1")  # inside the second tuning trial, after its task 1
    assert first.returncode == -signal.SIGKILL, first.stderr
    units = [json.loads(line)["unit"] for line in (cut / "units.jsonl").read_text().splitlines()]
    assert units == ["tune/si/0.01", "tune/si/0.1"] and (cut / "state" / "tune_si_1.pt").exists()
    second = _cli(cut, "--resume", kill_inside="seed0_replay")  # inside replay's run, after task 1
    assert second.returncode == -signal.SIGKILL, second.stderr
    assert "tune/si/0.1 already done (resumed)" in second.stderr
    saved = torch.load(cut / "state" / "seed0_replay.pt", weights_only=True)
    assert saved["done"] == 0 and bool(torch.isfinite(saved["theta"]).all())
    third = _cli(cut, "--resume")
    assert third.returncode == 0, third.stderr
    assert "seed0/si already done (resumed)" in third.stderr
    replayed = [line.split(" (")[0] for line in third.stderr.splitlines() if line.startswith("replay: task")]
    assert replayed == ["replay: task 2/2"]  # task 1 came from the saved state, not from a rerun
    for name in ("results.csv", "tuning.csv"):
        assert _without_seconds(cut / name) == _without_seconds(tmp_path / "whole" / name), name
    assert len(_without_seconds(cut / "tuning.csv")) == 5 and len(_without_seconds(cut / "results.csv")) == 2
    matrices = [json.loads(line)["matrix"] for line in (cut / "results.jsonl").read_text().splitlines()]
    assert matrices == [json.loads(line)["matrix"]
                        for line in (tmp_path / "whole" / "results.jsonl").read_text().splitlines()]


def test_cli_refuses_a_model_that_does_not_fit_before_writing_or_logging_anything(tmp_path, capsys):
    out = tmp_path / "run"
    with pytest.raises(SystemExit) as exit_info:
        main(["continual", "--n-tasks", "2", "--model", "vgg11", "--max-train", "50", "--out", str(out)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("Error: model vgg11 does not fit permuted-mnist on mnist5k") and "\n" not in err
    assert not out.exists()


def test_settings_check_the_number_of_tasks_with_the_base_and_default_to_each_sequences_base():
    assert ContinualSettings(tasks="split-mnist", base="cifar100", n_tasks=20).n_tasks == 20  # 100 classes / 5
    with pytest.raises(WeightgeoError, match="split-mnist cuts the 10 classes of mnist5k into tasks of equal size"):
        ContinualSettings(tasks="split-mnist", n_tasks=20)
    assert ContinualSettings(tasks="split-cifar100").base_or_default == "cifar100"
    assert ContinualSettings().base_or_default == "mnist5k" and ContinualSettings().base is None
    with pytest.raises(WeightgeoError, match="--strength replay=…: 'replay' has no strength"):
        ContinualSettings(strength={"replay": 1.0})
    with pytest.raises(WeightgeoError, match="--solver: unknown value 'lsqr'; choose one of kfac, nystrom, cg"):
        ContinualSettings(solver="lsqr")


def test_python_entry_point_runs_the_cli_application(tmp_path):
    outcome = run_experiment(tmp_path / "run", n_tasks=2, method=("finetune", "l2"), budget=5, max_train=120,
                             memory=5, strength={"l2": 0.5}, seed=7, options=RunOptions())
    assert [(r["method"], r["seed"], r["grad_evals"]) for r in outcome.rows] == [("finetune", 7, 10), ("l2", 7, 10)]
    assert outcome.diverged == [] and outcome.summary.name == "summary.md"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["tasks"], config["scenario"], config["base"], config["model"]) == (
        "permuted-mnist", "domain", "mnist5k", "mlp")
    seq = make_task_sequence("permuted-mnist", "domain", 2, seed=7, max_train=120)
    direct = run_method("l2", seq, "mlp", ContinualSettings(budget=5, memory=5, strength={"l2": 0.5}), seed=7)
    assert outcome.rows[1]["avg_accuracy"] == pytest.approx(100 * direct.scores["avg_accuracy"], abs=1e-9)


def test_demo_section_continual_quick(tmp_path):
    from types import SimpleNamespace

    from weightgeo.applications.continual.demo import section_continual

    ctx = SimpleNamespace(seed=0, quick=True, log=lambda message: None, device="cpu", out=tmp_path)
    text = section_continual(ctx)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines() if line.startswith("| ")
            and line.split(" | ")[0][2:] in ("finetune", "geodesic")}
    assert set(rows) == {"finetune", "geodesic"} and all(row[5] == "60" for row in rows.values())  # 2 × 30
    forgot = {m: float(row[1].rstrip("%")) - float(row[2].rstrip("%")) for m, row in rows.items()}
    assert forgot["geodesic"] < forgot["finetune"]  # task 1 is kept better under the old task's metric
    assert (tmp_path / "continual_finetune.png").exists() and (tmp_path / "continual_geodesic.png").exists()
