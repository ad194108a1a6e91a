"""Objectives: the second goal a tracer moves toward (value, grad, done)."""

from weightgeo.objectives.base import Objective, Sum
from weightgeo.objectives.output_geodesic import OutputGeodesicLoss
from weightgeo.objectives.sparsity import Sparsity
from weightgeo.objectives.target_point import TargetPoint
from weightgeo.objectives.task_loss import TaskLoss

__all__ = ["Objective", "OutputGeodesicLoss", "Sparsity", "Sum", "TargetPoint", "TaskLoss"]
