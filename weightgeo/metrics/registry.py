"""Metrics by the names the CLI uses: output, fisher, diag-fisher, euclidean."""

from __future__ import annotations

from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.metrics.base import Metric
from weightgeo.metrics.diagonal_fisher import DiagonalFisher
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.fisher import FisherMetric
from weightgeo.metrics.output import OutputMetric

METRIC_NAMES = ("output", "fisher", "diag-fisher", "euclidean")


def build_metric(name: str, model: nn.Module | FunctionalModel, inputs: Tensor) -> Metric:
    """The metric called ``name`` for ``model`` averaged over ``inputs``."""
    if name == "output":
        return OutputMetric(model, inputs)
    if name == "fisher":
        return FisherMetric(model, inputs)
    if name == "diag-fisher":
        return DiagonalFisher(model, inputs)
    if name == "euclidean":
        return Euclidean()
    raise WeightgeoError(f"unknown metric '{name}'; choose one of {', '.join(METRIC_NAMES)}")
