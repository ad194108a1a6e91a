"""Riemannian metrics on weight space: subclass :class:`Metric` and write ``mvp``."""

from weightgeo.metrics.base import Metric, MetricOperator, Solution, conjugate_gradient
from weightgeo.metrics.diagonal_fisher import DiagonalFisher
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.fisher import FisherMetric
from weightgeo.metrics.kfac import KroneckerMetric
from weightgeo.metrics.lowrank import LowRankMetric
from weightgeo.metrics.output import OutputMetric
from weightgeo.metrics.pullback import PullbackMetric, PullbackOperator
from weightgeo.metrics.registry import METRIC_NAMES, build_metric

__all__ = [
    "METRIC_NAMES",
    "DiagonalFisher",
    "Euclidean",
    "FisherMetric",
    "KroneckerMetric",
    "LowRankMetric",
    "Metric",
    "MetricOperator",
    "OutputMetric",
    "PullbackMetric",
    "PullbackOperator",
    "Solution",
    "build_metric",
    "conjugate_gradient",
]
