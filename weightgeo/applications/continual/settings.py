"""The settings of a continual-learning run: one field per ``weightgeo continual`` option.

Every enumerated option is checked where the settings are built (an unknown sequence, scenario,
method, metric, solver, model or base is one line naming the choices); the sequence, scenario,
number of tasks and base are checked together (``check_task_options``). The fields without a
command-line option (``cli=False``) are the methods' fixed constants, settable from Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from weightgeo.applications.continual.geodesic import SOLVERS
from weightgeo.applications.continual.learner import METHODS
from weightgeo.data.datasets import DATASET_NAMES
from weightgeo.data.tasks import (
    TASK_NAMES,
    check_task_options,
    default_model,
    default_scenario,
    defaults_help,
    n_tasks_help,
    resolve_base,
    sequences_help,
)
from weightgeo.errors import WeightgeoError
from weightgeo.metrics.registry import METRIC_HELP, metric_builder
from weightgeo.models import MODEL_NAMES
from weightgeo.settings import Settings, setting

CLASS_ANCHOR = 1.0
"""The default ``--anchor`` of the class scenario (the hybrid; 0 elsewhere)."""

ALL_METHODS: tuple[str, ...] = ("geodesic", "fip", "finetune", "ewc", "online-ewc", "si", "l2", "replay", "lwf",
                                 "a-gem", "der++", "ogd", "gpm", "joint")


@dataclass
class ContinualSettings(Settings):
    """What ``weightgeo continual`` does: the sequence, the methods, their budget and settings."""

    tasks: str = setting("permuted-mnist", f"Task sequence: {sequences_help()}.", choices=TASK_NAMES)
    n_tasks: int | None = setting(None, f"Number of tasks, default (allowed): {n_tasks_help()}. A split needs a "
                                  "divisor of its base's classes, at least 2 classes per task.")
    scenario: Literal["task", "domain", "class"] | None = setting(
        None, f"Scenario (default: {defaults_help('scenario')}).")
    method: tuple[str, ...] = setting(ALL_METHODS, "Comma-separated methods.", choices=METHODS)
    metric: str = setting("output", "The geodesic method's metric of the earlier tasks. " + METRIC_HELP
                          + " The kfac solver takes output, fisher or diag-fisher.", check=metric_builder)
    solver: str = setting("kfac", "How the geodesic step solves (G + μI)^-1 ∇L (see README).", choices=SOLVERS)
    damping: float | None = setting(None, "μ of the geodesic method (default 0.1; tuned with --tune).", above=0)
    anchor: float | None = setting(
        None, "Geodesic only: S, the pull (S/μ)·Bhattacharyya of the memory's outputs back to the task's start, "
        "preconditioned like the task loss (0: off, the pure geodesic step). A hybrid of the geodesic step and "
        f"fip's pull-back, labelled as one in every report. Default: {CLASS_ANCHOR:g} in the class scenario, "
        "where the pure step forgets, 0 in the task and domain scenarios.", min=0)
    strength: dict[str, float] = setting({}, "Penalty strengths, e.g. ewc=1000,si=1 (default: the tuned "
                                         "defaults).", above=0)
    tune: bool = setting(False, "Tune each penalised method's strength (and μ) on a validation split.")
    tune_lr: tuple[float, ...] | None = setting(
        None, "With --tune, also tune the learning rate over these values (comma-separated), jointly with each "
        "method's strength: every method is then tuned, one without a strength on the learning rate alone "
        "(default: none, every method at --lr).", above=0)
    seeds: int = setting(1, "Run the seeds S … S+N−1 from --seed S.", min=1)
    base: str | None = setting(None, "The data set a sequence is built from (default: each sequence's own: "
                               "mnist5k for the MNIST ones; the CIFAR ones accept only their own).",
                               choices=DATASET_NAMES)
    model: str | None = setting(None, f"Network (default: {defaults_help('model')}).", choices=MODEL_NAMES)
    budget: int = setting(315, "Gradient evaluations per task for every sequential method (joint: × tasks).",
                          min=1)
    lr: float = setting(0.01, "SGD learning rate (cosine per task).", above=0)
    batch_size: int = setting(64, "Training minibatch size.", min=1)
    memory: int = setting(100, "Stored examples per earlier task (geodesic and fip: inputs only; replay, a-gem, "
                          "der++: with labels; ogd, gpm: their gradients, layer inputs).", min=1)
    rank: int = setting(40, "Nyström rank (solver nystrom).", min=1)
    refresh: int = setting(0, "Re-estimate the geodesic metric every this many steps (0: once per task).", min=0)
    cg_iters: int = setting(3, "CG products per step (solvers cg, traverse). Default 3, not the 10 of the other "
                            "commands: each step pays 1 + cg-iters of the per-task budget, so 10 would leave "
                            "28 of 315 steps.", min=1)
    step_size: float = setting(0.05, "Step length (solver traverse).", above=0)
    target_accuracy: float | None = setting(None, "Stop a task early once the minibatch training accuracy "
                                            "reaches this (fraction).", min=0, max=1)
    max_train: int | None = setting(None, "At most this many training examples per task.", min=1)
    seed: int = setting(0, "Random seed: the first of --seeds (sequence, network, batches).")
    momentum: float = setting(0.9, "SGD momentum of every method.", min=0, max=0.999, cli=False)
    metric_batch: int = setting(256, "Stored inputs per metric estimate (solvers cg, traverse).", min=1, cli=False)
    fisher_samples: int = setting(256, "Examples of the empirical Fisher of EWC.", min=1, cli=False)
    online_gamma: float = setting(1.0, "Decay γ of online EWC's running Fisher.", min=0, cli=False)
    si_xi: float = setting(0.1, "Damping ξ of SI's importance.", above=0, cli=False)
    fip_distance: Literal["bhattacharyya", "squared"] = setting(
        "bhattacharyya", "The output distance of fip and of the anchor.", cli=False)
    lwf_temperature: float = setting(2.0, "LwF's distillation temperature T.", above=0, cli=False)
    der_beta: float = setting(1.0, "DER++'s weight β of the stored examples' cross-entropy.", min=0, cli=False)
    val_fraction: float = setting(0.1, "Share of each task's training set held out for validation.", min=0,
                                  max=0.9, cli=False)

    def check(self) -> None:
        check_task_options(self.tasks, self.scenario_or_default, self.n_tasks, self.base)
        self.method = tuple(dict.fromkeys(self.method))
        if self.damping is not None:  # --damping is the geodesic method's strength
            self.strength = {**self.strength, "geodesic": self.damping}
        tunable = [name for name in METHODS if METHODS[name].default_strength is not None]
        for name in self.strength:
            if name not in tunable:
                raise WeightgeoError(f"--strength {name}=…: {name!r} has no strength; the methods with one: "
                                     f"{', '.join(tunable)}")
        if self.tune_lr and not self.tune:
            raise WeightgeoError("--tune-lr tunes the learning rate with --tune: add --tune")
        if self.tune_lr is not None:
            self.tune_lr = tuple(dict.fromkeys(self.tune_lr))
        SOLVERS[self.solver].check_metric(self.metric)
        if self.solver == "nystrom" and not self.rank < self.budget:
            raise WeightgeoError(f"--rank must be below --budget ({self.budget}) for the Nyström solver, got "
                                 f"{self.rank}")

    @property
    def scenario_or_default(self) -> str:
        """The scenario: the chosen one or the sequence's default."""
        return self.scenario or default_scenario(self.tasks)

    @property
    def anchor_or_default(self) -> float:
        """S of the geodesic method's output anchor: the chosen one, or the scenario's default."""
        if self.anchor is not None:
            return self.anchor
        return CLASS_ANCHOR if self.scenario_or_default == "class" else 0.0

    @property
    def model_or_default(self) -> str:
        """The network: the chosen one or the sequence's default."""
        return self.model or default_model(self.tasks)

    @property
    def base_or_default(self) -> str:
        """The base data set: the chosen one or the sequence's own."""
        return resolve_base(self.tasks, self.base)

    @property
    def seed_list(self) -> list[int]:
        """The seeds S … S+N−1."""
        return list(range(self.seed, self.seed + self.seeds))

    def strength_of(self, method: str) -> float | None:
        """The strength of ``method`` (the geodesic method's is μ): --strength (--damping) or the default."""
        default = METHODS[method].default_strength
        return None if default is None else self.strength.get(method, default)
