"""FisherMetric: the Fisher information of the softmax output (= GGN of cross-entropy).

G(θ) = (1/B) Σ_x J_xᵀ (diag p − p pᵀ) J_x with p = softmax(f(x; θ)). For small steps the
Bhattacharyya distance used by the authors' released code is dθᵀ G dθ / 8.
"""

from __future__ import annotations

import torch
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

    def output_geodesic(self, start: Tensor, end: Tensor, t: Tensor) -> Tensor:
        """Under the Fisher–Rao metric r = √p lies on the unit sphere (4 Σ dr² is the metric), so
        the geodesic is the great circle r(t) = [sin((1 − t)ω) r_a + sin(tω) r_b] / sin ω, ω =
        arccos⟨r_a, r_b⟩ (a straight segment, renormalised, where ω ≈ 0); logits 2 log r(t)."""
        t = torch.as_tensor(t, dtype=start.dtype, device=start.device).reshape(-1, *([1] * start.dim()))
        r_a, r_b = start.softmax(-1).sqrt(), end.softmax(-1).sqrt()
        omega = (r_a * r_b).sum(-1, keepdim=True).clamp(-1.0, 1.0).acos()
        sin = omega.sin()
        tiny = sin < 1e-6
        safe = torch.where(tiny, torch.ones_like(sin), sin)
        arc = (torch.sin((1 - t) * omega) * r_a + torch.sin(t * omega) * r_b) / safe
        chord = (1 - t) * r_a + t * r_b
        r = torch.where(tiny, chord / chord.norm(dim=-1, keepdim=True), arc)
        return 2 * r.clamp_min(torch.finfo(r.dtype).tiny).log()
