"""Weight space as a geoopt manifold whose metric comes from a :class:`~weightgeo.metrics.Metric`,
and the least-metric-length projection onto its sparse hyperplanes."""

from weightgeo.manifolds.projection import (
    SparseProjection,
    project_to_sparse,
    sparse_projection_cost,
)
from weightgeo.manifolds.weight_space import MaskedOperator, WeightSpace

__all__ = ["MaskedOperator", "SparseProjection", "WeightSpace", "project_to_sparse", "sparse_projection_cost"]
