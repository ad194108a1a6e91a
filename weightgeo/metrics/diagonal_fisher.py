"""DiagonalFisher: the exact diagonal of the Fisher metric, with an exact solve.

diag G = (1/B) Σ_x Σ_c p_c(x) (∂ log p_c(x)/∂θ)², because
diag p − p pᵀ = Σ_c p_c (e_c − p)(e_c − p)ᵀ and J_xᵀ (e_c − p) = ∇_θ log p_c(x).
With ``targets`` it is the empirical Fisher's diagonal (1/B) Σ_x (∂ log p_y(x)/∂θ)².
Per-example, per-class gradients come from ``torch.func.vmap`` over ``jacrev``; a network
that vmap cannot batch (RNNs) takes a loop over examples instead (same numbers, slower).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.func import jacrev, vmap

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.metrics.base import ConstantMetric, Metric, MetricOperator, Solution
from weightgeo.metrics.derivatives import differentiated, explain_missing_derivatives


class DiagonalOperator(MetricOperator):
    """diag(d) bound to θ: products are elementwise, the damped solve is exact."""

    def __init__(self, metric: Metric, theta: Tensor, diag: Tensor, build_cost: int = 0) -> None:
        super().__init__(metric, theta)
        self.diag = diag
        # Building the diagonal costs about one batch gradient per class; the first solve
        # charges it, so tracers pay it once per point.
        self.unpaid = build_cost

    @property
    def product_cost(self) -> int:
        return 0  # elementwise

    def __matmul__(self, v: Tensor) -> Tensor:
        return self.diag * v if v.dim() == 1 else self.diag[:, None] * v

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        denominator = self.diag + damping
        if damping <= 0:
            denominator = denominator.clamp_min(torch.finfo(g.dtype).tiny)
        return Solution(g / denominator, torch.zeros((), device=g.device), 0, 0, self.charge(0))

    def solve_masked(self, mask: Tensor, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        """(P diag(d) P + μI)⁻¹ P g = P g / (d + μ): a diagonal solve commutes with the mask."""
        return self.solve(mask * g, damping)

    def dense(self) -> Tensor:
        return torch.diag(self.diag)

    def diagonal(self) -> Tensor:
        return self.diag


class FrozenDiagonal(ConstantMetric):
    """G = diag(d) for a fixed vector d (the diagonal Fisher frozen at one θ): products are
    elementwise and the damped solve is exact."""

    def __init__(self, diag: Tensor) -> None:
        self.diag = diag

    def at(self, theta: Tensor) -> DiagonalOperator:
        return DiagonalOperator(self, theta, self.diag)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.diag * v if v.dim() == 1 else self.diag[:, None] * v


class DiagonalFisher(Metric):
    """G = diag of the Fisher information of the softmax (or of the empirical Fisher).

    Args:
        model: the network (evaluated in eval mode, as for every pull-back metric).
        inputs: the batch x (mean over examples).
        targets: labels y; if given, the empirical Fisher's diagonal is used.
        chunk_size: examples per vectorised chunk (memory ≈ chunk·classes·n floats).
    """

    def __init__(
        self,
        model: nn.Module | FunctionalModel,
        inputs: Tensor,
        targets: Tensor | None = None,
        chunk_size: int = 16,
    ) -> None:
        self.model = as_functional(model)
        if inputs.shape[0] == 0:
            raise WeightgeoError("DiagonalFisher needs a non-empty batch of inputs")
        if targets is not None and targets.shape[0] != inputs.shape[0]:
            raise WeightgeoError("DiagonalFisher: inputs and targets differ in length")
        self.inputs = inputs
        self.targets = targets
        self.chunk_size = chunk_size
        self.vectorised = True
        """Per-example gradients by vmap (False once vmap failed on this network: a loop)."""

    def with_inputs(self, inputs: Tensor, targets: Tensor | None = None) -> DiagonalFisher:
        if self.targets is not None and targets is None:
            raise WeightgeoError("an empirical DiagonalFisher needs targets for its new inputs")
        other = DiagonalFisher(self.model, inputs, targets, self.chunk_size)
        other.vectorised = self.vectorised
        return other

    def freeze(self, theta: Tensor, batch_size: int) -> tuple[FrozenDiagonal, int]:
        """diag G(θ) as a constant metric, exact; it costs one per-example gradient per output
        unit and input: C · ⌈B / batch_size⌉ gradient evaluations."""
        with torch.no_grad():
            classes = self.model(theta.detach(), self.inputs[:1]).shape[-1]
        return FrozenDiagonal(self.diagonal(theta.detach())), classes * math.ceil(len(self.inputs) / batch_size)

    def diagonal(self, theta: Tensor) -> Tensor:
        """diag G(θ), computed in chunks of examples (differentiable in θ when differentiated)."""
        theta = theta if differentiated(theta) else theta.detach()
        total = torch.zeros_like(theta)
        inputs = self.local_inputs  # this rank's shard; the diagonals are averaged over the ranks
        targets = None if self.targets is None else distributed.shard(self.targets)
        for start in range(0, inputs.shape[0], self.chunk_size):
            x = inputs[start : start + self.chunk_size]
            y = None if targets is None else targets[start : start + self.chunk_size]
            with explain_missing_derivatives("DiagonalFisher's per-example gradients need",
                                             "use the output or fisher metric instead"):
                total += self._chunk(theta, x, y)
        local = total / max(inputs.shape[0], 1)
        return local if differentiated(theta) else distributed.average(local, inputs.shape[0])

    def _chunk(self, theta: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
        """Σ_x Σ_c p_c(x) (∂ log p_c(x)/∂θ)² over a chunk (Σ_x (∂ log p_y(x)/∂θ)² with targets)."""
        if self.vectorised:
            try:
                return self._vectorised_chunk(theta, x, y)
            except RuntimeError:
                # vmap cannot batch every network (no batching rule for aten::gru and
                # aten::lstm): per-example gradients by a loop give the same numbers, slower.
                self.vectorised = False
        return self._looped_chunk(theta, x, y)

    def _vectorised_chunk(self, theta: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
        model = self.model

        def log_probs(t: Tensor, example: Tensor) -> Tensor:
            return model(t, example.unsqueeze(0)).log_softmax(dim=-1)[0]

        with model.higher_derivatives():  # vmap batches the math attention, not the fused kernels
            grads = vmap(jacrev(log_probs), in_dims=(None, 0))(theta, x)  # chunk × C × n
        if y is None:
            return torch.einsum("bc,bcn->n", model(theta, x).softmax(dim=-1), grads.square())
        return grads[torch.arange(len(y), device=y.device), y].square().sum(0)

    def _looped_chunk(self, theta: Tensor, x: Tensor, y: Tensor | None) -> Tensor:
        """One forward pass per example and one backward pass per class (per target)."""
        total = torch.zeros_like(theta)
        for i in range(x.shape[0]):
            point = theta.clone().requires_grad_(True)
            with torch.enable_grad():
                log_p = self.model(point, x[i : i + 1]).log_softmax(dim=-1)[0]
            classes = log_p.shape[0] if y is None else 1
            for c in range(classes):
                chosen = log_p[c] if y is None else log_p[y[i]]
                (grad,) = torch.autograd.grad(chosen, point, retain_graph=c < classes - 1)
                total += grad.square() * (log_p[c].detach().exp() if y is None else 1.0)
        return total

    def at(self, theta: Tensor) -> DiagonalOperator:
        diag = self.diagonal(theta)
        classes = 1 if self.targets is not None else self._num_classes(theta)
        return DiagonalOperator(self, theta, diag, build_cost=classes)

    def _num_classes(self, theta: Tensor) -> int:
        if getattr(self, "_classes", None) is None:
            with torch.no_grad():
                self._classes = int(self.model(theta.detach(), self.inputs[:1]).shape[-1])
        return self._classes

    def solve_cost(self, maxiter: int) -> int:
        """An exact solve: building the diagonal, about one batch gradient per class (one per
        target for the empirical Fisher), whatever ``maxiter``."""
        return 1 if self.targets is not None else self._num_classes(self.model.theta())

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.diagonal(theta) * v
