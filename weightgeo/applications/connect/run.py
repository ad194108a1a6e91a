"""``connect``: join two trained networks by every requested method and compare the paths.

The application (:class:`Connect`, the command ``weightgeo connect A B --out DIR``) has one unit of
work per method — run the method (or read back what an interrupted run finished), evaluate its
curve at ``points`` points evenly spaced by arc length, measure its barriers and lengths — and, when
the loss plane is on, one unit ``plane`` that evaluates the test loss on the plane through θ_a, θ_b
and the midpoint of the first trained method's path (:mod:`weightgeo.paths.plane`). The run
directory holds ``config.json``, ``results.csv`` / ``results.md`` (one row per method; the columns
``seconds`` and ``eval_seconds`` are wall-clock times, the rest is the same for the same seed and
thread count), ``evaluation.csv``, ``along_paths.png``, ``plane.json`` / ``plane.png`` and
``paths/<method>/`` (the curve as a Path, ``result.json``, ``evaluation.json``).

From Python: :func:`connect` (two checkpoints) and :func:`connect_networks` (a model and two θ).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from weightgeo.applications.base import (
    Application,
    RunOptions,
    Unit,
    register_application,
    run_application,
)
from weightgeo.applications.connect.curves import Curve
from weightgeo.applications.connect.evaluate import PointEvaluator, path_metric_length, summarise
from weightgeo.applications.connect.methods import METHODS, run_method
from weightgeo.applications.connect.report import EVALUATION_FILE, PLANE_FILE, write_report
from weightgeo.applications.connect.settings import ConnectSettings
from weightgeo.applications.connect.task import ConnectTask, MethodResult
from weightgeo.functional import FunctionalModel
from weightgeo.models.checkpoint import Checkpoint, checkpoints_compatible, load_checkpoint
from weightgeo.paths import Plane, loss_surface
from weightgeo.registry import Registry
from weightgeo.rundir import RunDirectory, dumps, write_json

PLANE = "plane"


@register_application
class Connect(Application):
    """Connect two checkpoints (same architecture) by each method and compare the paths.

    Writes results.csv, results.md, evaluation.csv, along_paths.png, plane.png and the paths to
    --out. traverse steps have Euclidean length --step-size (its steps follow from --budget). The
    command runs on the checkpoints' data set (mnist5k, cifar10, ...).
    """

    name: ClassVar[str] = "connect"
    Settings: ClassVar[type[ConnectSettings]] = ConnectSettings
    methods: ClassVar[Registry] = METHODS
    arguments: ClassVar[tuple[str, ...]] = ("checkpoint_a", "checkpoint_b")

    def __init__(self, settings: ConnectSettings, *inputs: Any, options: RunOptions | None = None,
                 task: ConnectTask | None = None) -> None:
        super().__init__(settings, *inputs, options=options)
        self.task = task

    def prepare(self, run: RunDirectory) -> None:
        s = self.settings
        if self.task is None:
            self.task = load_task(self.inputs["checkpoint_a"], self.inputs["checkpoint_b"], s, self.options)
        task = self.task
        task.run, task.progress = run, self.options.progress
        for name in s.method:
            if METHODS[name].check is not None:
                METHODS[name].check(task)  # refuse what a method cannot do before any work
        device = task.theta_a.device
        self.evaluator = PointEvaluator(
            task.model, task.train, task.test, bn_recompute=s.bn_recompute, bn_images=s.bn_images,
            train_eval=s.train_eval, train_eval_images=s.train_eval_images, batch_size=s.eval_batch,
            points_per_pass=s.eval_points or (16 if device.type == "cuda" else 1), seed=s.seed)
        self.space = task.space()

    def units(self) -> list[Unit]:
        units = [Unit(name) for name in self.settings.method]
        if self.settings.plane_size(self.task.model.n) >= 2:
            units.append(Unit(PLANE))
        return units

    def run_unit(self, unit: Unit, run: RunDirectory) -> list[dict]:
        if unit.key == PLANE:
            self.loss_plane(run)
            return []
        s, name = self.settings, unit.key
        self.options.log(f"connect: {name}")
        result = run_method(name, self.task)
        started = time.perf_counter()
        points, fractions = result.curve.sample(s.points)
        evaluation = self.evaluator.evaluate(points, fractions)
        metric_length = path_metric_length(self.space, points, self.task.metric_inputs)
        eval_seconds = time.perf_counter() - started
        write_json(run / "paths" / name / EVALUATION_FILE, evaluation)
        row = {"method": name, **summarise(evaluation), "euclidean_length": result.curve.euclidean_length(),
               "metric_length": metric_length, "grad_evals": result.grad_evals, "seconds": result.seconds,
               "eval_seconds": eval_seconds, "stop_reason": result.stop_reason, **result.info}
        if result.stop.diverged:
            row["stop_message"] = result.stop.message(name, METHODS[name].hint)
        row = json.loads(dumps(row))  # as a resumed run reads it back (non-finite values: null)
        self.options.log(f"connect: {self.headline([row])[0].strip()} (+{eval_seconds:.1f} s evaluation)")
        return [row]

    def loss_plane(self, run: RunDirectory) -> None:
        """The test loss on the plane through θ_a, θ_b and the first trained path's midpoint
        (every path projected onto it): ``plane.json``, saved row by row for --resume."""
        s, task = self.settings, self.task
        started = time.perf_counter()
        trained = [m for m in s.method if METHODS[m].trains] or list(s.method)
        device = task.theta_a.device
        curves = {m: MethodResult.load(task.directory(m), device).curve for m in s.method}
        middle = curves[trained[0]].sample(s.points)[0][s.points // 2]
        plane = Plane.through(task.theta_a, task.theta_b, middle)
        projected = {m: plane.coordinates(curve.sample(s.points)[0]).cpu() for m, curve in curves.items()}
        xs, ys = plane.grid(torch.cat(list(projected.values())), s.plane_size(task.model.n))
        done = (run.load_state(PLANE) or {}).get("rows", [])
        rows = [list(row) for row in done]

        def save(i: int, values: list[float]) -> None:
            rows.append(values)
            run.save_state(PLANE, {"rows": rows})

        losses = loss_surface(plane, xs, ys, self.evaluator.test_losses, done=done, on_row=save)
        write_json(run / PLANE_FILE, {
            "x": xs.tolist(), "y": ys.tolist(), "test_loss": losses, "midpoint_of": trained[0],
            "distance": plane.distance, "seconds": time.perf_counter() - started,
            "paths": {m: {"x": xy[:, 0].tolist(), "y": xy[:, 1].tolist()} for m, xy in projected.items()}})
        run.drop_state(PLANE)

    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        s = self.settings
        about = (f"Metric: {s.metric}; nodes (relax): {s.nodes}; budget: {s.budget} gradient evaluations per "
                 "trained method")
        return write_report(run, rows, about)

    def headline(self, rows: list[dict]) -> list[str]:
        def number(row: dict, key: str, digits: int) -> str:  # a non-finite value was stored as null
            return "n/a" if row.get(key) is None else f"{row[key]:.{digits}f}"

        return [f"{r['method']:>10}: worst test accuracy {number(r, 'min_test_accuracy', 2)}% (drop "
                f"{number(r, 'max_accuracy_drop', 2)}), loss barrier {number(r, 'loss_barrier', 4)}, length "
                f"{number(r, 'euclidean_length', 2)}, {r['grad_evals']} grad evals, {number(r, 'seconds', 1)} s"
                for r in rows]


def load_task(checkpoint_a: str | os.PathLike | Checkpoint, checkpoint_b: str | os.PathLike | Checkpoint,
              settings: ConnectSettings, options: RunOptions) -> ConnectTask:
    """Two checkpoints of one architecture and their data set, on the options' device."""
    from weightgeo.workflows import load_with_data

    a = checkpoint_a if isinstance(checkpoint_a, Checkpoint) else load_checkpoint(checkpoint_a)
    b = checkpoint_b if isinstance(checkpoint_b, Checkpoint) else load_checkpoint(checkpoint_b)
    checkpoints_compatible(a, b)
    loaded = load_with_data(a, settings.dataset, options.data_root, options.download, options.device)
    theta_b = loaded.fmodel.flatten(b.model.to(loaded.device))
    return ConnectTask(loaded.fmodel, loaded.theta, theta_b, loaded.train, loaded.test, settings, name=a.name)


@dataclass
class Connection:
    """What a connection run gives back: the rows of results.csv, each method's evaluated points
    and curve, the run directory (None when it was temporary) and the methods that diverged."""

    rows: list[dict]
    evaluations: dict[str, list[dict]]
    curves: dict[str, Curve]
    directory: Path | None
    diverged: list[str]


def _run(app: Connect, out: str | os.PathLike | None, overwrite: bool, resume: bool) -> Connection:
    with tempfile.TemporaryDirectory(prefix="weightgeo-connect-") as scratch:
        directory = Path(scratch) / "run" if out is None else Path(out)
        outcome = run_application(app, directory, overwrite=overwrite, resume=resume)
        device = app.task.theta_a.device
        paths = directory / "paths"
        evaluations = {r["method"]: json.loads((paths / r["method"] / EVALUATION_FILE).read_text())
                       for r in outcome.rows}
        curves = {r["method"]: MethodResult.load(paths / r["method"], device).curve for r in outcome.rows}
    return Connection(outcome.rows, evaluations, curves, None if out is None else directory, outcome.diverged)


def connect(
    checkpoint_a: str | os.PathLike | Checkpoint,
    checkpoint_b: str | os.PathLike | Checkpoint,
    out: str | os.PathLike | None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    options: RunOptions | None = None,
    **settings: Any,
) -> Connection:
    """Connect two checkpoints of one architecture on their data set (``weightgeo connect``).

    Args:
        checkpoint_a, checkpoint_b: checkpoint files or run directories (or loaded Checkpoints).
        out: the run directory (None: a temporary one, removed afterwards).
        overwrite, resume: replace a previous run in ``out``, or continue an interrupted one.
        options: device, data root, progress and logging (:class:`RunOptions`).
        **settings: fields of :class:`ConnectSettings` (method, nodes, budget, points, …).

    Returns:
        The :class:`Connection` (rows, evaluations, curves, directory, diverged methods).

    Raises:
        WeightgeoError: a bad setting, incompatible checkpoints, a method that cannot run.
    """
    config = ConnectSettings(**settings)
    app = Connect(config, str(checkpoint_a), str(checkpoint_b), options=options)
    if isinstance(checkpoint_a, Checkpoint) or isinstance(checkpoint_b, Checkpoint):
        app.task = load_task(checkpoint_a, checkpoint_b, config, app.options)
    return _run(app, out, overwrite, resume)


def connect_networks(
    model: FunctionalModel,
    theta_a: torch.Tensor,
    theta_b: torch.Tensor,
    train,
    test,
    out: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
    resume: bool = False,
    options: RunOptions | None = None,
    name: str | None = None,
    **settings: Any,
) -> Connection:
    """Connect θ_a and θ_b of ``model`` on the given data by each method.

    Args:
        model: the network; theta_a, theta_b: the two points; train, test: labelled data sets.
        out: the run directory (None: a temporary one, removed afterwards).
        overwrite, resume, options: as for :func:`connect`.
        name: the architecture's name (for messages, e.g. rebasin's refusal).
        **settings: fields of :class:`ConnectSettings`.

    Returns:
        The :class:`Connection`.
    """
    config = ConnectSettings(**settings)
    task = ConnectTask(model, theta_a, theta_b, train, test, config, name=name)
    app = Connect(config, "θ_a (in memory)", "θ_b (in memory)", options=options, task=task)
    return _run(app, out, overwrite, resume)
