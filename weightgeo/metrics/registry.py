"""Metrics by name or import path: a registry of builders ``(model, inputs) -> Metric``.

The built-in names are output, fisher, diag-fisher, euclidean, kfac and nystrom. A user's metric
reaches every command that takes ``--metric`` either by name, once registered
(``METRICS.register("mine", MyMetric)``), or by an import path ``package.module:Name``, where
``Name(model, inputs)`` builds the metric (a Metric subclass with that signature, or a function).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch
from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.metrics.base import Metric
from weightgeo.metrics.diagonal_fisher import DiagonalFisher
from weightgeo.metrics.euclidean import Euclidean
from weightgeo.metrics.fisher import FisherMetric
from weightgeo.metrics.kfac import KFACMetric
from weightgeo.metrics.lowrank import NystromMetric
from weightgeo.metrics.output import OutputMetric
from weightgeo.registry import Registry, import_object

MetricBuilder = Callable[[nn.Module | FunctionalModel, Tensor], Metric]

NYSTROM_RANK = 20
"""The default rank of the ``nystrom`` metric: products per point (at most the dimension)."""

METRICS: Registry[MetricBuilder] = Registry("metric")
METRICS.register("output", OutputMetric, help="G = (1/B) Σ JᵀJ on the logits (the papers' metric).")
METRICS.register("fisher", FisherMetric, help="The Fisher information of the softmax (GGN of cross-entropy).")
METRICS.register("diag-fisher", DiagonalFisher, help="The exact diagonal of the Fisher metric (exact solves).")
METRICS.register("euclidean", lambda model, inputs: Euclidean(), help="G = I (straight lines).")
METRICS.register("kfac", KFACMetric,
                 help="K-FAC of the output metric on Linear and Conv2d layers (exact solves).")
METRICS.register(
    "nystrom", lambda model, inputs: NystromMetric(
        OutputMetric(model, inputs), rank=min(NYSTROM_RANK, as_functional(model).n),
        generator=torch.Generator().manual_seed(0)),
    help=f"Rank-{NYSTROM_RANK} Nyström approximation of the output metric (exact solves).")

METRIC_NAMES = METRICS
"""The registered names (a live view: names registered later are included)."""

METRIC_HELP = ("The metric G: " + ", ".join(METRICS) + ", or an import path package.module:Name "
               "(Name(model, inputs) builds the metric).")
"""One line for ``--metric``'s help text."""


def metric_builder(name: str) -> MetricBuilder:
    """The builder registered as ``name``, or the object at the import path ``package.module:Name``.

    Raises:
        WeightgeoError: an unknown name (listing the choices), or an import path that does not
            resolve to a callable.
    """
    if name in METRICS or ":" not in name:
        return METRICS[name]
    builder = import_object(name, "metric")
    if not callable(builder):
        raise WeightgeoError(f"metric {name!r} is a {type(builder).__name__}, not a class or function "
                             "that builds a metric from (model, inputs)")
    return builder  # type: ignore[return-value]


def freezes_exactly(name: str) -> bool:
    """Whether the metric called ``name`` is a :class:`Metric` class with its own exact frozen form
    (it overrides :meth:`Metric.freeze`, as DiagonalFisher does); False for a builder function,
    whose metric is unknown until built.

    Raises:
        WeightgeoError: an unknown name or import path.
    """
    builder = metric_builder(name)
    return inspect.isclass(builder) and issubclass(builder, Metric) and builder.freeze is not Metric.freeze


def build_metric(name: str, model: nn.Module | FunctionalModel, inputs: Tensor) -> Metric:
    """The metric called ``name`` (a registered name or ``package.module:Name``) for ``model``
    averaged over ``inputs``.

    Raises:
        WeightgeoError: an unknown name or import path, or a builder that returns no Metric.
    """
    builder = metric_builder(name)
    try:
        inspect.signature(builder).bind(model, inputs)
    except TypeError:
        raise WeightgeoError(f"metric {name!r} must build the metric from (model, inputs)") from None
    except ValueError:  # no signature to inspect (a builtin): call it and see
        pass
    metric = builder(model, inputs)
    if not isinstance(metric, Metric):
        raise WeightgeoError(f"metric {name!r} built a {type(metric).__name__}, not a weightgeo Metric")
    return metric
