"""weightgeo: a network's weight space as a Riemannian manifold whose metric encodes a task.

Data flows one way: data + model → :mod:`~weightgeo.metrics` → :class:`WeightSpace` →
tracer (:func:`traverse`, :func:`fip`, …) driven by an :mod:`~weightgeo.objectives`
objective → :class:`Path` → reports and plots. The applications
(:mod:`weightgeo.applications`) share one shape; :func:`objective_application` makes a new one
from an Objective.
"""

from weightgeo.applications import Task, objective_application, run
from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import evaluate
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
from weightgeo.optim import fit
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
    "Task",
    "TaskLoss",
    "WeightSpace",
    "WeightgeoError",
    "build_metric",
    "evaluate",
    "fip",
    "fit",
    "objective_application",
    "run",
    "traverse",
]
