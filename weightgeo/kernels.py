"""The kernels on which transforms that need higher derivatives run the network.

Some fused kernels lack derivatives that the metrics' transforms need (forward mode for the
dual-number product and the geodesic force, second order for the linearisation):

- the fused attention of ``F.scaled_dot_product_attention`` (flash and memory-efficient, CPU
  and CUDA) has neither a forward-mode formula nor a second derivative, and the fused fast path
  of ``nn.TransformerEncoderLayer``/``nn.MultiheadAttention`` (taken in eval mode when nothing
  requires grad, as under ``torch.func.jvp``) has no derivative at all;
- the forward-mode formulas of layer, instance and batch-statistics normalisation are right to
  first order but wrong when differentiated again (jvp of jvp, grad of jvp: PyTorch 2.14 gives
  d²f[v, v] off by 10–100 %), ``embedding_bag`` has neither forward mode nor a second
  derivative, and ``hardsigmoid`` no second derivative;
- cuDNN's RNNs (CUDA) have no second derivative, and torch.func cannot transform the fused
  kernel of an RNN over a packed sequence at all.

:func:`higher_derivatives` is the context that routes around them: the math attention, no
fast path, those normalisations, bags and packed RNNs in elementary operations
(:class:`ElementaryForms`), and for a network with RNNs on CUDA the native RNN. Outside it
nothing changes, so training and evaluation keep the fused kernels.

Dual numbers. With ``dual_numbers=True`` (the one-pass product ``mvp``: a forward pass with
forward-mode tangents, then a backward pass of the primal only) linear and convolution layers
take their tangents from :class:`DualNumberForms`: d(x ⊛ W + b) = dx ⊛ W + x ⊛ dW + db, with
the term of an input that carries no tangent skipped (PyTorch's formula multiplies by a zero
tangent: one wasted matrix product per first layer) and the tangent not recorded for backward.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode


@contextmanager
def higher_derivatives(module: nn.Module | None = None, dual_numbers: bool = False) -> Iterator[ElementaryForms]:
    """Run ``module`` on kernels that have forward-mode and second derivatives.

    The math attention, no fused fast path of the transformer layers, normalisation and bags
    of embeddings in elementary operations, and, for a network with RNNs on CUDA, the native
    RNN instead of cuDNN's (other layers keep cuDNN). Outside this context nothing changes.

    Args:
        module: the network (only to find RNNs on CUDA); None for any network.
        dual_numbers: the block runs a forward pass with ``torch.autograd.forward_ad`` tangents
            whose own derivatives are never needed (:class:`DualNumberForms`).

    Yields:
        the mode in force, which records whether the block convolved (``convolves``).
    """
    with ExitStack() as stack:
        stack.enter_context(sdpa_kernel([SDPBackend.MATH]))
        stack.enter_context(_attention_fast_path_disabled())
        forms = stack.enter_context(DualNumberForms() if dual_numbers else ElementaryForms())
        if module is not None and _has_cuda_rnn(module):
            stack.enter_context(_cudnn_disabled())
        yield forms


def _standardise(x: Tensor, dims: tuple[int, ...], eps: float) -> Tensor:
    """(x − mean) / √(var + eps) over ``dims`` (biased variance), in elementary operations."""
    centred = x - x.mean(dims, keepdim=True)
    return centred * torch.rsqrt(centred.square().mean(dims, keepdim=True) + eps)


def _scale_shift(y: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """y·weight + bias with per-channel parameters (dimension 1 of y)."""
    shape = (1, -1) + (1,) * (y.dim() - 2)
    y = y if weight is None else y * weight.view(shape)
    return y if bias is None else y + bias.view(shape)


def _layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    y = _standardise(input, tuple(range(-len(normalized_shape), 0)), eps)
    y = y if weight is None else y * weight
    return y if bias is None else y + bias


def _instance_norm(input, running_mean=None, running_var=None, weight=None, bias=None,
                   use_input_stats=True, momentum=0.1, eps=1e-5):
    if not use_input_stats or running_mean is not None or running_var is not None:
        return NotImplemented  # running statistics: affine in the input, or updated in place
    return _scale_shift(_standardise(input, tuple(range(2, input.dim())), eps), weight, bias)


def _batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
                momentum=0.1, eps=1e-5):
    if not training or running_mean is not None or running_var is not None:
        return NotImplemented  # running statistics: affine in the input, or updated in place
    dims = (0, *range(2, input.dim()))
    return _scale_shift(_standardise(input, dims, eps), weight, bias)


def _embedding_bag(input, weight, offsets=None, max_norm=None, norm_type=2, scale_grad_by_freq=False,
                   mode="mean", sparse=False, per_sample_weights=None, include_last_offset=False,
                   padding_idx=None):
    if input.dim() != 2 or max_norm is not None or padding_idx is not None or (
            per_sample_weights is not None and mode != "sum"):
        return NotImplemented  # bags given by offsets, renormalised or padded rows: as they are
    rows = F.embedding(input, weight)  # B × L × d
    if per_sample_weights is not None:
        rows = rows * per_sample_weights.unsqueeze(-1)
    return {"sum": rows.sum(1), "mean": rows.mean(1), "max": rows.amax(1)}[mode]


def _hardsigmoid(input, inplace=False):
    return F.relu6(input + 3.0) / 6.0  # aten::hardsigmoid_backward has no derivative


_CELLS = {"lstm": torch.lstm_cell, "gru": torch.gru_cell, "rnn_tanh": torch.rnn_tanh_cell,
          "rnn_relu": torch.rnn_relu_cell}


def _packed_rnn(kind: str):
    """``_VF.<kind>`` on a packed sequence as a loop of cells (torch.func cannot transform the
    fused packed kernel: "Cannot access data pointer of Tensor that doesn't have storage")."""

    def run(*args):
        if not isinstance(args[3], list | tuple):
            return NotImplemented  # the padded form: its kernel transforms fine
        data, batch_sizes, hx, params, has_biases, layers, _dropout, train, bidirectional = args
        directions = 2 if bidirectional else 1
        per = 4 if has_biases else 2
        if train or len(params) != layers * directions * per:
            return NotImplemented  # dropout between layers, or LSTM projections
        sizes = [int(b) for b in batch_sizes]  # a CPU tensor by PackedSequence's contract
        states = list(hx) if kind == "lstm" else [hx]
        finals: list[list[Tensor]] = [[] for _ in states]
        for layer in range(layers):
            outputs = []
            for direction in range(directions):
                k = layer * directions + direction
                weights = params[k * per : (k + 1) * per]
                out, last = _packed_direction(_CELLS[kind], data, sizes, [s[k] for s in states], weights,
                                              reverse=direction == 1)
                outputs.append(out)
                for store, value in zip(finals, last, strict=True):
                    store.append(value)
            data = torch.cat(outputs, dim=-1)
        return (data, *(torch.stack(f) for f in finals))

    return run


def _packed_direction(cell, data: Tensor, sizes: list[int], initial: list[Tensor], weights, reverse: bool):
    """One direction of one layer over packed rows: (its outputs in packed order, final states)."""
    offsets = [0]
    for b in sizes:
        offsets.append(offsets[-1] + b)
    steps = range(len(sizes) - 1, -1, -1) if reverse else range(len(sizes))
    state = [s[: sizes[-1]] if reverse else s for s in initial]
    outputs: list[Tensor | None] = [None] * len(sizes)
    for t in steps:
        b = sizes[t]
        if reverse and state[0].shape[0] < b:  # sequences that start here, backwards
            state = [torch.cat([s, s0[s.shape[0] : b]]) for s, s0 in zip(state, initial, strict=True)]
        x = data[offsets[t] : offsets[t + 1]]
        new = cell(x, tuple(s[:b] for s in state) if len(state) > 1 else state[0][:b], *weights)
        new = list(new) if isinstance(new, tuple) else [new]
        outputs[t] = new[0]
        state = [torch.cat([n, s[b:]]) for n, s in zip(new, state, strict=True)]
    return torch.cat(outputs), state  # type: ignore[arg-type]


class ElementaryForms(TorchFunctionMode):
    """Normalisation and bags of embeddings in elementary operations.

    PyTorch's fused layer, instance and batch-statistics normalisation have forward-mode
    formulas that are wrong when differentiated a second time, ``embedding_bag`` has neither a
    forward-mode formula nor a second derivative, and ``hardsigmoid`` (MobileNetV3's squeeze
    and excitation) no second derivative; the elementary forms have exact derivatives of every
    order. Normalisation by running statistics (affine in its input),
    bags given by offsets and anything else run unchanged.
    """

    RULES: dict[Callable, Callable] = {
        F.layer_norm: _layer_norm, F.instance_norm: _instance_norm, F.batch_norm: _batch_norm,
        F.embedding_bag: _embedding_bag, F.hardsigmoid: _hardsigmoid,
        **{getattr(torch._VF, kind): _packed_rnn(kind) for kind in _CELLS}}

    CONVOLUTIONS = frozenset((F.conv1d, F.conv2d, F.conv3d, F.conv_transpose1d, F.conv_transpose2d,
                              F.conv_transpose3d))

    def __init__(self) -> None:
        super().__init__()
        self.convolves = False  # whether a convolution ran inside (the products choose a route by it)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.CONVOLUTIONS:
            self.convolves = True
        rule = self.RULES.get(func)
        if rule is not None:
            out = rule(*args, **kwargs)
            if out is not NotImplemented:
                return out
        return func(*args, **kwargs)


def _dual_bilinear(op: Callable) -> Callable:
    """``op(x, W, b, *options)``, bilinear in (x, W) plus b, on dual numbers: the primal with
    autograd, the tangent dx ⊛ W + x ⊛ dW + db without it and without the terms of absent
    tangents."""

    def run(input, weight, bias=None, *args, **kwargs):
        x, dx = fwAD.unpack_dual(input)
        w, dw = fwAD.unpack_dual(weight)
        b, db = fwAD.unpack_dual(bias) if bias is not None else (None, None)
        if dx is None and dw is None and db is None:
            return NotImplemented
        out = op(x, w, b, *args, **kwargs)
        with torch.no_grad():
            tangent = None
            if dw is not None or db is not None:
                tangent = op(x, torch.zeros_like(w) if dw is None else dw, db, *args, **kwargs)
            if dx is not None:
                through_input = op(dx, w, None, *args, **kwargs)
                tangent = through_input if tangent is None else tangent.add_(through_input)
        return fwAD.make_dual(out, tangent)

    return run


class DualNumberForms(ElementaryForms):
    """:class:`ElementaryForms` plus linear and convolution layers whose forward-mode tangents
    skip absent input tangents and are not recorded for backward (first-order tangents only:
    the one-pass product detaches them)."""

    RULES: dict[Callable, Callable] = {
        **ElementaryForms.RULES,
        **{op: _dual_bilinear(op) for op in (F.linear, F.conv1d, F.conv2d, F.conv3d)}}


def _has_cuda_rnn(module: nn.Module) -> bool:
    return any(isinstance(m, nn.RNNBase) and any(p.is_cuda for p in m.parameters())
               for m in module.modules())


@contextmanager
def _attention_fast_path_disabled() -> Iterator[None]:
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


@contextmanager
def _cudnn_disabled() -> Iterator[None]:
    """cuDNN off (only that flag: benchmark, determinism and TF32 settings are left alone)."""
    before = torch.backends.cudnn.enabled
    torch.backends.cudnn.enabled = False
    try:
        yield
    finally:
        torch.backends.cudnn.enabled = before
