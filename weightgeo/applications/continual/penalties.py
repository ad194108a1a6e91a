"""The quadratic-penalty baselines: L2, EWC, online EWC and SI, each a term of the task's loss.

Each penalty is ½ Σ_k (θ − θ_k)ᵀ M_k (θ − θ_k) with a diagonal M_k, given to the loss with its
gradient in closed form (:meth:`Learner.penalty_grad`, no network pass):

- ``l2``: (λ/2)||θ − θ_{k−1}||², anchored at the previous task's weights;
- ``ewc`` (Kirkpatrick et al. 2017): (λ/2) Σ_k F_k ⊙ (θ − θ_k)² with the empirical diagonal
  Fisher F_k of each earlier task, on ``fisher_samples`` of its examples (cost ⌈m / batch⌉);
- ``online-ewc`` (Schwarz et al. 2018): one running F̃ = γF̃ + F_k anchored at the latest θ_k;
- ``si`` (Zenke et al. 2017): c Σ Ω ⊙ (θ − θ*)², Ω the path integral of −∇L·dθ (L the task's
  own loss, without the penalty) over (Δθ)² + ξ, summed over tasks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.func import grad, vmap

from weightgeo.applications.continual.learner import Learner
from weightgeo.functional import FunctionalModel, mask_logits

STRENGTH_HINT = "lower --lr or the method's --strength"


class L2(Learner):
    """(λ/2)||θ − θ_{k−1}||²: a pull back to the previous task's weights."""

    name = "l2"
    default_strength = 0.1
    grid = (1e-3, 1e-2, 1e-1, 1.0, 10.0)
    hint = STRENGTH_HINT
    state = ("anchor",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.anchor: Tensor | None = None

    def penalty_grad(self, theta):
        return None if self.anchor is None else self.strength * (theta - self.anchor)

    def penalty_value(self, theta):
        return 0.5 * self.strength * (theta - self.anchor).square().sum()

    def after_task(self, t, theta):
        super().after_task(t, theta)
        self.anchor = theta.detach().clone()


def empirical_fisher_diagonal(
    fmodel: FunctionalModel,
    theta: Tensor,
    x: Tensor,
    y: Tensor,
    allowed: Tensor | None,
    buffers: dict[str, Tensor] | None = None,
    chunk: int = 64,
) -> Tensor:
    """(1/m) Σ_i (∂ log p_{y_i}(x_i)/∂θ)² over m examples (eval mode, masked logits; the logits
    are those the model's ``output=`` selector picks, as every other method sees them)."""

    def loss(t: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        logits = fmodel(t, xi.unsqueeze(0), buffers)
        return F.cross_entropy(mask_logits(logits, allowed), yi.unsqueeze(0))

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))
    total = torch.zeros_like(theta)
    for start in range(0, len(x), chunk):
        total += per_example(theta.detach(), x[start : start + chunk], y[start : start + chunk]).square().sum(0)
    return total / len(x)


class EWC(Learner):
    """(λ/2) Σ_k F_k ⊙ (θ − θ_k)²: each earlier task's empirical Fisher at its solution."""

    name = "ewc"
    default_strength = 1e2
    grid = (1.0, 1e1, 1e2, 1e3, 1e4)
    hint = STRENGTH_HINT
    online = False
    state = ("fishers", "anchors")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fishers: list[Tensor] = []
        self.anchors: list[Tensor] = []

    def after_task_cost(self, t):
        m = min(self.settings.fisher_samples, len(self.seq.tasks[t].train))
        return math.ceil(m / self.settings.batch_size)

    def penalty_grad(self, theta):
        if not self.fishers:
            return None
        return self.strength * sum(f * (theta - a) for f, a in zip(self.fishers, self.anchors))

    def penalty_value(self, theta):
        return 0.5 * self.strength * sum((f * (theta - a).square()).sum() for f, a in zip(self.fishers, self.anchors))

    def after_task(self, t, theta):
        super().after_task(t, theta)
        data = self.seq.tasks[t].train
        m = min(self.settings.fisher_samples, len(data))
        generator = torch.Generator().manual_seed(self.seed * 1000 + 500 + t)
        index = torch.randperm(len(data), generator=generator)[:m].to(data.x.device)
        fisher = empirical_fisher_diagonal(self.fmodel, theta, data.x[index], data.y[index], self.seq.allowed(t),
                                           self.buffers)
        if self.online and self.fishers:
            self.fishers = [self.settings.online_gamma * self.fishers[0] + fisher]
            self.anchors = [theta.detach().clone()]
        else:
            self.fishers.append(fisher)
            self.anchors.append(theta.detach().clone())


class OnlineEWC(EWC):
    """One running Fisher F̃ = γF̃ + F_k anchored at the latest solution."""

    name = "online-ewc"
    online = True


class SI(Learner):
    """c Σ Ω ⊙ (θ − θ*)² with Ω the path integral of the task loss's decrease per coordinate."""

    name = "si"
    default_strength = 100.0
    grid = (1e-2, 1e-1, 1.0, 10.0, 100.0)
    hint = STRENGTH_HINT
    state = ("omega", "anchor")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.omega: Tensor | None = None
        self.path_integral: Tensor | None = None
        self.anchor: Tensor | None = None
        self.task_start: Tensor | None = None

    def before_task(self, t, theta):
        self.path_integral = torch.zeros_like(theta)
        self.task_start = theta.detach().clone()
        return 0

    def after_step(self, theta_before, theta_after, g):
        self.path_integral -= g * (theta_after - theta_before)

    def penalty_grad(self, theta):
        if self.omega is None:
            return None
        return 2 * self.strength * self.omega * (theta - self.anchor)

    def penalty_value(self, theta):
        return self.strength * (self.omega * (theta - self.anchor).square()).sum()

    def after_task(self, t, theta):
        super().after_task(t, theta)
        delta = theta - self.task_start
        contribution = self.path_integral.clamp_min(0) / (delta.square() + self.settings.si_xi)
        self.omega = contribution if self.omega is None else self.omega + contribution
        self.anchor = theta.detach().clone()
