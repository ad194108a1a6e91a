"""The sparsification application: every method at every level and budget on one checkpoint.

``weightgeo sparsify CHECKPOINT --out DIR`` (the command is generated from
:class:`~weightgeo.applications.sparsify.settings.SparsifySettings`) or, from Python,
``weightgeo.applications.run("sparsify", CHECKPOINT, out=DIR, budget=(200,), …)``.

The units of work (the grain of ``--resume``) are (budget, method) pairs, each running the
method at every level, plus — when the geodesic traces one path per level — the one-path
geodesic through every level that the path plot shows. A unit killed half-way is run again from
its start on ``--resume``: every unit draws its random numbers from its own seeded streams, so the
rerun gives the numbers the uninterrupted run gives (a geodesic path is restarted, not continued).

The run directory holds ``config.json``, ``units.jsonl`` (each finished unit's rows),
``results.csv`` / ``results.md`` (one row per method × sparsity × budget, with how it stopped),
``checkpoints/<method>_s<sparsity>_b<budget>.pt`` (sparse checkpoints with their masks; none for
a result that diverged), ``accuracy_vs_sparsity_b<budget>.png``, ``accuracy_vs_budget_s<sparsity>.png``
when several budgets are given, ``geodesic_path_b<budget>/`` and ``.png`` (test accuracy and
sparsity along the geodesic) and ``summary.md``. The ``seconds`` column is wall-clock time: the
one column that differs between two runs of the same command.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import torch

from weightgeo.applications.base import Application, Unit, register_application
from weightgeo.applications.sparsify.export import save_sparse_checkpoint
from weightgeo.applications.sparsify.geodesic import geodesic_path
from weightgeo.applications.sparsify.methods import METHODS
from weightgeo.applications.sparsify.report import (
    accuracy_vs_budget,
    accuracy_vs_sparsity,
    path_plot,
    summary_markdown,
    write_results,
)
from weightgeo.applications.sparsify.settings import SparsifySettings
from weightgeo.applications.sparsify.task import SparseResult, SparsifyTask
from weightgeo.evaluation import evaluate
from weightgeo.objectives.sparsity import measured_sparsity
from weightgeo.paths import Path as WeightPath
from weightgeo.rundir import RunDirectory, json_safe, write_text


def _tag(sparsity: float) -> str:
    return f"{100 * sparsity:g}".replace(".", "p")


@register_application
class Sparsify(Application):
    """Sparsify CHECKPOINT (a file or run directory) with every method, level and budget.

    Writes results.csv/.md, sparse checkpoints, accuracy-vs-sparsity (and -budget) plots and
    the geodesic's path plot to --out.
    """

    name = "sparsify"
    Settings = SparsifySettings
    methods = METHODS
    arguments = ("checkpoint",)

    def prepare(self, run: RunDirectory) -> None:
        from weightgeo.workflows import load_with_data

        s = self.settings
        self.loaded = load_with_data(self.inputs["checkpoint"], s.dataset, self.options.data_root,
                                     self.options.download, self.options.device)
        fmodel, theta0, test = self.loaded.fmodel, self.loaded.theta, self.loaded.test
        self.dense = evaluate(fmodel, theta0, test)
        self.eligible = fmodel.weight_mask(s.include_biases, device=theta0.device)
        self.along = test.subset(slice(0, min(len(test), 1000)))
        self.directory = run.path
        self.started = time.perf_counter()

    def units(self) -> Iterator[Unit]:
        s = self.settings
        for budget in s.budget:
            for method in s.method:
                yield Unit(f"{method}/b{budget}", {"method": method, "budget": budget})
            if "geodesic" in s.method and not s.one_path:  # the one path through every level, for its plot
                yield Unit(f"geodesic-path/b{budget}", {"method": None, "budget": budget})

    def task(self, settings: SparsifySettings | None = None) -> SparsifyTask:
        """A fresh task on the loaded network (each unit draws from its own seeded streams)."""
        return SparsifyTask(self.loaded.fmodel, self.loaded.theta, self.loaded.train, settings or self.settings)

    def along_path(self, theta: torch.Tensor, target: float) -> dict:
        # logging: evaluated points of the geodesic path (forward passes on ≤ 1000 test inputs)
        return {"test_accuracy": evaluate(self.loaded.fmodel, theta, self.along)["accuracy"],
                "sparsity": measured_sparsity(theta, self.eligible), "target_sparsity": target}

    def trace_path(self, budget: int, settings: SparsifySettings) -> list[SparseResult]:
        """The one-path geodesic through every level, streamed to ``geodesic_path_b<budget>``."""
        _, results = geodesic_path(self.task(settings), self.settings.levels, budget,
                                   directory=self.directory / f"geodesic_path_b{budget}",
                                   evaluate=self.along_path, evaluate_every=5)
        return results

    def run_unit(self, unit: Unit, run: RunDirectory) -> list[dict]:
        s = self.settings
        method, budget = unit.params["method"], unit.params["budget"]
        if method is None:
            self.trace_path(budget, s.replace(one_path=True))
            return []
        if method == "geodesic" and s.one_path:
            results = self.trace_path(budget, s)
        else:
            results = METHODS[method](self.task(), s.levels, budget)
        return [self.row(method, budget, result, run) for result in results]

    def row(self, method: str, budget: int, result: SparseResult, run: RunDirectory) -> dict:
        """The result's row (plain JSON types); its sparse checkpoint unless it diverged."""
        fmodel = self.loaded.fmodel
        scores = evaluate(fmodel, result.theta, self.loaded.test, buffers=result.buffers)
        row = {
            "method": method, "sparsity": result.sparsity, "budget": budget,
            "measured_sparsity": measured_sparsity(result.theta, self.eligible),
            "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
            "grad_evals": result.grad_evals, "seconds": result.seconds,
            "labels": "yes" if METHODS[method].labels else "no", "stop_reason": result.stop_reason,
        }
        if result.diverged:
            row["stop_message"] = result.message
        elif self.settings.checkpoints:
            ckpt = self.loaded.checkpoint
            save_sparse_checkpoint(
                run / "checkpoints" / f"{method}_s{_tag(result.sparsity)}_b{budget}.pt",
                fmodel, result.theta, result.keep, name=ckpt.name, config=ckpt.config,
                dataset=self.loaded.train.name, test_accuracy=scores["accuracy"], buffers=result.buffers,
                extra={"method": method, "target_sparsity": result.sparsity, "budget": budget,
                       "grad_evals": result.grad_evals, "source": str(ckpt.path)},
            )
        self.options.log(f"{method} {100 * result.sparsity:g}% (budget {budget}): "
                         f"acc {100 * scores['accuracy']:.2f}%")
        return json_safe(row)  # a non-finite loss is null here and after a resume alike

    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        s = self.settings
        dense = self.dense["accuracy"]
        write_results(run.path, rows)
        plots = []
        for budget in s.budget:
            name = f"accuracy_vs_sparsity_b{budget}.png"
            accuracy_vs_sparsity(run / name, rows, dense, budget)
            plots.append(name)
        if "geodesic" in s.method:
            for budget in s.budget:
                name = f"geodesic_path_b{budget}.png"
                path = WeightPath.load(run / f"geodesic_path_b{budget}")
                path_plot(run / name, path, f"Geodesic through {len(s.levels)} levels, budget {budget}")
                plots.append(name)
        if len(s.budget) > 1:
            for level in s.levels:
                name = f"accuracy_vs_budget_s{_tag(level)}.png"
                accuracy_vs_budget(run / name, rows, dense, level)
                plots.append(name)
        shown = {"levels": s.levels, "budgets": list(s.budget), "metric": s.metric, "step": s.step,
                 "stage_ratio": s.stage_ratio, "damping": s.damping, "cg_iters": s.cg_iters}
        return write_text(run / "summary.md", summary_markdown(rows, self.dense, shown, plots,
                                                               time.perf_counter() - self.started))

    def headline(self, rows: list[dict]) -> list[str]:
        finite = [r for r in rows if r.get("stop_reason") != "non-finite"] or rows
        best = max(finite, key=lambda r: (r["sparsity"], r["test_accuracy"]))
        return [f"{len(rows)} results in {self.directory}/results.md; at {100 * best['sparsity']:g}% sparsity "
                f"the best is {best['method']} with {100 * best['test_accuracy']:.2f}% test accuracy"]

    def diverged(self, rows: list[dict]) -> list[str]:
        """One line per method that ended on a non-finite value (its first such result's message)."""
        by_method: dict[str, list[dict]] = {}
        for row in rows:
            if row.get("stop_reason") == "non-finite":
                by_method.setdefault(row["method"], []).append(row)
        return [bad[0]["stop_message"] + (f" ({len(bad)} of its results diverged)" if len(bad) > 1 else "")
                for bad in by_method.values()]
