"""``run_experiment``: methods × seeds on one task sequence, written to a run directory.

The run directory holds ``config.json``; ``results.jsonl`` (one line per method and seed,
appended as each finishes, with its accuracy matrix); ``results.csv`` (columns
method, scenario, seed, avg_accuracy, bwt, forgetting, plasticity, grad_evals, seconds, …;
accuracies and their differences in percentage points); ``tuning.csv`` with ``--tune``;
``matrices/<method>_seed<S>.csv``; ``heatmap_<method>.png`` (the accuracy matrix averaged
over seeds); ``accuracy_over_tasks.png`` (every task's accuracy as later tasks are learned,
one panel per method); and ``summary.md`` (mean ± std per method).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from weightgeo.applications.continual.methods import METHODS, PENALISED, ContinualConfig
from weightgeo.applications.continual.runner import MethodResult, run_method, tune_strength
from weightgeo.data import tasks as task_sequences
from weightgeo.data.tasks import check_task_options, make_task_sequence
from weightgeo.errors import WeightgeoError
from weightgeo.plotting import save_figure
from weightgeo.rundir import (
    append_jsonl,
    prepare_run_dir,
    read_jsonl,
    write_csv,
    write_json,
    write_text,
)

CSV_COLUMNS = [
    "method", "scenario", "seed", "avg_accuracy", "bwt", "forgetting", "plasticity",
    "grad_evals", "grad_evals_per_task", "seconds", "strength",
]
SCORES = ("avg_accuracy", "bwt", "forgetting", "plasticity")


def _mean(values) -> float:
    values = [float(v) for v in values]
    return sum(values) / len(values)


def _std(values) -> float:
    values = [float(v) for v in values]
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def default_scenario(tasks: str) -> str:
    """The scenario of sequence ``tasks`` unless one is chosen (defined with the sequence)."""
    return task_sequences.default_scenario(tasks)


def default_model(tasks: str) -> str:
    """The network of sequence ``tasks`` unless one is chosen (defined with the sequence)."""
    return task_sequences.default_model(tasks)


def run_experiment(
    out: str | os.PathLike,
    tasks: str = "permuted-mnist",
    n_tasks: int | None = None,
    scenario: str | None = None,
    methods: list[str] | None = None,
    seeds: list[int] | None = None,
    base: str = "mnist5k",
    model: str | None = None,
    config: ContinualConfig | None = None,
    tune: bool = False,
    device="cpu",
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    max_train: int | None = None,
    val_fraction: float = 0.1,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
) -> dict:
    """Run every method on every seed; returns {"rows", "summary", "chosen", "summary_path"}."""
    scenario = scenario or default_scenario(tasks)
    check_task_options(tasks, scenario, n_tasks)
    methods = list(methods or METHODS)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise WeightgeoError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    seeds = list(seeds or [0])
    model = model or default_model(tasks)
    config = config or ContinualConfig()
    config.check()
    run = prepare_run_dir(out, overwrite)
    write_json(run / "config.json", {
        "tasks": tasks, "n_tasks": n_tasks, "scenario": scenario, "methods": methods,
        "seeds": seeds, "base": base, "model": model, "tune": tune, "max_train": max_train,
        "val_fraction": val_fraction, "device": str(device), "config": asdict(config),
    })
    started = time.perf_counter()
    results: list[MethodResult] = []
    tuning_rows: list[dict] = []
    chosen: dict[str, float] = {}
    for seed in seeds:
        seq = make_task_sequence(tasks, scenario, n_tasks, base, seed=seed, root=data_root,
                                 download=download, val_fraction=val_fraction, max_train=max_train)
        log(f"seed {seed}: {seq.describe()}")
        if tune and seed == seeds[0]:
            for method in methods:
                if method in PENALISED:
                    best, trials = tune_strength(method, seq, model, config, seed, device, log=log)
                    chosen[method] = best
                    tuning_rows += [{**row, "chosen": row["strength"] == best} for row in trials]
                    write_csv(run / "tuning.csv", tuning_rows)
            config.strengths.update(chosen)
        for method in methods:
            result = run_method(method, seq, model, config, seed, device, log=log)
            results.append(result)
            append_jsonl(run / "results.jsonl", {**result.row(), "matrix": result.matrix,
                                                 "grad_evals_by_task": result.grad_evals})
            _write_matrix(run / "matrices" / f"{method}_seed{seed}.csv", result.matrix)
            write_csv(run / "results.csv", [r.row() for r in results], CSV_COLUMNS)
            s = result.scores
            log(f"{method} seed {seed}: ACC {100 * s['avg_accuracy']:.2f}%  BWT {100 * s['bwt']:+.2f}  "
                f"forgetting {100 * s['forgetting']:.2f}  plasticity {100 * s['plasticity']:.2f}  "
                f"({sum(result.grad_evals)} grad evals, {result.seconds:.1f} s)")
    seconds = time.perf_counter() - started
    header = (
        f"{len(seeds)} seed(s) ({', '.join(map(str, seeds))}), model {model}, base {base}, "
        f"budget {config.budget} gradient evaluations per task (joint: the total), memory "
        f"{config.memory_per_task} inputs per earlier task, geodesic metric {config.metric} "
        f"({config.solver} solver), lr {config.lr:g}."
        + (f" Strengths tuned on the validation split of seed {seeds[0]}." if tune else "")
    )
    summary_path = write_report(run, results, tasks, scenario, header, seconds)
    return {"rows": [r.row() for r in results], "summary": summarise(results), "chosen": chosen,
            "summary_path": summary_path, "seconds": seconds, "results": results}


def write_report(run: Path, results: list[MethodResult], tasks: str, scenario: str, header: str,
                 seconds: float) -> Path:
    """summary.md, heat maps and the accuracy-over-tasks plot of ``results`` in ``run``."""
    run = Path(run)
    methods = list(dict.fromkeys(r.method for r in results))
    for method in methods:
        mine = [r for r in results if r.method == method]
        heatmap(run / f"heatmap_{method}.png", _mean_matrix([r.matrix for r in mine]),
                f"{method} ({scenario}-incremental), mean over {len(mine)} seed(s)")
    accuracy_over_tasks(run / "accuracy_over_tasks.png", results, scenario)
    text = (
        f"# Continual learning: {tasks}, {scenario}-incremental\n\n{header} Accuracies in %, "
        "BWT/forgetting/plasticity in points; mean ± std over seeds.\n\n"
        + summary_table(summarise(results))
        + f"\nTotal time {seconds:.0f} s.\n\n![accuracy over tasks](accuracy_over_tasks.png)\n"
    )
    if (run / "tuning.csv").exists():
        text += "\nTuning (validation ACC per strength): see `tuning.csv`.\n"
    return write_text(run / "summary.md", text)


def report_from_run(run: str | os.PathLike) -> Path:
    """Rewrite summary.md and the plots of a run directory from its results.jsonl."""
    run = Path(run)
    config = json.loads((run / "config.json").read_text())
    results = []
    for row in read_jsonl(run / "results.jsonl"):
        result = MethodResult(row["method"], row["seed"], row["scenario"], row["matrix"],
                              row["grad_evals_by_task"], row["seconds"], row.get("strength"))
        result.scores = {k: (math.nan if row.get(k) is None else row[k] / 100) for k in SCORES}
        results.append(result)
    header = (f"{len(config['seeds'])} seed(s), model {config['model']}, base {config['base']}, budget "
              f"{config['config']['budget']} gradient evaluations per task, memory "
              f"{config['config']['memory_per_task']} inputs per earlier task, geodesic metric "
              f"{config['config']['metric']} ({config['config']['solver']} solver).")
    return write_report(run, results, config["tasks"], config["scenario"], header,
                        sum(r.seconds for r in results))


def summarise(results: list[MethodResult]) -> list[dict]:
    """Mean and standard deviation over seeds of each score, per method (percent / points)."""
    out = []
    for method in dict.fromkeys(r.method for r in results):
        mine = [r for r in results if r.method == method]
        row: dict = {"method": method, "seeds": len(mine), "strength": mine[0].strength,
                     "grad_evals_per_task": max(max(r.grad_evals) for r in mine) if method != "joint"
                     else None,
                     "grad_evals": _mean(sum(r.grad_evals) for r in mine),
                     "seconds": _mean(r.seconds for r in mine)}
        for key in SCORES:
            values = [100 * r.scores[key] for r in mine]
            row[key] = _mean(values)
            row[key + "_std"] = _std(values)
        out.append(row)
    return out


def _pm(row: dict, key: str) -> str:
    value = row[key]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.2f} ± {row[key + '_std']:.2f}"


def summary_table(summary: list[dict]) -> str:
    lines = [
        "| method | strength | ACC | BWT | forgetting | plasticity | grad evals / task | seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        strength = "—" if row["strength"] is None else f"{row['strength']:g}"
        per_task = "total " + str(int(row["grad_evals"])) if row["grad_evals_per_task"] is None \
            else str(row["grad_evals_per_task"])
        lines.append(
            f"| {row['method']} | {strength} | {_pm(row, 'avg_accuracy')} | {_pm(row, 'bwt')} | "
            f"{_pm(row, 'forgetting')} | {_pm(row, 'plasticity')} | {per_task} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def _write_matrix(path: Path, matrix: list[list[float]]) -> None:
    n = len(matrix)
    rows = [{"after_task": i + 1, **{f"task_{j + 1}": (None if math.isnan(matrix[i][j]) else 100 * matrix[i][j])
                                      for j in range(n)}} for i in range(n)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_csv(path, rows)


def _mean_matrix(matrices: list[list[list[float]]]) -> list[list[float]]:
    n = len(matrices[0])
    return [[_mean(m[i][j] for m in matrices) for j in range(n)] for i in range(n)]


def heatmap(path: str | os.PathLike, matrix: list[list[float]], title: str) -> Path:
    """The accuracy matrix as a heat map (rows: after training task i; columns: task j)."""
    import matplotlib.pyplot as plt
    import numpy as np

    data = 100 * np.array(matrix, dtype=float)
    n = len(matrix)
    fig, ax = plt.subplots(figsize=(1.1 * n + 2.5, 1.0 * n + 1.5))
    image = ax.imshow(np.ma.masked_invalid(data), vmin=0, vmax=100, cmap="viridis")
    for i in range(n):
        for j in range(n):
            if not math.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.1f}", ha="center", va="center",
                        color="white" if data[i, j] < 60 else "black", fontsize=8)
    ax.set_xticks(range(n), [str(j + 1) for j in range(n)])
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)])
    ax.set_xlabel("evaluated on task j")
    ax.set_ylabel("after training task i")
    ax.set_title(title, fontsize=9)
    fig.colorbar(image, ax=ax, label="test accuracy (%)")
    return save_figure(fig, path)


def accuracy_over_tasks(path: str | os.PathLike, results: list[MethodResult], scenario: str) -> Path:
    """One panel per method: each task's accuracy (mean over seeds) after each later task."""
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r.method for r in results if r.method != "joint"))
    joint = [r for r in results if r.method == "joint"]
    cols = min(3, max(1, len(methods)))
    rows = max(1, math.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods):
        mean = _mean_matrix([r.matrix for r in results if r.method == method])
        n = len(mean)
        for j in range(n):
            xs = list(range(j + 1, n + 1))
            ax.plot(xs, [100 * mean[i][j] for i in range(j, n)], marker="o", markersize=3, label=f"task {j + 1}")
        if joint:
            ax.axhline(100 * _mean(r.scores["avg_accuracy"] for r in joint), color="gray",
                       linestyle="--", linewidth=1, label="joint ACC")
        ax.set_title(method, fontsize=10)
        ax.set_xlabel("tasks learned")
        ax.set_ylabel("test accuracy (%)")
        ax.set_xticks(range(1, n + 1))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods):]:
        ax.axis("off")
    if methods:
        axes.flat[0].legend(fontsize=7)
    fig.suptitle(f"Accuracy of every task as later tasks are learned ({scenario}-incremental)")
    fig.tight_layout()
    return save_figure(fig, path)
