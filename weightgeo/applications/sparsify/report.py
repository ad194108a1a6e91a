"""The sparsification report: results table (CSV + markdown), accuracy plots, path plots."""

from __future__ import annotations

import math
import os
from pathlib import Path

from weightgeo.paths import Path as WeightPath
from weightgeo.plotting import line_plot, plt, save_figure
from weightgeo.rundir import markdown_table, write_csv, write_text

COLUMNS = [
    "method", "sparsity", "budget", "measured_sparsity", "test_accuracy", "test_loss", "grad_evals",
    "seconds", "labels", "stop_reason", "stop_message",
]


def _pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def _loss(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"  # None: a non-finite loss (strict JSON)


def write_results(out: Path, rows: list[dict]) -> None:
    """results.csv (every column) and results.md (the same rows, readable)."""
    write_csv(out / "results.csv", rows, COLUMNS)
    shown = [
        {**r, "sparsity": _pct(r["sparsity"]), "measured_sparsity": f"{100 * r['measured_sparsity']:.3f}%",
         "test_accuracy": _pct(r["test_accuracy"]), "test_loss": _loss(r["test_loss"]),
         "seconds": f"{r['seconds']:.1f}"}
        for r in rows
    ]
    columns = COLUMNS if any(r.get("stop_message") for r in rows) else COLUMNS[:-1]
    write_text(out / "results.md", markdown_table(shown, columns))


def accuracy_vs_sparsity(path: str | os.PathLike, rows: list[dict], dense: float, budget: int) -> Path:
    """Test accuracy against sparsity for every method at one budget; the dense accuracy as a line."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in rows:
        if r["budget"] != budget:
            continue
        xs, ys = series.setdefault(r["method"], ([], []))
        xs.append(100 * r["sparsity"])
        ys.append(100 * r["test_accuracy"])
    return line_plot(
        path, series, "sparsity (% of weights set to zero)", "test accuracy (%)",
        f"Accuracy against sparsity, budget {budget} gradient evaluations",
        hlines={f"dense {100 * dense:.2f}%": 100 * dense}, markers=True,
    )


def accuracy_vs_budget(path: str | os.PathLike, rows: list[dict], dense: float, sparsity: float) -> Path:
    """Test accuracy against the budget for every method at one sparsity level (log x axis)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    methods = sorted({r["method"] for r in rows if r["sparsity"] == sparsity})
    for m in methods:
        pts = sorted((r["budget"], 100 * r["test_accuracy"], 100 * r.get("test_accuracy_std", 0.0))
                     for r in rows if r["method"] == m and r["sparsity"] == sparsity)
        xs = [max(p[0], 1) for p in pts]
        ax.errorbar(xs, [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", markersize=3,
                    capsize=2, label=m)
    ax.axhline(100 * dense, color="gray", linestyle="--", linewidth=1, label=f"dense {100 * dense:.2f}%")
    # zoom on the competitive methods: curves more than 8 points below dense leave the axes
    near = [100 * r["test_accuracy"] for r in rows
            if r["sparsity"] == sparsity and r["test_accuracy"] >= dense - 0.08]
    if near:
        ax.set_ylim(min(near) - 0.5, 100 * dense + 0.7)
    ax.set_xscale("log")
    ax.set_xlabel("budget (gradient evaluations)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title(f"Accuracy against budget at {100 * sparsity:g}% sparsity (zoomed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return save_figure(fig, path)


def path_plot(path_file: str | os.PathLike, path: WeightPath, title: str) -> Path:
    """Test accuracy and sparsity along one geodesic path, against gradient evaluations."""
    records = [r for r in path.records if r.get("test_accuracy") is not None]
    xs = [r["grad_evals"] for r in records]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(xs, [100 * r["test_accuracy"] for r in records], marker="o", markersize=2, color="C0")
    left.set_xlabel("gradient evaluations along the path")
    left.set_ylabel("test accuracy (%)")
    left.grid(alpha=0.3)
    right.plot(xs, [100 * r["sparsity"] for r in records], marker="o", markersize=2, label="exact zeros")
    right.plot(xs, [100 * r["target_sparsity"] for r in records], linestyle="--", label="current target")
    right.set_xlabel("gradient evaluations along the path")
    right.set_ylabel("sparsity (%)")
    right.legend(fontsize=8)
    right.grid(alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path_file)


def summary_markdown(rows: list[dict], dense: dict, settings: dict, plots: list[str], seconds: float) -> str:
    """summary.md: the settings, the dense network, the table and the plots."""
    table = markdown_table(
        [{**r, "sparsity": _pct(r["sparsity"]), "test_accuracy": _pct(r["test_accuracy"]),
          "measured_sparsity": f"{100 * r['measured_sparsity']:.3f}%", "seconds": f"{r['seconds']:.1f}"}
         for r in rows],
        ["method", "sparsity", "budget", "measured_sparsity", "test_accuracy", "grad_evals", "seconds", "labels"],
    )
    diverged = [f"- {r['stop_message']} (budget {r['budget']})" for r in rows if r.get("stop_message")]
    lines = [
        "# Sparsification", "",
        f"Dense network: test accuracy {_pct(dense['accuracy'])}, test loss {dense['loss']:.4f}.", "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in settings.items()), "",
        table, "",
        *(["Stopped on a non-finite value (the last finite point is reported, no checkpoint written):",
           *diverged, ""] if diverged else []),
        *[f"![{p}]({p})" for p in plots], "",
        f"Time {seconds:.1f} s (this session: units finished before a --resume are not counted).",
    ]
    return "\n".join(lines) + "\n"


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    m = sum(values) / len(values)
    if len(values) < 2:
        return m, 0.0
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))
