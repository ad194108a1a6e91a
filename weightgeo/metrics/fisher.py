"""FisherMetric: the Fisher information of the softmax output (= GGN of cross-entropy).

G(θ) = (1/B) Σ_x J_xᵀ (diag p − p pᵀ) J_x with p = softmax(f(x; θ)). For small steps the
Bhattacharyya distance used by the authors' released code is dθᵀ G dθ / 8.
"""

from __future__ import annotations

from torch import Tensor

from weightgeo.metrics.pullback import PullbackMetric


class FisherMetric(PullbackMetric):
    """G = (1/B) Σ_x J_xᵀ (diag p − p pᵀ) J_x: H is the softmax's Fisher information."""

    def output_product(self, logits: Tensor, u: Tensor) -> Tensor:
        p = logits.softmax(dim=-1)
        return p * u - p * (p * u).sum(dim=-1, keepdim=True)

    def output_distances(self, outputs: Tensor) -> Tensor:
        """4 mean_x Σ_c (√p_c(θ_{k+1}) − √p_c(θ_k))², eight times the squared Hellinger distance:
        Δθᵀ G Δθ to second order."""
        root = outputs.softmax(dim=-1).sqrt()
        return 4.0 * (root[1:] - root[:-1]).square().sum(-1).mean(-1)
