"""Curves between two networks, sampled at points evenly spaced by Euclidean arc length.

A curve is what a connection method returns: a polyline through vertices (the straight
line, a traced or relaxed path, Garipov's polygonal chain) or a quadratic Bezier curve.
``sample(count)`` gives ``count`` points evenly spaced by arc length, the first and last
being the endpoints, so every method is evaluated at comparable places.

Garipov et al.'s curves have one trainable bend between fixed ends; :data:`BENT_CURVES` holds
their kinds (``bezier``, ``polychain``), each a point w(t) and the curve it makes. Their training
loss is :class:`CurveLoss` — the task loss at w(t) plus weight decay on w(t), one t ~ U(0, 1)
per minibatch drawn by :class:`CurveBatches` — minimised by the library's loop.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo.data.streams import Stream
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.paths.relax import resample_polyline
from weightgeo.registry import Registry


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


def curve_from_points(kind: str, points: Sequence[Tensor]) -> Curve:
    """The curve of kind ``kind`` ("bezier" or "polyline") through its control points."""
    if kind == Bezier.kind:
        if len(points) != 3:
            raise WeightgeoError(f"a Bezier curve has 3 control points, got {len(points)}")
        return Bezier(*points)
    if kind == Polyline.kind:
        return Polyline(list(points))
    raise WeightgeoError(f"unknown curve kind {kind!r}; choose one of {Bezier.kind}, {Polyline.kind}")


# -- Garipov's curves: a trainable bend between fixed ends ----------------------------------------
def bezier_point(theta_a: Tensor, bend: Tensor, theta_b: Tensor, t: float) -> Tensor:
    """w(t) = (1−t)² θ_a + 2t(1−t) bend + t² θ_b."""
    return (1 - t) ** 2 * theta_a + 2 * t * (1 - t) * bend + t**2 * theta_b


def chain_point(theta_a: Tensor, bend: Tensor, theta_b: Tensor, t: float) -> Tensor:
    """w(t) on the polygonal chain θ_a → bend (t ≤ ½) → θ_b, each half at constant speed."""
    if t < 0.5:
        return theta_a + 2 * t * (bend - theta_a)
    return bend + (2 * t - 1) * (theta_b - bend)


@dataclass(frozen=True)
class BentCurve:
    """A kind of curve with one bend: its point w(t) and the curve its control points make."""

    point: Callable[[Tensor, Tensor, Tensor, float], Tensor]
    build: Callable[[Tensor, Tensor, Tensor], Curve]


BENT_CURVES: Registry[BentCurve] = Registry("curve")
BENT_CURVES.register("bezier", BentCurve(bezier_point, Bezier), help="quadratic Bezier curve")
BENT_CURVES.register("polychain", BentCurve(chain_point, lambda a, bend, b: Polyline([a, bend, b])),
                     help="polygonal chain through one bend")


class CurveBatches(Stream):
    """(t, x, y): a minibatch and its t ~ U(0, 1) (one t per minibatch), resumable.

    t is drawn on the CPU from its own generator (a host value: no device read).
    """

    def __init__(self, minibatches: Stream, seed: int) -> None:
        self.minibatches = minibatches
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def next(self) -> tuple[float, Tensor, Tensor]:
        t = float(torch.rand((), generator=self.generator))
        x, y = self.minibatches.next()
        return t, x, y

    def state_dict(self) -> dict:
        return {"minibatches": self.minibatches.state_dict(), "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.minibatches.load_state_dict(state["minibatches"])
        self.generator.set_state(state["generator"])


class CurveLoss:
    """The bend's loss on a batch (t, x, y): CE(f(x; w(t)), y) + ½ λ ||w(t)||² (Garipov et al.).

    The network runs in eval mode with batch norm (if any) on the batch's statistics.
    """

    def __init__(self, model: FunctionalModel, kind: str, theta_a: Tensor, theta_b: Tensor,
                 weight_decay: float) -> None:
        self.curve = BENT_CURVES[kind]
        self.network = model.stacked()
        self.theta_a, self.theta_b = theta_a.detach(), theta_b.detach()
        self.weight_decay = weight_decay

    def __call__(self, bend: Tensor, batch: Any) -> Tensor:
        t, x, y = batch
        w = self.curve.point(self.theta_a, bend, self.theta_b, t)
        return F.cross_entropy(self.network.single(w, x), y) + 0.5 * self.weight_decay * w.square().sum()
