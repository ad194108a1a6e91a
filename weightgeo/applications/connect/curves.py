"""Curves between two networks, sampled at points evenly spaced by Euclidean arc length.

A curve is what a connection method returns: a polyline through vertices (the straight
line, a traced or relaxed path, Garipov's polygonal chain) or a quadratic Bezier curve.
``sample(count)`` gives ``count`` points evenly spaced by arc length, the first and last
being the endpoints, so every method is evaluated at comparable places.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError
from weightgeo.paths.relax import resample_polyline


class Curve:
    """A curve in weight space from ``start`` to ``end``."""

    kind = "curve"

    @property
    def start(self) -> Tensor:
        raise NotImplementedError

    @property
    def end(self) -> Tensor:
        raise NotImplementedError

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        """``count`` points (count×n) evenly spaced by Euclidean arc length, and their fractions."""
        raise NotImplementedError

    def euclidean_length(self) -> float:
        raise NotImplementedError

    def control_points(self) -> list[Tensor]:
        """The points that define the curve (saved with the run)."""
        raise NotImplementedError


class Polyline(Curve):
    """The polyline through ``vertices`` (the straight line when there are two)."""

    kind = "polyline"

    def __init__(self, vertices: Sequence[Tensor] | Tensor) -> None:
        points = vertices if isinstance(vertices, Tensor) else torch.stack(list(vertices))
        if points.dim() != 2 or len(points) < 2:
            raise WeightgeoError("a polyline needs at least two vertices")
        self.vertices = points.detach()

    @property
    def start(self) -> Tensor:
        return self.vertices[0]

    @property
    def end(self) -> Tensor:
        return self.vertices[-1]

    def segment_lengths(self) -> Tensor:
        return (self.vertices[1:] - self.vertices[:-1]).norm(dim=-1)

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        return resample_polyline(self.vertices, self.segment_lengths(), count)

    def euclidean_length(self) -> float:
        return float(self.segment_lengths().sum())  # reporting

    def control_points(self) -> list[Tensor]:
        return list(self.vertices.unbind(0))


class Bezier(Curve):
    """The quadratic Bezier curve w(t) = (1−t)² θ_a + 2t(1−t) θ_bend + t² θ_b (Garipov et al.)."""

    kind = "bezier"

    def __init__(self, theta_a: Tensor, bend: Tensor, theta_b: Tensor, resolution: int = 400) -> None:
        self.theta_a, self.bend, self.theta_b = theta_a.detach(), bend.detach(), theta_b.detach()
        self.resolution = resolution

    @property
    def start(self) -> Tensor:
        return self.theta_a

    @property
    def end(self) -> Tensor:
        return self.theta_b

    def at(self, t: Tensor | float) -> Tensor:
        t = torch.as_tensor(t, dtype=self.theta_a.dtype, device=self.theta_a.device)
        t = t.reshape(-1, 1)
        out = (1 - t) ** 2 * self.theta_a + 2 * t * (1 - t) * self.bend + t**2 * self.theta_b
        return out.squeeze(0) if out.shape[0] == 1 else out

    def _arc(self) -> tuple[Tensor, Tensor]:
        # |w'(t)| = |2(1−t)(bend − a) + 2t(b − bend)|: exact speeds on a fine grid, trapezoid rule.
        t = torch.linspace(0, 1, self.resolution + 1, dtype=self.theta_a.dtype, device=self.theta_a.device)
        d0, d1 = self.bend - self.theta_a, self.theta_b - self.bend
        gram = torch.stack([torch.stack([d0 @ d0, d0 @ d1]), torch.stack([d0 @ d1, d1 @ d1])])
        coeff = torch.stack([2 * (1 - t), 2 * t], dim=1)
        speed = torch.einsum("ti,ij,tj->t", coeff, gram, coeff).clamp_min(0).sqrt()
        increments = 0.5 * (speed[1:] + speed[:-1]) / self.resolution
        return t, torch.cat([increments.new_zeros(1), increments.cumsum(0)])

    def sample(self, count: int) -> tuple[Tensor, Tensor]:
        t, arc = self._arc()
        fractions = torch.linspace(0, 1, count, dtype=t.dtype, device=t.device)
        if not bool(arc[-1] > 0):  # stop test: a degenerate curve
            return self.at(torch.zeros(count, dtype=t.dtype, device=t.device)), fractions
        targets = fractions * arc[-1]
        index = torch.searchsorted(arc, targets, right=True).clamp(1, len(arc) - 1)
        w = ((targets - arc[index - 1]) / (arc[index] - arc[index - 1]).clamp_min(1e-30)).clamp(0, 1)
        ts = t[index - 1] + w * (t[index] - t[index - 1])
        ts[0], ts[-1] = 0.0, 1.0
        return self.at(ts), fractions

    def euclidean_length(self) -> float:
        return float(self._arc()[1][-1])  # reporting

    def control_points(self) -> list[Tensor]:
        return [self.theta_a, self.bend, self.theta_b]
