"""Paths in weight space and the tracers that build them."""

from weightgeo.paths.fip import fip, output_distance
from weightgeo.paths.path import Path
from weightgeo.paths.relax import relax, resample_polyline, segment_squared_lengths
from weightgeo.paths.shoot import shoot
from weightgeo.paths.traverse import traverse

__all__ = [
    "Path", "fip", "output_distance", "relax", "resample_polyline", "segment_squared_lengths",
    "shoot", "traverse",
]
