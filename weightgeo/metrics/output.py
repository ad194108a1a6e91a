"""OutputMetric: the Euclidean metric on the logits pulled back to weights (the papers' metric).

G(θ) = (1/B) Σ_x J_xᵀ J_x, so that dθᵀ G dθ is the mean squared change of the
logits caused by a step dθ (Raghavan & Thomson 2021, §2).
"""

from __future__ import annotations

import torch
from torch import Tensor

from weightgeo.metrics.pullback import PullbackMetric


class OutputMetric(PullbackMetric):
    """G = (1/B) Σ_x J_xᵀ J_x with J_x the Jacobian of the logits: H = I."""

    def output_product(self, logits: Tensor, u: Tensor) -> Tensor:
        return u

    def output_distances(self, outputs: Tensor) -> Tensor:
        """mean_x ||f(x; θ_{k+1}) − f(x; θ_k)||², which is Δθᵀ G Δθ to second order."""
        return (outputs[1:] - outputs[:-1]).square().sum(-1).mean(-1)

    def output_geodesic(self, start: Tensor, end: Tensor, t: Tensor) -> Tensor:
        """The output space is flat (H = I): its geodesic is the straight segment of the logits,
        (1 − t) f_a + t f_b (the logit average of the two networks at every t)."""
        t = torch.as_tensor(t, dtype=start.dtype, device=start.device).reshape(-1, *([1] * start.dim()))
        return start + t * (end - start)
