"""Sparsification by traversing geodesics, its pruning baselines, budgets, export and report."""

from weightgeo.applications.sparsify.export import (
    load_sparse,
    save_sparse_checkpoint,
    to_pruned_module,
)
from weightgeo.applications.sparsify.finetune import Distillation, masked_distill, masked_finetune
from weightgeo.applications.sparsify.methods import (
    LABEL_FREE,
    METHODS,
    SparseResult,
    SparsifySettings,
    SparsifyTask,
    geodesic_path,
    stage_levels,
)

__all__ = [
    "LABEL_FREE",
    "METHODS",
    "Distillation",
    "SparseResult",
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
