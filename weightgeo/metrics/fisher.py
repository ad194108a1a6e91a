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
