"""The projection baselines: A-GEM, OGD and GPM, each a weight space the step is Riemannian in.

- ``a-gem`` (Chaudhry et al. 2019): each step's task gradient g is projected off its conflict
  with the gradient r of the loss on a batch of stored examples with their labels (g − min(0,
  gᵀr)/‖r‖²·r), on :class:`~weightgeo.manifolds.conflict.ConflictFreeSpace`. A step costs 2: the
  task gradient and the memory gradient.
- ``ogd`` (Farajtabar et al. 2019, the "ground-truth logit" variant): after each task the
  gradients of the true class's logit on its stored examples are added to an orthonormal basis U
  (OGD's Gram–Schmidt); each later step moves along g − UUᵀg. That is the μ → 0 limit of the
  geodesic method's step μ(G + μI)⁻¹g under the low-rank metric G = UUᵀ of the stored output
  gradients: the same Riemannian SGD under ``ScaledMetric(LowRankMetric(U, 1), 1/μ)`` with damping
  1, at μ = :data:`LIMIT` (a stored direction keeps a share μ/(1 + μ) of its component). The
  per-example gradients of m stored examples cost ⌈m / batch⌉ per task (as an EWC Fisher);
  the solve is exact and free.
- ``gpm`` (Saha et al. 2021): after each task a basis U_l of each layer's input subspace on the
  stored examples (the eigenvectors of the layer-input covariance A_l = mean ā āᵀ, ā = [a; 1]
  with a bias, enough of them to hold a share 1 − ε of its energy beyond what the basis already
  holds); each later step projects every layer's weight gradient M to M − M U_l U_lᵀ. That is the
  μ → 0 limit of the damped solve under the K-FAC-shaped metric Σ_l (U_l U_lᵀ) ⊗ I — the
  :class:`~weightgeo.metrics.KroneckerMetric` with A_l = U_l U_lᵀ and S_l = I — on the same
  Riemannian SGD. Parameters outside Linear and Conv2d layers are not projected. The strength is
  ε, the energy left out (GPM's threshold is 1 − ε). A_l comes from one forward and one backward
  pass on the stored examples (K-FAC's build with one output direction), charged 2 per task.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.func import functional_call, grad, vmap

from weightgeo.applications.continual.geodesic import damped_space
from weightgeo.applications.continual.learner import Learner
from weightgeo.applications.continual.replay import stored_columns
from weightgeo.data.streams import RandomSubsets
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.manifolds.conflict import ConflictFreeSpace
from weightgeo.metrics import KFACMetric, KroneckerMetric, LowRankMetric
from weightgeo.metrics.kfac import KroneckerBlock
from weightgeo.optim import SupervisedLoss

LIMIT = 1e-6
"""μ of OGD's and GPM's damped solve: the μ → 0 limit, a projection up to a share μ/(1 + μ)."""


class AGEM(Learner):
    """Each step's gradient projected off its conflict with a stored batch's gradient (labels)."""

    name = "a-gem"
    seed_offset = 800

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.conflict_space: ConflictFreeSpace | None = None
        self.stored: RandomSubsets | None = None

    def before_task(self, t, theta):
        self.conflict_space = None
        if len(self.memory):
            self.stored = stored = RandomSubsets(stored_columns(self.memory, self.seq, t), self.settings.batch_size,
                                                 self.seed * 1000 + self.seed_offset + t)
            loss = SupervisedLoss(self.fmodel, units=self.seq.allowed(t), buffers=self.buffers,
                                  train_mode=self.train_mode)

            def reference(theta: Tensor) -> Tensor:  # the stored batch's gradient at θ
                point = theta.requires_grad_(True)
                return torch.autograd.grad(loss(point, stored.next()), point)[0]

            self.conflict_space = ConflictFreeSpace(self.fmodel, reference)
        return 0

    def planned_steps(self, available):
        return available if self.conflict_space is None else available // 2

    def space(self, t):
        return self.conflict_space


def true_logit_gradients(fmodel: FunctionalModel, theta: Tensor, x: Tensor, y: Tensor,
                         buffers: dict[str, Tensor] | None = None, chunk: int = 64) -> Tensor:
    """∂f_{y_i}(x_i; θ)/∂θ for every example, as the columns of an n × m matrix (eval mode)."""
    state = {**fmodel.frozen, **(fmodel.buffers if buffers is None else buffers)}

    def logit(t: Tensor, xi: Tensor, yi: Tensor) -> Tensor:
        params = {n: c.view(s) for n, c, s in zip(fmodel.names, t.split(fmodel.numels), fmodel.shapes)}
        return functional_call(fmodel.module, {**state, **params}, (xi.unsqueeze(0),))[0].gather(0, yi[None])[0]

    per_example = vmap(grad(logit), in_dims=(None, 0, 0))
    return torch.cat([per_example(theta.detach(), x[i : i + chunk], y[i : i + chunk])
                      for i in range(0, len(x), chunk)]).T


def extend_basis(basis: Tensor | None, vectors: Tensor, rtol: float = 1e-5) -> Tensor:
    """An orthonormal basis of span(basis) + span(vectors): ``basis`` followed by the directions of
    the vectors' part outside it whose singular values exceed rtol × the vectors' largest."""
    v = vectors.double()
    scale = torch.linalg.matrix_norm(v, ord=2)
    if basis is not None:
        b = basis.double()
        for _ in range(2):  # Gram–Schmidt twice: orthogonal to working precision
            v = v - b @ (b.T @ v)
    gram = v.T @ v
    lam, w = torch.linalg.eigh(gram)
    keep = lam.clamp_min(0).sqrt() > rtol * scale
    new = (v @ w[:, keep]) / lam[keep].sqrt()
    new = new.to(vectors.dtype)
    return new if basis is None else torch.cat([basis, new], dim=1)


class OGD(Learner):
    """Each step's gradient projected off the stored gradients of the old tasks' true logits."""

    name = "ogd"
    state = ("basis",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.basis: Tensor | None = None
        self.projection: WeightSpace | None = None

    def before_task(self, t, theta):
        self.projection = None
        if self.basis is not None:
            ones = torch.ones(self.basis.shape[1], dtype=self.basis.dtype, device=self.basis.device)
            self.projection = damped_space(self.fmodel, LowRankMetric(self.basis, ones), LIMIT)
        return 0

    def space(self, t):
        return self.projection

    def after_task_cost(self, t):
        return math.ceil(self.settings.memory / self.settings.batch_size)

    def after_task(self, t, theta):
        super().after_task(t, theta)
        gradients = true_logit_gradients(self.fmodel, theta, self.memory.x[-1], self.memory.y[-1], self.buffers)
        self.basis = extend_basis(self.basis, gradients)


def grow_layer_basis(basis: Tensor | None, a: Tensor, energy_left: float, rows: Tensor | None = None) -> Tensor:
    """GPM's rule on one layer: ``basis`` followed by the leading eigenvectors of the part of A (the
    layer inputs' second moment, or ``rows``ᵀ``rows``/m when the m input rows are given) outside it,
    until the basis holds a share 1 − ε of tr A. In float64."""
    b = None if basis is None else basis.double()
    if rows is not None:  # through the m × in' rows: an SVD of the residual rows
        r = rows.double()
        total = r.square().sum() / len(r)
        residual = r if b is None else r - (r @ b) @ b.T
        _, sigma, vh = torch.linalg.svd(residual, full_matrices=False)
        lam, q = sigma.square() / len(r), vh.T
    else:  # (I − P) A (I − P) with P = UUᵀ, in O(in'² r)
        a = a.double()
        total = torch.trace(a)
        residual = a
        if b is not None:
            au = a @ b
            residual = a - b @ au.T - au @ b.T + b @ (b.T @ au) @ b.T
        lam, q = torch.linalg.eigh(0.5 * (residual + residual.T))
        lam, q = lam.flip(0).clamp_min(0), q.flip(1)
    held = total - lam.sum()  # the energy the basis already holds: tr(P A)
    needed = float((1 - energy_left) * total - held)  # one host read per layer and task
    count = 0
    if needed > 0 and len(lam):
        count = min(int((torch.cumsum(lam, 0) < needed).sum()) + 1, int((lam > 1e-12 * float(lam[0])).sum()))
    new = q[:, :count]
    return new if b is None else torch.cat([b, new], dim=1)


class GPM(Learner):
    """Each layer's gradient projected off the old tasks' layer-input subspace (energy threshold)."""

    name = "gpm"
    default_strength = 1e-2
    grid = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    state = ("bases", "layout")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.bases: dict[str, Tensor] = {}
        self.layout: dict[str, list[int]] = {}  # name → weight start, stop, bias start, stop (−1), out, in
        self.projection: WeightSpace | None = None

    def factors(self, x: Tensor, theta: Tensor) -> list[KroneckerBlock]:
        """Each covered layer's input second moment A on x (K-FAC's build, one output direction)."""
        generator = torch.Generator().manual_seed(self.seed * 1000 + 900 + len(self.memory))
        return KFACMetric(self.fmodel, x, "output", samples=1, generator=generator).factors(theta.detach(),
                                                                                          self.buffers)

    def before_task(self, t, theta):
        self.projection = None
        if self.bases:
            blocks = [self.projector(name, basis) for name, basis in self.bases.items() if basis.shape[1]]
            self.projection = damped_space(self.fmodel, KroneckerMetric(blocks, products=0), LIMIT)
        return 0

    def projector(self, name: str, basis: Tensor) -> KroneckerBlock:
        """The layer's block (U Uᵀ) ⊗ I; its rows √r Uᵀ (a Gram matrix I_r) when r is below the
        layer's inputs, so that the solve's eigendecomposition is r × r."""
        w0, w1, b0, b1, out, inputs = self.layout[name]
        eye = torch.eye(out, dtype=basis.dtype, device=basis.device)
        rank = basis.shape[1]
        rows = rank**0.5 * basis.T if rank < basis.shape[0] else None
        return KroneckerBlock(name, slice(w0, w1), None if b0 < 0 else slice(b0, b1), out, inputs,
                              basis @ basis.T, eye, rows)

    def space(self, t):
        return self.projection

    def after_task_cost(self, t):
        return 2

    def after_task(self, t, theta):
        super().after_task(t, theta)
        for block in self.factors(self.memory.x[-1], theta):
            bias = (-1, -1) if block.bias is None else (block.bias.start, block.bias.stop)
            self.layout[block.name] = [block.weight.start, block.weight.stop, *bias, block.out_features,
                                       block.in_features]
            basis = grow_layer_basis(self.bases.get(block.name), block.a, self.strength, block.rows)
            self.bases[block.name] = basis.to(theta.dtype)
