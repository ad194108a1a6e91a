"""Applications of the geometric core: sparsification, continual learning, mode connectivity.

Every application has the shape of :class:`~weightgeo.applications.base.Application` (settings,
a registry of methods, units of work, a report) and is registered in :data:`APPLICATIONS`; a new
one made of a single Objective is a factory registered with :func:`objective_application`.
"""

from weightgeo.applications.base import (
    APPLICATIONS,
    Application,
    Diverged,
    Outcome,
    RunOptions,
    Unit,
    find_application,
    register_application,
    run,
    run_application,
)
from weightgeo.applications.objective import (
    TRACE_METHODS,
    ObjectiveApplication,
    Task,
    TraceSettings,
    objective_application,
)
from weightgeo.applications.train import Train, TrainSettings, train_model

__all__ = [
    "APPLICATIONS", "TRACE_METHODS", "Application", "Diverged", "ObjectiveApplication", "Outcome",
    "RunOptions", "Task", "TraceSettings", "Unit", "find_application", "objective_application",
    "register_application", "run", "run_application", "Train", "TrainSettings", "train_model",
]
