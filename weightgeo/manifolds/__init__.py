"""Weight space as a geoopt manifold whose metric comes from a :class:`~weightgeo.metrics.Metric`."""

from weightgeo.manifolds.weight_space import MaskedOperator, WeightSpace

__all__ = ["MaskedOperator", "WeightSpace"]
