"""Plot helpers on matplotlib's Agg backend (no screen needed); each writes one PNG."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from weightgeo import distributed  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> Path:
    """Save ``fig`` to ``path`` (atomically; rank 0 only under torchrun) and close it."""
    path = Path(path)
    if not distributed.is_writer():
        plt.close(fig)
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    os.replace(tmp, path)
    return path


def line_plot(
    path: str | os.PathLike,
    series: dict[str, tuple[list[float], list[float]]],
    xlabel: str,
    ylabel: str,
    title: str = "",
    hlines: dict[str, float] | None = None,
    markers: bool = False,
) -> Path:
    """One axes with a line per series ``{label: (x, y)}`` and optional labelled horizontal lines."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (xs, ys) in series.items():
        ax.plot(xs, ys, marker="o" if markers else None, markersize=3, label=label)
    for label, y in (hlines or {}).items():
        ax.axhline(y, color="gray", linestyle="--", linewidth=1, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_figure(fig, path)


def training_curves(path: str | os.PathLike, history: list[dict]) -> Path:
    """Train/test loss and test accuracy per epoch, side by side."""
    epochs = [h["epoch"] for h in history]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    left.plot(epochs, [h["train_loss"] for h in history], label="train loss")
    left.plot(epochs, [h["test_loss"] for h in history], label="test loss")
    left.set_xlabel("epoch")
    left.set_ylabel("cross-entropy")
    left.legend()
    left.grid(alpha=0.3)
    right.plot(epochs, [100 * h["test_accuracy"] for h in history], color="C2")
    right.set_xlabel("epoch")
    right.set_ylabel("test accuracy (%)")
    right.grid(alpha=0.3)
    return save_figure(fig, path)
