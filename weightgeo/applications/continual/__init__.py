"""Continual learning along geodesics: task sequences learned with the geodesic method and baselines.

``run_method(method, seq)`` → accuracy matrix and scores; ``run_experiment`` writes a run
directory (results.csv, summary.md, heat maps, plots); see :mod:`.methods` for the methods
and the budget accounting, :mod:`.scores` for the conventions of ACC, BWT, forgetting and
plasticity.
"""

from weightgeo.applications.continual.methods import (
    DEFAULT_GRIDS,
    DEFAULT_STRENGTH,
    METHODS,
    PENALISED,
    ContinualConfig,
    Memory,
    make_learner,
)
from weightgeo.applications.continual.report import run_experiment
from weightgeo.applications.continual.runner import MethodResult, run_method, tune_strength
from weightgeo.applications.continual.scores import (
    average_accuracy,
    backward_transfer,
    forgetting,
    plasticity,
    scores,
)
from weightgeo.metrics import KroneckerMetric, LowRankMetric  # re-exported: they moved to metrics

__all__ = [
    "DEFAULT_GRIDS", "DEFAULT_STRENGTH", "METHODS", "PENALISED", "ContinualConfig", "KroneckerMetric",
    "LowRankMetric", "Memory", "MethodResult", "average_accuracy", "backward_transfer", "forgetting",
    "make_learner", "plasticity", "run_experiment", "run_method", "scores", "tune_strength",
]
