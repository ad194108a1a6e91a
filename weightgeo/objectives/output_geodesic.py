"""OutputGeodesicLoss: stay on the output-space geodesic between two networks while walking.

For a metric pulled back from the outputs, the geodesic from θ_a to θ_b maps (where the network can
realise it) onto the output space's own geodesic γ between f(θ_a) and f(θ_b): for the output metric
the straight segment of the logits, (1 − s) f_a + s f_b. A walk toward θ_b can keep its outputs there:

    O(θ) = d²_out(f(θ; x), γ(s(θ); x)),   s(θ) = clamp(1 − ||θ − θ_b|| / ||θ_b − θ_a||, 0, 1),

on fresh unlabelled batches x: at the walk's progress s the network should compute what the logit
average of the two networks computes there. No labels are used. The gradient is exact, through s(θ)
too (autograd).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

from weightgeo import distributed
from weightgeo.data.streams import Stream, stream
from weightgeo.errors import WeightgeoError
from weightgeo.metrics.base import Metric, has_output_geodesic
from weightgeo.objectives.base import Objective


class OutputGeodesicLoss(Objective):
    """d²_out between the outputs at θ and the output-space geodesic at the progress s(θ).

    Args:
        metric: a metric pulled back from the outputs with a closed-form output geodesic
            (:meth:`Metric.output_geodesic`: output, fisher); its ``model`` is the network.
        theta_a, theta_b: the two networks (their outputs span γ; s is measured toward θ_b).
        batches: unlabelled inputs (a tensor, an iterable or a stream; ``(x, y)`` pairs give their x),
            drawn afresh at every call.

    Raises:
        WeightgeoError: a metric without an output geodesic, or θ_a = θ_b.
    """

    cost = 2
    """One network gradient, plus one for the two ends' forward passes on the batch (as relax counts
    its ends)."""

    def __init__(self, metric: Metric, theta_a: Tensor, theta_b: Tensor,
                 batches: Tensor | Iterable | Stream) -> None:
        if not has_output_geodesic(metric):
            raise WeightgeoError(f"OutputGeodesicLoss needs a metric with an output geodesic (output, fisher), not "
                                 f"{type(metric).__name__}")
        self.metric, self.model = metric, metric.model
        self.theta_a, self.theta_b = theta_a.detach(), theta_b.detach()
        self.distance = torch.linalg.vector_norm(self.theta_b - self.theta_a)
        if not bool(self.distance > 0):  # a set-up check, once
            raise WeightgeoError("OutputGeodesicLoss needs two different networks")
        self.batches = stream(batches)

    def next_inputs(self) -> Tensor:
        """This rank's part of the next batch's inputs."""
        batch = self.batches.next()
        return distributed.shard(batch[0] if isinstance(batch, tuple | list) else batch)

    def progress(self, theta: Tensor) -> Tensor:
        """s(θ) = clamp(1 − ||θ − θ_b|| / ||θ_b − θ_a||, 0, 1)."""
        return (1 - torch.linalg.vector_norm(theta - self.theta_b) / self.distance).clamp(0, 1)

    def _loss(self, theta: Tensor, x: Tensor) -> Tensor:
        with torch.no_grad():
            f_a, f_b = self.model(self.theta_a, x), self.model(self.theta_b, x)
        target = self.metric.output_geodesic(f_a, f_b, self.progress(theta).reshape(1))
        return self.metric.paired_distances(self.model(theta, x)[None], target)[0]

    def value(self, theta: Tensor) -> Tensor:
        x = self.next_inputs()
        return distributed.average(self._loss(theta, x), len(x))

    def value_and_grad(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        x = self.next_inputs()
        with torch.enable_grad():
            t = theta.detach().requires_grad_(True)
            loss = self._loss(t, x)
            (g,) = torch.autograd.grad(loss, t)
        return distributed.average(loss.detach(), len(x)), distributed.average(g, len(x))

    def state_dict(self) -> dict:
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])
