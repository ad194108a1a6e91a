"""The loss plane (weightgeo.paths.plane): its basis, coordinates, grid and the loss on it."""

from __future__ import annotations

import pytest
import torch

from weightgeo.errors import WeightgeoError
from weightgeo.paths import Plane, loss_surface


def _points(n: int = 7):
    g = torch.Generator().manual_seed(0)
    a, b, c = (torch.randn(n, generator=g, dtype=torch.float64) for _ in range(3))
    return a, b, c


def test_the_plane_through_three_points_has_them_at_their_coordinates():
    a, b, c = _points()
    plane = Plane.through(a, b, c)
    basis = torch.stack([plane.u, plane.v])
    torch.testing.assert_close(basis @ basis.T, torch.eye(2, dtype=torch.float64))
    d = float((b - a).norm())
    assert plane.distance == pytest.approx(d)
    xy = plane.coordinates(torch.stack([a, b, c]))
    along = float((c - a) @ (b - a)) / d
    height = float(((c - a).square().sum() - along**2).sqrt())  # c's distance from the line
    torch.testing.assert_close(xy, torch.tensor([[0.0, 0.0], [d, 0.0], [along, height]], dtype=torch.float64))
    torch.testing.assert_close(plane.points(xy), torch.stack([a, b, c]))  # all three lie in the plane


def test_coordinates_are_the_orthogonal_projection():
    a, b, c = _points()
    plane = Plane.through(a, b, c)
    p = torch.randn(7, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    foot = plane.points(plane.coordinates(p[None]))[0]
    residual = p - foot
    assert abs(float(residual @ plane.u)) < 1e-12 and abs(float(residual @ plane.v)) < 1e-12
    assert float(residual.norm()) > 0.1  # a random point of R^7 is off the plane


def test_a_third_point_on_the_line_gives_a_seeded_orthogonal_direction():
    a, b, _ = _points()
    on_line = a + 0.3 * (b - a)
    plane = Plane.through(a, b, on_line)
    assert float(plane.v.norm()) == pytest.approx(1.0)
    assert abs(float(plane.u @ plane.v)) < 1e-12
    torch.testing.assert_close(Plane.through(a, b, on_line).v, plane.v)  # reproducible
    assert not torch.allclose(Plane.through(a, b, on_line, seed=1).v, plane.v)
    with pytest.raises(WeightgeoError, match="two distinct points"):
        Plane.through(a, a, b)


def test_the_grid_covers_the_points_and_both_ends_with_a_margin():
    a, b, c = _points()
    plane = Plane.through(a, b, c)
    d = plane.distance
    covering = torch.tensor([[-1.0, 0.5], [0.5 * d, 2.0]], dtype=torch.float64)
    xs, ys = plane.grid(covering, 5)
    span_x = d + 1.0  # from -1 to d (θ_b is covered too)
    assert float(xs[0]) == pytest.approx(-1.0 - 0.2 * span_x)
    assert float(xs[-1]) == pytest.approx(d + 0.2 * span_x)
    assert float(ys[0]) == pytest.approx(0.0 - 0.2 * 2.0)  # θ_a's y = 0 is covered
    assert float(ys[-1]) == pytest.approx(2.0 + 0.2 * 2.0)
    assert len(xs) == len(ys) == 5
    flat_x, flat_y = plane.grid(torch.zeros(1, 2, dtype=torch.float64), 3)  # all points on the line
    assert float(flat_y[-1]) == pytest.approx(0.2 * 0.1 * d)  # a band of d/10 · margin
    with pytest.raises(WeightgeoError, match="at least 2"):
        plane.grid(covering, 1)


def test_loss_surface_evaluates_every_grid_point_in_stacks_and_resumes():
    a, b, c = _points()
    plane = Plane.through(a, b, c)
    centre = torch.tensor([[0.7, -0.4]], dtype=torch.float64)
    m = plane.points(centre)[0]
    xs = torch.linspace(-1, 2, 4, dtype=torch.float64)
    ys = torch.linspace(-1, 1, 3, dtype=torch.float64)
    shapes = []

    def loss(stack):
        shapes.append(tuple(stack.shape))
        return (stack - m).square().sum(-1)  # ||θ − m||² = (x − 0.7)² + (y + 0.4)² on the plane

    rows = loss_surface(plane, xs, ys, loss)
    expected = [[(float(x) - 0.7) ** 2 + (float(y) + 0.4) ** 2 for x in xs] for y in ys]
    torch.testing.assert_close(torch.tensor(rows), torch.tensor(expected), atol=1e-12, rtol=0)
    assert shapes == [(4, 7)] * 3  # one stack of points per row
    saved = []
    shapes.clear()
    resumed = loss_surface(plane, xs, ys, loss, done=rows[:2], on_row=lambda i, values: saved.append(i))
    assert resumed == rows and saved == [2] and shapes == [(4, 7)]  # only the missing row is evaluated
