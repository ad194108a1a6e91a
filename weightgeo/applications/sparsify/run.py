"""``run_sparsify``: every method at every level and budget on one checkpoint, into a run directory.

The run directory holds ``config.json``, ``results.csv`` / ``results.md`` (one row per
method × sparsity × budget), ``checkpoints/<method>_s<sparsity>_b<budget>.pt`` (sparse
checkpoints with their masks), ``accuracy_vs_sparsity_b<budget>.png`` (the dense
accuracy as a line), ``accuracy_vs_budget_s<sparsity>.png`` when several budgets are
given, ``geodesic_path_b<budget>.png`` (test accuracy and sparsity along the geodesic)
and ``summary.md``. Rows are appended to ``results.jsonl`` as they finish, so an
interrupted run keeps what it measured.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch

from weightgeo.applications.sparsify.export import save_sparse_checkpoint
from weightgeo.applications.sparsify.methods import (
    LABEL_FREE,
    METHODS,
    SparsifySettings,
    SparsifyTask,
    _check_budget,
    _levels,
    geodesic_path,
)
from weightgeo.applications.sparsify.report import (
    accuracy_vs_budget,
    accuracy_vs_sparsity,
    path_plot,
    summary_markdown,
    write_results,
)
from weightgeo.errors import WeightgeoError
from weightgeo.objectives.sparsity import measured_sparsity
from weightgeo.progress import Progress
from weightgeo.rundir import append_jsonl, prepare_run_dir, write_json, write_text
from weightgeo.training import evaluate
from weightgeo.workflows import load_with_data


def check_methods(methods) -> list[str]:
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise WeightgeoError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    if not methods:
        raise WeightgeoError("no method given")
    return methods


def _tag(sparsity: float) -> str:
    return f"{100 * sparsity:g}".replace(".", "p")


def run_sparsify(
    checkpoint,
    out: str | os.PathLike,
    *,
    levels=(0.5, 0.8, 0.9, 0.95, 0.98),
    methods=tuple(METHODS),
    budgets=(1000,),
    settings: SparsifySettings | None = None,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    save_checkpoints: bool = True,
    progress: bool = False,
    log=None,
) -> list[dict]:
    """Sparsify ``checkpoint`` with each method at each level and budget; write the run directory.

    Returns the result rows (dicts with the columns of results.csv).
    """
    levels = _levels(levels)
    methods = check_methods(methods)
    budgets = sorted({_check_budget(b) for b in budgets})
    settings = settings or SparsifySettings()
    settings.check()
    loaded = load_with_data(checkpoint, dataset, data_root, download, device)
    run = prepare_run_dir(out, overwrite)
    config = {
        "command": "sparsify", "checkpoint": str(loaded.checkpoint.path), "model": loaded.checkpoint.name,
        "dataset": loaded.train.name, "levels": levels, "methods": methods, "budgets": budgets,
        "device": str(loaded.device), "settings": dataclasses.asdict(settings),
    }
    write_json(run / "config.json", config)
    fmodel, theta0, test = loaded.fmodel, loaded.theta, loaded.test
    dense = evaluate(fmodel, theta0, test)
    eligible = fmodel.weight_mask(settings.include_biases, device=theta0.device)
    rows: list[dict] = []
    plots: list[str] = []
    paths: dict[int, object] = {}
    started = time.perf_counter()
    along = test.subset(slice(0, min(len(test), 1000)))

    def along_path(theta: torch.Tensor, target: float) -> dict:
        # logging: evaluated points of the geodesic path (forward passes on ≤ 1000 test inputs)
        return {"test_accuracy": evaluate(fmodel, theta, along)["accuracy"],
                "sparsity": measured_sparsity(theta, eligible), "target_sparsity": target}

    total = len(methods) * len(levels) * len(budgets)
    with Progress(total, "sparsify", enabled=progress) as bar:
        for budget in budgets:
            for method in methods:
                task = SparsifyTask(fmodel, theta0, loaded.train, settings)
                if method == "geodesic" and settings.one_path:
                    path, results = geodesic_path(
                        task, levels, budget, directory=run / f"geodesic_path_b{budget}",
                        evaluate=along_path, evaluate_every=5,
                    )
                    paths[budget] = path
                else:
                    results = METHODS[method](task, levels, budget)
                for result in results:
                    scores = evaluate(fmodel, result.theta, test, buffers=result.buffers)
                    row = {
                        "method": method, "sparsity": result.sparsity, "budget": budget,
                        "measured_sparsity": measured_sparsity(result.theta, eligible),
                        "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
                        "grad_evals": result.grad_evals, "seconds": result.seconds,
                        "labels": "no" if method in LABEL_FREE else "yes",
                    }
                    rows.append(row)
                    append_jsonl(run / "results.jsonl", row)
                    if save_checkpoints:
                        ckpt = loaded.checkpoint
                        save_sparse_checkpoint(
                            run / "checkpoints" / f"{method}_s{_tag(result.sparsity)}_b{budget}.pt",
                            fmodel, result.theta, result.keep, name=ckpt.name, config=ckpt.config,
                            dataset=loaded.train.name, test_accuracy=scores["accuracy"], buffers=result.buffers,
                            extra={"method": method, "target_sparsity": result.sparsity, "budget": budget,
                                   "grad_evals": result.grad_evals, "source": str(ckpt.path)},
                        )
                    status = f"{method} {100 * result.sparsity:g}%: acc {100 * scores['accuracy']:.2f}%"
                    bar.update(1, status)
                    if log is not None:
                        log(status)
            write_results(run, rows)
            name = f"accuracy_vs_sparsity_b{budget}.png"
            accuracy_vs_sparsity(run / name, rows, dense["accuracy"], budget)
            plots.append(name)
    if "geodesic" in methods:
        for budget in budgets:
            path = paths.get(budget)
            if path is None:  # per-level geodesics: trace the one path through every level for the plot
                task = SparsifyTask(fmodel, theta0, loaded.train, dataclasses.replace(settings, one_path=True))
                path, _ = geodesic_path(
                    task, levels, budget, directory=run / f"geodesic_path_b{budget}",
                    evaluate=along_path, evaluate_every=5,
                )
            name = f"geodesic_path_b{budget}.png"
            path_plot(run / name, path, f"Geodesic through {len(levels)} levels, budget {budget}")
            plots.append(name)
    if len(budgets) > 1:
        for level in levels:
            name = f"accuracy_vs_budget_s{_tag(level)}.png"
            accuracy_vs_budget(run / name, rows, dense["accuracy"], level)
            plots.append(name)
    seconds = time.perf_counter() - started
    write_text(run / "summary.md", summary_markdown(
        rows, dense, {"levels": levels, "budgets": budgets, "metric": settings.metric,
                      "step": settings.step, "stage_ratio": settings.stage_ratio,
                      "damping": settings.damping, "cg_iters": settings.cg_iters}, plots, seconds))
    return rows

