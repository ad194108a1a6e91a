"""LwF and DER++: the baselines that distil the network's own earlier outputs.

- ``lwf`` (Li & Hoiem 2017), no memory: CE(new task) + λ·T²·KL(softmax(f(x; θ_prev)/T) ‖
  softmax(f(x; θ)/T)) on the NEW task's minibatch x, θ_prev the weights at the task's start (the
  previous model, eval mode), over the earlier tasks' output units (:func:`distilled_units`). The
  previous model's outputs come from a forward pass without gradient on each batch, free in the
  budget (only gradient evaluations are counted); the distillation term shares the task loss's
  forward and backward pass, so a step costs 1.
- ``der++`` (Buzzega et al. 2020): CE(new task) + α·MSE(f(x'; θ), z') + β·CE(f(x'; θ), y') on a
  batch of stored examples x' with their labels y' and the logits z' the network gave them when
  they were stored (at the end of their task, eval mode). One memory batch serves both terms (the
  paper draws two); the step runs the new and the stored batch through one forward and backward
  pass, so it costs 1, as a replay step does. α is the tuned strength, β = ``der_beta``.
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from weightgeo.applications.continual.learner import Learner
from weightgeo.applications.continual.replay import stored_columns
from weightgeo.data.streams import RandomSubsets
from weightgeo.data.tasks import TaskSequence
from weightgeo.functional import mask_logits

DISTIL_HINT = "lower --lr or the method's --strength"


def distilled_units(seq: TaskSequence, t: int) -> list[Tensor | None]:
    """The output units LwF distils while learning task t: one group per earlier task's head in
    the task scenario, the union of the earlier tasks' units in the class scenario, the shared
    head (None: every unit) in the domain scenario; no group for the first task."""
    if t == 0:
        return []
    if seq.scenario == "task":
        return [seq.allowed(k) for k in range(t)]
    return [seq.allowed(t - 1)]


def distillation(logits: Tensor, target: Tensor, units: Tensor | None, temperature: float) -> Tensor:
    """T²·mean_x KL(softmax(target/T) ‖ softmax(logits/T)) over ``units`` (None: all)."""
    if units is not None:
        units = units.to(logits.device)
        logits, target = logits[:, units], target[:, units]
    log_p = (logits / temperature).log_softmax(-1)
    log_q = (target / temperature).log_softmax(-1)
    return temperature**2 * F.kl_div(log_p, log_q, reduction="batchmean", log_target=True)


class LwF(Learner):
    """CE(new task) + λ·T²·KL of the previous model's outputs on the new inputs (no memory)."""

    name = "lwf"
    default_strength = 1.0
    grid = (1e-2, 1e-1, 1.0, 1e1, 1e2)
    hint = DISTIL_HINT

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.previous: Tensor | None = None
        self.groups: list[Tensor | None] = []

    def before_task(self, t, theta):
        self.groups = distilled_units(self.seq, t)
        self.previous = theta.detach().clone() if self.groups else None
        return 0

    def targets(self, x: Tensor) -> Tensor:
        """The previous model's outputs on x (eval mode, no gradient)."""
        with torch.no_grad():
            return self.fmodel(self.previous, x, self.buffers)

    def extra_loss(self, theta, batch, objective):
        if self.previous is None:
            return None
        target = self.targets(batch[0])
        logits = objective.supervised.last_logits  # the task batch's logits at θ: one forward pass
        temperature = self.settings.lwf_temperature
        return self.strength * sum(distillation(logits, target, units, temperature) for units in self.groups)

    def after_task(self, t, theta):
        return None  # no memory


class DERpp(Learner):
    """CE(new task) + α·MSE to the stored logits + β·CE on stored examples with their labels."""

    name = "der++"
    default_strength = 1.0
    grid = (1e-2, 1e-1, 1.0, 1e1, 1e2)
    hint = DISTIL_HINT
    state = ("logits",)
    seed_offset: ClassVar[int] = 700

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.logits: list[Tensor] = []
        self.stored: RandomSubsets | None = None

    def before_task(self, t, theta):
        self.stored = None
        if len(self.memory):
            x, y, *units = stored_columns(self.memory, self.seq, t)
            self.stored = RandomSubsets((x, y, torch.cat(self.logits), *units), self.settings.batch_size,
                                        self.seed * 1000 + self.seed_offset + t)
        return 0

    def extra_loss(self, theta, batch, objective):
        if self.stored is None:
            return None
        x, y, z, *units = self.stored.next()
        logits = objective.logits(theta, x)
        allowed = units[0] if units else self.seq.allowed(objective.task)
        labelled = F.cross_entropy(mask_logits(logits, allowed), y)
        return self.strength * F.mse_loss(logits, z) + self.settings.der_beta * labelled

    def after_task(self, t, theta):
        super().after_task(t, theta)
        with torch.no_grad():  # the logits of the examples just stored, as the network gives them now
            self.logits.append(self.fmodel(theta.detach(), self.memory.x[-1], self.buffers))
