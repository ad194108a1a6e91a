"""Riemannian metrics on weight space: subclass :class:`Metric` and write ``mvp``."""

from weightgeo.metrics.base import (
    ConstantMetric,
    Metric,
    MetricOperator,
    Solution,
    conjugate_gradient,
)
from weightgeo.metrics.diagonal_fisher import DiagonalFisher
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.fisher import FisherMetric
from weightgeo.metrics.kfac import KFACMetric, KroneckerMetric
from weightgeo.metrics.lowrank import LowRankMetric, NystromMetric
from weightgeo.metrics.output import OutputMetric
from weightgeo.metrics.pullback import PullbackMetric, PullbackOperator
from weightgeo.metrics.registry import (
    METRIC_HELP,
    METRIC_NAMES,
    METRICS,
    build_metric,
    metric_builder,
)

__all__ = [
    "METRICS",
    "METRIC_HELP",
    "METRIC_NAMES",
    "DiagonalFisher",
    "Euclidean",
    "FisherMetric",
    "KFACMetric",
    "KroneckerMetric",
    "LowRankMetric",
    "ConstantMetric",
    "Metric",
    "MetricOperator",
    "NystromMetric",
    "OutputMetric",
    "PullbackMetric",
    "PullbackOperator",
    "Solution",
    "build_metric",
    "conjugate_gradient",
    "metric_builder",
]
