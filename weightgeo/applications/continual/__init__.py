"""Continual learning along geodesics: task sequences learned with the geodesic method and baselines.

The ``continual`` application (:class:`Continual`, settings :class:`ContinualSettings`; the
command ``weightgeo continual`` is generated from them) runs every method on every seed into a
run directory; ``run_experiment(out, **settings)`` does the same from Python. ``run_method(method,
seq)`` learns one sequence with one method and returns its accuracy matrix and scores. See
:mod:`.methods` for the methods and the budget accounting, :mod:`.scores` for the conventions of
ACC, BWT, forgetting and plasticity.
"""

from weightgeo.applications.continual.application import Continual, run_experiment
from weightgeo.applications.continual.methods import (
    METHODS,
    PENALISED,
    SOLVERS,
    Learned,
    Learner,
    Memory,
    make_learner,
)
from weightgeo.applications.continual.runner import MethodResult, run_method, tune_strength
from weightgeo.applications.continual.scores import (
    average_accuracy,
    backward_transfer,
    forgetting,
    plasticity,
    scores,
)
from weightgeo.applications.continual.settings import ContinualSettings
from weightgeo.metrics import KroneckerMetric, LowRankMetric  # re-exported: they moved to metrics

__all__ = [
    "METHODS", "PENALISED", "SOLVERS", "Continual", "ContinualSettings", "KroneckerMetric", "Learned",
    "Learner", "LowRankMetric", "Memory", "MethodResult", "average_accuracy", "backward_transfer",
    "forgetting", "make_learner", "plasticity", "run_experiment", "run_method", "scores", "tune_strength",
]
