"""Running a continual-learning method on a task sequence: the accuracy matrix, resumable per task.

``run_method`` learns a sequence with one method and returns the accuracy matrix R (R[i][j]:
accuracy on task j after learning tasks 0…i, in the sequence's scenario) with the budget spent
per task and how the method ended. Given a ``store`` it saves its progress after every task — θ,
the learner's state (memory, penalties' anchors and Fishers, SI's importance, batch-norm
buffers), the matrix so far and the global random state — and a rerun continues from the last
finished task to the numbers an uninterrupted run gives. A method that diverges (a non-finite
loss, gradient or step) stops there: its row says so in one line, nothing non-finite is kept.
``tune_strength`` picks a penalised method's strength on the validation split.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import torch
from torch import Tensor

from weightgeo.applications.continual.methods import METHODS, make_learner
from weightgeo.applications.continual.scores import scores
from weightgeo.applications.continual.settings import ContinualSettings
from weightgeo.data.tasks import TaskSequence
from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import evaluate
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model, check_model_fits, config_for_data
from weightgeo.rundir import json_safe
from weightgeo.stopping import Stop


class Store(Protocol):
    """Where a run keeps its progress: ``load()`` (None: nothing yet) and ``save(state)``."""

    def load(self) -> dict | None: ...

    def save(self, state: dict) -> None: ...


@dataclass
class MethodResult:
    """One method on one seed: its accuracy matrix (NaN where not measured), cost and ending."""

    method: str
    seed: int
    scenario: str
    matrix: list[list[float]]
    grad_evals: list[int]
    seconds: float
    strength: float | None = None
    scores: dict[str, float] = field(default_factory=dict)
    stop: Stop | None = None
    message: str | None = None
    lr: float | None = None

    @property
    def diverged(self) -> bool:
        return self.stop is not None and self.stop.diverged

    def row(self) -> dict:
        """The result as plain JSON types (scores in percent; NaN → None)."""
        row = {
            "method": self.method, "scenario": self.scenario, "seed": self.seed,
            **{k: 100 * v for k, v in self.scores.items()},
            "grad_evals": sum(self.grad_evals), "grad_evals_per_task": max(self.grad_evals, default=0),
            "seconds": self.seconds, "strength": self.strength, "lr": self.lr,
            "stop_reason": None if self.stop is None else self.stop.reason.value,
            "matrix": self.matrix, "grad_evals_by_task": self.grad_evals,
        }
        if self.diverged:
            row["stop_message"] = self.message
        return json_safe(row)


def build_network(model_name: str, seq: TaskSequence, seed: int, device, config: dict | None = None
                  ) -> FunctionalModel:
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


def on_device(seq: TaskSequence, device: torch.device) -> TaskSequence:
    """``seq`` with every split on ``device``."""
    if seq.tasks[0].train.device == device:
        return seq
    tasks = [replace(t, train=t.train.to(device), val=t.val.to(device), test=t.test.to(device))
             for t in seq.tasks]
    return replace(seq, tasks=tasks)


def accuracies(fmodel: FunctionalModel, theta: Tensor, buffers: dict, seq: TaskSequence, seen: int,
               split: str) -> list[float]:
    """The accuracy on each task 0…``seen`` after learning them, on their ``split`` and units."""
    return [evaluate(fmodel, theta, getattr(seq.tasks[j], split), buffers=buffers,
                     units=seq.allowed(j, seen))["accuracy"] for j in range(seen + 1)]


def _load_buffers(fmodel: FunctionalModel, buffers: dict) -> None:
    # The FunctionalModel is this runner's own: its eval-mode buffers follow training.
    with torch.no_grad():
        for name, b in fmodel.buffers.items():
            if name in buffers and buffers[name] is not b:
                b.copy_(buffers[name])


def _random_state(device: torch.device) -> dict:
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_random_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def run_method(
    method: str,
    seq: TaskSequence,
    model_name: str = "mlp",
    settings: ContinualSettings | None = None,
    seed: int = 0,
    device: torch.device | str = "cpu",
    split: str = "test",
    model_config: dict | None = None,
    log: Callable[[str], None] | None = None,
    store: Store | None = None,
) -> MethodResult:
    """Learn ``seq`` with ``method``; R is measured on ``split`` ("test" or "val").

    Args:
        method: a registered method (one line naming the choices otherwise).
        seq: the task sequence.
        model_name, model_config: the network (seeded by ``seed``).
        settings: the methods' settings (default: the command's defaults).
        store: where to save the progress after each task and find it again (``--resume``).
    """
    METHODS[method]  # an unknown method: one line naming the choices
    settings = settings or ContinualSettings()
    device = torch.device(device)
    seq = on_device(seq, device)
    fmodel = build_network(model_name, seq, seed, device, model_config)
    learner = make_learner(method, fmodel, seq, settings, seed)
    n = len(seq)
    progress: dict[str, Any] = {"theta": fmodel.theta(), "matrix": [[math.nan] * n for _ in range(n)],
                                "spent": [], "seconds": 0.0, "done": -1}
    saved = store.load() if store is not None else None
    if saved is not None:
        progress = {k: saved[k] for k in progress}
        learner.load_state_dict(saved["learner"])
        _load_buffers(fmodel, learner.buffers)
        _set_random_state(saved["random"], device)
    theta, matrix, spent = progress["theta"], progress["matrix"], progress["spent"]
    stop = message = None
    for t in learner.stages(n):
        if t <= progress["done"]:
            continue
        started = time.perf_counter()
        learned = learner.learn(t, theta)
        spent.append(learned.grad_evals)
        stop = learned.stop
        if stop.diverged:
            message = stop.message(f"{method} (seed {seed}, task {t + 1})", learner.hint)
            progress["seconds"] += time.perf_counter() - started
            break
        theta = learned.theta
        _load_buffers(fmodel, learned.buffers)
        learner.after_task(t, theta)
        matrix[t][: t + 1] = accuracies(fmodel, theta, learned.buffers, seq, t, split)
        progress["seconds"] += time.perf_counter() - started
        if log is not None:
            row = " ".join(f"{100 * a:5.1f}" for a in matrix[t][: t + 1])
            log(f"{method}: task {t + 1}/{n} ({learned.grad_evals} grad evals): {row}")
        if store is not None:
            store.save({"theta": theta, "matrix": matrix, "spent": spent, "seconds": progress["seconds"],
                        "done": t, "learner": learner.state_dict(), "random": _random_state(device)})
    result = MethodResult(method, seed, seq.scenario, matrix, spent, progress["seconds"], learner.strength,
                          stop=stop, message=message, lr=settings.lr)
    result.scores = ({k: math.nan for k in ("avg_accuracy", "bwt", "forgetting", "plasticity")}
                     if result.diverged else scores(matrix))
    return result


def tuned_settings(settings: ContinualSettings, method: str, strength: float | None = None,
                   lr: float | None = None) -> ContinualSettings:
    """``settings`` with ``method``'s strength and the learning rate replaced (None: kept)."""
    if strength is not None:
        settings = settings.replace(strength={**settings.strength, method: strength}, damping=None)
    return settings if lr is None else settings.replace(lr=lr)


def tuning_trial(method: str, strength: float | None, seq: TaskSequence, model_name: str,
                 settings: ContinualSettings, seed: int, device, model_config: dict | None = None,
                 store: Store | None = None, lr: float | None = None) -> dict:
    """One trial of the tuning: ``method`` at ``strength`` (None: a method without one) and learning
    rate ``lr`` (None: ``settings.lr``), scored on the validation split (percent)."""
    trial = tuned_settings(settings, method, strength, lr)
    result = run_method(method, seq, model_name, trial, seed, device, split="val", model_config=model_config,
                        store=store)
    return json_safe({"method": method, "strength": strength, "lr": trial.lr,
                      "val_avg_accuracy": 100 * result.scores["avg_accuracy"], "val_bwt": 100 * result.scores["bwt"],
                      "seconds": result.seconds, "stop_reason": result.row()["stop_reason"]})


def choose_trial(trials: list[dict]) -> dict | None:
    """The trial with the best validation ACC (ties: the first; trials that diverged never)."""
    finite = [r for r in trials if r["val_avg_accuracy"] is not None]
    if not finite:
        return None
    return max(enumerate(finite), key=lambda pair: (pair[1]["val_avg_accuracy"], -pair[0]))[1]


def choose_strength(trials: list[dict]) -> float | None:
    """The strength of the trial with the best validation ACC (:func:`choose_trial`)."""
    best = choose_trial(trials)
    return None if best is None else best["strength"]


def tune_strength(
    method: str,
    seq: TaskSequence,
    model_name: str,
    settings: ContinualSettings,
    seed: int,
    device,
    grid: tuple[float, ...] | None = None,
    model_config: dict | None = None,
    log: Callable[[str], None] | None = None,
) -> tuple[float | None, list[dict]]:
    """The strength of ``grid`` (default: the method's) with the best average validation accuracy."""
    check_tunable(method, seq)
    grid = METHODS[method].grid if grid is None else grid
    trials = []
    for value in grid:
        trials.append(tuning_trial(method, value, seq, model_name, settings, seed, device, model_config))
        if log is not None:
            log(f"tune {method}: strength {value:g} → validation ACC {trials[-1]['val_avg_accuracy']}")
    return choose_strength(trials), trials


def check_tunable(method: str, seq: TaskSequence, lr: bool = False) -> None:
    """Refuse tuning a method with nothing to tune (no strength, and ``lr`` False: the learning rate
    not tuned), or a sequence without a validation split."""
    if METHODS[method].default_strength is None and not lr:
        raise WeightgeoError(f"{method} has no strength to tune")
    if any(len(t.val) == 0 for t in seq.tasks):
        raise WeightgeoError("tuning needs a validation split (val_fraction > 0)")
