"""Running continual-learning methods on a task sequence: accuracy matrices, tuning, experiments.

``run_method`` learns a sequence with one method and returns the accuracy matrix R
(R[i][j]: accuracy on task j after learning tasks 0…i, in the sequence's scenario) with
the budget spent per task. ``tune_strength`` picks a penalised method's strength on the
validation split; ``run_experiment`` runs methods × seeds into a run directory (see
:mod:`weightgeo.applications.continual.report`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from weightgeo.applications.continual.methods import (
    DEFAULT_GRIDS,
    METHODS,
    PENALISED,
    ContinualConfig,
    make_learner,
    train_joint,
)
from weightgeo.applications.continual.scores import scores
from weightgeo.data.tasks import TaskSequence
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model, check_model_fits, config_for_data
from weightgeo.training import evaluate


@dataclass
class MethodResult:
    """One method on one seed: its accuracy matrix (NaN above the diagonal) and its cost."""

    method: str
    seed: int
    scenario: str
    matrix: list[list[float]]
    grad_evals: list[int]
    seconds: float
    strength: float | None = None
    scores: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict:
        return {
            "method": self.method,
            "scenario": self.scenario,
            "seed": self.seed,
            **{k: 100 * v for k, v in self.scores.items()},
            "grad_evals": sum(self.grad_evals),
            "grad_evals_per_task": max(self.grad_evals),
            "seconds": self.seconds,
            "strength": self.strength,
        }


def build_network(model_name: str, seq: TaskSequence, seed: int, device, config: dict | None = None):
    """A fresh network (seeded) whose head has the sequence's number of output units.

    The input size (or channels) comes from the tasks' inputs; a network that does not fit
    them is refused in one line after a probe forward pass on one example.
    """
    data = next(d for t in seq.tasks for d in (t.train, t.test) if len(d) > 0)
    example = data.subset(slice(0, 1))
    overrides = {**(config or {}), "num_classes": seq.num_outputs}
    torch.manual_seed(seed)
    model = build_model(model_name, **config_for_data(model_name, example, overrides))
    fmodel = FunctionalModel(model).to(device)
    theta = fmodel.theta()
    check_model_fits(model_name, lambda x: fmodel(theta, x), example.to(device),
                     what=f"{seq.name} on {seq.base}")
    return fmodel


def _accuracy(fmodel, theta, buffers, seq: TaskSequence, task: int, seen: int, split: str) -> float:
    data = getattr(seq.tasks[task], split)
    allowed = seq.allowed(task, seen)
    result = evaluate(fmodel, theta, data, buffers=buffers, units=allowed)
    return result["accuracy"]


def run_method(
    method: str,
    seq: TaskSequence,
    model_name: str = "mlp",
    config: ContinualConfig | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    split: str = "test",
    model_config: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> MethodResult:
    """Learn ``seq`` with ``method``; R is measured on ``split`` ("test" or "val")."""
    if method not in METHODS:
        raise WeightgeoError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    config = config or ContinualConfig()
    config.check()
    device = torch.device(device)
    seq_dev = _on_device(seq, device)
    fmodel = build_network(model_name, seq_dev, seed, device, model_config)
    theta = fmodel.theta()
    n = len(seq_dev)
    nan = math.nan
    matrix = [[nan] * n for _ in range(n)]
    started = time.perf_counter()
    if method == "joint":
        learned = train_joint(fmodel, seq_dev, config, theta, seed)
        _load_buffers(fmodel, learned.buffers)
        last = [_accuracy(fmodel, learned.theta, learned.buffers, seq_dev, j, n - 1, split) for j in range(n)]
        matrix[n - 1] = last
        seconds = time.perf_counter() - started
        result = MethodResult(method, seed, seq.scenario, matrix, [learned.grad_evals], seconds)
        result.scores = {"avg_accuracy": sum(last) / n, "bwt": nan, "forgetting": nan, "plasticity": nan}
        return result
    learner = make_learner(method, fmodel, seq_dev, config, seed)
    spent = []
    for t in range(n):
        learned = learner.learn(t, theta)
        theta = learned.theta
        _load_buffers(fmodel, learned.buffers)
        spent.append(learned.grad_evals)
        learner.after_task(t, theta)
        for j in range(t + 1):
            matrix[t][j] = _accuracy(fmodel, theta, learned.buffers, seq_dev, j, t, split)
        if log is not None:
            row = " ".join(f"{100 * a:5.1f}" for a in matrix[t][: t + 1])
            log(f"{method}: task {t + 1}/{n} ({learned.grad_evals} grad evals): {row}")
    seconds = time.perf_counter() - started
    result = MethodResult(method, seed, seq.scenario, matrix, spent, seconds, learner.strength)
    result.scores = scores(matrix)
    return result


def _load_buffers(fmodel: FunctionalModel, buffers: dict) -> None:
    # The FunctionalModel is this runner's own copy: its eval-mode buffers follow training.
    with torch.no_grad():
        for name, b in fmodel.buffers.items():
            if name in buffers and buffers[name] is not b:
                b.copy_(buffers[name])


def _on_device(seq: TaskSequence, device: torch.device) -> TaskSequence:
    if seq.tasks[0].train.device == device:
        return seq
    from dataclasses import replace

    tasks = [replace(t, train=t.train.to(device), val=t.val.to(device), test=t.test.to(device))
             for t in seq.tasks]
    return replace(seq, tasks=tasks)


def tune_strength(
    method: str,
    seq: TaskSequence,
    model_name: str,
    config: ContinualConfig,
    seed: int,
    device,
    grid: tuple[float, ...] | None = None,
    model_config: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[float, list[dict]]:
    """The strength of ``grid`` with the best average validation accuracy (ties: the first)."""
    if method not in PENALISED:
        raise WeightgeoError(f"{method} has no strength to tune")
    if any(len(t.val) == 0 for t in seq.tasks):
        raise WeightgeoError("tuning needs a validation split (val_fraction > 0)")
    grid = DEFAULT_GRIDS[method] if grid is None else grid
    trials = []
    for value in grid:
        trial = ContinualConfig(**{**config.__dict__, "strengths": {**config.strengths, method: value}})
        result = run_method(method, seq, model_name, trial, seed, device, split="val",
                            model_config=model_config)
        trials.append({"method": method, "strength": value, "val_avg_accuracy": 100 * result.scores["avg_accuracy"],
                       "val_bwt": 100 * result.scores["bwt"], "seconds": result.seconds})
        if log is not None:
            log(f"tune {method}: strength {value:g} → validation ACC {trials[-1]['val_avg_accuracy']:.2f}%")
    best = max(trials, key=lambda r: (r["val_avg_accuracy"], -grid.index(r["strength"])))
    return best["strength"], trials
