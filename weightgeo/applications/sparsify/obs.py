"""Layer-wise Optimal Brain Surgeon (OBC: Frantar, Singh & Alistarh 2022) on unlabelled inputs.

For a linear layer z = W a (+ b) seen on inputs a, with ā = [a; 1] when its bias may compensate,
the layer-wise error of a new row w' is (w' − w)ᵀ H (w' − w), H = mean ā āᵀ + λI (λ a fraction of
H's mean diagonal: OBC's dampening). Removing coordinate q of a row adds w_q²/[H⁻¹]_qq to it, and
the best correction of the others is δw = −(w_q/[H⁻¹]_qq) H⁻¹e_q (Hassibi & Stork 1993); the
inverse on the remaining coordinates is then H⁻¹ − H⁻¹e_q e_qᵀH⁻¹/[H⁻¹]_qq. OBC removes every
row's coordinates greedily with these exact updates, recording what each removal adds; a layer
with c coordinates to prune takes its c smallest additions as a prefix of every row's order, and
each pruned row is the exact minimiser of its error with those coordinates at zero,
w'_K = w_K + H_KK⁻¹ H_KP w_P. A Conv2d layer is a linear layer on its unfolded patches.

:func:`refit_in_sequence` corrects what OBC's independent layers leave: with every mask fixed, each
layer in forward order is refit to the dense layer's outputs on the inputs the pruned network now
feeds it (the errors of the layers before it included).

Only forward passes are needed: no gradient evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from weightgeo.functional import FunctionalModel


@dataclass
class ObservedLayer:
    """One linear (or unfolded Conv2d) layer: where its weight (rows × columns) and compensating
    bias live in θ, and H over its columns (plus the bias's, last), float64, damped."""

    name: str
    weight: slice
    bias: slice | None
    rows: int
    columns: int
    hessian: Tensor

    def matrix(self, theta: Tensor) -> Tensor:
        """The layer's rows [W | b] in float64 (b when it compensates)."""
        w = theta[self.weight].reshape(self.rows, self.columns)
        if self.bias is not None:
            w = torch.cat([w, theta[self.bias].reshape(self.rows, 1)], dim=1)
        return w.double()

    def write(self, theta: Tensor, matrix: Tensor) -> Tensor:
        """θ with the layer's rows replaced by ``matrix`` ([W | b])."""
        theta = theta.clone()
        theta[self.weight] = matrix[:, :self.columns].reshape(-1).to(theta.dtype)
        if self.bias is not None:
            theta[self.bias] = matrix[:, self.columns].to(theta.dtype)
        return theta


def _unfolding(module: nn.Module) -> dict | None:
    """F.unfold's arguments for a Conv2d this module covers (numeric zero padding, groups 1)."""
    if module.groups != 1 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    return {"kernel_size": module.kernel_size, "dilation": module.dilation, "padding": module.padding,
            "stride": module.stride}


def _covered_modules(fmodel: FunctionalModel) -> list[tuple[str, nn.Module, dict | None]]:
    """The Linear and Conv2d modules whose weight is in θ (with their unfolding, if Conv2d)."""
    slices = fmodel.slices()
    out = []
    for name, module in fmodel.module.named_modules():
        if (f"{name}." if name else "") + "weight" not in slices:
            continue
        if isinstance(module, nn.Linear):
            out.append((name, module, None))
        elif isinstance(module, nn.Conv2d) and (unfold := _unfolding(module)) is not None:
            out.append((name, module, unfold))
    return out


def _input_rows(inputs: Tensor, unfold: dict | None, columns: int, bias: bool) -> Tensor:
    """A layer's inputs as rows ā (examples × positions, columns [+ 1]), float64."""
    if unfold is not None:
        inputs = F.unfold(inputs, **unfold).transpose(1, 2)
    rows = inputs.reshape(-1, columns).double()
    return torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1) if bias else rows


@torch.no_grad()
def observe_layers(
    fmodel: FunctionalModel,
    theta: Tensor,
    inputs: Tensor,
    eligible: Tensor,
    *,
    dampening: float = 0.01,
    batch_size: int = 1000,
) -> list[ObservedLayer]:
    """H = mean ā āᵀ + λI of every covered layer on ``inputs`` (forward passes at θ), λ =
    ``dampening`` × mean diag. A layer's bias compensates when it is in θ and not ``eligible``;
    a layer called more than once per forward pass is left out (its weights are not covered)."""
    slices = fmodel.slices()
    found = []
    for name, module, unfold in _covered_modules(fmodel):
        prefix = f"{name}." if name else ""
        weight, bias = slices[f"{prefix}weight"], slices.get(f"{prefix}bias")
        if bias is not None and bool(eligible[bias].any()):
            bias = None
        rows = module.weight.shape[0]
        found.append((name, module, unfold, weight, bias, rows, module.weight[0].numel()))
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = {}
    calls: dict[str, int] = {}

    def recorder(name, unfold, columns, bias):
        def record(module, args, output):
            rows = _input_rows(args[0], unfold, columns, bias is not None)
            sums[name] = sums.get(name, 0) + rows.T @ rows
            counts[name] = counts.get(name, 0) + rows.shape[0]
            calls[name] = calls.get(name, 0) + 1
        return record

    for start in range(0, len(inputs), batch_size):
        calls.clear()
        handles = [module.register_forward_hook(recorder(name, unfold, columns, bias))
                   for name, module, unfold, _, bias, _, columns in found]
        try:
            fmodel(theta, inputs[start:start + batch_size])
        finally:
            for handle in handles:
                handle.remove()
        found = [f for f in found if calls.get(f[0]) == 1]
    layers = []
    for name, _, _, weight, bias, rows, columns in found:
        h = sums[name] / counts[name]
        h = h + dampening * h.diagonal().mean().clamp_min(1e-12) * torch.eye(len(h), dtype=h.dtype, device=h.device)
        layers.append(ObservedLayer(name, weight, bias, rows, columns, h))
    return layers


def greedy_removals(matrix: Tensor, hessian: Tensor, columns: int, chunk: int = 16,
                    compact_every: int = 32) -> tuple[Tensor, Tensor]:
    """Every row of ``matrix`` emptied of its first ``columns`` coordinates by exact OBS steps
    under the shared ``hessian`` (later columns, the bias, are never removed).

    Returns:
        ``order`` (rows × columns): the columns in the order they are removed, and
        ``increments`` (rows × columns): the error w_q²/[H⁻¹]_qq each removal adds.
    """
    rows, width = matrix.shape
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    order = torch.empty(rows, columns, dtype=torch.long, device=matrix.device)
    increments = torch.empty(rows, columns, dtype=matrix.dtype, device=matrix.device)
    for start in range(0, rows, chunk):
        w = matrix[start:start + chunk].clone()
        b = len(w)
        h = hinv.expand(b, width, width).clone()
        index = torch.arange(width, device=w.device).expand(b, width).clone()
        alive = index < columns
        every = torch.arange(b, device=w.device)
        for step in range(columns):
            if step and step % compact_every == 0:  # drop the removed coordinates' rows and columns
                keep = (alive | (index >= columns)).nonzero()[:, 1].view(b, -1)
                h = h[every[:, None, None], keep[:, :, None], keep[:, None, :]]
                w, index, alive = w.gather(1, keep), index.gather(1, keep), alive.gather(1, keep)
            diag = h.diagonal(dim1=1, dim2=2)
            score = torch.where(alive, w.square() / diag, torch.inf)
            q = score.argmin(1)
            column = h[every, q, :]  # H⁻¹ is symmetric: its row q, contiguous
            d = column[every, q]
            wq = w[every, q]
            increments[start:start + b, step] = wq.square() / d
            order[start:start + b, step] = index[every, q]
            w.sub_((wq / d)[:, None] * column)
            h.baddbmm_(column[:, :, None], (column / d[:, None])[:, None, :], alpha=-1)
            w[every, q] = 0.0
            alive[every, q] = False
    return order, increments


def saliency_removals(matrix: Tensor, hessian: Tensor, columns: int) -> tuple[Tensor, Tensor]:
    """OBS's saliency w_q²/[H⁻¹]_qq of the dense row for every coordinate, without the updates
    between removals: each row's first ``columns`` coordinates ordered by it (the cheap order for
    layers too wide for the greedy one). Returns (order, saliencies in that order)."""
    hinv = torch.cholesky_inverse(torch.linalg.cholesky(hessian))
    score = matrix[:, :columns].square() / hinv.diagonal()[:columns]
    increments, order = torch.sort(score, dim=1, stable=True)
    return order, increments


def allocate(increments: Tensor, count: int) -> Tensor:
    """How many removals each row takes so that ``count`` are taken in all: the smallest
    increments, each row's made non-decreasing along its order first so that every row takes a
    prefix (ties go to the earlier removal)."""
    rows, columns = increments.shape
    levels = increments.cummax(1).values.reshape(-1)
    chosen = torch.argsort(levels, stable=True)[:count]
    return torch.bincount(torch.div(chosen, columns, rounding_mode="floor"), minlength=rows)


def reconstruct(row: Tensor, hessian: Tensor, pruned: Tensor) -> Tensor:
    """The minimiser of (w' − w)ᵀ H (w' − w) with w'_P = 0: w'_K = w_K + H_KK⁻¹ H_KP w_P."""
    out = torch.zeros_like(row)
    kept = torch.ones(len(row), dtype=torch.bool, device=row.device)
    kept[pruned] = False
    if len(pruned) == 0:
        return row.clone()
    if bool(kept.any()):
        h_kp = hessian[kept][:, ~kept]
        out[kept] = row[kept] + torch.linalg.solve(hessian[kept][:, kept], h_kp @ row[~kept])
    return out


class LayerwiseOBS:
    """OBC on a network's covered layers, its greedy orders computed once (at the first prune).

    Args:
        fmodel, theta: the dense network.
        inputs: the unlabelled inputs whose layer inputs give each H.
        eligible: the coordinates that may be pruned.
        dampening: λ as a fraction of H's mean diagonal.
        greedy_columns: the widest layer whose rows are pruned greedily (O(rows · columns³));
            wider layers are ordered by the dense row's saliencies (:func:`saliency_removals`).
    """

    def __init__(self, fmodel: FunctionalModel, theta: Tensor, inputs: Tensor, eligible: Tensor,
                 dampening: float = 0.01, greedy_columns: int = 2048) -> None:
        self.theta = theta.detach()
        self.fmodel, self.inputs, self.dampening = fmodel, inputs, dampening
        self.greedy_columns = greedy_columns
        self.layers = observe_layers(fmodel, self.theta, inputs, eligible, dampening=dampening)
        self.covered = torch.zeros_like(eligible)
        for layer in self.layers:
            self.covered[layer.weight] = True
        self.removals: list[tuple[Tensor, Tensor]] | None = None

    def orders(self) -> list[tuple[Tensor, Tensor]]:
        """Each layer's (order, increments) from :func:`greedy_removals`."""
        if self.removals is None:
            self.removals = [
                (greedy_removals if layer.columns <= self.greedy_columns else saliency_removals)(
                    layer.matrix(self.theta), layer.hessian, layer.columns)
                for layer in self.layers]
        return self.removals

    def prune(self, reference: Tensor) -> tuple[Tensor, Tensor]:
        """θ pruned with as many zeros in each covered layer as the keep-mask ``reference`` has
        there (coordinates outside the covered layers keep ``reference``'s choice, unchanged).

        Returns:
            (θ', keep): θ' is zero where keep is False, its rows (and compensating biases) the
            exact layer-wise minimisers.
        """
        theta, keep = self.theta * reference, reference.clone()
        for layer, (order, increments) in zip(self.layers, self.orders(), strict=True):
            count = int((~reference[layer.weight]).sum())
            taken = allocate(increments, count)
            matrix, hessian = layer.matrix(self.theta), layer.hessian
            rows = torch.stack([reconstruct(matrix[r], hessian, order[r, :int(taken[r])])
                                for r in range(layer.rows)])
            mask = torch.ones(layer.rows, layer.columns, dtype=torch.bool, device=keep.device)
            for r in range(layer.rows):
                mask[r, order[r, :int(taken[r])]] = False
            keep[layer.weight] = mask.reshape(-1)
            theta = layer.write(theta, rows)
        return theta * keep, keep

    def refit(self, theta: Tensor, keep: Tensor) -> Tensor:
        """:func:`refit_in_sequence` of θ's covered layers on this pruner's inputs and dampening,
        toward the dense network it was built on."""
        return refit_in_sequence(self.fmodel, self.theta, theta, keep, self.layers, self.inputs,
                                 dampening=self.dampening)


def _layer_inputs(fmodel: FunctionalModel, theta: Tensor, module: nn.Module, inputs: Tensor) -> Tensor:
    """What ``module`` receives when the network at θ reads ``inputs`` (one forward pass)."""
    got: list[Tensor] = []
    handle = module.register_forward_hook(lambda _module, args, _output: got.append(args[0]))
    try:
        fmodel(theta, inputs)
    finally:
        handle.remove()
    return got[0]


@torch.no_grad()
def refit_in_sequence(
    fmodel: FunctionalModel,
    theta0: Tensor,
    theta: Tensor,
    keep: Tensor,
    layers: list[ObservedLayer],
    inputs: Tensor,
    *,
    dampening: float = 0.01,
    batch_size: int = 1000,
) -> Tensor:
    """θ with each of ``layers`` in turn (their order: forward order) refit, row by row, to the
    dense layer's outputs on the inputs the network now feeds it:

        w'_K = argmin_{w'_P = 0} mean (w'·ā' − w·ā)² + λ||w' − w||²  =  (A'_KK + λI)⁻¹ (C w + λw)_K,

    A' = mean ā'ā'ᵀ, C = mean ā'āᵀ (ā: the layer's inputs at θ₀; ā': at θ with the earlier
    layers already refit), w the dense row, K its kept coordinates (and the compensating bias),
    λ = ``dampening`` × mean diag A'. For a layer whose inputs are unchanged (the first) this is
    OBS's reconstruction. Forward passes only.

    Args:
        fmodel, theta0: the dense network.
        theta: the pruned point (coordinates outside ``layers`` are kept as they are).
        keep: its mask; every refit row is zero where ``keep`` is False.
        layers: the covered layers (:func:`observe_layers`).
        inputs: the unlabelled inputs.

    Returns:
        The refit θ (exactly zero where ``keep`` is False).
    """
    modules = dict(fmodel.module.named_modules())
    unfolding = {name: unfold for name, _, unfold in _covered_modules(fmodel)}
    theta = theta.detach() * keep
    for layer in layers:
        module, bias = modules[layer.name], layer.bias is not None
        second = cross = 0
        count = 0
        for start in range(0, len(inputs), batch_size):
            x = inputs[start:start + batch_size]
            dense = _input_rows(_layer_inputs(fmodel, theta0, module, x), unfolding[layer.name], layer.columns, bias)
            now = _input_rows(_layer_inputs(fmodel, theta, module, x), unfolding[layer.name], layer.columns, bias)
            second, cross, count = second + now.T @ now, cross + now.T @ dense, count + len(now)
        second, cross = second / count, cross / count
        damp = dampening * second.diagonal().mean().clamp_min(1e-12)
        w = layer.matrix(theta0)
        right = cross @ w.T + damp * w.T  # (C w + λ w) for every row, as columns
        kept = keep[layer.weight].reshape(layer.rows, layer.columns)
        if bias:
            kept = torch.cat([kept, kept.new_ones(layer.rows, 1)], dim=1)
        rows = torch.zeros_like(w)
        eye = torch.eye(len(second), dtype=second.dtype, device=second.device)
        for r in range(layer.rows):
            k = kept[r].nonzero().squeeze(1)
            if len(k):
                rows[r, k] = torch.linalg.solve(second[k][:, k] + damp * eye[:len(k), :len(k)], right[k, r])
        theta = layer.write(theta, rows)
    return theta * keep
