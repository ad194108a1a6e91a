"""An application made of one Objective: trace from a trained network toward a second goal.

A new application is an :class:`~weightgeo.objectives.Objective` and a factory registered with
:func:`objective_application`::

    @objective_application("unlearn")
    def unlearn(task: Task, forget_class: int = 0) -> Objective:
        return ForgetSet(task.model, task.train.subset(task.train.y == forget_class))

The factory's keyword parameters become the application's settings (and command-line options,
``--forget-class``) beside the shared tracing settings of :class:`TraceSettings`. A run loads the
checkpoint and its data, builds the objective, and traces from the network with every chosen
method (:data:`TRACE_METHODS`): ``geodesic`` — the papers' damped natural-gradient step under the
task metric, re-estimated on a fresh batch of the inputs to keep at every step — and ``euclidean``
— the same fixed-length steps under the flat metric (plain normalised gradient descent), the
baseline that ignores what the network does. It reports, per method, the objective and the test
accuracy at both ends of the path, the objective's own scores (``Objective.report``), and plots
both along the paths.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor

from weightgeo.applications.base import Application, Unit, register_application
from weightgeo.data.streams import RandomSubsets
from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import evaluate
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import Euclidean, build_metric
from weightgeo.metrics.registry import METRIC_HELP, metric_builder
from weightgeo.objectives import Objective
from weightgeo.paths import Path as WeightPath
from weightgeo.paths import traverse
from weightgeo.plotting import plt, save_figure
from weightgeo.registry import Registry
from weightgeo.rundir import RunDirectory, markdown_table, write_csv, write_text
from weightgeo.settings import Settings, setting


@dataclass
class Task:
    """What an objective factory receives: the trained network, its data, where it runs.

    ``keep(inputs)`` sets the inputs on which the metric is estimated — the behaviour to keep
    (default: the training inputs).
    """

    model: FunctionalModel
    theta: Tensor
    train: Any
    test: Any
    device: torch.device
    keep_inputs: Tensor | None = None

    def keep(self, inputs: Any) -> None:
        """Estimate the metric on ``inputs`` (a tensor or a data set) instead of all training inputs."""
        self.keep_inputs = inputs.x if hasattr(inputs, "x") else inputs


TRACE_METHODS: Registry[Callable] = Registry("method")
"""How an objective application moves: ``method(space, objective, settings, start, **trace)``."""


def _geodesic(space: WeightSpace, objective: Objective, settings: TraceSettings, start: Tensor,
              inputs: RandomSubsets, **trace: Any) -> WeightPath:
    """The papers' step under the task metric, re-estimated on a fresh batch at every step."""
    return traverse(space, objective, settings.step_size, settings.max_steps, start=start,
                    step_norm=settings.step_norm, budget=settings.budget, metric_inputs=inputs, **trace)


def _euclidean(space: WeightSpace, objective: Objective, settings: TraceSettings, start: Tensor,
               inputs: RandomSubsets, **trace: Any) -> WeightPath:
    """Fixed-length steps down the objective's gradient (the flat metric): the baseline."""
    return traverse(space.with_metric(Euclidean()), objective, settings.step_size, settings.max_steps,
                    start=start, damping=0.0, budget=settings.budget, **trace)


TRACE_METHODS.register("geodesic", _geodesic)
TRACE_METHODS.register("euclidean", _euclidean)


@dataclass
class TraceSettings(Settings):
    """The settings every objective application shares (its factory adds its own)."""

    methods: tuple[str, ...] = setting(("geodesic", "euclidean"), "Methods to run, comma-separated.",
                                       choices=TRACE_METHODS)
    metric: str = setting("output", METRIC_HELP, check=metric_builder)
    metric_batch: int = setting(256, "Inputs per metric estimate (a fresh batch every step).", min=1)
    damping: float = setting(1e-3, "μ in the damped natural-gradient step (G + μI)^-1 ∇O.", min=0)
    cg_iters: int = setting(10, "Conjugate-gradient iterations per step.", min=1)
    step_size: float = setting(0.1, "ε: the length of each step.", above=0)
    step_norm: Literal["euclidean", "metric"] = setting("euclidean", "Which length ε measures.")
    max_steps: int = setting(200, "The most steps of each path.", min=0)
    budget: int | None = setting(None, "Gradient evaluations per method (none: no limit).", min=0)
    evaluate_every: int = setting(10, "Evaluate the test accuracy every this many points.", min=1)
    seed: int = setting(0, "Random seed (the metric batches).")
    dataset: str | None = setting(None, "Data set (default: the checkpoint's).")


class ObjectiveApplication(Application):
    """Trace from a checkpoint toward the goal its factory's Objective states."""

    arguments: ClassVar[tuple[str, ...]] = ("checkpoint",)
    methods: ClassVar[Registry] = TRACE_METHODS
    factory: ClassVar[Callable[..., Objective]]
    factory_parameters: ClassVar[tuple[str, ...]] = ()

    def prepare(self, run: RunDirectory) -> None:
        from weightgeo.workflows import load_with_data

        s = self.settings
        loaded = load_with_data(self.inputs["checkpoint"], s.dataset, self.options.data_root,
                                self.options.download, self.options.device)
        self.task = Task(loaded.fmodel, loaded.theta, loaded.train, loaded.test, loaded.device)
        own = {name: getattr(s, name) for name in self.factory_parameters}
        self.objective = type(self).factory(self.task, **own)
        if not isinstance(self.objective, Objective):
            raise WeightgeoError(f"{self.name}: the factory returned a {type(self.objective).__name__}, "
                                 "not an Objective")
        keep = self.task.train.x if self.task.keep_inputs is None else self.task.keep_inputs
        self.inputs_stream = lambda: RandomSubsets(keep.to(self.task.device), s.metric_batch, s.seed)
        self.space = WeightSpace(self.task.model, build_metric(s.metric, self.task.model, keep[: s.metric_batch]),
                                 damping=s.damping, cg_maxiter=s.cg_iters)
        self.along = self.task.test.subset(slice(0, min(len(self.task.test), 1000)))

    def units(self):
        return [Unit(method) for method in self.settings.methods]

    def _scores(self, theta: Tensor) -> dict:
        # logging: evaluations along the path read from the device
        return {"test_accuracy": evaluate(self.task.model, theta, self.along)["accuracy"],
                **self.objective.report(theta)}

    def run_unit(self, unit: Unit, run: RunDirectory) -> list[dict]:
        s, task = self.settings, self.task
        method = self.methods[unit.key]
        path = method(self.space, self.objective, s, task.theta, self.inputs_stream(),
                      directory=run / "paths" / unit.key, evaluate=self._scores,
                      evaluate_every=s.evaluate_every, save_every=max(1, s.evaluate_every))
        first, last = path.records[0], path.records[-1]
        end = evaluate(task.model, path.end, task.test)
        row = {"method": unit.key, "steps": len(path) - 1, "grad_evals": path.grad_evals,
               "stop_reason": path.stop_reason, "objective_start": first.get("objective"),
               "objective_end": last.get("objective"), "test_accuracy_start": first.get("test_accuracy"),
               "test_accuracy_end": end["accuracy"], "metric_length": path.metric_length,
               "euclidean_length": path.euclidean_length, **self.objective.report(path.end)}
        if path.stop_reason == "non-finite":
            row["stop_message"] = f"{unit.key} stopped at point {len(path) - 1}: non-finite values — lower --step-size"
        return [row]

    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        columns = list(dict.fromkeys(k for row in rows for k in row))
        write_csv(run / "results.csv", rows, columns)
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for row in rows:
            records = WeightPath.load(run / "paths" / row["method"]).records
            points = [r for r in records if r.get("test_accuracy") is not None]
            left.plot([r["point"] for r in records], [r["objective"] for r in records], label=row["method"])
            right.plot([r["point"] for r in points], [100 * r["test_accuracy"] for r in points],
                       marker="o", markersize=2, label=row["method"])
        left.set_xlabel("point along the path")
        left.set_ylabel("objective")
        right.set_xlabel("point along the path")
        right.set_ylabel("test accuracy (%)")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(f"{self.name}: the objective and the test accuracy along each path")
        save_figure(fig, run / "paths.png")
        about = inspect.cleandoc(type(self).factory.__doc__ or "").split("\n\n")[0]
        text = (f"# {self.name}\n\n{about}\n\n"
                + markdown_table(rows, columns) + "\n![along the paths](paths.png)\n")
        return write_text(run / "summary.md", text)


def _parameter_help(doc: str | None) -> dict[str, str]:
    """``name: text`` lines of a docstring's ``Args:`` section (the options' help texts)."""
    out: dict[str, str] = {}
    inside = False
    for line in (doc or "").splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Arguments:", "Parameters:"):
            inside = True
        elif inside and (not stripped or (stripped.endswith(":") and " " not in stripped)):
            inside = False
        elif inside:
            name, sep, text = stripped.partition(":")
            if sep and name.strip().isidentifier():
                out[name.strip()] = text.strip()
    return out


def objective_application(name: str) -> Callable[[Callable[..., Objective]], Callable[..., Objective]]:
    """Register ``factory(task, **settings) -> Objective`` as the application ``name``.

    The factory's keyword parameters (with defaults and type hints: bool, int, float, str,
    Literal) become settings and command-line options; their help is the text of an
    ``Annotated[int, "help"]`` hint or of the docstring's ``Args:`` section. Returns the factory unchanged, with the
    application class as its ``application`` attribute.
    """

    def decorate(factory: Callable[..., Objective]) -> Callable[..., Objective]:
        signature = inspect.signature(factory)
        hints = typing.get_type_hints(factory, include_extras=True)
        helps = _parameter_help(factory.__doc__)
        own = []
        for parameter in list(signature.parameters.values())[1:]:
            if parameter.default is inspect.Parameter.empty:
                raise WeightgeoError(f"{name}: the factory's parameter {parameter.name!r} needs a default")
            hint = hints.get(parameter.name, type(parameter.default))
            text = helps.get(parameter.name, "")
            if typing.get_origin(hint) is typing.Annotated:  # Annotated[int, "its help"]
                hint, *extras = typing.get_args(hint)
                text = text or " ".join(e for e in extras if isinstance(e, str))
            own.append((parameter.name, hint, setting(parameter.default, text)))
        settings_type = dataclasses.make_dataclass(f"{factory.__name__.title()}Settings", own,
                                                   bases=(TraceSettings,))
        settings_type.__module__ = factory.__module__
        doc = (factory.__doc__ or f"The {name} application.").strip().splitlines()[0]
        application = type(f"{factory.__name__.title()}Application", (ObjectiveApplication,), {
            "name": name, "Settings": settings_type, "factory": staticmethod(factory),
            "factory_parameters": tuple(p for p, _, _ in own), "__doc__": doc,
            "__module__": factory.__module__,
        })
        register_application(application)
        factory.application = application  # type: ignore[attr-defined]
        return factory

    return decorate
