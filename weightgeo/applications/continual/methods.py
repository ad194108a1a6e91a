"""The continual-learning methods, registered in :data:`METHODS` (the geodesic method and the baselines).

Every method learns the tasks of a :class:`~weightgeo.data.tasks.TaskSequence` one after the other
(``joint`` all at once) through the one optimisation loop, :func:`weightgeo.optim.fit`, and spends
at most ``budget`` gradient evaluations per task: one minibatch gradient = 1, one metric-vector
product = 1, a Fisher estimate on m examples = ⌈m / batch_size⌉ (per-example gradients of m
examples cost the FLOPs of that many minibatch gradients), one replay step on new + stored
examples = 1 (an LwF or DER++ step too), an A-GEM step = 2 (its memory gradient), OGD's stored
gradients ⌈m / batch_size⌉ per task, GPM's layer bases 2 per task (one forward, one backward).
Forward passes without gradient (a previous model's outputs) are free.

- ``geodesic``: natural-gradient SGD under the earlier tasks' metric (:mod:`.geodesic`);
- ``fip``: the authors' released penalty form on the core's fip tracer (:mod:`.fip`);
- ``finetune``: plain SGD on each task (the lower bound);
- ``ewc``, ``online-ewc``, ``si``, ``l2``: quadratic penalties (:mod:`.penalties`);
- ``replay``: new-task minibatches plus stored examples with labels; ``joint``: all tasks at once
  (the ceiling) (:mod:`.replay`);
- ``lwf`` (distillation of the previous model on the new inputs, no memory), ``der++`` (replay
  with stored logits and labels) (:mod:`.distill`);
- ``a-gem``, ``ogd``, ``gpm``: the task gradient projected off what the old tasks need (a memory
  batch's gradient; stored output gradients; the layers' input subspaces) (:mod:`.projection`).

A method of your own is a :class:`~.learner.Learner` subclass registered here:
``METHODS.register("name", MyLearner)``; it then runs from ``--method name`` like the others.
"""

from __future__ import annotations

from weightgeo.applications.continual.distill import DERpp, LwF
from weightgeo.applications.continual.fip import FIP
from weightgeo.applications.continual.geodesic import SOLVERS, Geodesic
from weightgeo.applications.continual.learner import (
    METHODS,
    Finetune,
    Learned,
    Learner,
    Memory,
    make_learner,
)
from weightgeo.applications.continual.penalties import (
    EWC,
    L2,
    SI,
    OnlineEWC,
    empirical_fisher_diagonal,
)
from weightgeo.applications.continual.projection import AGEM, GPM, OGD
from weightgeo.applications.continual.replay import Joint, Replay, ReplayBatches

for _learner in (Geodesic, FIP, Finetune, EWC, OnlineEWC, SI, L2, Replay, LwF, AGEM, DERpp, OGD, GPM, Joint):
    METHODS.register(_learner.name, _learner, help=(_learner.__doc__ or "").strip().splitlines()[0])

PENALISED: tuple[str, ...] = tuple(name for name in METHODS if METHODS[name].default_strength is not None)
"""Methods with one strength to tune (for ``geodesic``: the damping μ)."""

__all__ = [
    "AGEM", "EWC", "FIP", "GPM", "L2", "METHODS", "OGD", "PENALISED", "SI", "SOLVERS", "DERpp", "Finetune",
    "Geodesic", "Joint", "Learned", "Learner", "LwF", "Memory", "OnlineEWC", "Replay", "ReplayBatches",
    "empirical_fisher_diagonal", "make_learner",
]
