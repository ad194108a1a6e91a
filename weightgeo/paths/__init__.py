"""Paths in weight space and the tracers that build them."""

from weightgeo.paths.fip import fip, output_distance
from weightgeo.paths.path import Path
from weightgeo.paths.traverse import traverse

__all__ = ["Path", "fip", "output_distance", "traverse"]
