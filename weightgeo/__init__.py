"""weightgeo: a network's weight space as a Riemannian manifold whose metric encodes a task.

Data flows one way: data + model → :mod:`~weightgeo.metrics` → :class:`WeightSpace` →
tracer (:func:`traverse`, :func:`fip`, …) driven by an :mod:`~weightgeo.objectives`
objective → :class:`Path` → reports and plots.
"""

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import (
    DiagonalFisher,
    Euclidean,
    FisherMetric,
    Metric,
    OutputMetric,
    build_metric,
)
from weightgeo.objectives import Objective, TargetPoint, TaskLoss
from weightgeo.paths import Path, fip, traverse

__version__ = "0.1.0"

__all__ = [
    "DiagonalFisher",
    "Euclidean",
    "FisherMetric",
    "FunctionalModel",
    "Metric",
    "Objective",
    "OutputMetric",
    "Path",
    "TargetPoint",
    "TaskLoss",
    "WeightSpace",
    "WeightgeoError",
    "build_metric",
    "fip",
    "traverse",
]
