"""WeightSpace: the weight space of one model as a geoopt manifold with a pluggable metric.

Points are flat weight vectors θ ∈ R^n. The metric g_θ(u, v) = uᵀ G(θ) v comes from a
:class:`~weightgeo.metrics.Metric`; the Riemannian gradient is the damped natural
gradient (G + μI)^{-1} ∇L, so ``geoopt.optim.RiemannianSGD`` over a
``ManifoldParameter`` on a WeightSpace is natural-gradient descent.

A masked WeightSpace (``mask=``) is the linear subspace {θ : θ_i = 0 where mask_i = 0}
of sparse networks: ``projx``/``proju`` zero the masked coordinates and the metric is
restricted to the subspace, (P G P + μI)^{-1} P g. A subspace of R^n is itself a flat
manifold with the restricted metric, so every tracer and optimiser keeps a sparse
network sparse without knowing about masks — which is why the mask lives here and
not in each optimiser loop.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

with warnings.catch_warnings():
    # geoopt 0.5 scripts helpers with torch.jit at import, which torch ≥ 2.10 deprecates:
    # a dependency's notice, not the user's to act on.
    warnings.filterwarnings("ignore", message=".*torch.jit.script.*", category=FutureWarning)
    import geoopt
from torch import Tensor, nn

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.metrics.base import Metric, MetricOperator, Solution
from weightgeo.metrics.euclidean import Euclidean


class MaskedOperator(MetricOperator):
    """P G P restricted to the unmasked coordinates (P = diag(mask))."""

    def __init__(self, inner: MetricOperator, mask: Tensor) -> None:
        super().__init__(inner.metric, inner.theta)
        self.inner_operator = inner
        self.mask = mask

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return self.mask[:, None] * (self.inner_operator @ (self.mask[:, None] * v))
        return self.mask * (self.inner_operator @ (self.mask * v))

    @property
    def product_cost(self) -> int:
        return self.inner_operator.product_cost

    def charge(self, products: int) -> int:
        return self.inner_operator.charge(products)

    def solve(self, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        """(P G P + μI)⁻¹ P g: the inner operator's masked solve (exact where it can be)."""
        return self.inner_operator.solve_masked(self.mask, g, damping, maxiter, tol)

    def solve_masked(self, mask: Tensor, g: Tensor, damping: float = 0.0, maxiter: int = 20, tol: float = 1e-6):
        """A subspace of this subspace: the masks multiply."""
        return self.inner_operator.solve_masked(self.mask * mask, g, damping, maxiter, tol)

    def geodesic_force(self, v: Tensor) -> tuple[Tensor | None, Tensor, int]:
        """The force of the metric restricted to the subspace: P F(θ, P v)."""
        force, speed_sq, cost = self.inner_operator.geodesic_force(self.mask * v)
        return (None if force is None else self.mask * force), speed_sq, cost


class WeightSpace(geoopt.Manifold):
    """The weight space R^n of ``model`` with the Riemannian metric ``metric``.

    Args:
        model: the network whose flattened trainable parameters are the points.
        metric: the metric G(θ) (default :class:`~weightgeo.metrics.Euclidean`).
        damping: μ in the natural gradient (G + μI)^{-1} g, which keeps the solve
            well posed where G is singular (always, for n > B·C).
        mask: optional 0/1 (or bool) vector: the sparse subspace θ = mask ⊙ θ.
        cg_maxiter, cg_tol: conjugate-gradient settings for solves with G.
    """

    name = "WeightSpace"
    ndim = 1
    reversible = False

    def __init__(
        self,
        model: nn.Module | FunctionalModel,
        metric: Metric | None = None,
        damping: float = 1e-3,
        mask: Tensor | None = None,
        cg_maxiter: int = 10,
        cg_tol: float = 1e-6,
    ) -> None:
        super().__init__()
        self.model = as_functional(model)
        self.metric = Euclidean() if metric is None else metric
        if not damping >= 0:
            raise WeightgeoError(f"damping must be ≥ 0, got {damping}")
        self.damping = float(damping)
        if mask is not None:
            if mask.shape != (self.model.n,):
                raise WeightgeoError(
                    f"mask must have length {self.model.n}, got shape {tuple(mask.shape)}"
                )
            mask = mask.detach().to(torch.get_default_dtype()) if mask.dtype == torch.bool else mask
        self.mask = mask
        self.cg_maxiter = cg_maxiter
        self.cg_tol = cg_tol
        self.products_spent = 0
        """Gradient evaluations the solves of this space have spent (a ledger for the loops)."""

    @property
    def dim(self) -> int:
        """n, the number of trainable scalars (unmasked or not)."""
        return self.model.n

    # -- variants --------------------------------------------------------------------
    def with_metric(self, metric: Metric) -> WeightSpace:
        """The same space (model, mask, damping) with another metric."""
        return WeightSpace(self.model, metric, self.damping, self.mask, self.cg_maxiter, self.cg_tol)

    def with_mask(self, mask: Tensor | None) -> WeightSpace:
        """The sparse subspace of this space given by ``mask`` (None: the whole space)."""
        return WeightSpace(self.model, self.metric, self.damping, mask, self.cg_maxiter, self.cg_tol)

    def with_inputs(self, inputs: Tensor) -> WeightSpace:
        """The same space with its metric re-estimated on another batch."""
        return self.with_metric(self.metric.with_inputs(inputs))

    # -- metric ------------------------------------------------------------------------
    def _mask_like(self, x: Tensor) -> Tensor | None:
        if self.mask is None:
            return None
        return self.mask.to(device=x.device, dtype=x.dtype)

    def operator(self, x: Tensor) -> MetricOperator:
        """G(x), restricted to the subspace for a masked space."""
        op = self.metric.at(x)
        mask = self._mask_like(x)
        return op if mask is None else MaskedOperator(op, mask)

    def inner(self, x: Tensor, u: Tensor, v: Tensor | None = None, *, keepdim: bool = False):
        """g_x(u, v) = uᵀ G(x) v."""
        value = self.operator(x).inner(u, v)
        return value.reshape(1) if keepdim else value

    def component_inner(self, x: Tensor, u: Tensor, v: Tensor | None = None) -> Tensor:
        return self.inner(x, u, v, keepdim=True)

    def norm(self, x: Tensor, u: Tensor, *, keepdim: bool = False) -> Tensor:
        return torch.sqrt(self.inner(x, u, keepdim=keepdim).clamp_min(0))

    def natural_gradient(
        self,
        x: Tensor,
        g: Tensor,
        damping: float | None = None,
        maxiter: int | None = None,
        tol: float | None = None,
    ) -> Solution:
        """(G(x) + μI)^{-1} g on this (possibly masked) space, with the solve's residual and cost.

        ``damping``, ``maxiter`` and ``tol`` default to the space's own settings.
        """
        mu = self.damping if damping is None else damping
        maxiter = self.cg_maxiter if maxiter is None else maxiter
        tol = self.cg_tol if tol is None else tol
        solution = self.operator(x).solve(self.proju(x, g), mu, maxiter, tol)
        self.products_spent += solution.cost
        return solution

    def solve_cost(self, maxiter: int | None = None) -> int:
        """The most gradient evaluations one solve may spend (a budget test)."""
        return self.metric.solve_cost(self.cg_maxiter if maxiter is None else maxiter)

    def segment_energies(self, points: Tensor, inputs: Tensor | None = None) -> Tensor:
        """d²(θ_k, θ_{k+1}) under the metric (on ``inputs`` if given) for rows of ``points``, in
        the (masked) space: the discrete path energy's terms (see ``Metric.segment_energies``)."""
        metric = self.metric if inputs is None else self.metric.with_inputs(inputs)
        return metric.segment_energies(self.projx(points))

    @torch.no_grad()
    def segment_lengths(self, points: Tensor, inputs: Tensor | None = None) -> Tensor:
        """d(θ_k, θ_{k+1}) for consecutive rows of ``points``, for reports: the square roots of
        :meth:`segment_energies` averaged over every rank's inputs (under ``torchrun``)."""
        energies = self.segment_energies(points, inputs)
        source = self.metric.inputs if inputs is None else inputs
        examples = 1 if source is None else len(distributed.shard(source))
        return distributed.average(energies, examples).clamp_min(0).sqrt()

    def egrad2rgrad(self, x: Tensor, u: Tensor) -> Tensor:
        """The Riemannian (damped natural) gradient (G(x) + μI)^{-1} u."""
        return self.natural_gradient(x, u).x

    # -- geometry of the (flat) ambient space ------------------------------------------
    def proju(self, x: Tensor, u: Tensor) -> Tensor:
        mask = self._mask_like(u)
        return u if mask is None else u * mask

    def projx(self, x: Tensor) -> Tensor:
        mask = self._mask_like(x)
        return x if mask is None else x * mask

    def retr(self, x: Tensor, u: Tensor) -> Tensor:
        """The retraction x + u (first-order agreement with the exponential map)."""
        return x + self.proju(x, u)

    def transp(self, x: Tensor, y: Tensor, v: Tensor) -> Tensor:
        """Vector transport by identification of tangent spaces (not parallel transport)."""
        return self.proju(y, v)

    def retr_transp(self, x: Tensor, u: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        y = self.retr(x, u)
        return y, self.transp(x, y, v)

    def expmap(self, x: Tensor, u: Tensor, steps: int = 10) -> Tensor:
        """exp_x(u): the end of the geodesic γ(0) = x, γ'(0) = u under the metric (closed form
        where the metric has one, else ``shoot`` integrates the geodesic equation)."""
        closed = self.metric.exponential(self.projx(x), self.proju(x, u))
        if closed is not None:
            return closed
        from weightgeo.paths.shoot import shoot  # the geodesic equation lives with the tracers

        return shoot(self, x, u, steps).end

    def dist(self, x: Tensor, y: Tensor, *, keepdim: bool = False) -> Tensor:
        """Geodesic distance, where the metric has a closed form for it."""
        d = self.metric.distance(self.projx(x), self.projx(y))
        if d is None:
            raise WeightgeoError(
                f"dist has no closed form under {type(self.metric).__name__}; estimate it as the "
                "length of weightgeo.paths.relax(space, x, y)"
            )
        return d.reshape(1) if keepdim else d

    # -- checks ------------------------------------------------------------------------
    def _check_shape(self, shape, name):
        if len(shape) != 1 or shape[0] != self.model.n:
            return False, f"'{name}' must be a flat vector of length {self.model.n}, got shape {tuple(shape)}"
        return True, None

    def _check_point_on_manifold(self, x: Tensor, *, atol=1e-5, rtol=1e-5):
        ok, reason = self._check_shape(x.shape, "x")
        if not ok:
            return ok, reason
        if not x.dtype.is_floating_point:
            return False, f"θ must be a floating-point tensor, got {x.dtype}"
        reference = self._reference_tensor()
        if reference is not None and (x.device != reference.device):
            return False, f"θ is on {x.device} but the model is on {reference.device}"
        if reference is not None and x.dtype != reference.dtype:
            return False, f"θ has dtype {x.dtype} but the model has {reference.dtype}"
        mask = self._mask_like(x)
        if mask is not None and not torch.allclose(x * mask, x, atol=atol, rtol=rtol):
            return False, "θ has non-zero entries outside the mask of this sparse space"
        return True, None

    def _check_vector_on_tangent(self, x: Tensor, u: Tensor, *, atol=1e-5, rtol=1e-5):
        ok, reason = self._check_shape(u.shape, "u")
        if not ok:
            return ok, reason
        mask = self._mask_like(u)
        if mask is not None and not torch.allclose(u * mask, u, atol=atol, rtol=rtol):
            return False, "u has non-zero entries outside the mask of this sparse space"
        return True, None

    def _reference_tensor(self) -> Tensor | None:
        for t in self.model.module.parameters():
            return t
        return None

    def check(self, theta: Tensor) -> None:
        """Raise a one-line WeightgeoError unless θ is a valid point of this space."""
        ok, reason = self.check_point_on_manifold(theta, explain=True)
        if not ok:
            raise WeightgeoError(reason)

    # -- conveniences --------------------------------------------------------------------
    def _shape(self, size: tuple) -> tuple[int, ...]:
        """The shape of points asked for as geoopt does: ``size`` is the full shape, its last
        entry n (or empty: one point)."""
        if len(size) == 1 and isinstance(size[0], tuple | list | torch.Size):
            size = tuple(size[0])
        if not size:
            return (self.model.n,)
        if size[-1] != self.model.n:
            raise WeightgeoError(f"points of this space have {self.model.n} entries; asked for shape {tuple(size)}")
        return tuple(int(s) for s in size)

    def random(self, *size, dtype=None, device=None, std: float = 1.0) -> Tensor:
        """Random points (Gaussian entries) on this space, of shape ``size`` (default: one point)."""
        reference = self._reference_tensor()
        dtype = dtype or (reference.dtype if reference is not None else None)
        device = device or (reference.device if reference is not None else None)
        return self.projx(std * torch.randn(self._shape(size), dtype=dtype, device=device))

    def origin(self, *size, dtype=None, device=None, seed=None) -> Tensor:
        reference = self._reference_tensor()
        return torch.zeros(self._shape(size), dtype=dtype or reference.dtype, device=device or reference.device)

    def loss_function(self, loss: Callable[[Tensor, Tensor], Tensor]) -> Callable:
        """``(θ, x, y) -> loss(f(x; θ), y)``: a convenience for optimising θ directly."""
        return lambda theta, x, y: loss(self.model(theta, x), y)

    def extra_repr(self) -> str:
        masked = "" if self.mask is None else f", masked ({int(self.mask.sum())} free)"
        return f"n={self.model.n}, metric={self.metric!r}, damping={self.damping}{masked}"
