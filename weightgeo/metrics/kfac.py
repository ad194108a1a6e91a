"""KroneckerMetric: the pull-back metric with each linear layer's block as A ⊗ S (K-FAC), exact solves.

For a linear layer z = W a + b the rows of the Jacobian are δ ⊗ ā (ā = [a; 1], δ = ∂(uᵀf)/∂z
for an output direction u), so its block of G = (1/B) Σ_x J_xᵀ H J_x is approximated by
A ⊗ S with A = E[ā āᵀ] and S = E_x Σ_c δ_c δ_cᵀ over a basis of H^{1/2} (Martens & Grosse
2015, "K-FAC"; for H = I, the papers' output metric, δ_c backpropagates the unit vector e_c;
for the Fisher H = diag p − p pᵀ, it backpropagates √p_c (e_c − p)). Blocks of different
layers are dropped (block diagonal). With the eigendecompositions A = Q_A Λ_A Q_Aᵀ and
S = Q_S Λ_S Q_Sᵀ the damped solve is exact:
(A ⊗ S + μI)^{-1} g = Q_S [(Q_Sᵀ g Q_A) / (λ_S λ_Aᵀ + μ)] Q_Aᵀ for the weight matrix g.
Projecting the gradient away from the span of the old tasks' activations is what gradient
projection memory (Saha et al. 2021) does by hand; here it is the damped natural gradient of
the old tasks' metric. Parameters outside ``nn.Linear`` layers get the Euclidean metric
(their solve is g / μ): say so when a network has many of them.

Cost of building it at θ: one forward pass over the inputs and one backward pass per output
direction (C of them, or ``samples`` random ones when C is larger): C + 1 products.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.metrics.base import Metric, MetricOperator, Solution


@dataclass
class _Block:
    weight: slice
    bias: slice | None
    shape: tuple[int, int]  # (out, in)
    qa: Tensor
    la: Tensor
    qs: Tensor
    ls: Tensor


class KroneckerOperator(MetricOperator):
    """Block-diagonal Σ_l A_l ⊗ S_l (identity·0 elsewhere) bound to θ, with exact damped solves."""

    def __init__(self, metric: KroneckerMetric, theta: Tensor) -> None:
        super().__init__(metric, theta)
        self.blocks = metric.blocks

    @staticmethod
    def _matrix(block: _Block, v: Tensor) -> Tensor:
        out, inp = block.shape
        w = v[block.weight].view(out, inp)
        b = v[block.bias].view(out, 1) if block.bias is not None else torch.zeros(
            out, 1, dtype=v.dtype, device=v.device)
        return torch.cat([w, b], dim=1)

    @staticmethod
    def _write(block: _Block, target: Tensor, m: Tensor) -> None:
        out, inp = block.shape
        target[block.weight] = m[:, :inp].reshape(-1)
        if block.bias is not None:
            target[block.bias] = m[:, inp]

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return torch.stack([self @ c for c in v.unbind(1)], dim=1)
        result = torch.zeros_like(v)
        for block in self.blocks:
            m = self._matrix(block, v)
            m = block.qs.T @ m @ block.qa
            m = m * (block.ls[:, None] * block.la[None, :])
            self._write(block, result, block.qs @ m @ block.qa.T)
        return result

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        if not damping > 0:
            raise WeightgeoError("a Kronecker-factored metric is singular: its solve needs damping > 0")
        x = g / damping
        for block in self.blocks:
            # Only the kept eigenvectors (eigenvalue > 0) matter: on their complement the
            # solve is g / μ, so x = g/μ + Q_S [(Q_Sᵀ g Q_A) ⊙ (1/(λ_S λ_Aᵀ + μ) − 1/μ)] Q_Aᵀ.
            m = self._matrix(block, g)
            core = block.qs.T @ m @ block.qa
            core = core * (1.0 / (block.ls[:, None] * block.la[None, :] + damping) - 1.0 / damping)
            self._write(block, x, m / damping + block.qs @ core @ block.qa.T)
        # Built once at θ: the build's cost is in ``products``; solves cost nothing more.
        return Solution(x, torch.zeros((), device=g.device), 0, 0, cost=0)


class KroneckerMetric(Metric):
    """Block-diagonal K-FAC approximation of the output or Fisher pull-back metric (frozen at θ).

    Build it with :meth:`build`; ``products`` is what building it cost.
    """

    def __init__(self, blocks: list[_Block], products: int) -> None:
        self.blocks = blocks
        self.products = products

    def at(self, theta: Tensor) -> KroneckerOperator:
        return KroneckerOperator(self, theta)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.at(theta) @ v

    @classmethod
    def build(
        cls,
        fmodel: FunctionalModel,
        theta: Tensor,
        inputs: Tensor,
        kind: str = "output",
        samples: int = 10,
        generator: torch.Generator | None = None,
        buffers: dict[str, Tensor] | None = None,
    ) -> KroneckerMetric:
        """K-FAC factors of the ``kind`` ("output" or "fisher") metric at θ averaged over ``inputs``."""
        if kind not in ("output", "fisher"):
            raise WeightgeoError(f"KroneckerMetric supports the output and fisher metrics, not {kind!r}")
        slices = fmodel.slices()
        layers = []
        for name, module in fmodel.module.named_modules():
            if isinstance(module, nn.Linear) and f"{name}.weight" in slices:
                layers.append((name, module))
        if not layers:
            raise WeightgeoError("the network has no nn.Linear layer for a Kronecker-factored metric")
        captured: dict[str, tuple[Tensor, Tensor]] = {}

        def hook(name):
            def record(module, args, output):
                captured[name] = (args[0].detach(), output)
            return record

        handles = [module.register_forward_hook(hook(name)) for name, module in layers]
        try:
            with torch.enable_grad():
                t = theta.detach().requires_grad_(True)
                logits = fmodel(t, inputs, buffers)
        finally:
            for handle in handles:
                handle.remove()
        batch, classes = logits.shape
        outputs = [captured[name][1] for name, _ in layers]
        if kind == "output":
            exact = classes <= samples
            directions = (
                [torch.nn.functional.one_hot(torch.full((batch,), c, device=logits.device), classes)
                 .to(logits.dtype) for c in range(classes)]
                if exact else
                [torch.randn(batch, classes, generator=generator, dtype=logits.dtype).to(logits.device)
                 for _ in range(samples)]
            )
            weight = 1.0 if exact else 1.0 / samples
        else:
            p = logits.detach().softmax(-1)
            eye = torch.eye(classes, dtype=p.dtype, device=p.device)
            directions = [p[:, c : c + 1].sqrt() * (eye[c] - p) for c in range(classes)]
            weight = 1.0
        s_sums = [None] * len(layers)
        for k, u in enumerate(directions):
            deltas = torch.autograd.grad(logits, outputs, grad_outputs=u,
                                         retain_graph=k < len(directions) - 1)
            for i, d in enumerate(deltas):
                d = d.reshape(-1, d.shape[-1])
                s = d.T @ d
                s_sums[i] = s if s_sums[i] is None else s_sums[i] + s
        blocks = []
        for i, (name, module) in enumerate(layers):
            a = captured[name][0].reshape(-1, module.in_features)
            a_bar = torch.cat([a, torch.ones(len(a), 1, dtype=a.dtype, device=a.device)], 1)
            rows = len(a)
            s_factor = weight * s_sums[i] / batch * (batch / rows)
            la, qa = _gram_eigh(a_bar)
            ls, qs = torch.linalg.eigh(s_factor.double())
            qa, la = _keep(qa, la)
            qs, ls = _keep(qs, ls)
            bias = slices.get(f"{name}.bias") if module.bias is not None else None
            blocks.append(_Block(slices[f"{name}.weight"], bias, (module.out_features, module.in_features),
                                 qa.to(a.dtype), la.clamp_min(0).to(a.dtype),
                                 qs.to(a.dtype), ls.clamp_min(0).to(a.dtype)))
        return cls(blocks, products=len(directions) + 1)


def _gram_eigh(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of xᵀx / m for x of m rows; through the m×m Gram matrix when m < columns."""
    m, d = x.shape
    x = x.double()
    if m >= d:
        return torch.linalg.eigh(x.T @ x / m)
    lam, v = torch.linalg.eigh(x @ x.T / m)
    if not bool(torch.isfinite(lam).all()):
        raise WeightgeoError("the network's activations are not finite: the metric cannot be built")
    keep = lam > 1e-12 * lam.max().clamp_min(1e-300)
    lam, v = lam[keep], v[:, keep]
    return lam, (x.T @ v) / (m * lam).sqrt()


def _keep(q: Tensor, eigenvalues: Tensor, relative: float = 1e-7) -> tuple[Tensor, Tensor]:
    """The eigenpairs above ``relative`` × the largest (the rest act as exact zeros)."""
    if eigenvalues.numel() == 0:
        return q, eigenvalues
    keep = eigenvalues > relative * eigenvalues.max().clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    return q[:, keep], eigenvalues[keep]
