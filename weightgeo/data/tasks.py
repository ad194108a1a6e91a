"""Task sequences for continual learning: permuted-mnist, split-mnist, mnist-fashion.

``make_task_sequence(name, scenario, n_tasks, base)`` builds a :class:`TaskSequence`: a list
of :class:`Task` (train / validation / test :class:`Data` with labels already in the
sequence's output space) and the scenario (van de Ven & Tolias, "Three scenarios for
continual learning", 2019) that says which output units are used:

- ``task``: task-incremental — the task's own output units at training and test time;
- ``domain``: domain-incremental — one shared head, no task identity;
- ``class``: class-incremental — all output units of the tasks seen so far.

Sequences and their heads:

- ``permuted-mnist``: N tasks, each a fixed permutation of the input features (task 1 the
  identity, the others drawn from ``seed``). domain: one 10-unit head; task / class:
  10·N units, task i using units 10(i−1)…10i−1.
- ``split-mnist``: 5 tasks of two digits (0/1, 2/3, …, 8/9). task / class: the 10-unit head;
  domain: a 2-unit head (first or second digit of the pair).
- ``mnist-fashion``: the base digits then Fashion-MNIST, one 20-unit head, Fashion labels
  shifted by 10 (the FIP paper's set-up). task / class only: one shared head of 20 units
  cannot be a domain-incremental problem.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import Tensor

from weightgeo.data.core import Data
from weightgeo.data.datasets import load_dataset
from weightgeo.errors import WeightgeoError

TASK_NAMES: tuple[str, ...] = ("permuted-mnist", "split-mnist", "mnist-fashion")
SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
_SCENARIOS_OF = {
    "permuted-mnist": ("task", "domain", "class"),
    "split-mnist": ("task", "domain", "class"),
    "mnist-fashion": ("task", "class"),
}
_FIXED_TASKS = {"split-mnist": 5, "mnist-fashion": 2}
_DEFAULT_TASKS = {"permuted-mnist": 5, "split-mnist": 5, "mnist-fashion": 2}


@dataclass
class Task:
    """One task: its data (labels in the sequence's output space) and its output units."""

    index: int
    name: str
    train: Data
    val: Data
    test: Data
    units: tuple[int, ...]


@dataclass
class TaskSequence:
    """An ordered list of tasks under one scenario, with ``num_outputs`` output units."""

    name: str
    scenario: str
    tasks: list[Task]
    num_outputs: int
    base: str
    seed: int

    def __len__(self) -> int:
        return len(self.tasks)

    def allowed(self, task: int, seen: int | None = None) -> Tensor | None:
        """Bool vector of the output units that count for ``task`` once tasks 0…``seen`` are
        learned (``seen`` defaults to ``task``); None when every unit counts (domain)."""
        seen = task if seen is None else seen
        if self.scenario == "domain":
            return None
        mask = torch.zeros(self.num_outputs, dtype=torch.bool)
        chosen = [self.tasks[task]] if self.scenario == "task" else self.tasks[: seen + 1]
        for t in chosen:
            mask[list(t.units)] = True
        return mask

    def describe(self) -> str:
        return (
            f"{self.name} ({len(self)} tasks from {self.base}, {self.scenario}-incremental, "
            f"{self.num_outputs} output units)"
        )


def mask_logits(logits: Tensor, allowed: Tensor | None) -> Tensor:
    """Logits with the units outside ``allowed`` (K or B×K bool) set to −∞ (None: unchanged)."""
    if allowed is None:
        return logits
    return logits.masked_fill(~allowed.to(logits.device), float("-inf"))


def permutations(n_tasks: int, n_features: int, seed: int) -> list[Tensor]:
    """The feature permutations of permuted tasks: the identity first, then seeded draws."""
    generator = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    perms = [torch.arange(n_features)]
    perms += [torch.randperm(n_features, generator=generator) for _ in range(n_tasks - 1)]
    return perms


def _split_val(data: Data, fraction: float, generator: torch.Generator) -> tuple[Data, Data]:
    order = torch.randperm(len(data), generator=generator)
    n_val = int(round(fraction * len(data)))
    return data.subset(order[n_val:].sort().values), data.subset(order[:n_val].sort().values)


def _cap(data: Data, limit: int | None, generator: torch.Generator) -> Data:
    if limit is None or len(data) <= limit:
        return data
    return data.subset(torch.randperm(len(data), generator=generator)[:limit].sort().values)


def _relabel(data: Data, y: Tensor, num_outputs: int, name: str, x: Tensor | None = None) -> Data:
    return Data(data.x if x is None else x, y, num_outputs, name)


def check_task_options(name: str, scenario: str, n_tasks: int | None) -> int:
    """Validate a (name, scenario, n_tasks) triple; returns the number of tasks. One-line errors."""
    if name not in TASK_NAMES:
        raise WeightgeoError(f"unknown task sequence {name!r}; choose one of {', '.join(TASK_NAMES)}")
    if scenario not in SCENARIOS:
        raise WeightgeoError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scenario not in _SCENARIOS_OF[name]:
        raise WeightgeoError(
            f"{name} cannot be {scenario}-incremental (one shared 20-unit head, Fashion labels "
            f"shifted by 10); choose one of {', '.join(_SCENARIOS_OF[name])}"
        )
    n = _DEFAULT_TASKS[name] if n_tasks is None else int(n_tasks)
    if n < 1:
        raise WeightgeoError(f"--n-tasks must be at least 1, got {n}")
    if name in _FIXED_TASKS and n > _FIXED_TASKS[name]:
        raise WeightgeoError(f"{name} has at most {_FIXED_TASKS[name]} tasks, got --n-tasks {n}")
    return n


def make_task_sequence(
    name: str,
    scenario: str = "domain",
    n_tasks: int | None = None,
    base: str = "mnist5k",
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    max_train: int | None = None,
    second: str = "fashion-mnist",
) -> TaskSequence:
    """Build the task sequence ``name`` under ``scenario`` from the data set ``base``.

    Args:
        name: one of TASK_NAMES.
        scenario: "task", "domain" or "class" (not every sequence has every scenario).
        n_tasks: number of tasks (default 5; split-mnist ≤ 5, mnist-fashion ≤ 2).
        base: the digits data set (mnist5k, embedded, by default; or mnist, fashion-mnist).
        seed: draws the permutations and the train/validation split.
        root, download: where torchvision data sets are (for mnist, fashion-mnist).
        val_fraction: share of each task's training set held out for validation (tuning).
        max_train: keep at most this many training examples per task (before the split).
        second: the data set of mnist-fashion's second task.
    """
    n = check_task_options(name, scenario, n_tasks)
    if not 0 <= val_fraction < 1:
        raise WeightgeoError(f"val_fraction must be in [0, 1), got {val_fraction}")
    train_all = load_dataset(base, "train", root=root, download=download)
    test_all = load_dataset(base, "test", root=root, download=download)
    if name != "permuted-mnist" and train_all.num_classes != 10:
        raise WeightgeoError(f"{name} needs a 10-class base data set, got {base} ({train_all.num_classes})")
    generator = torch.Generator().manual_seed(int(seed) * 104729 + 3)
    tasks: list[Task] = []
    if name == "permuted-mnist":
        classes = train_all.num_classes
        outputs = classes if scenario == "domain" else classes * n
        features = int(torch.tensor(train_all.input_shape).prod())
        for i, perm in enumerate(permutations(n, features, seed)):
            shift = 0 if scenario == "domain" else classes * i
            parts = []
            for data in (_cap(train_all, max_train, generator), test_all):
                x = data.x.reshape(len(data), -1)[:, perm].reshape(data.x.shape).contiguous()
                parts.append(_relabel(data, data.y + shift, outputs, f"{base}-perm{i}", x))
            train, val = _split_val(parts[0], val_fraction, generator)
            units = tuple(range(shift, shift + classes))
            tasks.append(Task(i, f"permutation {i + 1}", train, val, parts[1], units))
    elif name == "split-mnist":
        outputs = 2 if scenario == "domain" else 10
        for i in range(n):
            pair = (2 * i, 2 * i + 1)
            parts = []
            for data in (_cap(train_all, max_train, generator), test_all):
                sub = data.subset((data.y == pair[0]) | (data.y == pair[1]))
                y = sub.y - 2 * i if scenario == "domain" else sub.y
                parts.append(_relabel(sub, y, outputs, f"{base}-{pair[0]}{pair[1]}"))
            train, val = _split_val(parts[0], val_fraction, generator)
            units = (0, 1) if scenario == "domain" else pair
            tasks.append(Task(i, f"digits {pair[0]}/{pair[1]}", train, val, parts[1], units))
    else:  # mnist-fashion
        outputs = 20
        sources = [(base, train_all, test_all, 0)]
        if n > 1:
            sources.append(
                (second, load_dataset(second, "train", root=root, download=download),
                 load_dataset(second, "test", root=root, download=download), 10)
            )
        for i, (source, tr, te, shift) in enumerate(sources):
            if tr.input_shape != train_all.input_shape:
                raise WeightgeoError(f"{source} inputs {tr.input_shape} differ from {base}'s")
            parts = [
                _relabel(d, d.y + shift, outputs, source) for d in (_cap(tr, max_train, generator), te)
            ]
            train, val = _split_val(parts[0], val_fraction, generator)
            tasks.append(Task(i, source, train, val, parts[1], tuple(range(shift, shift + 10))))
    return TaskSequence(name, scenario, tasks, outputs, base, int(seed))
