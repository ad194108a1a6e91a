"""Flat weight vectors θ and a pure function f(x; θ) for any ``nn.Module``.

A point of weight space is one 1-D tensor θ holding the model's trainable
parameters in the order of ``parameters_to_vector(p for p in model.parameters()
if p.requires_grad)``. :class:`FunctionalModel` converts between θ and the
parameter dict that ``torch.func.functional_call`` wants, and evaluates the
network without touching the user's module.

Evaluation mode. ``FunctionalModel`` works on a private copy of the module put
in eval mode: dropout is off and batch norm uses its running statistics, so
products with torch.func transforms never update buffers and never fail on
train-mode batch norm. Buffers can be passed explicitly (for instance batch-norm
statistics recomputed at a new point, as mode-connectivity evaluation does).

Outputs. A model whose forward returns a tuple, a dict or an object (``.logits``) is
given an ``output=`` selector — a key, an attribute name, an index or a callable — that
picks the logits; every metric and tracer evaluates the network through this class, so
all of them honour it.

Kernels for transforms. Fused kernels lack some derivatives: the fused attention of
``F.scaled_dot_product_attention`` (flash/efficient, CPU and CUDA) has neither a
forward-mode formula nor a second derivative, and cuDNN's RNNs have no second derivative.
:meth:`FunctionalModel.higher_derivatives` is the context in which the transforms that need
them (forward mode, double backward) run the network on the math attention (and, on CUDA,
without cuDNN for a network with RNNs); plain forward and backward passes (training,
evaluation) keep the fused kernels.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, replace_all_batch_norm_modules_, vmap

from weightgeo.errors import WeightgeoError
from weightgeo.kernels import higher_derivatives

__all__ = ["FunctionalModel", "OutputSelector", "StackedModel", "as_functional", "higher_derivatives",
           "mask_logits", "select_output"]

OutputSelector = str | int | Callable[[Any], Tensor] | None
"""What picks the logits from a model's output: a key or attribute name, an index, a callable."""


def select_output(output: Any, selector: OutputSelector) -> Tensor:
    """The logits inside ``output`` picked by ``selector`` (None: the output itself).

    A string is a mapping key (a dict, a Hugging Face ``ModelOutput``) or else an attribute
    name (``"logits"``); an integer indexes a tuple or list; a callable gets the output.

    Raises:
        WeightgeoError: the selector finds nothing, or what it picks (or the output, without a
            selector) is not a tensor.
    """
    if selector is None:
        value = output
    elif callable(selector):
        value = selector(output)
    elif isinstance(selector, int) and isinstance(output, tuple | list):
        if not -len(output) <= selector < len(output):
            raise WeightgeoError(f"output={selector}: the model returns {len(output)} values")
        value = output[selector]
    elif isinstance(selector, str) and isinstance(output, Mapping) and selector in output:
        value = output[selector]
    elif isinstance(selector, str) and hasattr(output, selector):
        value = getattr(output, selector)
    else:
        raise WeightgeoError(f"output={selector!r}: the model's output, a {type(output).__name__}, "
                             "has no such key, attribute or index")
    if not isinstance(value, Tensor):
        if selector is None:
            raise WeightgeoError(
                f"the model returns a {type(output).__name__}, not a tensor of logits: pick them with "
                "FunctionalModel(model, output=...) (a key or attribute such as 'logits', an index, "
                "or a callable)")
        raise WeightgeoError(f"output={selector!r} picks a {type(value).__name__}, not a tensor of logits")
    return value


class FunctionalModel:
    """A model seen as the pure function ``(θ, x) -> logits``.

    Args:
        model: any ``nn.Module``; it is copied (``copy.deepcopy``) and never mutated. Another
            FunctionalModel shares its copy (with ``output`` replaced if given).
        output: what picks the logits when the forward returns a tuple, a dict or an object
            (:func:`select_output`): a key or attribute name (``"logits"``), an index or a
            callable. None: the forward returns the logits tensor.

    Attributes:
        names, shapes, numels: the trainable parameters, in ``model.parameters()`` order.
        n: the dimension of weight space (number of trainable scalars).
        frozen: the parameters outside θ (``requires_grad=False``), by name.
        buffers: the module's buffers (batch-norm running statistics), by name.
    """

    def __init__(self, model: nn.Module | FunctionalModel, output: OutputSelector = None) -> None:
        if isinstance(model, FunctionalModel):  # share the other's private copy
            self.__dict__.update(model.__dict__)
            if output is not None:
                self.output, self._stacked = output, None
            return
        self.output: OutputSelector = output
        self.module: nn.Module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if not trainable:
            raise WeightgeoError("the model has no trainable parameters")
        self.names: list[str] = [n for n, _ in trainable]
        self.shapes: list[torch.Size] = [p.shape for _, p in trainable]
        self.numels: list[int] = [p.numel() for _, p in trainable]
        self.n: int = sum(self.numels)
        self.frozen = {
            n: p.detach() for n, p in self.module.named_parameters() if n not in set(self.names)
        }
        self.buffers: dict[str, Tensor] = {n: b for n, b in self.module.named_buffers()}

    # -- θ <-> parameters ------------------------------------------------------------
    def flatten(self, params: nn.Module | Mapping[str, Tensor]) -> Tensor:
        """θ from a module with this architecture, or from a parameter dict."""
        if isinstance(params, nn.Module):
            params = dict(params.named_parameters())
        try:
            return torch.cat([params[n].detach().reshape(-1) for n in self.names])
        except KeyError as err:
            raise WeightgeoError(f"parameter {err} is missing: not the same architecture") from err

    def theta(self) -> Tensor:
        """θ of the model this was built from (a detached copy)."""
        return self.flatten(self.module).clone()

    def unflatten(self, theta: Tensor) -> dict[str, Tensor]:
        """The parameter dict (views into θ) for ``functional_call``."""
        self.check(theta)
        return {
            n: chunk.view(s)
            for n, chunk, s in zip(self.names, theta.split(self.numels), self.shapes, strict=True)
        }

    def slices(self) -> dict[str, slice]:
        """Where each named parameter lives inside θ."""
        out, start = {}, 0
        for n, k in zip(self.names, self.numels, strict=True):
            out[n] = slice(start, start + k)
            start += k
        return out

    def weight_mask(self, include_biases: bool = False, device=None) -> Tensor:
        """Boolean mask over θ: True on weights of dimension ≥ 2 (linear/conv kernels).

        Biases and normalisation parameters (1-D tensors) are False unless
        ``include_biases``.
        """
        parts = [
            torch.full((k,), include_biases or len(s) >= 2, dtype=torch.bool, device=device)
            for k, s in zip(self.numels, self.shapes, strict=True)
        ]
        return torch.cat(parts)

    def check(self, theta: Tensor) -> None:
        """Raise a one-line error unless θ is a 1-D tensor of length ``n``."""
        if not isinstance(theta, Tensor):
            raise WeightgeoError(f"θ must be a torch.Tensor, got {type(theta).__name__}")
        if theta.dim() != 1 or theta.numel() != self.n:
            raise WeightgeoError(
                f"θ must be a flat vector of length {self.n}, got shape {tuple(theta.shape)}"
            )

    # -- evaluation ---------------------------------------------------------------------
    def to(self, device=None, dtype=None) -> FunctionalModel:
        """Move the private module (its buffers and frozen parameters) in place; returns self."""
        self.module.to(device=device, dtype=dtype)
        self._stacked = None
        self.frozen = {
            n: p.detach() for n, p in self.module.named_parameters() if n not in set(self.names)
        }
        self.buffers = {n: b for n, b in self.module.named_buffers()}
        return self

    def __call__(self, theta: Tensor, x: Tensor, buffers: Mapping[str, Tensor] | None = None) -> Tensor:
        """Logits f(x; θ) in eval mode (no buffer is updated)."""
        params = self.unflatten(theta)
        state = {**self.frozen, **(self.buffers if buffers is None else buffers), **params}
        return select_output(functional_call(self.module, state, (x,)), self.output)

    def higher_derivatives(self, dual_numbers: bool = False):
        """The context for transforms that need forward-mode or second derivatives of the network
        (:func:`higher_derivatives`): math attention, and no cuDNN for its RNNs on CUDA;
        ``dual_numbers`` for a dual-number forward pass whose tangents are not differentiated."""
        return higher_derivatives(self.module, dual_numbers)

    def train_call(self, theta: Tensor, x: Tensor, buffers: Mapping[str, Tensor]) -> Tensor:
        """Logits in train mode (batch statistics, dropout on), updating ``buffers`` in place.

        ``buffers`` must be the caller's own tensors (e.g. from :meth:`clone_buffers`);
        the user's module and this object's buffers are untouched.
        """
        params = self.unflatten(theta)
        self.module.train()
        try:
            return select_output(functional_call(self.module, {**self.frozen, **buffers, **params}, (x,)),
                                 self.output)
        finally:
            self.module.eval()

    def stacked(self) -> StackedModel:
        """The network at many weight vectors at once (:class:`StackedModel`), built once."""
        if getattr(self, "_stacked", None) is None:
            self._stacked = StackedModel(self)
        return self._stacked

    def clone_buffers(self) -> dict[str, Tensor]:
        """A private copy of the buffers (batch-norm running statistics)."""
        return {n: b.clone() for n, b in self.buffers.items()}

    @property
    def has_batch_norm(self) -> bool:
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.module.modules())

    def load_into(self, model: nn.Module, theta: Tensor) -> nn.Module:
        """Write θ into ``model`` (a module the caller owns, e.g. for export); returns it."""
        with torch.no_grad():
            params = dict(model.named_parameters())
            for n, chunk in self.unflatten(theta).items():
                params[n].copy_(chunk)
        return model

    def to_module(self, theta: Tensor, buffers: Mapping[str, Tensor] | None = None) -> nn.Module:
        """A fresh ``nn.Module`` (a copy) holding θ, trainable, in eval mode."""
        model = copy.deepcopy(self.module)
        for p in model.parameters():
            p.requires_grad_(False)
        for n in self.names:
            model.get_parameter(n).requires_grad_(True)
        self.load_into(model, theta)
        if buffers is not None:
            with torch.no_grad():
                for n, b in model.named_buffers():
                    b.copy_(buffers[n])
        return model


def mask_logits(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Logits with the units outside ``allowed`` (K or B×K bool) set to −∞ (None: unchanged).

    The output units of one task in continual learning: the softmax then spreads over the
    allowed units only.
    """
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def as_functional(model: nn.Module | FunctionalModel) -> FunctionalModel:
    """Return ``model`` if it is already a :class:`FunctionalModel`, else wrap it."""
    return model if isinstance(model, FunctionalModel) else FunctionalModel(model)


class StackedModel:
    """``f(x; θ)`` for a stack of weight vectors at once: one vmapped ``functional_call``.

    A private copy of the model's module is used: eval mode (dropout off); batch norm (if any)
    normalises with the statistics of the batch, per point, since the running statistics of
    two trained networks mean nothing at a point between them. Used for the discrete path
    energy of ``relax`` and for curves through weight space.
    """

    def __init__(self, model: FunctionalModel) -> None:
        self.model = model
        module = copy.deepcopy(model.module).eval()
        for p in module.parameters():
            p.requires_grad_(False)
        if model.has_batch_norm:
            replace_all_batch_norm_modules_(module)
        self.module = module
        names = set(model.names)
        self.frozen = {n: p for n, p in module.named_parameters() if n not in names}
        self.module_buffers = dict(module.named_buffers())
        self.batched = vmap(self.single, in_dims=(0, None))
        self._last: tuple[Tensor, Tensor, Tensor] | None = None

    def single(self, theta: Tensor, x: Tensor) -> Tensor:
        """Logits at one θ (batch statistics for batch norm)."""
        m = self.model
        params = {n: chunk.view(s) for n, chunk, s in zip(m.names, theta.split(m.numels), m.shapes, strict=True)}
        out = functional_call(self.module, {**self.frozen, **self.module_buffers, **params}, (x,))
        return select_output(out, m.output)

    def __call__(self, stack: Tensor, x: Tensor) -> Tensor:
        """Logits at every row of ``stack`` (N×n): N×B×C, in one batched pass.

        Asked twice in a row for the same tensors (the same objects), it returns the same outputs
        (and autograd graph): a path energy and a task loss on one batch share one forward pass.
        """
        last = self._last
        if last is not None and last[0] is stack and last[1] is x:
            return last[2]
        with self.model.higher_derivatives():  # vmap: no fused fast path, exact normalisation
            out = self.batched(stack, x)
        self._last = (stack, x, out)
        return out

    def loop(self, stack: Tensor, x: Tensor) -> Tensor:
        """The same as ``__call__`` with a Python loop over the rows (the benchmark's reference)."""
        with self.model.higher_derivatives():
            return torch.stack([self.single(theta, x) for theta in stack.unbind(0)])
