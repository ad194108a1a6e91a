"""fip: the authors' released form (Raghavan et al. 2024), CE(new task) + s·D on the memory, a baseline.

An optimiser on CE(f(x; θ), y) + s·D(f(x'; θ), f(x'; θ₀)) over the new task's minibatches x and
the memory's stored inputs x' (labels unused), θ₀ a frozen copy of the task's start (outputs in
eval mode). It runs on the core's :func:`weightgeo.paths.fip` tracer, which minimises D + λ·CE
with SGD at rate lr': λ = 1/s and lr' = lr·s give θ ← θ − lr(∇CE + s∇D). Each step costs two
gradient evaluations (D and the objective); the first task, with no memory, is plain SGD.
"""

from __future__ import annotations

from weightgeo.applications.continual.learner import Learned, Learner
from weightgeo.functional import mask_logits
from weightgeo.objectives import TaskLoss
from weightgeo.paths import fip as fip_tracer


class FIP(Learner):
    """CE(new task) + s·D(f(x; θ), f(x; θ₀)) on the memory, θ₀ frozen at the task's start."""

    name = "fip"
    default_strength = 10.0
    grid = (0.1, 1.0, 10.0, 100.0, 1000.0)
    hint = "lower --lr or --strength fip=…"

    def learn(self, t, theta):
        if len(self.memory) == 0:
            return super().learn(t, theta)
        s, strength = self.settings, self.strength
        allowed = self.seq.allowed(t)
        objective = TaskLoss(self.fmodel, self.batches(t), target_accuracy=s.target_accuracy,
                             transform_logits=lambda logits: mask_logits(logits, allowed))
        path = fip_tracer(self.fmodel, objective, self.memory.inputs(), start=theta.detach(),
                          lam=1.0 / strength, lr=s.lr * strength, momentum=s.momentum,
                          distance=s.fip_distance, max_steps=s.budget, batch_size=s.batch_size,
                          budget=s.budget, seed=self.seed * 1000 + t, save_every=10**9)
        return Learned(path.end.detach().clone(), self.buffers, path.grad_evals, path.stop, len(path) - 1)
