"""Sparse checkpoints, reloading them as masked weight spaces, and export to ``torch.nn.utils.prune``.

A sparse checkpoint is an ordinary weightgeo checkpoint whose weights hold exact zeros,
plus ``extra["keep_mask"]`` (a bool tensor over θ: True where a weight may be non-zero)
and ``extra["sparsity"]``. Reloading gives the mask back, so fine-tuning or a further
traversal on ``WeightSpace(..., mask=keep)`` keeps the network sparse.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn.utils import prune

from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from weightgeo.objectives.sparsity import measured_sparsity


def save_sparse_checkpoint(
    path: str | os.PathLike,
    fmodel: FunctionalModel,
    theta: Tensor,
    keep: Tensor,
    *,
    name: str,
    config: dict,
    dataset: str,
    test_accuracy: float | None,
    buffers: dict[str, Tensor] | None = None,
    extra: dict | None = None,
) -> Path:
    """Write θ ⊙ keep as a checkpoint with its mask; refuses a θ that is not zero off the mask."""
    keep = keep.detach().bool()
    if bool((theta.detach()[~keep] != 0).any()):
        raise WeightgeoError("θ has non-zero weights outside its keep-mask: apply the mask first")
    eligible = fmodel.weight_mask(include_biases=True, device=theta.device)
    info = {
        "keep_mask": keep.cpu(),
        "sparsity": measured_sparsity(theta, fmodel.weight_mask(device=theta.device)),
        "sparsity_all_parameters": measured_sparsity(theta, eligible),
        **(extra or {}),
    }
    module = fmodel.to_module(theta, buffers)
    return save_checkpoint(path, module, name, config, dataset, test_accuracy, extra=info)


@dataclass
class SparseNetwork:
    """A reloaded sparse checkpoint: the model as a function of θ, θ and its keep-mask."""

    checkpoint: Checkpoint
    fmodel: FunctionalModel
    theta: Tensor
    keep: Tensor


def load_sparse(path: str | os.PathLike | Checkpoint, device: str | torch.device = "cpu") -> SparseNetwork:
    """Load a sparse checkpoint (file or run directory); the mask is the stored one, or, for a
    checkpoint written without one, the pattern of its non-zero weights (biases always kept)."""
    ckpt = path if isinstance(path, Checkpoint) else load_checkpoint(path)
    fmodel = FunctionalModel(ckpt.model.to(device))
    theta = fmodel.theta()
    stored = ckpt.extra.get("keep_mask")
    if stored is None:
        keep = (theta != 0) | ~fmodel.weight_mask(device=theta.device)
    else:
        if not isinstance(stored, Tensor) or stored.shape != (fmodel.n,):
            raise WeightgeoError(f"{ckpt.path}: its keep_mask does not fit the model ({fmodel.n} weights)")
        keep = stored.to(device=theta.device, dtype=torch.bool)
    return SparseNetwork(ckpt, fmodel, theta * keep, keep)


def to_pruned_module(fmodel: FunctionalModel, theta: Tensor, keep: Tensor, buffers=None) -> nn.Module:
    """A new module holding θ where every parameter with a pruned entry is pruned the
    ``torch.nn.utils.prune`` way: ``<name>_orig`` (a parameter) and ``<name>_mask`` (a buffer).

    Call ``torch.nn.utils.prune.remove(module, name)`` on it to make the zeros permanent.
    """
    keep = keep.detach().bool()
    module = fmodel.to_module(theta * keep, buffers)
    for name, piece, shape in zip(
        fmodel.names, keep.split(fmodel.numels), fmodel.shapes, strict=True
    ):
        if bool(piece.all()):
            continue
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        prune.custom_from_mask(owner, leaf, mask=piece.view(shape).to(theta.dtype))
    return module


def pruned_parameter_names(module: nn.Module) -> list[str]:
    """Names of the parameters a ``torch.nn.utils.prune`` module masks (``…_orig``)."""
    return [n[: -len("_orig")] for n, _ in module.named_parameters() if n.endswith("_orig")]
