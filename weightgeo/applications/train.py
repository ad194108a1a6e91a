"""``weightgeo train``: train a network on a data set, as an application with one unit of work.

The run directory holds ``model.pt`` (the checkpoint), ``config.json``, ``metrics.jsonl`` (one
line per epoch: epoch, train_loss, test_loss, test_accuracy), ``training_curves.png`` and
``summary.md``. After every epoch the checkpoint and ``metrics.jsonl`` are rewritten and the
loop's whole state (θ, momentum, schedule, the batch stream's generator, batch-norm buffers) is
saved, so an interrupted run keeps every completed epoch and ``--resume`` continues it to the
same numbers. A run whose loss or weights become non-finite stops there, keeps the last
completed epoch's checkpoint, and is reported as diverged (exit status 3 on the CLI).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch

from weightgeo.applications.base import (
    Application,
    RunOptions,
    Unit,
    register_application,
    run_application,
)
from weightgeo.data import DATASET_NAMES, augment_batch, load_dataset
from weightgeo.errors import WeightgeoError
from weightgeo.evaluation import evaluate
from weightgeo.functional import FunctionalModel
from weightgeo.models import MODEL_NAMES, build_model, check_model_fits, config_for_data
from weightgeo.models.checkpoint import save_checkpoint
from weightgeo.models.registry import default_config
from weightgeo.plotting import training_curves
from weightgeo.registry import Registry
from weightgeo.rundir import RunDirectory, append_jsonl, write_text
from weightgeo.settings import Settings, setting
from weightgeo.training import train

TRAIN_METHODS: Registry = Registry("method")
TRAIN_METHODS.register("sgd", train, help="Minibatch SGD with momentum and a cosine schedule.")


@dataclass
class TrainSettings(Settings):
    """What to train and how."""

    model: str = setting("mlp", "Architecture.", choices=MODEL_NAMES)
    dataset: str = setting("mnist5k", "Data set: mnist5k (embedded), mnist, fashion-mnist, cifar10 or cifar100; a "
                           "--model that does not fit its inputs is refused, naming those that do.",
                           choices=DATASET_NAMES)
    hidden: tuple[int, ...] | None = setting(None, "MLP hidden sizes, e.g. 300,100.", min=1)
    batch_norm: bool | None = setting(None, "Batch norm in VGG (default: on).")
    width: float | None = setting(None, "Width multiplier of VGG and ResNet (e.g. 0.25 for a small net).", above=0)
    epochs: int = setting(20, "Passes over the training set.", min=1)
    lr: float = setting(0.05, "SGD learning rate (cosine decay).", above=0)
    batch_size: int = setting(64, "Minibatch size.", min=1)
    weight_decay: float = setting(0.0, "L2 weight decay.", min=0)
    augment: bool | None = setting(None, "Random crop + flip (default: on for CIFAR).")
    seed: int = setting(0, "Random seed (reruns give the same numbers).")

    def model_config(self) -> dict[str, Any]:
        """The options of the architecture that were set (refused where the model has no such option)."""
        chosen = {"hidden": None if self.hidden is None else list(self.hidden), "batch_norm": self.batch_norm,
                  "width": self.width}
        own = default_config(self.model)
        given = {key: value for key, value in chosen.items() if value is not None}
        for key in given:
            if key not in own:
                raise WeightgeoError(f"--{key.replace('_', '-')} does not apply to model {self.model} "
                                     f"(its options: {', '.join(own)})")
        return given


@register_application
class Train(Application):
    """Train a model and write model.pt, config.json, metrics.jsonl and training_curves.png to --out."""

    name = "train"
    Settings = TrainSettings
    methods: ClassVar[Registry] = TRAIN_METHODS

    def check(self) -> None:
        """Load the data, build the model and refuse one that does not fit (before any file is written)."""
        s, options = self.settings, self.options
        self.device = options.torch_device
        self.train_data = load_dataset(s.dataset, "train", options.data_root, options.download).to(self.device)
        self.test_data = load_dataset(s.dataset, "test", options.data_root, options.download).to(self.device)
        self.model_config = config_for_data(s.model, self.train_data, s.model_config())
        torch.manual_seed(s.seed)
        self.fmodel = FunctionalModel(build_model(s.model, **self.model_config).to(self.device))
        initial = self.fmodel.theta()
        check_model_fits(s.model, lambda x: self.fmodel(initial, x), self.train_data, what=s.dataset)


    def config(self) -> dict:
        """config.json: the settings, the model's full config and the device."""
        s = self.settings
        return {**super().config(), "command": "train", "model": s.model, "config": self.model_config,
                "dataset": s.dataset, "epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size,
                "weight_decay": s.weight_decay, "seed": s.seed, "device": str(self.device)}

    def units(self):
        return [Unit("train")]

    def _save(self, run: RunDirectory | None, theta, buffers, accuracy: float | None, epoch: int) -> Path | None:
        if run is None:
            return None
        s = self.settings
        return save_checkpoint(run / "model.pt", self.fmodel.to_module(theta, buffers), s.model, self.model_config,
                               s.dataset, accuracy, extra={"seed": s.seed, "epochs": epoch})

    def run_unit(self, unit: Unit, run: RunDirectory | None) -> list[dict]:
        s = self.settings
        saved = None if run is None else run.load_state("train")
        history: list[dict] = [] if saved is None else list(saved["history"])
        if run is not None:  # the epochs recorded so far, and nothing after them
            write_text(run / "metrics.jsonl", "")
            for row in history:
                append_jsonl(run / "metrics.jsonl", row)

        def epoch_done(epoch: int, theta: torch.Tensor, buffers: dict) -> dict:
            scores = evaluate(self.fmodel, theta, self.test_data, buffers=buffers)
            row = {"test_loss": scores["loss"], "test_accuracy": scores["accuracy"]}
            self._save(run, theta, buffers, scores["accuracy"], epoch)
            return row

        def checkpoint(state: dict) -> None:
            if run is not None:
                append_jsonl(run / "metrics.jsonl", state["history"][-1])
                run.save_state("train", state)

        use_augment = s.dataset.startswith("cifar") if s.augment is None else s.augment
        started = time.perf_counter()
        result = train(
            self.fmodel, self.fmodel.theta(), self.train_data, epochs=s.epochs, lr=s.lr, batch_size=s.batch_size,
            weight_decay=s.weight_decay, seed=s.seed,
            augment=(lambda x, g: augment_batch(x, generator=g)) if use_augment else None,
            epoch_callback=epoch_done, checkpoint=checkpoint, resume=saved, progress=self.options.progress,
        )
        self.result, self.seconds = result, time.perf_counter() - started
        row = {"model": s.model, "dataset": s.dataset, "epochs": s.epochs, "grad_evals": result.grad_evals,
               **result.stop.as_dict()}
        if result.stop.diverged:
            row["stop_message"] = result.stop.message("train", "lower --lr")
            return [row]  # the last completed epoch's checkpoint stays: the diverged end is not saved
        final = evaluate(self.fmodel, result.theta, self.test_data, buffers=result.buffers)
        row.update(test_accuracy=final["accuracy"], test_loss=final["loss"])
        checkpoint = self._save(run, result.theta, result.buffers, final["accuracy"], s.epochs)
        if run is not None:
            run.drop_state("train")
            row["checkpoint"] = str(checkpoint)
        return [row]

    def report(self, rows: list[dict], run: RunDirectory) -> Path:
        from weightgeo.rundir import read_jsonl

        history = read_jsonl(run / "metrics.jsonl")
        if history:
            training_curves(run / "training_curves.png", history)
        row = rows[0]
        lines = [f"# Training {row['model']} on {row['dataset']}", ""]
        if "test_accuracy" in row:
            lines.append(f"Test accuracy {100 * row['test_accuracy']:.2f}% after {row['epochs']} epochs "
                         f"({row['grad_evals']} minibatches); checkpoint `model.pt`.")
        else:
            lines.append(row.get("stop_message", "training did not finish"))
        if history:
            lines += ["", "![training curves](training_curves.png)"]
        return write_text(run / "summary.md", "\n".join(lines) + "\n")

    def headline(self, rows: list[dict]) -> list[str]:
        row = rows[0]
        if "test_accuracy" not in row:
            return []
        return [f"test accuracy {100 * row['test_accuracy']:.2f}% after {row['epochs']} epochs "
                f"({row['grad_evals']} minibatches); checkpoint {row.get('checkpoint')}"]


def train_model(
    model_name: str = "mlp",
    dataset: str = "mnist5k",
    out: str | Path | None = None,
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
    resume: bool = False,
    progress: bool = False,
) -> dict:
    """Train ``model_name`` on ``dataset`` from seed ``seed`` (into the run directory ``out``, if given).

    ``config`` sets architecture options (hidden, batch_norm, width). Returns a dict with the
    final test accuracy and loss, the checkpoint path (None without ``out``), θ, the trained
    module, the seconds taken and the per-epoch history.

    Raises:
        WeightgeoError: bad settings, a model that does not fit the data, or a diverged run.
    """
    config = dict(config or {})
    settings = TrainSettings(
        model=model_name, dataset=dataset, hidden=config.pop("hidden", None), batch_norm=config.pop("batch_norm", None),
        width=config.pop("width", None), epochs=epochs, lr=lr, batch_size=batch_size, weight_decay=weight_decay,
        augment=augment, seed=seed,
    )
    if config:
        raise WeightgeoError(f"unknown model option {', '.join(config)}; use hidden, batch_norm or width")
    app = Train(settings, options=RunOptions(device=device, data_root=data_root, download=download,
                                             progress=progress))
    if out is None:
        app.check()
        rows = app.run_unit(Unit("train"), None)
    else:
        rows = run_application(app, out, overwrite=overwrite, resume=resume).rows
    row = rows[0]
    if row["stop_reason"] == "non-finite":
        raise WeightgeoError(row["stop_message"])
    if not hasattr(app, "result"):
        raise WeightgeoError(f"{out} holds a finished training run: load its model.pt instead of resuming it")
    result = app.result
    return {"test_accuracy": row["test_accuracy"], "test_loss": row["test_loss"],
            "checkpoint": None if out is None else Path(out) / "model.pt", "theta": result.theta,
            "model": app.fmodel.to_module(result.theta, result.buffers), "seconds": app.seconds,
            "history": result.history}
