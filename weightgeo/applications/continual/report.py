"""The report of a continual-learning run: tables, matrices, heat maps and the accuracy over tasks.

From the result rows (:meth:`~.runner.MethodResult.row`, one per method and seed) it writes
``results.csv`` (method, scenario, seed, avg_accuracy, bwt, forgetting, plasticity, grad_evals,
grad_evals_per_task, seconds, strength, lr, stop_reason, stop_message; accuracies and their
differences in percentage points), ``results.jsonl`` (the rows with their accuracy matrices),
``matrices/<method>_seed<S>.csv``, ``heatmap_<method>.png`` (the matrix averaged over seeds),
``accuracy_over_tasks.png`` (every task's accuracy as later tasks are learned, one panel per
method), ``tuning.csv`` (with ``--tune``: each trial, strength and learning rate, the chosen one marked) and
``summary.md`` (mean ± std over seeds per method).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

from weightgeo.plotting import plt, save_figure
from weightgeo.rundir import dumps, write_csv, write_text

if TYPE_CHECKING:
    from weightgeo.applications.continual.settings import ContinualSettings

CSV_COLUMNS = [
    "method", "scenario", "seed", "avg_accuracy", "bwt", "forgetting", "plasticity",
    "grad_evals", "grad_evals_per_task", "seconds", "strength", "lr", "stop_reason", "stop_message",
]
SCORES = ("avg_accuracy", "bwt", "forgetting", "plasticity")


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _mean(values) -> float:
    values = [_float(v) for v in values]
    return sum(values) / len(values)


def _std(values) -> float:
    values = [_float(v) for v in values]
    if len(values) < 2:
        return 0.0
    mean = _mean(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _hybrid(s: ContinualSettings) -> str:
    """The label of the geodesic method when its output anchor is on: a hybrid, named as one."""
    if s.anchor_or_default <= 0 or "geodesic" not in s.method:
        return ""
    return (f"; **geodesic is a hybrid here**: the geodesic step plus fip's pull-back of the memory's outputs "
            f"(--anchor {s.anchor_or_default:g})")


def _matrix(row: dict) -> list[list[float]]:
    return [[_float(a) for a in line] for line in row["matrix"]]


def write_report(run: Path, results: list[dict], tuning: list[dict], settings: ContinualSettings,
                 seconds: float) -> Path:
    """Every file of the run's report (see the module docstring); returns summary.md's path."""
    run = Path(run)
    write_csv(run / "results.csv", [{k: r.get(k) for k in CSV_COLUMNS} for r in results], CSV_COLUMNS)
    write_text(run / "results.jsonl", "".join(dumps({k: v for k, v in r.items() if k != "kind"}) + "\n"
                                              for r in results))
    for r in results:
        _write_matrix(run / "matrices" / f"{r['method']}_seed{r['seed']}.csv", _matrix(r))
    if tuning:
        write_csv(run / "tuning.csv", [{k: v for k, v in r.items() if k != "kind"} | {"chosen": _chosen(r, tuning)}
                                       for r in tuning])
    scenario = settings.scenario_or_default
    for method in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == method]
        heatmap(run / f"heatmap_{method}.png", _mean_matrix([_matrix(r) for r in mine]),
                f"{method} ({scenario}-incremental), mean over {len(mine)} seed(s)")
    accuracy_over_tasks(run / "accuracy_over_tasks.png", results, scenario)
    s = settings
    header = (
        f"{s.seeds} seed(s) ({', '.join(map(str, s.seed_list))}), model {s.model_or_default}, base "
        f"{s.base_or_default}, budget {s.budget} gradient evaluations per task (joint: the total), memory "
        f"{s.memory} inputs per earlier task, geodesic metric {s.metric} ({s.solver} solver){_hybrid(s)}, "
        f"lr {s.lr:g}."
        + (f" Strengths tuned on the validation split of seed {s.seed}." if s.tune else "")
    )
    text = (
        f"# Continual learning: {s.tasks}, {scenario}-incremental\n\n{header} Accuracies in %, "
        "BWT/forgetting/plasticity in points; mean ± std over seeds.\n\n"
        + summary_table(summarise(results))
        + f"\nTotal time {seconds:.0f} s.\n\n![accuracy over tasks](accuracy_over_tasks.png)\n"
    )
    diverged = [r["stop_message"] for r in results if r.get("stop_message")]
    if diverged:
        text += "\nDiverged (their rows hold no scores):\n\n" + "".join(f"- {line}\n" for line in diverged)
    if tuning:
        text += "\nTuning (validation ACC per strength and learning rate): see `tuning.csv`.\n"
    state = run / "state"
    if state.is_dir() and not any(state.iterdir()):  # every unit finished: no progress left to keep
        state.rmdir()
    return write_text(run / "summary.md", text)


def _chosen(row: dict, tuning: list[dict]) -> bool:
    from weightgeo.applications.continual.runner import choose_trial

    return row is choose_trial([r for r in tuning if r["method"] == row["method"]])


def summarise(results: list[dict]) -> list[dict]:
    """Mean and standard deviation over seeds of each score, per method (percent / points)."""
    out = []
    for method in dict.fromkeys(r["method"] for r in results):
        mine = [r for r in results if r["method"] == method]
        row: dict = {"method": method, "seeds": len(mine), "strength": mine[0]["strength"],
                     "lr": mine[0].get("lr"),
                     "grad_evals_per_task": None if _all_at_once(mine[0]) else max(r["grad_evals_per_task"] for r in mine),
                     "grad_evals": _mean(r["grad_evals"] for r in mine),
                     "seconds": _mean(r["seconds"] for r in mine)}
        for key in SCORES:
            values = [r[key] for r in mine]
            row[key] = _mean(values)
            row[key + "_std"] = _std(values)
        out.append(row)
    return out


def _all_at_once(row: dict) -> bool:
    """A method that learns every task at once (joint): one measured row of a longer matrix."""
    return len(row["matrix"]) > 1 and all(a is None for line in row["matrix"][:-1] for a in line) and \
        row.get("stop_reason") != "non-finite"


def _pm(row: dict, key: str) -> str:
    value = row[key]
    if value is None or math.isnan(value):
        return "—"
    return f"{value:.2f} ± {row[key + '_std']:.2f}"


def summary_table(summary: list[dict]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| method | strength | lr | ACC | BWT | forgetting | plasticity | grad evals / task | seconds |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        strength = "—" if row["strength"] is None else f"{row['strength']:g}"
        lr = "—" if row.get("lr") is None else f"{row['lr']:g}"
        per_task = "total " + str(int(row["grad_evals"])) if row["grad_evals_per_task"] is None \
            else str(row["grad_evals_per_task"])
        lines.append(
            f"| {row['method']} | {strength} | {lr} | {_pm(row, 'avg_accuracy')} | {_pm(row, 'bwt')} | "
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


def accuracy_over_tasks(path: str | os.PathLike, results: list[dict], scenario: str) -> Path:
    """One panel per sequential method: each task's accuracy (mean over seeds) after each later task;
    the methods that learn all tasks at once (joint) as a line at their ACC."""
    methods = list(dict.fromkeys(r["method"] for r in results if not _all_at_once(r)))
    joint = [r for r in results if _all_at_once(r)]
    cols = min(3, max(1, len(methods)))
    rows = max(1, math.ceil(len(methods) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, method in zip(axes.flat, methods, strict=False):
        mean = _mean_matrix([_matrix(r) for r in results if r["method"] == method])
        n = len(mean)
        for j in range(n):
            xs = list(range(j + 1, n + 1))
            ax.plot(xs, [100 * mean[i][j] for i in range(j, n)], marker="o", markersize=3, label=f"task {j + 1}")
        for r in dict.fromkeys(r["method"] for r in joint):
            ax.axhline(_mean(x["avg_accuracy"] for x in joint if x["method"] == r), color="gray",
                       linestyle="--", linewidth=1, label=f"{r} ACC")
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
