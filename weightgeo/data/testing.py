"""Tiny fake data sets in the real on-disk formats, for tests that go through ``load_dataset``.

``write_fake_mnist`` writes the uncompressed IDX files torchvision's MNIST / FashionMNIST
read (``ROOT/MNIST/raw/train-images-idx3-ubyte`` ...); torchvision only checks that they
exist, so they load as they are. ``write_fake_cifar`` writes the pickled batches of
CIFAR-10 / CIFAR-100 (``ROOT/cifar-10-batches-py/data_batch_1`` ...). torchvision checks
the MD5 sums of the real CIFAR files and offers no way to skip that, so loading fake CIFAR
needs the :func:`fake_cifar_checksums` context manager, which makes torchvision check only
that the files exist, as it does for MNIST::

    root = write_fake_cifar(tmp_path, "cifar10")
    with fake_cifar_checksums():
        train = load_dataset("cifar10", "train", root=root)

The images are learnable: each class has its own fixed random pattern, and every image is
its class's pattern plus noise, so a small network can tell the classes apart.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import struct
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

import numpy as np

_MNIST_FOLDERS = {"mnist": "MNIST", "fashion-mnist": "FashionMNIST"}
_CIFAR_CLASSES = {"cifar10": 10, "cifar100": 100}


def _fake_images(
    rng: np.random.Generator, sizes: tuple[int, int], num_classes: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """uint8 images of ``shape`` and their labels: a train split then a test split.

    Each split of ``sizes`` holds every class equally often (up to one image), in a random
    order; an image is its class's fixed random pattern plus Gaussian noise.
    """
    prototypes = rng.uniform(0, 255, size=(num_classes, *shape))
    labels = np.concatenate([rng.permutation(np.arange(n) % num_classes) for n in sizes])
    noise = rng.normal(0, 40, size=(len(labels), *shape))
    images = np.clip(prototypes[labels] + noise, 0, 255).astype(np.uint8)
    return images, labels.astype(np.int64)


def _write_idx(path: Path, array: np.ndarray) -> None:
    """Write a uint8 array in the IDX format (magic 0x0000 08 <ndim>, big-endian sizes)."""
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def write_fake_mnist(
    root: str | os.PathLike[str],
    kind: str = "mnist",
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a fake MNIST or Fashion-MNIST (28×28 uint8, 10 classes) under ``root``; return root.

    ``load_dataset(kind, split, root=root)`` then reads it through torchvision. Different
    seeds give different data; MNIST and Fashion-MNIST written with one seed differ too.
    """
    if kind not in _MNIST_FOLDERS:
        raise ValueError(f"kind must be one of {sorted(_MNIST_FOLDERS)}, not {kind!r}")
    root = Path(root)
    raw = root / _MNIST_FOLDERS[kind] / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng([seed, 1 if kind == "fashion-mnist" else 0])
    images, labels = _fake_images(rng, (n_train, n_test), 10, (28, 28))
    for prefix, sl in (("train", slice(0, n_train)), ("t10k", slice(n_train, None))):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", images[sl])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels[sl])
    return root


def _dump(path: Path, obj: dict) -> None:
    with path.open("wb") as handle:
        pickle.dump(obj, handle, protocol=2)


def write_fake_cifar(
    root: str | os.PathLike[str],
    kind: str = "cifar10",
    n_train: int = 200,
    n_test: int = 100,
    seed: int = 0,
) -> Path:
    """Write a fake CIFAR-10 or CIFAR-100 (3×32×32 uint8) under ``root``; return root.

    The layout and pickled dicts are those of the real python versions: CIFAR-10 in
    ``cifar-10-batches-py/`` (``data_batch_1`` … ``data_batch_5``, ``test_batch``,
    ``batches.meta``), CIFAR-100 in ``cifar-100-python/`` (``train``, ``test``, ``meta``).
    Load it inside :func:`fake_cifar_checksums`.
    """
    if kind not in _CIFAR_CLASSES:
        raise ValueError(f"kind must be one of {sorted(_CIFAR_CLASSES)}, not {kind!r}")
    num_classes = _CIFAR_CLASSES[kind]
    root = Path(root)
    rng = np.random.default_rng([seed, num_classes])
    images, labels = _fake_images(rng, (n_train, n_test), num_classes, (3, 32, 32))
    flat = images.reshape(len(images), 3 * 32 * 32)  # rows: R plane, G plane, B plane
    train, test = slice(0, n_train), slice(n_train, None)

    def batch(sl: slice, label_key: str, tag: str) -> dict:
        ids = range(len(labels))[sl]
        entry = {
            "batch_label": tag,
            label_key: [int(v) for v in labels[sl]],
            "data": flat[sl],
            "filenames": [f"fake_{i:06d}.png" for i in ids],
        }
        if kind == "cifar100":
            entry["coarse_labels"] = [int(v) // 5 for v in labels[sl]]
        return entry

    if kind == "cifar10":
        folder = root / "cifar-10-batches-py"
        folder.mkdir(parents=True, exist_ok=True)
        parts = np.array_split(np.arange(n_train), 5)
        for i, part in enumerate(parts, start=1):
            sl = slice(int(part[0]), int(part[-1]) + 1) if len(part) else slice(0, 0)
            _dump(folder / f"data_batch_{i}", batch(sl, "labels", f"training batch {i} of 5"))
        _dump(folder / "test_batch", batch(test, "labels", "testing batch 1 of 1"))
        meta = {
            "label_names": [f"class_{i}" for i in range(10)],
            "num_cases_per_batch": max(1, -(-n_train // 5)),
            "num_vis": 3072,
        }
        _dump(folder / "batches.meta", meta)
    else:
        folder = root / "cifar-100-python"
        folder.mkdir(parents=True, exist_ok=True)
        _dump(folder / "train", batch(train, "fine_labels", "training batch 1 of 1"))
        _dump(folder / "test", batch(test, "fine_labels", "testing batch 1 of 1"))
        meta = {
            "fine_label_names": [f"fine_{i}" for i in range(100)],
            "coarse_label_names": [f"coarse_{i}" for i in range(20)],
        }
        _dump(folder / "meta", meta)
    return root


@contextlib.contextmanager
def fake_cifar_checksums() -> Iterator[None]:
    """Within this block, torchvision's CIFAR-10/100 check only that their files exist.

    torchvision compares each CIFAR file with the MD5 sum of the real one, which fake files
    cannot match. This temporarily replaces the expected sums on the ``CIFAR10`` and
    ``CIFAR100`` classes with ``None``, which torchvision's ``check_integrity`` treats as
    "exists is enough" (what it does for MNIST). For tests only; everything is restored on exit.
    """
    from torchvision.datasets import CIFAR10, CIFAR100

    with contextlib.ExitStack() as stack:
        for cls in (CIFAR10, CIFAR100):
            unchecked = {
                "train_list": [[name, None] for name, _ in cls.train_list],
                "test_list": [[name, None] for name, _ in cls.test_list],
                "meta": {**cls.meta, "md5": None},
            }
            for attr, value in unchecked.items():
                stack.enter_context(mock.patch.object(cls, attr, value))
        yield
