"""The shape every application shares: settings, a registry of methods, units of work, a report.

An application (sparsify, continual, connect, or a user's own) is a subclass of
:class:`Application` with

- ``Settings``: a :class:`~weightgeo.settings.Settings` dataclass, checked when built (the command
  line's options are generated from its fields);
- ``methods``: a :class:`~weightgeo.registry.Registry` of its methods (baselines included);
- ``arguments``: the positional inputs it takes (e.g. checkpoints), by name;
- :meth:`~Application.units`: the units of work of a run (a method at a budget, a seed …), each
  with a key; :meth:`~Application.run_unit` runs one and returns its result rows;
- :meth:`~Application.report`: writes the results table, plots and ``summary.md``.

:func:`run_application` does the rest the same way for all: it opens the run directory (refusing a
non-empty one unless ``overwrite`` or ``resume``), skips the units a resumed run finished, records
each finished unit at once (so an interrupted run loses at most the unit in progress), writes the
report, and reports the methods that stopped on a non-finite value (:class:`Diverged`).

Applications register themselves in :data:`APPLICATIONS` (``@register_application``); the CLI
builds one command per entry, and ``weightgeo package.module:Name`` runs a user's application
that is not registered.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.registry import Registry, import_object
from weightgeo.rundir import RunDirectory
from weightgeo.settings import Settings


@dataclass
class RunOptions:
    """How (not what) to run: device, where data lives, progress and log output."""

    device: str | torch.device = "auto"
    data_root: str | None = None
    download: bool = False
    progress: bool = False
    log: Callable[[str], None] = field(default=lambda message: None, repr=False)

    @property
    def torch_device(self) -> torch.device:
        from weightgeo.workflows import resolve_device

        return resolve_device(self.device)


@dataclass(frozen=True)
class Unit:
    """One unit of work of a run: a key unique in the run, and what the application needs."""

    key: str
    params: dict = field(default_factory=dict)


class Application(ABC):
    """Base of the applications (see the module docstring).

    Args:
        settings: the application's ``Settings``.
        *inputs: the positional inputs named by ``arguments`` (e.g. checkpoint paths).
        options: :class:`RunOptions`.
    """

    name: ClassVar[str] = "application"
    Settings: ClassVar[type[Settings]]
    methods: ClassVar[Registry]
    arguments: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings, *inputs: Any, options: RunOptions | None = None) -> None:
        if not isinstance(settings, self.Settings):
            raise WeightgeoError(f"{self.name} needs {self.Settings.__name__}, got {type(settings).__name__}")
        if len(inputs) != len(self.arguments):
            raise WeightgeoError(f"{self.name} takes {len(self.arguments)} inputs ({', '.join(self.arguments)}), "
                                 f"got {len(inputs)}")
        self.settings = settings
        self.inputs = dict(zip(self.arguments, inputs, strict=True))
        self.options = options or RunOptions()
        self.done: dict[str, list[dict]] = {}

    def config(self) -> dict:
        """What config.json records (a resumed run must match it)."""
        return {"application": self.name, "inputs": {k: str(v) for k, v in self.inputs.items()},
                "settings": self.settings.as_dict()}

    def check(self) -> None:
        """Refuse bad inputs (a model that does not fit its data …) before the run directory is
        touched; may load what :meth:`prepare` needs. Called first by :func:`run_application`."""
        return None

    def prepare(self, run: RunDirectory) -> None:
        """Load what every unit needs (models, data); called once before the units."""
        return None

    @abstractmethod
    def units(self) -> Iterable[Unit]:
        """The run's units of work, in order. A generator may read ``self.done`` (the rows of the
        units finished so far) to plan later units, e.g. from a tuning unit's choice."""

    @abstractmethod
    def run_unit(self, unit: Unit, run: RunDirectory) -> list[dict]:
        """Run one unit; return its result rows (plain JSON types)."""

    @abstractmethod
    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        """Write the tables, plots and summary.md of a run; return summary.md's path."""

    def headline(self, rows: list[dict]) -> list[str]:
        """A few lines for the terminal after the run (default: none; the summary's path is printed)."""
        return []

    def diverged(self, rows: list[dict]) -> list[str]:
        """One line per result that ended on a non-finite value (default: rows whose
        ``stop_reason`` is "non-finite", with their ``stop_message``)."""
        return [row.get("stop_message") or f"{row.get('method', self.name)} diverged"
                for row in rows if row.get("stop_reason") == "non-finite"]


@dataclass
class Outcome:
    """What a run produced: its rows, its summary file, its directory, and any divergence."""

    rows: list[dict]
    summary: Path
    directory: Path
    diverged: list[str]


class Diverged(WeightgeoError):
    """Some methods of a run stopped on a non-finite value (their rows are marked; the rest stand)."""

    exit_code = 3

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def run_application(app: Application, out: str | Path, *, overwrite: bool = False,
                    resume: bool = False) -> Outcome:
    """Run every unit of ``app`` into the run directory ``out`` and write its report.

    Args:
        app: the application, with its settings and inputs.
        out: the run directory.
        overwrite: replace a previous run in ``out`` (its files are removed first).
        resume: continue the run in ``out``: finished units are read back, not rerun.

    Returns:
        The :class:`Outcome`. Non-finite results do not raise here; callers that want an
        error (the CLI) check ``outcome.diverged``.
    """
    app.check()
    run = RunDirectory.open(out, overwrite=overwrite, resume=resume, config=app.config())
    app.prepare(run)
    app.done = run.completed() if resume else {}
    rows: list[dict] = []
    for unit in _unique(app.units()):
        if unit.key in app.done:
            rows += app.done[unit.key]
            app.options.log(f"{app.name}: {unit.key} already done (resumed)")
            continue
        unit_rows = app.run_unit(unit, run)
        run.record(unit.key, unit_rows)
        app.done[unit.key] = unit_rows
        rows += unit_rows
    # Under torchrun only rank 0 writes the report; the others wait for it.
    summary = app.report(rows, run) if distributed.is_writer() else run / "summary.md"
    distributed.barrier()
    return Outcome(rows, summary, run.path, app.diverged(rows))


def run(
    application: str | type[Application],
    *inputs: Any,
    out: str | Path,
    overwrite: bool = False,
    resume: bool = False,
    options: RunOptions | None = None,
    **settings: Any,
) -> Outcome:
    """Run an application from Python: ``run("sparsify", "runs/mlp0", out="runs/s", budgets=(200,))``.

    ``application`` is a registered name, an import path ``package.module:Name`` or the class;
    ``settings`` are the fields of its ``Settings``.
    """
    cls = find_application(application) if isinstance(application, str) else application
    return run_application(cls(cls.Settings(**settings), *inputs, options=options), out,
                           overwrite=overwrite, resume=resume)


def _unique(units: Iterable[Unit]) -> Iterator[Unit]:
    seen: set[str] = set()
    for unit in units:
        if unit.key in seen:
            raise WeightgeoError(f"two units of work share the key {unit.key!r}")
        seen.add(unit.key)
        yield unit


APPLICATIONS: Registry[type[Application]] = Registry("application")
"""The registered applications, by command name."""


def register_application(cls: type[Application]) -> type[Application]:
    """Class decorator: add an application to :data:`APPLICATIONS` under ``cls.name``."""
    APPLICATIONS.register(cls.name, cls, help=(cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else "")
    return cls


BUILT_IN = ("weightgeo.applications.sparsify", "weightgeo.applications.continual",
            "weightgeo.applications.connect")
"""The modules that register the built-in applications (imported on the first lookup)."""


def load_built_in() -> None:
    """Import the built-in applications so that they are registered."""
    import importlib

    for module in BUILT_IN:
        importlib.import_module(module)


def find_application(name: str) -> type[Application]:
    """A registered application, or one named by an import path ``package.module:Name``."""
    load_built_in()
    if ":" in name:
        target = import_object(name, "application")
        target = getattr(target, "application", target)  # a factory made by objective_application
        if isinstance(target, type) and issubclass(target, Application):
            return target
        raise WeightgeoError(f"{name} is not a weightgeo Application")
    return APPLICATIONS[name]
