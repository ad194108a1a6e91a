"""Sparsification by traversing geodesics, its pruning baselines, budgets, export and report.

Importing this package registers the ``sparsify`` application (:class:`Sparsify`) and its
methods (:data:`METHODS`).
"""

from weightgeo.applications.sparsify.application import Sparsify
from weightgeo.applications.sparsify.export import (
    load_sparse,
    save_sparse_checkpoint,
    to_pruned_module,
)
from weightgeo.applications.sparsify.finetune import (
    Distillation,
    Recovery,
    masked_distill,
    masked_finetune,
)
from weightgeo.applications.sparsify.geodesic import geodesic_path, stage_levels
from weightgeo.applications.sparsify.methods import LABEL_FREE, METHODS, SparsifyMethod
from weightgeo.applications.sparsify.settings import SparsifySettings
from weightgeo.applications.sparsify.task import SparseResult, SparsifyTask

__all__ = [
    "LABEL_FREE",
    "METHODS",
    "Distillation",
    "Recovery",
    "SparseResult",
    "Sparsify",
    "SparsifyMethod",
    "SparsifySettings",
    "SparsifyTask",
    "geodesic_path",
    "load_sparse",
    "masked_distill",
    "masked_finetune",
    "save_sparse_checkpoint",
    "stage_levels",
    "to_pruned_module",
]
