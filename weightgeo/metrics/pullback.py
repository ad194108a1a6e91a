"""Pull-back metrics G(θ) = (1/B) Σ_x J_xᵀ H(f(x; θ)) J_x through the network's Jacobian.

J_x = ∂f(x; θ)/∂θ is the Jacobian of the logits. Products are matrix-free with
torch.func: at a point θ one reverse-mode linearisation ``vjp`` is recorded, and
J v is obtained as the vjp of that (linear) vjp map — the "double-vjp" trick — so
every later product G v = Jᵀ H (J v) costs about one backward pass of the
recorded graph plus one backward of the backward, with no new forward pass. Where the
backward of the backward costs more than a forward pass (convolutions), J v comes instead
from a dual-number forward pass at θ that records nothing (``PullbackMetric.jvp_route``).
Products that nothing differentiates run their backward passes without recording them.

A single product at a new θ (``mvp``) takes a cheaper route: one forward pass with
dual numbers gives f and J v together (forward-mode AD), and one backward pass of the
same graph gives Jᵀ H J v. Linear and convolution layers take their tangents from
``DualNumberForms`` (weightgeo.kernels): unrecorded, and without the product of an input
that has no tangent, so the first layer costs one extra matrix product, not two.

The discrete path energy needs no Jacobian: d²(θ, θ') is a distance between the outputs
f(x; θ) and f(x; θ') that equals Δθᵀ G Δθ to second order (:meth:`PullbackMetric.output_distances`),
evaluated for all points at once (``FunctionalModel.stacked``). The geodesic
force is (1/B) Jᵀ (H d²f[v, v] + ½ dH[Jv] Jv), a jvp of a jvp and one vjp of the recorded
linearisation.

Derivatives. The linearisation needs second derivatives of every operation, the dual-number
product and the geodesic force forward-mode ones: these transforms run the network in
``FunctionalModel.higher_derivatives`` (the math attention kernel instead of the fused ones,
which have neither). An operation without a forward-mode formula sends ``mvp`` to the
linearisation (the one fallback: it needs only second derivatives, at about 1.5× the cost);
an operation without the derivative a transform needs is one WeightgeoError naming it. The
first product of each linearisation checks ⟨u, J v⟩ = ⟨Jᵀu, v⟩, which catches a backward that
PyTorch differentiates silently as a constant (``@once_differentiable`` under torch.func).
"""

from __future__ import annotations

from abc import abstractmethod

import torch
import torch.autograd.forward_ad as fwAD
from torch import Tensor, nn
from torch.func import jvp, vjp

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel, as_functional
from weightgeo.metrics.base import Metric, MetricOperator
from weightgeo.metrics.derivatives import (
    differentiated,
    explain_missing_derivatives,
    lacks_forward_mode,
)

FIRST_ORDER_WAY_OUT = "use a metric that needs only first derivatives (diag-fisher, euclidean)"


class PullbackOperator(MetricOperator):
    """G(θ) = (1/B) Jᵀ H J at one θ, with the forward pass and the linearisation shared."""

    def __init__(self, metric: PullbackMetric, theta: Tensor) -> None:
        super().__init__(metric, theta)
        metric.model.check(theta)
        theta = theta.detach()
        inputs = metric.local_inputs  # this rank's shard (all of the batch in one process)
        with metric.model.higher_derivatives() as forms, explain_missing_derivatives(
                f"{type(metric).__name__}'s products need", FIRST_ORDER_WAY_OUT):
            self.logits, self._pullback = vjp(lambda t: metric.model(t, inputs), theta)
        if metric.jvp_route is None:
            metric.jvp_route = "dual" if forms.convolves else "double-vjp"
        self._recorded_pushforward = None
        if metric.jvp_route == "double-vjp":
            self._pushforward()  # built now: a missing second derivative is reported by at(θ)
        self.adjoint_checked = False

    def _pushforward(self):
        """v ↦ J v as the vjp of the recorded vjp u ↦ Jᵀu (linear, so its vjp at any u is J v),
        recorded on first use."""
        if self._recorded_pushforward is None:
            zeros = torch.zeros_like(self.logits)
            with self.metric.model.higher_derivatives(), explain_missing_derivatives(
                    f"{type(self.metric).__name__}'s products need", FIRST_ORDER_WAY_OUT):
                _, self._recorded_pushforward = vjp(lambda u: self._pullback(u)[0], zeros)
        return self._recorded_pushforward

    def jvp(self, v: Tensor) -> Tensor:
        """J v: the change of the logits (B×C) caused by the weight change v, by the metric's route
        (``PullbackMetric.jvp_route``): the vjp of the recorded vjp (second derivatives of the
        network), or a dual-number forward pass at θ (first derivatives, forward mode)."""
        metric: PullbackMetric = self.metric  # type: ignore[assignment]
        if metric.jvp_route == "dual" and not differentiated(v):
            jv = self._dual_jvp(v)
            if jv is not None:
                return jv
            metric.jvp_route = "double-vjp"  # an operation without a forward-mode formula
        with explain_missing_derivatives(f"{type(metric).__name__}'s products need", FIRST_ORDER_WAY_OUT):
            return self._pushforward()(v, create_graph=differentiated(v))[0]

    def _dual_jvp(self, v: Tensor) -> Tensor | None:
        """J v from one forward pass with dual numbers at θ, recording nothing (None when an
        operation has no forward-mode formula)."""
        metric: PullbackMetric = self.metric  # type: ignore[assignment]
        try:
            with torch.no_grad(), metric.model.higher_derivatives(dual_numbers=True), fwAD.dual_level():
                dual = metric.model(fwAD.make_dual(self.theta.detach(), v), metric.local_inputs)
                return fwAD.unpack_dual(dual)[1]
        except (RuntimeError, NotImplementedError) as error:
            if not lacks_forward_mode(error):
                raise
            return None

    def vjp(self, u: Tensor) -> Tensor:
        """Jᵀ u for a cotangent u on the logits (B×C); recorded for backward only where u is
        differentiated (a product inside an autograd graph)."""
        return self._pullback(u, create_graph=differentiated(u))[0]

    def __matmul__(self, v: Tensor) -> Tensor:
        if v.dim() == 2:
            return super().__matmul__(v)
        metric: PullbackMetric = self.metric  # type: ignore[assignment]
        jv = self.jvp(v)
        u = metric.output_product(self.logits, jv)
        product = self.vjp(u)
        if not self.adjoint_checked:
            self.check_adjoint(v, jv, u, product)
        examples = jv.shape[0]
        return distributed.average(product / max(examples, 1), examples)  # the mean over every rank

    def check_adjoint(self, v: Tensor, jv: Tensor, u: Tensor, jtu: Tensor) -> None:
        """Raise unless ⟨u, J v⟩ = ⟨Jᵀu, v⟩: J v comes from second derivatives, Jᵀu from first ones,
        so a backward differentiated as a constant shows here (one host sync per linearisation)."""
        self.adjoint_checked = True
        second, first = (u * jv).sum(), jtu @ v
        eps = torch.finfo(v.dtype).eps
        tolerance = min(0.5, max(1e-6, 1e5 * eps)) * torch.maximum(second.abs(), first.abs())
        if bool((second - first).abs() > tolerance):  # a check: one host sync per linearisation
            raise WeightgeoError(
                f"{type(self.metric).__name__}'s products: the network's second derivatives disagree "
                f"with its first (<u, Jv> = {float(second):.6g}, <J^T u, v> = {float(first):.6g}): an "
                "operation's backward is not differentiable (a custom autograd.Function with "
                f"@once_differentiable?); {FIRST_ORDER_WAY_OUT}, or make that backward differentiable")

    def geodesic_force(self, v: Tensor) -> tuple[Tensor, Tensor, int]:
        """(1/B) Jᵀ (H d²f[v, v] + ½ dH[Jv] Jv), vᵀGv and its cost (≈ 3 gradient evaluations)."""
        metric: PullbackMetric = self.metric  # type: ignore[assignment]
        model, inputs, theta = metric.model, metric.local_inputs, self.theta.detach()
        v = v.detach()

        def directional(t: Tensor) -> Tensor:
            return jvp(lambda u: model(u, inputs), (t,), (v,))[1]

        with model.higher_derivatives(), explain_missing_derivatives(
                "the geodesic force (shoot, expmap) needs", "trace with traverse or relax instead"):
            jv, d2 = jvp(directional, (theta,), (v,))  # J v and the second directional derivative
        _, dh = jvp(lambda out: metric.output_product(out, jv), (self.logits,), (jv,))
        batch = jv.shape[0]
        force = self.vjp(metric.output_product(self.logits, d2) + 0.5 * dh) / max(batch, 1)
        speed_sq = (jv * metric.output_product(self.logits, jv)).sum() / max(batch, 1)
        return distributed.average(force, batch), distributed.average(speed_sq, batch), 3 * self.product_cost


class PullbackMetric(Metric):
    """Base of the metrics pulled back from the logits: subclasses give H u per example.

    Args:
        model: the network (an ``nn.Module`` or a :class:`FunctionalModel`); evaluated
            in eval mode (dropout off, batch norm on its running statistics), so no
            buffer changes and train-mode batch norm cannot break the transforms.
        inputs: the batch x over which G is averaged (mean over examples).
    """

    def __init__(self, model: nn.Module | FunctionalModel, inputs: Tensor) -> None:
        self.model = as_functional(model)
        if not isinstance(inputs, Tensor) or inputs.shape[0] == 0:
            raise WeightgeoError("a pull-back metric needs a non-empty batch of inputs")
        self.inputs = inputs
        self.jvp_route: str | None = None
        """How warm products get J v: "double-vjp" (the vjp of the recorded vjp: no forward pass;
        the faster on fully connected networks), "dual" (a dual-number forward pass at θ that
        records nothing: faster where the double backward of a convolution costs more than a
        forward pass — 0.73 against 1.02 forward+backward passes on VGG11, CPU). None: chosen by
        the first linearisation, "dual" if the network convolves; set it to force one."""

    @abstractmethod
    def output_product(self, logits: Tensor, u: Tensor) -> Tensor:
        """H(f) u for each example: logits and u are B×C; not divided by B."""

    @abstractmethod
    def output_distances(self, outputs: Tensor) -> Tensor:
        """Squared distances between consecutive rows of ``outputs`` (N×B×C logits), averaged
        over the batch: N − 1 values, each Δθᵀ G Δθ to second order."""

    def paired_distances(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """The output-space squared distance of ``outputs[k]`` to ``targets[k]`` (K×B×C logits
        each), averaged over the batch: K values, by :meth:`output_distances` on the interleaved
        rows."""
        return self.output_distances(torch.stack([outputs, targets], 1).flatten(0, 1))[0::2]

    def segment_energies(self, points: Tensor) -> Tensor:
        """d²(θ_k, θ_{k+1}) from the outputs at all points in one batched pass (no Jacobian)."""
        return self.output_distances(self.model.stacked()(points, self.local_inputs))

    def energy_cost(self, segments: int) -> int:
        """One network gradient per moving point of the polyline (its interior) plus one for the
        two ends' forward passes: ``segments`` evaluations."""
        return segments

    def at(self, theta: Tensor) -> PullbackOperator:
        return PullbackOperator(self, theta)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        """G(θ) v from scratch: one dual-number forward pass and one backward pass.

        A network with an operation that has no forward-mode formula (or whose output lost the
        tangent) takes the linearisation's route instead, which needs only second derivatives.
        A product that is itself differentiated (θ or v requires grad, or inside a torch.func
        transform) is computed by torch.func, so its derivatives are exact.
        """
        if v.dim() != 1:
            return self.at(theta) @ v
        if differentiated(theta) or differentiated(v):
            return self._composable_product(theta, v)
        try:
            with self.model.higher_derivatives(dual_numbers=True):
                product = self._single_product(theta, v)
        except (RuntimeError, NotImplementedError) as error:
            if not lacks_forward_mode(error):
                raise
            product = None
        return self.at(theta) @ v if product is None else product

    def _composable_product(self, theta: Tensor, v: Tensor) -> Tensor:
        """G(θ) v by torch.func (a jvp and a vjp), differentiable in θ and v by any transform:
        the product inside another metric's derivatives (a Nyström sketch, a user's metric).
        Under ``torchrun`` it is this rank's shard's product (collectives are not differentiable
        under torch.func): average what is built from it where ranks must agree."""
        model, inputs = self.model, self.local_inputs

        def logits_of(t: Tensor) -> Tensor:
            return model(t, inputs)

        with model.higher_derivatives(), explain_missing_derivatives(
                f"differentiating {type(self).__name__}'s products needs", FIRST_ORDER_WAY_OUT):
            logits, jv = jvp(logits_of, (theta,), (v,))
            _, pullback = vjp(logits_of, theta)
            return pullback(self.output_product(logits, jv))[0] / jv.shape[0]

    def _single_product(self, theta: Tensor, v: Tensor) -> Tensor | None:
        """G(θ) v by dual numbers, or None when the output carries no tangent."""
        self.model.check(theta)
        point = theta.detach().requires_grad_(True)
        with torch.enable_grad():
            with fwAD.dual_level():
                dual = self.model(fwAD.make_dual(point, v.detach()), self.local_inputs)
                primal, tangent = fwAD.unpack_dual(dual)
                if tangent is None:
                    return None
                tangent = tangent.detach()
            # The backward pass runs outside the dual level, so it carries no tangents.
            examples = primal.shape[0]
            cotangent = self.output_product(primal.detach(), tangent) / max(examples, 1)
            (product,) = torch.autograd.grad(primal, point, cotangent)
        return distributed.average(product, examples)
