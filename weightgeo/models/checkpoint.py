"""Checkpoints: a model's name, config and weights in one file that loads without running code.

A checkpoint is a ``torch.save``\\ d dict holding only tensors and plain Python types::

    {"format": "weightgeo-checkpoint", "version": 1, "model": name, "config": {...},
     "dataset": "cifar10", "test_accuracy": 0.91 or None, "extra": {...}, "state_dict": {...}}

so ``torch.load(path, weights_only=True)`` reads it and ``build_model(name, **config)``
rebuilds the network. Files are written atomically: a crash never leaves a half-written one.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from weightgeo.errors import WeightgeoError
from weightgeo.models.registry import MODEL_NAMES, build_model, default_config

FORMAT = "weightgeo-checkpoint"
VERSION = 1
CHECKPOINT_FILENAME = "model.pt"
"""The checkpoint's file name inside a run directory."""


@dataclass
class Checkpoint:
    """A loaded checkpoint: the rebuilt model (weights loaded, eval mode) and what was stored."""

    model: nn.Module
    name: str
    config: dict[str, Any]
    dataset: str
    test_accuracy: float | None
    extra: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None


def _check_plain(value: Any, where: str) -> None:
    """Refuse anything ``torch.load(weights_only=True)`` could not read back."""
    if value is None or isinstance(value, (bool, int, float, str, torch.Tensor)):
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_plain(item, f"{where}[{i}]")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, (str, int)):
                raise TypeError(f"checkpoint {where} has a key of type {type(key).__name__}")
            _check_plain(item, f"{where}[{key!r}]")
        return
    raise TypeError(
        f"checkpoint {where} is a {type(value).__name__}; only tensors, None, bool, int, "
        "float, str, list, tuple and dict can be stored"
    )


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module,
    name: str,
    config: dict[str, Any],
    dataset: str,
    test_accuracy: float | None,
    extra: dict[str, Any] | None = None,
    state_dict: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write ``model`` (or ``state_dict`` instead) as a checkpoint at ``path``; return the file.

    ``path`` is the file, or an existing directory (the file is then ``path/model.pt``).
    ``config`` is completed with the model's defaults, so the stored config is the full one.
    Tensors are stored on the CPU. The file is written to a temporary file beside it and moved
    into place, so an existing checkpoint survives a failed save untouched.
    """
    target = Path(path)
    if target.is_dir():
        target = target / CHECKPOINT_FILENAME
    full_config = default_config(name, **config)
    weights = model.state_dict() if state_dict is None else state_dict
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "config": full_config,
        "dataset": str(dataset),
        "test_accuracy": None if test_accuracy is None else float(test_accuracy),
        "extra": dict(extra or {}),
        "state_dict": {k: v.detach().cpu() for k, v in weights.items()},
    }
    _check_plain(payload, "content")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, target)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise
    return target


def _resolve(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise WeightgeoError(f"checkpoint {p} does not exist")
    if p.is_dir():
        inner = p / CHECKPOINT_FILENAME
        if not inner.is_file():
            raise WeightgeoError(f"{p} is a directory without a {CHECKPOINT_FILENAME} checkpoint")
        return inner
    return p


def _read(p: Path, map_location: Any) -> dict[str, Any]:
    try:
        with warnings.catch_warnings():
            # torch warns about the pickle protocol of files it then refuses; the refusal below
            # is the one line the user needs
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        message = str(exc)
        if "Weights only load failed" not in message:
            raise WeightgeoError(f"{p} is not a weightgeo checkpoint (unreadable pickle)") from exc
        found = re.search(r"Unsupported global: GLOBAL (\S+)", message)
        what = f" ({found.group(1)})" if found else ""
        raise WeightgeoError(
            f"refusing to load {p}: it contains pickled code or objects{what} that a weightgeo "
            "checkpoint never holds; it was not written by weightgeo and may be unsafe"
        ) from exc
    except Exception as exc:  # zip errors, EOF, bad keys: anything torch cannot parse
        raise WeightgeoError(f"{p} is not a weightgeo checkpoint (unreadable file)") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise WeightgeoError(
            f"{p} is not a weightgeo checkpoint (no 'format: {FORMAT}' entry; "
            "a bare state dict cannot say which model it belongs to)"
        )
    version = payload.get("version")
    if version != VERSION:
        raise WeightgeoError(
            f"{p} is a weightgeo checkpoint of version {version!r}; this weightgeo reads "
            f"version {VERSION}"
        )
    missing = [k for k in ("model", "config", "state_dict") if k not in payload]
    if missing or not isinstance(payload["config"], dict):
        raise WeightgeoError(
            f"{p} is a damaged weightgeo checkpoint (missing {missing or 'config'})"
        )
    return payload


def load_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> Checkpoint:
    """Load a checkpoint file, or the ``model.pt`` of a run directory, and rebuild its model.

    Loading never unpickles code (``weights_only=True``). The model is built with
    ``build_model(name, **config)``, given the stored weights, moved to ``map_location`` when
    that names a device, and put in eval mode. Bad input raises a one-line WeightgeoError.
    """
    p = _resolve(path)
    payload = _read(p, map_location)
    name = payload["model"]
    if name not in MODEL_NAMES:
        raise WeightgeoError(
            f"{p} holds an unknown model {name!r}; this weightgeo knows: {', '.join(MODEL_NAMES)}"
        )
    try:
        config = default_config(name, **payload["config"])
    except WeightgeoError as exc:
        raise WeightgeoError(f"{p} has a config this weightgeo cannot build: {exc}") from exc
    model = build_model(name, **config)
    try:
        model.load_state_dict(payload["state_dict"])
    except (RuntimeError, TypeError, AttributeError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        if len(detail) > 300:
            detail = detail[:297] + "..."
        raise WeightgeoError(f"{p}: the stored weights do not fit model {name}: {detail}") from exc
    if isinstance(map_location, (str, torch.device)):
        model.to(map_location)
    model.eval()
    accuracy = payload.get("test_accuracy")
    return Checkpoint(
        model=model,
        name=name,
        config=config,
        dataset=str(payload.get("dataset", "")),
        test_accuracy=None if accuracy is None else float(accuracy),
        extra=dict(payload.get("extra") or {}),
        path=p,
    )


def checkpoints_compatible(a: Checkpoint, b: Checkpoint) -> None:
    """Raise WeightgeoError unless ``a`` and ``b`` have the same architecture (name and config)."""
    label_a = str(a.path) if a.path else "the first checkpoint"
    label_b = str(b.path) if b.path else "the second checkpoint"
    if a.name != b.name:
        raise WeightgeoError(
            f"checkpoints differ in architecture: {label_a} is {a.name}, {label_b} is {b.name}"
        )
    if a.config != b.config:
        keys = sorted(
            k for k in set(a.config) | set(b.config) if a.config.get(k) != b.config.get(k)
        )
        diffs = ", ".join(f"{k}={a.config.get(k)!r} vs {b.config.get(k)!r}" for k in keys)
        raise WeightgeoError(
            f"checkpoints differ in architecture: {a.name} with {diffs} ({label_a} vs {label_b})"
        )
