"""Paths in weight space and the tracers that build them.

Every tracer is a step rule driven by one loop (:mod:`weightgeo.paths.driver`): ``traverse``
(the papers' damped natural-gradient step), ``fip`` (the authors' penalty optimiser) and
``shoot`` (the geodesic equation); ``relax`` optimises all nodes of a path at once with the
library's optimisation loop. :mod:`~weightgeo.paths.plane` is the loss plane through three points,
on which paths between networks are drawn.
"""

from weightgeo.paths.driver import Observation, Proposal, StepRule, drive, run_tracer
from weightgeo.paths.fip import PenaltyStep, fip, output_distance
from weightgeo.paths.path import Path
from weightgeo.paths.plane import Plane, loss_surface
from weightgeo.paths.relax import relax, resample_polyline
from weightgeo.paths.shoot import GeodesicStep, shoot
from weightgeo.paths.traverse import NaturalGradientStep, traverse

__all__ = [
    "GeodesicStep", "NaturalGradientStep", "Observation", "Path", "PenaltyStep", "Plane", "Proposal",
    "StepRule", "drive", "fip", "loss_surface", "output_distance", "relax", "resample_polyline", "run_tracer",
    "shoot", "traverse",
]
