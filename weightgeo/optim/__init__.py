"""The one optimisation loop (:func:`fit`), its optimisers and schedules, and the network losses."""

from weightgeo.optim.loop import OPTIMIZERS, FitResult, FitState, OptimizerSpec, fit
from weightgeo.optim.losses import DistillationLoss, NetworkLoss, SupervisedLoss, mask_logits
from weightgeo.optim.schedules import SCHEDULES, schedule_factor

__all__ = [
    "OPTIMIZERS", "SCHEDULES", "DistillationLoss", "FitResult", "FitState", "NetworkLoss",
    "OptimizerSpec", "SupervisedLoss", "fit", "mask_logits", "schedule_factor",
]
