"""The loss plane: a two-dimensional slice of weight space through three points, and a loss on it.

The plane through θ_a, θ_b and a third point c (e.g. a path's midpoint) is θ_a + x u + y v with
the orthonormal basis u = (θ_b − θ_a)/||θ_b − θ_a|| and v = the part of c − θ_a orthogonal to u,
normalised (Garipov et al. 2018, Fig. 1). θ_a sits at (0, 0), θ_b at (d, 0) with d = ||θ_b − θ_a||,
c at (⟨c − θ_a, u⟩, h) with h > 0. When c lies on the line, v is a seeded random direction
orthogonal to u.

:meth:`Plane.grid` gives a grid covering given points (paths projected onto the plane) with a
margin; :func:`loss_surface` evaluates a loss at every grid point through a callable that takes a
stack of points at once (so an evaluator can batch them), row by row, resumable from the rows
already done.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError


@dataclass(frozen=True)
class Plane:
    """The plane ``origin + x u + y v`` (u, v orthonormal); ``distance`` = ||θ_b − θ_a||."""

    origin: Tensor
    u: Tensor
    v: Tensor
    distance: float

    @classmethod
    def through(cls, theta_a: Tensor, theta_b: Tensor, third: Tensor, seed: int = 0) -> Plane:
        """The plane through θ_a, θ_b and ``third``, with θ_a at the origin and θ_b on the x axis.

        Raises:
            WeightgeoError: θ_a and θ_b coincide (no direction to span).
        """
        u = theta_b - theta_a
        d = u.norm()
        if not bool(d > 0):  # a guard: one read
            raise WeightgeoError("the loss plane needs two distinct points θ_a and θ_b")
        u = u / d
        w = third - theta_a
        v = w - (w @ u) * u
        norm_v = v.norm()
        if not bool(norm_v > 1e-8 * d):  # the third point lies on the line: any orthogonal direction
            generator = torch.Generator(device="cpu").manual_seed(seed)
            v = torch.randn(u.shape, generator=generator, dtype=u.dtype).to(u.device)
            v = v - (v @ u) * u
            norm_v = v.norm()
        return cls(theta_a, u, v / norm_v, float(d))  # reporting

    def coordinates(self, points: Tensor) -> Tensor:
        """(x, y) of the orthogonal projection of each row of ``points`` (N×n → N×2)."""
        rel = points - self.origin
        return torch.stack([rel @ self.u, rel @ self.v], dim=-1)

    def points(self, xy: Tensor) -> Tensor:
        """The points θ_a + x u + y v for each row (x, y) of ``xy`` (N×2 → N×n)."""
        xy = xy.to(self.u)
        return self.origin + xy[:, :1] * self.u + xy[:, 1:] * self.v

    def grid(self, covering: Tensor, size: int, margin: float = 0.2) -> tuple[Tensor, Tensor]:
        """``size`` x and y values spanning the coordinates ``covering`` (N×2), θ_a and θ_b, widened
        by ``margin`` × the span on each side (y: at least ``margin`` × d/10, so a flat set of
        points still gets a band around it).

        Raises:
            WeightgeoError: ``size`` < 2.
        """
        if size < 2:
            raise WeightgeoError(f"a loss plane grid needs at least 2 points per side, got {size}")
        xy = torch.cat([covering.detach().double().cpu(), torch.tensor([[0.0, 0.0], [self.distance, 0.0]],
                                                                       dtype=torch.float64)])
        low, high = xy.min(0).values, xy.max(0).values
        span = high - low
        pad_x = margin * float(span[0])
        pad_y = margin * max(float(span[1]), 0.1 * self.distance)
        xs = torch.linspace(float(low[0]) - pad_x, float(high[0]) + pad_x, size, dtype=torch.float64)
        ys = torch.linspace(float(low[1]) - pad_y, float(high[1]) + pad_y, size, dtype=torch.float64)
        return xs, ys


def loss_surface(
    plane: Plane,
    xs: Tensor,
    ys: Tensor,
    loss: Callable[[Tensor], Tensor],
    *,
    done: Sequence[Sequence[float]] = (),
    on_row: Callable[[int, list[float]], None] | None = None,
) -> list[list[float]]:
    """The loss at every grid point θ_a + x u + y v: one row per y, one value per x.

    Args:
        plane: the plane.
        xs, ys: the grid's coordinates.
        loss: ``loss(points)`` for a stack of points (K×n) → K values (it may batch them).
        done: rows already evaluated (an interrupted run's): they are kept, not recomputed.
        on_row: ``on_row(i, values)`` after each new row (e.g. to save progress).

    Returns:
        ``len(ys)`` rows of ``len(xs)`` floats (read from the device once per row: reporting).
    """
    rows = [list(map(float, row)) for row in done]
    for i in range(len(rows), len(ys)):
        xy = torch.stack([xs, torch.full_like(xs, float(ys[i]))], dim=-1)
        values = [float(v) for v in loss(plane.points(xy)).tolist()]  # reporting: one read per row
        rows.append(values)
        if on_row is not None:
            on_row(i, values)
    return rows
