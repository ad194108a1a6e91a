"""What a connection method works on (:class:`ConnectTask`) and what it returns (:class:`MethodResult`).

A method's result is written to ``paths/<method>/`` of the run: the curve as a :class:`Path`
(the tracer's own path for traverse and relax, the control points for the other curves) and
``result.json`` (budget spent, how it stopped, what else it measured). A resumed run reads a
finished method back from there instead of running it again.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path as FilePath
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from weightgeo.applications.connect.curves import Curve, curve_from_points
from weightgeo.data.streams import Minibatches
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds.weight_space import WeightSpace
from weightgeo.metrics.registry import build_metric
from weightgeo.paths import Path
from weightgeo.rundir import RunDirectory, write_json
from weightgeo.stopping import Stop, StopReason

if TYPE_CHECKING:
    from weightgeo.applications.connect.settings import ConnectSettings

RESULT_FILE = "result.json"


@dataclass
class ConnectTask:
    """The two networks, their data, the settings, and where a method writes (``run``: None keeps
    everything in memory).

    ``metric_inputs`` (default: ``metric_batch`` training inputs drawn from the seed) are the
    fixed batch of the metric of the methods' weight space and of the reported metric lengths.
    """

    model: FunctionalModel
    theta_a: Tensor
    theta_b: Tensor
    train: Any
    test: Any
    settings: ConnectSettings
    metric_inputs: Tensor | None = field(default=None, repr=False)
    run: RunDirectory | None = None
    progress: bool = False
    name: str | None = None

    def __post_init__(self) -> None:
        if self.metric_inputs is None:
            generator = torch.Generator(device="cpu").manual_seed(self.settings.seed + 7)
            index = torch.randperm(len(self.train.x), generator=generator)[: self.settings.metric_batch]
            self.metric_inputs = self.train.x[index].to(self.theta_a.device)

    def space(self) -> WeightSpace:
        """The weight space under the chosen metric on the fixed metric batch."""
        s = self.settings
        metric = build_metric(s.metric, self.model, self.metric_inputs)
        return WeightSpace(self.model, metric, damping=s.damping, cg_maxiter=s.cg_iters)

    def minibatches(self, offset: int, labelled: bool = True) -> Minibatches:
        """Shuffled training minibatches, epoch after epoch, seeded by seed + ``offset``: (x, y)
        pairs, or the inputs x alone (the same draws) when not ``labelled``."""
        source = self.train if labelled else self.train.x
        return Minibatches(source, self.settings.batch_size, self.settings.seed + offset)

    def directory(self, method: str) -> FilePath | None:
        """``paths/<method>`` of the run (None without a run)."""
        return None if self.run is None else self.run / "paths" / method

    def checkpoint(self, key: str) -> Callable[[dict], None] | None:
        """A function saving a method's progress under ``key`` (None when nothing is saved)."""
        if self.run is None or not self.settings.checkpoint_every:
            return None
        run = self.run
        return lambda state: run.save_state(key, state)

    def saved(self, key: str) -> dict | None:
        """The progress saved under ``key`` by an interrupted run (None: start afresh)."""
        return None if self.run is None else self.run.load_state(key)

    def forget(self, key: str) -> None:
        if self.run is not None:
            self.run.drop_state(key)


@dataclass
class MethodResult:
    """A method's curve, the gradient evaluations it spent, how it stopped and what it measured."""

    name: str
    curve: Curve
    grad_evals: int
    stop: Stop = field(default_factory=lambda: Stop(StopReason.DONE, 0))
    seconds: float = 0.0
    path: Path | None = None
    info: dict = field(default_factory=dict)

    @property
    def stop_reason(self) -> str:
        return self.stop.reason.value

    def save(self, directory: FilePath | None) -> None:
        """Write the curve (unless its tracer streamed it there) and ``result.json``."""
        if directory is None:
            return
        if self.path is None or self.path.directory is None:
            path = Path(self.curve.start, directory=directory, save_every=1,
                        meta={"method": self.name, "curve": self.curve.kind})
            for k, theta in enumerate(self.curve.control_points()):
                path.append(theta, grad_evals=self.grad_evals if k else 0)
            self.path = path.finish(self.stop)
        write_json(directory / RESULT_FILE, {
            "method": self.name, "curve": self.curve.kind, "grad_evals": self.grad_evals,
            **self.stop.as_dict(), "seconds": self.seconds, "info": self.info})

    @classmethod
    def load(cls, directory: FilePath | None, device: torch.device) -> MethodResult | None:
        """The result a finished method wrote to ``directory`` (None if there is none)."""
        if directory is None or not (directory / RESULT_FILE).exists():
            return None
        saved = json.loads((directory / RESULT_FILE).read_text())
        path = Path.load(directory)
        if not path.finished:
            return None
        points = [theta.to(device) for _, theta in path.waypoints()]
        stop = Stop(StopReason(saved["stop_reason"]), int(saved["stop_step"]), saved["stop_cause"])
        return cls(saved["method"], curve_from_points(saved["curve"], points), int(saved["grad_evals"]),
                   stop, float(saved["seconds"]), path, saved["info"])


def timed(run: Callable[[ConnectTask], MethodResult]) -> Callable[[ConnectTask], MethodResult]:
    """``run`` with its wall-clock seconds recorded in the result."""

    def wrapper(task: ConnectTask) -> MethodResult:
        started = time.perf_counter()
        result = run(task)
        result.seconds = time.perf_counter() - started
        return result

    wrapper.__doc__ = run.__doc__
    wrapper.__name__ = run.__name__
    return wrapper
