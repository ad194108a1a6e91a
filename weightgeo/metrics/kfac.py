"""K-FAC: the pull-back metric with each Linear and Conv2d layer's block as A ⊗ S, exact solves.

For a linear layer z = W a + b the Jacobian of uᵀf with respect to W is Σ_t δ_t ā_tᵀ (ā = [a; 1]
when the layer has a trainable bias, δ = ∂(uᵀf)/∂z, t the positions that share the weight: a
sequence's tokens, or none). Its block of G = (1/B) Σ_x J_xᵀ H J_x is approximated by A ⊗ S,
acting on a weight-shaped matrix M as S M A, with

    A = mean over examples and positions of ā āᵀ,     S = (1/B) Σ_x Σ_c Σ_t δ_c,t δ_c,tᵀ,

the directions δ_c running over a basis of H^{1/2}: for H = I (the papers' output metric) the
unit vectors e_c (or ``samples`` Gaussian directions, weighted 1/samples, when C > samples);
for the Fisher H = diag p − p pᵀ the vectors √p_c (e_c − p) (Martens & Grosse 2015). A Conv2d
layer is a linear layer on its unfolded input patches, positions being the output pixels
(KFC, Grosse & Martens 2016): A from the patches, S from the output gradients summed over the
pixels. The approximation is exact for one linear layer without shared positions under the
output metric. Blocks of different layers are dropped (block diagonal).

Parameters outside the covered layers (normalisation, embeddings, biases of layers whose weight
is frozen, Conv2d with groups or non-zero padding modes, any layer applied more than once per
forward pass) get G = 0: the damped solve moves them by the plain gradient step g / μ. The
metric's ``uncovered`` lists them.

With the eigendecompositions A = Q_A Λ_A Q_Aᵀ and S = Q_S Λ_S Q_Sᵀ the damped solve is exact:
(A ⊗ S + μI)⁻¹ g = Q_S [(Q_Sᵀ M_g Q_A) / (λ_S λ_Aᵀ + μ)] Q_Aᵀ.

:class:`KFACMetric` is a metric of θ: ``at(θ)`` builds the factors at θ (one forward pass and
one backward pass per direction, charged once per point as the operator's build cost), and
``mvp`` builds them with torch.func, so the product is differentiable in θ (relax's energy,
shoot's geodesic force). :class:`KroneckerMetric` is the metric frozen at one θ (constant:
straight geodesics), as the continual method uses it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.metrics.base import ConstantMetric, Metric, MetricOperator, Solution
from weightgeo.metrics.derivatives import differentiated

KINDS = ("output", "fisher")


@dataclass
class KroneckerBlock:
    """One layer's block A ⊗ S: ``weight``/``bias`` locate it in θ, M is out × (in [+ 1])."""

    name: str
    weight: slice
    bias: slice | None
    out_features: int
    in_features: int
    a: Tensor
    s: Tensor
    rows: Tensor | None = None  # ā's rows when fewer than its columns (a cheaper eigendecomposition)

    def matrix(self, v: Tensor) -> Tensor:
        """The block of v as the out × in' matrix M (the bias as the last column)."""
        w = v[self.weight].view(self.out_features, self.in_features)
        return w if self.bias is None else torch.cat([w, v[self.bias].view(-1, 1)], dim=1)

    def scatter(self, m: Tensor) -> list[tuple[slice, Tensor]]:
        """(slice of θ, values) pairs writing M back."""
        parts = [(self.weight, m[:, : self.in_features].reshape(-1))]
        return parts if self.bias is None else [*parts, (self.bias, m[:, self.in_features])]


def _assemble(blocks: list[KroneckerBlock], like: Tensor, matrices: list[Tensor]) -> Tensor:
    """θ-shaped vector with each block's matrix written in, zero elsewhere (differentiable)."""
    pieces = sorted((s.start, s.stop, value) for block, m in zip(blocks, matrices, strict=True)
                    for s, value in block.scatter(m))
    out, position = [], 0
    for start, stop, value in pieces:
        out += [like.new_zeros(start - position), value]
        position = stop
    return torch.cat([*out, like.new_zeros(like.numel() - position)])


def kronecker_product(blocks: list[KroneckerBlock], v: Tensor) -> Tensor:
    """Σ_l (A_l ⊗ S_l) v: S M A per block, zero outside the blocks."""
    return _assemble(blocks, v, [b.s @ b.matrix(v) @ b.a for b in blocks])


@dataclass
class _Eigen:
    qa: Tensor
    la: Tensor
    qs: Tensor
    ls: Tensor


class KroneckerOperator(MetricOperator):
    """Block-diagonal Σ_l A_l ⊗ S_l bound to θ (zero elsewhere), with exact damped solves."""

    def __init__(self, metric: Metric, theta: Tensor, blocks: list[KroneckerBlock], build_cost: int = 0) -> None:
        super().__init__(metric, theta)
        self.blocks = blocks
        self.unpaid = build_cost  # charged once, by the first solve at this point
        self._eigen: list[_Eigen] | None = None

    @property
    def product_cost(self) -> int:
        return 0  # small matrix products, no network pass

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return torch.stack([self @ column for column in v.unbind(1)], dim=1)
        return kronecker_product(self.blocks, v)

    def eigen(self) -> list[_Eigen]:
        """Each block's factors' eigenpairs (in float64, computed once)."""
        if self._eigen is None:
            self._eigen = [_block_eigen(block) for block in self.blocks]
        return self._eigen

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6) -> Solution:
        """(A ⊗ S + μI)⁻¹ g per block and g / μ elsewhere: exact, no product."""
        if not damping > 0:
            raise WeightgeoError("a Kronecker-factored metric is singular: its solve needs damping > 0")
        x = g / damping
        for block, e in zip(self.blocks, self.eigen(), strict=True):
            # On the complement of the kept eigenvectors the solve is g / μ, so
            # x = g/μ + Q_S [(Q_Sᵀ M Q_A) ⊙ (1/(λ_S λ_Aᵀ + μ) − 1/μ)] Q_Aᵀ.
            m = block.matrix(g)
            core = e.qs.T @ m @ e.qa
            core = core * (1.0 / (e.ls[:, None] * e.la[None, :] + damping) - 1.0 / damping)
            for where, value in block.scatter(m / damping + e.qs @ core @ e.qa.T):
                x[where] = value
        return Solution(x, torch.zeros((), device=g.device), 0, 0, self.charge(0))

    def diagonal(self) -> Tensor:
        return _assemble(self.blocks, self.theta, [
            torch.outer(b.s.diagonal(), b.a.diagonal()) for b in self.blocks])


class FrozenKroneckerOperator(KroneckerOperator):
    """The frozen metric's operator: G does not depend on θ, so geodesics are straight; the
    eigendecompositions are the metric's, computed once for every point."""

    def eigen(self) -> list[_Eigen]:
        return self.metric.eigen()  # type: ignore[attr-defined]

    def geodesic_force(self, v: Tensor) -> tuple[None, Tensor, int]:
        return None, v @ (self @ v), 0


def _block_eigen(block: KroneckerBlock) -> _Eigen:
    la, qa = _gram_eigh(block.rows) if block.rows is not None else torch.linalg.eigh(block.a.double())
    ls, qs = torch.linalg.eigh(block.s.double())
    qa, la = _keep(qa, la)
    qs, ls = _keep(qs, ls)
    dtype = block.a.dtype
    return _Eigen(qa.to(dtype), la.clamp_min(0).to(dtype), qs.to(dtype), ls.clamp_min(0).to(dtype))


def _gram_eigh(x: Tensor) -> tuple[Tensor, Tensor]:
    """Eigenpairs of xᵀx / m for x of m < columns rows, through the m×m Gram matrix."""
    m = x.shape[0]
    x = x.double()
    lam, v = torch.linalg.eigh(x @ x.T / m)
    if not bool(torch.isfinite(lam).all()):  # a check while building, once per point
        raise WeightgeoError("the network's activations are not finite: the metric cannot be built")
    keep = lam > 1e-12 * lam.max().clamp_min(1e-300)
    lam, v = lam[keep], v[:, keep]
    return lam, (x.T @ v) / (m * lam).sqrt()


def _keep(q: Tensor, eigenvalues: Tensor, relative: float = 1e-10) -> tuple[Tensor, Tensor]:
    """The eigenpairs above ``relative`` × the largest (the rest act as exact zeros)."""
    if eigenvalues.numel() == 0:
        return q, eigenvalues
    keep = eigenvalues > relative * eigenvalues.max().clamp_min(torch.finfo(eigenvalues.dtype).tiny)
    return q[:, keep], eigenvalues[keep]


# -- the factors ---------------------------------------------------------------------------------
@dataclass
class _Layer:
    name: str
    module: nn.Module
    weight: slice
    bias: slice | None
    out_features: int
    in_features: int
    unfold: dict | None  # Conv2d: F.unfold's arguments


def _layers(fmodel: FunctionalModel) -> tuple[list[_Layer], list[str]]:
    """The Linear and Conv2d layers whose weight is in θ, and the names of θ's other parameters."""
    slices = fmodel.slices()
    layers = []
    for name, module in fmodel.module.named_modules():
        prefix = f"{name}." if name else ""
        weight, bias = slices.get(f"{prefix}weight"), slices.get(f"{prefix}bias")
        if weight is None or getattr(module, "bias", None) is None:
            bias = None
        if weight is None:
            continue
        if isinstance(module, nn.Linear):
            layers.append(_Layer(name, module, weight, bias, module.out_features, module.in_features, None))
        elif isinstance(module, nn.Conv2d) and (unfold := _unfold_arguments(module)) is not None:
            layers.append(_Layer(name, module, weight, bias, module.out_channels,
                                 module.weight[0].numel(), unfold))
    covered = {s.start for layer in layers for s in (layer.weight, layer.bias) if s is not None}
    uncovered = [n for n, s in slices.items() if s.start not in covered]
    return layers, uncovered


def _unfold_arguments(conv: nn.Conv2d) -> dict | None:
    """F.unfold's arguments for a Conv2d's patches, or None for a layer K-FAC does not cover."""
    if conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    padding = conv.padding
    if isinstance(padding, str):
        reach = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size, strict=True)]
        if padding == "same" and any(r % 2 for r in reach):
            return None  # asymmetric padding
        padding = (0, 0) if padding == "valid" else tuple(r // 2 for r in reach)
    return {"kernel_size": conv.kernel_size, "dilation": conv.dilation, "padding": padding,
            "stride": conv.stride}


def _rows_of_input(layer: _Layer, a: Tensor) -> Tensor:
    """The layer's input as rows ā (examples × positions, in [+ 1])."""
    if layer.unfold is not None:
        a = F.unfold(a, **layer.unfold).transpose(1, 2)  # B × pixels × in·kh·kw
    a = a.reshape(-1, layer.in_features)
    return a if layer.bias is None else torch.cat([a, a.new_ones(a.shape[0], 1)], dim=1)


def _rows_of_output(layer: _Layer, d: Tensor) -> Tensor:
    """An output gradient as rows (examples × positions, out)."""
    if layer.unfold is not None:
        d = d.flatten(2).transpose(1, 2)  # B × pixels × out
    return d.reshape(-1, layer.out_features)


class KFACMetric(Metric):
    """K-FAC approximation of the output (``kind="output"``) or Fisher metric, built at every θ.

    Args:
        model: the network; its Linear and Conv2d layers are covered (see the module docstring).
        inputs: the batch x over which G is averaged.
        kind: "output" (H = I) or "fisher" (H = diag p − p pᵀ).
        samples: the most output directions for the output metric; with more classes than this,
            ``samples`` Gaussian directions (drawn once per batch shape, from ``generator``).
        generator: the random generator of those directions.
    """

    def __init__(self, model: nn.Module | FunctionalModel, inputs: Tensor, kind: str = "output",
                 samples: int = 10, generator: torch.Generator | None = None) -> None:
        if kind not in KINDS:
            raise WeightgeoError(f"K-FAC approximates the {' and '.join(KINDS)} metrics, not {kind!r}")
        if samples < 1:
            raise WeightgeoError(f"K-FAC needs samples ≥ 1, got {samples}")
        self.model = as_functional(model)
        if not isinstance(inputs, Tensor) or inputs.shape[0] == 0:
            raise WeightgeoError("K-FAC needs a non-empty batch of inputs")
        self.inputs, self.kind, self.samples, self.generator = inputs, kind, samples, generator
        self.layers, self._static_uncovered = _layers(self.model)
        if not self.layers:
            raise WeightgeoError("K-FAC covers nn.Linear and nn.Conv2d layers; the network has none with "
                                 "trainable weights")
        self._directions: Tensor | None = None
        self._count: int | None = None  # output directions, known after the first build
        self._once: dict[tuple, dict[str, torch.Size]] = {}

    @property
    def uncovered(self) -> list[str]:
        """θ's parameters outside the covered layers (G = 0 there); after a build, also those of
        layers that the forward pass did not call exactly once."""
        probed = set().union(*self._once.values()) if self._once else {layer.name for layer in self.layers}
        dropped = {layer.name for layer in self.layers} - probed
        names = [n for n in self.model.names if n.rpartition(".")[0] in dropped]
        return [n for n in self.model.names if n in set(self._static_uncovered) | set(names)]

    @property
    def product_cost(self) -> int:  # type: ignore[override]
        """One forward pass and one backward pass per output direction: C, or ``samples`` when
        the output metric has more classes (C read off one example before the first build)."""
        if self._count is None:
            with torch.no_grad():
                classes = int(self.model(self.model.theta(), self.inputs[:1]).shape[-1])
            self._count = classes if self.kind == "fisher" or classes <= self.samples else self.samples
        return self._count + 1

    def solve_cost(self, maxiter: int) -> int:
        """An exact solve: the factors' build, whatever ``maxiter``."""
        return self.product_cost

    def with_inputs(self, inputs: Tensor) -> KFACMetric:
        other = KFACMetric(self.model, inputs, self.kind, self.samples, self.generator)
        other._once, other._count = self._once, self._count  # the probes, keyed by input shape
        return other

    def directions(self, logits: Tensor) -> tuple[Tensor, float]:
        """The output directions u_k (K × B × C) whose backward passes give the δ, and their weight."""
        batch, classes = logits.shape
        self._count = classes if self.kind == "fisher" or classes <= self.samples else self.samples
        if self.kind == "fisher":
            p = logits.softmax(-1)
            eye = torch.eye(classes, dtype=p.dtype, device=p.device)
            return (p.T.sqrt()[:, :, None] * (eye[:, None, :] - p[None])), 1.0
        if classes <= self.samples:
            eye = torch.eye(classes, dtype=logits.dtype, device=logits.device)
            return eye[:, None, :].expand(classes, batch, classes), 1.0
        total = len(self.inputs)  # drawn for the whole batch, so every rank takes its own rows
        if self._directions is None or self._directions.shape[1:] != (total, classes):
            self._directions = torch.stack([
                torch.randn(total, classes, generator=self.generator, dtype=logits.dtype)
                for _ in range(self.samples)]).to(logits.device)
        return distributed.shard(self._directions.transpose(0, 1)).transpose(0, 1), 1.0 / self.samples

    def factors(self, theta: Tensor, buffers: dict[str, Tensor] | None = None) -> list[KroneckerBlock]:
        """The blocks A ⊗ S at θ, by torch.func (differentiable in θ)."""
        self.model.check(theta)
        once = self._single_calls(theta, buffers)
        layers = [layer for layer in self.layers if layer.name in once]
        captured: dict[str, Tensor] = {}

        def forward(perturbations: dict[str, Tensor]) -> Tensor:
            def hook(name):
                def record(module, args, output):
                    captured[name] = args[0]
                    return output + perturbations[name]
                return record
            handles = [layer.module.register_forward_hook(hook(layer.name)) for layer in layers]
            try:
                return self.model(theta, self.local_inputs, buffers)
            finally:
                for handle in handles:
                    handle.remove()

        zeros = {layer.name: theta.new_zeros(once[layer.name]) for layer in layers}
        with self.model.higher_derivatives():
            logits, pullback = torch.func.vjp(forward, zeros)
            directions, weight = self.directions(logits)
            s_sums = {layer.name: 0 for layer in layers}
            for u in directions.unbind(0):  # one backward pass per direction
                (deltas,) = pullback(u)
                for layer in layers:
                    d = _rows_of_output(layer, deltas[layer.name])
                    s_sums[layer.name] = s_sums[layer.name] + d.T @ d
        batch = logits.shape[0]
        blocks = []
        for layer in layers:
            rows = _rows_of_input(layer, captured[layer.name])
            a = rows.T @ rows / max(rows.shape[0], 1)
            s = weight * s_sums[layer.name] / max(batch, 1)
            if distributed.active() and not differentiated(theta):  # factors of the whole batch
                a, s = distributed.average(a, rows.shape[0]), distributed.average(s, batch)
            few_rows = rows.shape[0] < rows.shape[1] and not distributed.active()
            blocks.append(KroneckerBlock(layer.name, layer.weight, layer.bias, layer.out_features,
                                         layer.in_features, a, s, rows.detach() if few_rows else None))
        return blocks

    def _single_calls(self, theta: Tensor, buffers: dict[str, Tensor] | None) -> dict[str, torch.Size]:
        """Output shapes of the covered layers called once per forward pass (probed once per
        input shape with a forward pass; layers applied twice are left uncovered)."""
        inputs = self.local_inputs
        key = (tuple(inputs.shape), inputs.dtype, str(inputs.device))
        if key not in self._once:
            calls: dict[str, list[torch.Size]] = {layer.name: [] for layer in self.layers}
            handles = [layer.module.register_forward_hook(
                lambda m, args, out, name=layer.name: calls[name].append(out.shape)) for layer in self.layers]
            try:
                with torch.no_grad():
                    self.model(theta.detach(), inputs, buffers)
            finally:
                for handle in handles:
                    handle.remove()
            self._once[key] = {name: shapes[0] for name, shapes in calls.items() if len(shapes) == 1}
        return self._once[key]

    def at(self, theta: Tensor) -> KroneckerOperator:
        """The factors at θ, with their eigendecompositions for exact solves (cost: charged once)."""
        blocks = self.factors(theta.detach())
        return KroneckerOperator(self, theta, blocks, build_cost=self.product_cost)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """(Σ_l A_l(θ) ⊗ S_l(θ)) v, differentiable in θ."""
        return kronecker_product(self.factors(theta), v)

    def frozen_at(self, theta: Tensor, buffers: dict[str, Tensor] | None = None) -> KroneckerMetric:
        """The metric frozen at θ (products and solves at any point use θ's factors)."""
        blocks = self.factors(theta.detach(), buffers)
        return KroneckerMetric(blocks, products=self.product_cost, uncovered=self.uncovered)


class KroneckerMetric(ConstantMetric):
    """The K-FAC metric frozen at one θ: constant, so its geodesics are straight lines.

    Build it with :meth:`build` (or :meth:`KFACMetric.frozen_at`); ``products`` is what
    building it cost in gradient evaluations.
    """

    product_cost = 0

    def __init__(self, blocks: list[KroneckerBlock], products: int, uncovered: list[str] | None = None) -> None:
        self.blocks = blocks
        self.products = products
        self.uncovered = list(uncovered or [])
        self._eigen: list[_Eigen] | None = None

    def eigen(self) -> list[_Eigen]:
        """Each block's factors' eigenpairs (computed at the first solve, then shared)."""
        if self._eigen is None:
            self._eigen = [_block_eigen(block) for block in self.blocks]
        return self._eigen

    def at(self, theta: Tensor) -> FrozenKroneckerOperator:
        return FrozenKroneckerOperator(self, theta, self.blocks)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return kronecker_product(self.blocks, v)

    @classmethod
    def build(cls, fmodel: FunctionalModel, theta: Tensor, inputs: Tensor, kind: str = "output",
              samples: int = 10, generator: torch.Generator | None = None,
              buffers: dict[str, Tensor] | None = None) -> KroneckerMetric:
        """K-FAC factors of the ``kind`` ("output" or "fisher") metric at θ averaged over ``inputs``."""
        return KFACMetric(fmodel, inputs, kind, samples, generator).frozen_at(theta, buffers)
