"""The sparsification methods by their ``--method`` names: the geodesic and the pruning baselines.

Every method is ``method(task, levels, budget) -> list[SparseResult]`` (one result per sparsity
level, ascending) at one budget of gradient evaluations per level (see
:mod:`weightgeo.applications.sparsify.task` for the accounting).

Why a sparse network stays sparse: every phase that runs after a mask is chosen works in the
masked subspace — the projection and ``traverse`` on ``WeightSpace(..., mask=keep)`` (whose
``proju``/``projx`` zero the pruned coordinates and whose metric is restricted to the subspace)
and fine-tuning or distillation by ``fit`` on that space — so sparsity is a property of the space
the optimiser moves in, not a clean-up applied afterwards.
"""

from __future__ import annotations

from weightgeo.applications.sparsify.baselines import (
    fip_method,
    imp,
    imp_rewind,
    magnitude,
    magnitude_distill,
    magnitude_finetune,
    obd,
    obs_distill,
    random_prune,
)
from weightgeo.applications.sparsify.geodesic import geodesic, geodesic_finetune
from weightgeo.applications.sparsify.registry import METHODS, SparsifyMethod

for _name, _run, _labels in (
    ("geodesic", geodesic, False),
    ("geodesic-finetune", geodesic_finetune, True),
    ("fip", fip_method, False),
    ("random", random_prune, True),
    ("magnitude", magnitude, False),
    ("magnitude-finetune", magnitude_finetune, True),
    ("magnitude-distill", magnitude_distill, False),
    ("obs-distill", obs_distill, False),
    ("imp", imp, True),
    ("imp-rewind", imp_rewind, True),
    ("obd", obd, True),
):
    METHODS.register(_name, SparsifyMethod(_run, labels=_labels),
                     help=(_run.__doc__ or "").strip().splitlines()[0])

LABEL_FREE = tuple(name for name, method in METHODS.items() if not method.labels)
"""Methods that never read a label."""

__all__ = ["LABEL_FREE", "METHODS", "SparsifyMethod"]
