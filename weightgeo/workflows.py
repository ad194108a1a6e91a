"""End-to-end jobs behind the CLI: pick a device, load a checkpoint with its data, train a model.

Each function is usable from Python without the CLI; the commands only parse options and call
these. ``train_model`` is the training application's Python entry point
(:mod:`weightgeo.applications.train`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from weightgeo import distributed
from weightgeo.applications.train import train_model
from weightgeo.data import Data, load_dataset
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models import check_model_fits, config_for_data
from weightgeo.models.checkpoint import Checkpoint, load_checkpoint

__all__ = ["Loaded", "checkpoint_path", "load_with_data", "model_config_for", "resolve_device", "train_model"]


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → cuda if available else cpu (under torchrun: cuda:LOCAL_RANK); otherwise the named
    device, checked."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and distributed.active():  # under torchrun: this rank's GPU
        return distributed.local_device("cuda")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise WeightgeoError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise WeightgeoError(f"device {name} requested but CUDA is not available here")
    return device


def model_config_for(model_name: str, data: Data, config: dict | None = None) -> dict:
    """The model's full config, with input size and number of classes taken from the data."""
    return config_for_data(model_name, data, config)


@dataclass
class Loaded:
    """A checkpoint with its model as a function of θ and its data sets, on one device."""

    checkpoint: Checkpoint
    fmodel: FunctionalModel
    theta: torch.Tensor
    train: Data
    test: Data
    device: torch.device


def load_with_data(
    checkpoint: str | os.PathLike | Checkpoint,
    dataset: str | None = None,
    data_root: str | None = None,
    download: bool = False,
    device: str | torch.device = "auto",
) -> Loaded:
    """Load a checkpoint (file or run directory) and the data set it was trained on.

    ``dataset`` overrides the checkpoint's data set.
    """
    dev = resolve_device(device)
    ckpt = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
    name = dataset or ckpt.dataset
    train_data = load_dataset(name, "train", data_root, download).to(dev)
    test_data = load_dataset(name, "test", data_root, download).to(dev)
    fmodel = FunctionalModel(ckpt.model.to(dev))
    theta = fmodel.theta()
    check_model_fits(ckpt.name, lambda x: fmodel(theta, x), test_data, what=name)
    return Loaded(ckpt, fmodel, theta, train_data, test_data, dev)


def checkpoint_path(out: str | os.PathLike) -> Path:
    return Path(out) / "model.pt"
