"""End-to-end jobs behind the CLI (train a model, load a checkpoint with its data).

Each function is usable from Python without the CLI; the commands only parse options
and call these.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from weightgeo.data import Data, augment_batch, load_dataset
from weightgeo.errors import WeightgeoError
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model, check_model_fits, config_for_data
from weightgeo.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from weightgeo.plotting import training_curves
from weightgeo.rundir import append_jsonl, prepare_run_dir, write_json
from weightgeo.training import evaluate, train


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """'auto' → cuda if available else cpu; otherwise the named device, checked."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
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


def train_model(
    model_name: str = "mlp",
    dataset: str = "mnist5k",
    out: str | os.PathLike | None = None,
    *,
    config: dict | None = None,
    epochs: int = 20,
    lr: float = 0.05,
    batch_size: int = 64,
    weight_decay: float = 0.0,
    augment: bool | None = None,
    data_root: str | None = None,
    download: bool = False,
    seed: int = 0,
    device: str | torch.device = "auto",
    overwrite: bool = False,
    progress: bool = False,
) -> dict:
    """Train ``model_name`` on ``dataset`` from seed ``seed``; write a run directory to ``out``.

    The run directory holds ``model.pt`` (the checkpoint), ``config.json``, ``metrics.jsonl``
    (one line per epoch: epoch, train_loss, test_loss, test_accuracy) and
    ``training_curves.png``. Returns a dict with the final test accuracy, the checkpoint
    path, θ and the seconds taken.
    """
    dev = resolve_device(device)
    train_data = load_dataset(dataset, "train", data_root, download).to(dev)
    test_data = load_dataset(dataset, "test", data_root, download).to(dev)
    full_config = model_config_for(model_name, train_data, config)
    torch.manual_seed(seed)
    module = build_model(model_name, **full_config).to(dev)
    fmodel = FunctionalModel(module)
    initial = fmodel.theta()
    check_model_fits(model_name, lambda x: fmodel(initial, x), train_data, what=dataset)
    run = None if out is None else prepare_run_dir(out, overwrite)
    settings = {
        "command": "train", "model": model_name, "config": full_config, "dataset": dataset,
        "epochs": epochs, "lr": lr, "batch_size": batch_size, "weight_decay": weight_decay,
        "seed": seed, "device": str(dev),
    }
    if run is not None:
        write_json(run / "config.json", settings)
    use_augment = dataset.startswith("cifar") if augment is None else augment
    started = time.perf_counter()

    def log_epoch(epoch: int, theta: torch.Tensor, buffers: dict) -> dict:
        scores = evaluate(fmodel, theta, test_data, buffers=buffers)
        row = {"test_loss": scores["loss"], "test_accuracy": scores["accuracy"]}
        return row

    result = train(
        fmodel, fmodel.theta(), train_data, epochs=epochs, lr=lr, batch_size=batch_size,
        weight_decay=weight_decay, seed=seed,
        augment=(lambda x, g: augment_batch(x, generator=g)) if use_augment else None,
        epoch_callback=log_epoch, progress=progress,
    )
    seconds = time.perf_counter() - started
    final = evaluate(fmodel, result.theta, test_data, buffers=result.buffers)
    trained = fmodel.to_module(result.theta, result.buffers)
    checkpoint = None
    if run is not None:
        for row in result.history:
            append_jsonl(run / "metrics.jsonl", row)
        checkpoint = save_checkpoint(
            run / "model.pt", trained, model_name, full_config, dataset, final["accuracy"],
            extra={"seed": seed, "epochs": epochs, "test_loss": final["loss"]},
        )
        if result.history:
            training_curves(run / "training_curves.png", result.history)
    return {
        "test_accuracy": final["accuracy"], "test_loss": final["loss"], "checkpoint": checkpoint,
        "theta": result.theta, "model": trained, "seconds": seconds, "history": result.history,
    }


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
