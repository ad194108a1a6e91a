"""The report of a connection run: tables, loss and accuracy along every path, the loss plane.

Writes ``results.csv`` and ``results.md`` (one row per method), ``evaluation.csv`` (every method's
loss and accuracy at each evaluated point), ``along_paths.png`` and, when the loss plane was
computed (``plane.json``, by :mod:`weightgeo.paths.plane`), ``plane.png``. It draws what the run
measured; it computes nothing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from weightgeo.plotting import plt, save_figure
from weightgeo.rundir import RunDirectory, markdown_table, write_csv, write_text

RESULT_COLUMNS = [
    "method", "min_test_accuracy", "max_accuracy_drop", "loss_barrier", "error_barrier",
    "euclidean_length", "metric_length", "grad_evals", "seconds",
]
EVALUATION_FILE = "evaluation.json"
PLANE_FILE = "plane.json"


def along_paths_plot(path: str | os.PathLike, evaluations: dict[str, list[dict]]) -> Path:
    """Test accuracy (left) and test loss (right) against arc-length fraction, every method."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in evaluations.items():
        xs = [r["fraction"] for r in rows]
        left.plot(xs, [100 * r["test_accuracy"] for r in rows], label=name)
        right.plot(xs, [r["test_loss"] for r in rows], label=name)
    left.set_xlabel("fraction of the path (Euclidean arc length)")
    left.set_ylabel("test accuracy (%)")
    right.set_xlabel("fraction of the path (Euclidean arc length)")
    right.set_ylabel("test loss")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    left.set_title("Test accuracy along each path")
    right.set_title("Test loss along each path")
    return save_figure(fig, path)


def plane_plot(path: str | os.PathLike, plane: dict) -> Path:
    """Test-loss contours on the plane (``plane.json``'s grid) with every path projected onto it."""
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.8, 5.4))
    z = np.log10(np.maximum(np.asarray(plane["test_loss"], dtype=float), 1e-6))
    contour = ax.contourf(plane["x"], plane["y"], z, levels=20, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="log10 test loss")
    for name, xy in plane["paths"].items():
        ax.plot(xy["x"], xy["y"], label=name, linewidth=1.6)
    ax.scatter([0, plane["distance"]], [0, 0], color="white", edgecolor="black", zorder=5)
    ax.annotate("θ_a", (0, 0), textcoords="offset points", xytext=(4, 4), color="white")
    ax.set_xlabel("along θ_b − θ_a")
    ax.set_ylabel("orthogonal, toward the path's midpoint")
    ax.set_title(f"Test loss on the plane through θ_a, θ_b and the {plane['midpoint_of']} midpoint")
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)


def write_report(run: RunDirectory, rows: list[dict], about: str) -> Path:
    """results.csv, results.md, evaluation.csv and the pictures of a run; returns results.md.

    ``about`` is the line describing the settings (metric, nodes, budget).
    """
    write_csv(run / "results.csv", rows, RESULT_COLUMNS)
    evaluations = {row["method"]: json.loads((run / "paths" / row["method"] / EVALUATION_FILE).read_text())
                   for row in rows}
    write_csv(run / "evaluation.csv", [{"method": m, **r} for m, ev in evaluations.items() for r in ev])
    spent = ", ".join(f"{r['method']} {r['grad_evals']}" for r in rows if r["grad_evals"])
    text = (
        "# Connecting two networks\n\n"
        f"{about} (spent: {spent or 'none trained'}).\n"
        "Accuracies in %, drops and error barrier in points; loss barrier = max test loss − mean of "
        "the endpoints' test losses; metric length on a fixed batch of training inputs.\n\n"
        + markdown_table(rows, RESULT_COLUMNS)
    )
    diverged = [r["stop_message"] for r in rows if r.get("stop_message")]
    if diverged:
        text += "\nStopped on a non-finite value (the last finite curve is reported):\n\n" + "".join(
            f"- {line}\n" for line in diverged)
    if rows:
        along_paths_plot(run / "along_paths.png", evaluations)
        text += "\n![along the paths](along_paths.png)\n"
    if (run / PLANE_FILE).exists():
        plane_plot(run / "plane.png", json.loads((run / PLANE_FILE).read_text()))
        text += "\n![the plane through θ_a, θ_b and the midpoint](plane.png)\n"
    return write_text(run / "results.md", text)
