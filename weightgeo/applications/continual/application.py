"""The continual-learning application: every method on every seed of one task sequence.

``weightgeo continual --out DIR`` (the command is generated from
:class:`~weightgeo.applications.continual.settings.ContinualSettings`) or, from Python,
``run_experiment(DIR, tasks="split-mnist", method=("geodesic", "ewc"), seeds=3)``.

Units of work (the grain of ``--resume``): with ``--tune``, one per penalised method and grid
value on the first seed's validation split (``tune/<method>/<strength>``; with ``--tune-lr``, one
per method, grid value and learning rate, ``tune/<method>/<strength or ->/lr<lr>``, every method
tuned); then one per seed and method (``seed<S>/<method>``), run with the tuned strength and
learning rate. Inside a unit the progress is saved
after every task (:func:`~.runner.run_method`'s store), so a run killed at any moment and
resumed gives the results an uninterrupted run gives. A sequence is built before anything is
written, and the network is probed on it: a model that does not fit is refused in one line.

The run directory: ``config.json`` (settings, and the sequence's resolved scenario, base and
model), ``units.jsonl``, ``results.csv`` (one row per method and seed; ``seconds`` is wall-clock
time, the one column that differs between two runs of the same command), ``results.jsonl`` (the
rows with their accuracy matrices), ``matrices/<method>_seed<S>.csv``, ``heatmap_<method>.png``,
``accuracy_over_tasks.png``, ``tuning.csv`` with ``--tune``, and ``summary.md``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from weightgeo.applications.base import (
    Application,
    Outcome,
    RunOptions,
    Unit,
    register_application,
    run_application,
)
from weightgeo.applications.continual.methods import METHODS, PENALISED
from weightgeo.applications.continual.report import write_report
from weightgeo.applications.continual.runner import (
    build_network,
    check_tunable,
    choose_trial,
    on_device,
    run_method,
    tuned_settings,
    tuning_trial,
)
from weightgeo.applications.continual.settings import ContinualSettings
from weightgeo.data.tasks import TaskSequence, make_task_sequence
from weightgeo.rundir import RunDirectory

TUNE, RESULT = "tuning", "result"


class UnitStore:
    """The saved progress of one unit in the run directory (``state/<unit>.pt``)."""

    def __init__(self, run: RunDirectory, key: str) -> None:
        self.run, self.key = run, key

    def load(self) -> dict | None:
        return self.run.load_state(self.key)

    def save(self, state: dict) -> None:
        self.run.save_state(self.key, state)


@register_application
class Continual(Application):
    """Learn a sequence of tasks one after the other; write results.csv, summary.md, heat maps, plots."""

    name = "continual"
    Settings = ContinualSettings
    methods = METHODS

    def check(self) -> None:
        """Build the first seed's sequence and probe the network on it (before anything is written)."""
        s = self.settings
        self.device = self.options.torch_device
        self.sequences: dict[int, TaskSequence] = {}
        self.described: set[int] | None = None  # None: nothing is logged before the run directory opens
        build_network(s.model_or_default, self.sequence(s.seed), s.seed, self.device)
        if s.tune:
            for method in self.tuned():
                check_tunable(method, self.sequence(s.seed), lr=bool(s.tune_lr))

    def config(self) -> dict:
        s = self.settings
        return {**super().config(), "tasks": s.tasks, "scenario": s.scenario_or_default, "base": s.base_or_default,
                "model": s.model_or_default, "seeds": s.seed_list, "methods": list(s.method)}

    def prepare(self, run: RunDirectory) -> None:
        self.started = time.perf_counter()
        self.described: set[int] = set()

    def sequence(self, seed: int) -> TaskSequence:
        """The task sequence of ``seed`` (built once, on the run's device; described once the run
        directory is open)."""
        if seed not in self.sequences:
            s, options = self.settings, self.options
            seq = make_task_sequence(s.tasks, s.scenario_or_default, s.n_tasks, s.base, seed=seed,
                                     root=options.data_root, download=options.download,
                                     val_fraction=s.val_fraction, max_train=s.max_train)
            self.sequences[seed] = on_device(seq, self.device)
        if self.described is not None and seed not in self.described:
            self.described.add(seed)
            self.options.log(f"seed {seed}: {self.sequences[seed].describe()}")
        return self.sequences[seed]

    def tuned(self) -> list[str]:
        """The methods ``--tune`` tunes: the penalised ones, or every one with ``--tune-lr``."""
        return [m for m in self.settings.method if m in PENALISED or self.settings.tune_lr]

    def units(self) -> Iterator[Unit]:
        s = self.settings
        if s.tune:
            for method in self.tuned():
                for value in METHODS[method].grid or (None,):
                    for lr in s.tune_lr or (None,):
                        key = f"tune/{method}/{'-' if value is None else format(value, 'g')}"
                        yield Unit(key if lr is None else f"{key}/lr{lr:g}",
                                   {"kind": TUNE, "method": method, "strength": value, "lr": lr})
        chosen = self.chosen()
        for seed in s.seed_list:
            for method in s.method:
                pick = chosen.get(method, {})
                yield Unit(f"seed{seed}/{method}", {"kind": RESULT, "method": method, "seed": seed,
                                                    "strength": pick.get("strength"), "lr": pick.get("lr")})

    def chosen(self) -> dict[str, dict]:
        """The tuned strength and learning rate of each method (read from the tuning units' rows;
        the learning rate only where ``--tune-lr`` tuned it)."""
        trials: dict[str, list[dict]] = {}
        for rows in self.done.values():
            for row in rows:
                if row.get("kind") == TUNE:
                    trials.setdefault(row["method"], []).append(row)
        picks = {method: choose_trial(rows) for method, rows in trials.items()}
        return {method: {"strength": best["strength"], "lr": best.get("lr") if self.settings.tune_lr else None}
                for method, best in picks.items() if best is not None}

    def run_unit(self, unit: Unit, run: RunDirectory) -> list[dict]:
        s, p = self.settings, unit.params
        method, store = p["method"], UnitStore(run, unit.key)
        if p["kind"] == TUNE:
            row = tuning_trial(method, p["strength"], self.sequence(s.seed), s.model_or_default, s, s.seed,
                               self.device, store=store, lr=p.get("lr"))
            trial = ", ".join(f"{key} {p[key]:g}" for key in ("strength", "lr") if p.get(key) is not None)
            self.options.log(f"tune {method}: {trial} → validation ACC {_percent(row['val_avg_accuracy'])}%")
            run.drop_state(unit.key)
            return [{"kind": TUNE, **row}]
        settings = tuned_settings(s, method, p["strength"], p.get("lr"))
        result = run_method(method, self.sequence(p["seed"]), s.model_or_default, settings, p["seed"],
                            self.device, log=self.options.log, store=store)
        row = result.row()
        self.options.log(_result_line(row))
        run.drop_state(unit.key)
        return [{"kind": RESULT, **row}]

    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        results = [r for r in rows if r.get("kind") == RESULT]
        tuning = [r for r in rows if r.get("kind") == TUNE]
        return write_report(run.path, results, tuning, self.settings, time.perf_counter() - self.started)

    def headline(self, rows: list[dict]) -> list[str]:
        from weightgeo.applications.continual.report import summarise, summary_table

        return summary_table(summarise([r for r in rows if r.get("kind") == RESULT])).splitlines()

    def diverged(self, rows: list[dict]) -> list[str]:
        """One line per (seed, method) that diverged (tuning trials that diverge are only not chosen)."""
        return super().diverged([r for r in rows if r.get("kind") == RESULT])


def _percent(value: float | None, form: str = ".2f") -> str:
    return "—" if value is None else format(value, form)


def _result_line(row: dict) -> str:
    if row.get("stop_message"):
        return f"{row['method']} seed {row['seed']}: stopped on a non-finite value (reported at the end)"
    return (f"{row['method']} seed {row['seed']}: ACC {_percent(row['avg_accuracy'])}%  "
            f"BWT {_percent(row['bwt'], '+.2f')}  forgetting {_percent(row['forgetting'])}  "
            f"plasticity {_percent(row['plasticity'])}  ({row['grad_evals']} grad evals, {row['seconds']:.1f} s)")


def run_experiment(out: str | Path, *, overwrite: bool = False, resume: bool = False,
                   options: RunOptions | None = None, **settings: Any) -> Outcome:
    """``weightgeo continual`` from Python: ``settings`` are :class:`ContinualSettings` fields."""
    app = Continual(ContinualSettings(**settings), options=options or RunOptions(log=print))
    return run_application(app, out, overwrite=overwrite, resume=resume)
