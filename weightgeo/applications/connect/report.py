"""Pictures of a connection run: loss/accuracy along every path, and the plane through θ_a, θ_b, mid."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from weightgeo.plotting import save_figure


def along_paths_plot(path: str | os.PathLike, evaluations: dict[str, list[dict]]) -> Path:
    """Test accuracy (left) and test loss (right) against arc-length fraction, every method."""
    import matplotlib.pyplot as plt

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


def plane_basis(theta_a: Tensor, theta_b: Tensor, mid: Tensor) -> tuple[Tensor, Tensor, float, float]:
    """Orthonormal u (along θ_b − θ_a) and v (toward ``mid``), and the coordinates of θ_b, mid."""
    u = theta_b - theta_a
    d = u.norm()
    u = u / d
    w = mid - theta_a
    v = w - (w @ u) * u
    norm_v = v.norm()
    if not bool(norm_v > 1e-8 * d):  # the midpoint lies on the line: any orthogonal direction
        generator = torch.Generator(device="cpu").manual_seed(0)
        v = torch.randn(u.shape, generator=generator, dtype=u.dtype).to(u.device)
        v = v - (v @ u) * u
        norm_v = v.norm()
    return u, v / norm_v, float(d), float(w @ (v / norm_v))


def plane_plot(
    path: str | os.PathLike,
    theta_a: Tensor,
    u: Tensor,
    v: Tensor,
    grid_x: list[float],
    grid_y: list[float],
    losses: list[list[float]],
    paths: dict[str, Tensor],
    title: str,
) -> Path:
    """Test-loss contours on the plane θ_a + x u + y v, with every path projected onto it."""
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6.8, 5.4))
    z = np.log10(np.maximum(np.asarray(losses, dtype=float), 1e-6))
    contour = ax.contourf(grid_x, grid_y, z, levels=20, cmap="viridis")
    fig.colorbar(contour, ax=ax, label="log10 test loss")
    for name, points in paths.items():
        rel = points - theta_a
        ax.plot((rel @ u).tolist(), (rel @ v).tolist(), label=name, linewidth=1.6)
    ax.scatter([0, float((paths[next(iter(paths))][-1] - theta_a) @ u)], [0, 0], color="white",
               edgecolor="black", zorder=5)
    ax.annotate("θ_a", (0, 0), textcoords="offset points", xytext=(4, 4), color="white")
    ax.set_xlabel("along θ_b − θ_a")
    ax.set_ylabel("orthogonal, toward the path's midpoint")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper right")
    return save_figure(fig, path)
