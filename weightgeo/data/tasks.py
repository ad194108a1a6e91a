"""Task sequences for continual learning, cut from any base data set by one of three constructions.

``make_task_sequence(name, scenario, n_tasks, base)`` builds a :class:`TaskSequence`: a list
of :class:`Task` (train / validation / test :class:`Data` with labels already in the
sequence's output space) and the scenario (van de Ven & Tolias, "Three scenarios for
continual learning", 2019) that says which output units are used:

- ``task``: task-incremental — the task's own output units at training and test time;
- ``domain``: domain-incremental — one shared head, no task identity;
- ``class``: class-incremental — all output units of the tasks seen so far.

Constructions, each generic over a base data set with C classes:

- **split**: n tasks of C/n classes, the classes in their original order (task i holds the
  classes i·C/n … (i+1)·C/n − 1); n must divide C with at least two classes per task.
  task / class: one C-unit head in the original labels, task i owning its classes' units;
  domain: one shared C/n-unit head (a class's position within its task).
- **permuted**: n tasks, each a fixed permutation of the input features (task 1 the identity,
  the others drawn from ``seed``). domain: one C-unit head; task / class: C·n units, task i
  using units C·i … C·(i+1) − 1.
- **datasets**: the base, then a second data set of the same input shape, labels of the second
  shifted past the first's, in one shared head (the FIP paper's MNIST → Fashion-MNIST).
  task / class only: one head over two label sets cannot be a domain-incremental problem.

Named sequences (:data:`SEQUENCES`, with their defaults; ``--tasks`` on the CLI):

============== ============ ============= ======= ======== ===========
name           construction base          n_tasks scenario model
============== ============ ============= ======= ======== ===========
permuted-mnist permuted     mnist5k (any) 5 (any) domain   mlp
split-mnist    split        mnist5k (any) 5       task     mlp
mnist-fashion  datasets     mnist5k (any) 2       task     fashion-cnn
split-cifar10  split        cifar10       5       task     resnet18
split-cifar100 split        cifar100      10      task     resnet18
============== ============ ============= ======= ======== ===========

The CIFAR sequences' base is their name's; split-cifar100 also runs as 20 × 5 or 5 × 20
classes (``n_tasks`` 20 or 5). Split sequences default to task-incremental, the scenario
in which the per-task heads make every method comparable at small budgets (class-incremental,
the hardest and the one reviewers compare on, is ``scenario="class"``); ResNet-18 is the
network of the split-CIFAR literature (vgg11 costs about 2.6× less per CPU step).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from weightgeo.data.core import Data
from weightgeo.data.datasets import _STATS, DATASET_NAMES, load_dataset
from weightgeo.errors import WeightgeoError
from weightgeo.functional import mask_logits  # noqa: F401 - re-exported: the units of a task

SCENARIOS: tuple[str, ...] = ("task", "domain", "class")
DIGITS_DEFAULT = "mnist5k"
"""The default base of the MNIST sequences, and the default of the CLI's ``--base``."""


@dataclass(frozen=True)
class SequenceSpec:
    """What a sequence name means: its construction, its base data set and its defaults.

    ``base_fixed``: the name fixes the base (split-cifar10 is always CIFAR-10). ``second``:
    the data set of a ``datasets`` sequence's second task. ``class_word`` names a task's
    classes ("digits 0/1", "classes 10–19").
    """

    name: str
    construction: str
    base: str
    n_tasks: int
    scenario: str
    model: str
    scenarios: tuple[str, ...] = SCENARIOS
    base_fixed: bool = False
    second: str | None = None
    class_word: str = "classes"


SEQUENCES: dict[str, SequenceSpec] = {
    spec.name: spec
    for spec in (
        SequenceSpec("permuted-mnist", "permuted", DIGITS_DEFAULT, 5, "domain", "mlp"),
        SequenceSpec("split-mnist", "split", DIGITS_DEFAULT, 5, "task", "mlp", class_word="digits"),
        SequenceSpec("mnist-fashion", "datasets", DIGITS_DEFAULT, 2, "task", "fashion-cnn",
                     scenarios=("task", "class"), second="fashion-mnist"),
        SequenceSpec("split-cifar10", "split", "cifar10", 5, "task", "resnet18", base_fixed=True),
        SequenceSpec("split-cifar100", "split", "cifar100", 10, "task", "resnet18",
                     base_fixed=True),
    )
}
TASK_NAMES: tuple[str, ...] = tuple(SEQUENCES)


@dataclass
class Task:
    """One task: its data (labels in the sequence's output space), its output units, and the
    base data set's classes its examples come from (all of them for a permuted task)."""

    index: int
    name: str
    train: Data
    val: Data
    test: Data
    units: tuple[int, ...]
    classes: tuple[int, ...] = ()


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


def permutations(n_tasks: int, n_features: int, seed: int) -> list[Tensor]:
    """The feature permutations of permuted tasks: the identity first, then seeded draws."""
    generator = torch.Generator().manual_seed(int(seed) * 7919 + 17)
    perms = [torch.arange(n_features)]
    perms += [torch.randperm(n_features, generator=generator) for _ in range(n_tasks - 1)]
    return perms


# -- names, defaults and validation ------------------------------------------------------


def sequence_spec(name: str) -> SequenceSpec:
    """The definition of sequence ``name``; an unknown name is refused in one line."""
    if name not in SEQUENCES:
        choices = ", ".join(TASK_NAMES)
        raise WeightgeoError(f"unknown task sequence {name!r}; choose one of {choices}")
    return SEQUENCES[name]


def default_scenario(name: str) -> str:
    """The scenario sequence ``name`` runs under unless one is chosen."""
    return sequence_spec(name).scenario


def default_model(name: str) -> str:
    """The network sequence ``name`` is learned with unless one is chosen."""
    return sequence_spec(name).model


def num_classes_of(base: str) -> int:
    """The number of classes of data set ``base`` (without loading it)."""
    if base not in DATASET_NAMES:
        raise WeightgeoError(f"unknown data set {base!r}; choose one of {', '.join(DATASET_NAMES)}")
    return _STATS[base][2]


def split_counts(classes: int) -> tuple[int, ...]:
    """The numbers of tasks a split of ``classes`` classes allows: n | C, at least 2 per task."""
    return tuple(n for n in range(1, classes + 1) if classes % n == 0 and classes // n >= 2)


# construction -> the task counts it allows for a base of C classes (None: any n ≥ 1)
_TASK_COUNTS: dict[str, Callable[[int], tuple[int, ...] | None]] = {
    "split": split_counts,
    "permuted": lambda classes: None,
    "datasets": lambda classes: (1, 2),
}


def task_counts(name: str, base: str | None = None) -> tuple[int, ...] | None:
    """The numbers of tasks sequence ``name`` allows on ``base`` (None: any n ≥ 1)."""
    spec = sequence_spec(name)
    return _TASK_COUNTS[spec.construction](num_classes_of(resolve_base(name, base)))


def resolve_base(name: str, base: str | None) -> str:
    """The base data set sequence ``name`` is built from when ``base`` is asked for.

    None means the sequence's own. A sequence whose name fixes its base (split-cifar10,
    split-cifar100) refuses any other, except ``mnist5k``: that is the default of the CLI's
    ``--base`` and of ``run_experiment``, which cannot tell it from "not given".
    """
    spec = sequence_spec(name)
    if base is None or base == spec.base:
        return spec.base
    num_classes_of(base)  # refuses an unknown name
    if spec.base_fixed:
        if base == DIGITS_DEFAULT:
            return spec.base
        free = ", ".join(s.name for s in SEQUENCES.values() if not s.base_fixed)
        raise WeightgeoError(
            f"{name} is always built from {spec.base}, not {base}; "
            f"--base chooses the base of {free}"
        )
    return base


_NO_SCENARIO_BECAUSE = {"datasets": " (one shared head over the label sets of two data sets)"}


def check_task_options(
    name: str, scenario: str, n_tasks: int | None, base: str | None = None
) -> int:
    """Validate a (name, scenario, n_tasks, base) choice; returns the number of tasks.

    Every bad combination raises a one-line WeightgeoError that names the choices.
    """
    spec = sequence_spec(name)
    if scenario not in SCENARIOS:
        raise WeightgeoError(f"unknown scenario {scenario!r}; choose one of {', '.join(SCENARIOS)}")
    if scenario not in spec.scenarios:
        why = _NO_SCENARIO_BECAUSE.get(spec.construction, "")
        raise WeightgeoError(
            f"{name} cannot be {scenario}-incremental{why}; "
            f"choose one of {', '.join(spec.scenarios)}"
        )
    base = resolve_base(name, base)
    n = spec.n_tasks if n_tasks is None else int(n_tasks)
    if n < 1:
        raise WeightgeoError(f"--n-tasks must be at least 1, got {n}")
    allowed = task_counts(name, base)
    if allowed is not None and n not in allowed:
        if spec.construction == "split":
            why = f"cuts the {num_classes_of(base)} classes of {base} into tasks of equal size"
        else:
            why = f"has at most {max(allowed)} tasks"
        raise WeightgeoError(
            f"{name} {why}: --n-tasks must be one of {', '.join(map(str, allowed))}, got {n}"
        )
    return n


_CONSTRUCTION_HELP = {
    "split": "the classes of {base} in tasks of equal size",
    "permuted": "input permutations of {base}",
    "datasets": "{base}, then {second}",
}


def sequences_help() -> str:
    """Every sequence and what it is made of, for help texts."""
    parts = []
    for s in SEQUENCES.values():
        base = s.base if s.base_fixed else f"{s.base} or --base"
        parts.append(f"{s.name} ({_CONSTRUCTION_HELP[s.construction].format(base=base, second=s.second)})")
    return "; ".join(parts)


def n_tasks_help() -> str:
    """The default and the allowed numbers of tasks of every sequence (on its default base)."""
    parts = []
    for s in SEQUENCES.values():
        counts = task_counts(s.name)
        allowed = "any" if counts is None else "/".join(map(str, counts))
        parts.append(f"{s.name} {s.n_tasks} ({allowed})")
    return "; ".join(parts)


def defaults_help(field: str) -> str:
    """The default ``field`` ("scenario" or "model") of the sequences, grouped by value."""
    groups: dict[str, list[str]] = {}
    for s in SEQUENCES.values():
        groups.setdefault(getattr(s, field), []).append(s.name)
    return "; ".join(f"{value} for {', '.join(names)}" for value, names in groups.items())


# -- construction --------------------------------------------------------------------------


def _split_val(data: Data, fraction: float, generator: torch.Generator) -> tuple[Data, Data]:
    order = torch.randperm(len(data), generator=generator)
    n_val = int(round(fraction * len(data)))
    return data.subset(order[n_val:].sort().values), data.subset(order[:n_val].sort().values)


def _cap(data: Data, limit: int | None, generator: torch.Generator) -> Data:
    if limit is None or len(data) <= limit:
        return data
    return data.subset(torch.randperm(len(data), generator=generator)[:limit].sort().values)


@dataclass
class _Sources:
    """What a construction works from: the base's splits and the per-sequence settings."""

    spec: SequenceSpec
    scenario: str
    n: int
    base: str
    train: Data
    test: Data
    seed: int
    generator: torch.Generator  # draws the caps and validation splits, task by task
    val_fraction: float
    max_train: int | None
    load: Callable[[str, str], Data]
    second: str | None

    def task(self, index: int, name: str, train: Data, test: Data, units, classes) -> Task:
        """A Task from its capped training set (its validation share held out) and test set."""
        train, val = _split_val(train, self.val_fraction, self.generator)
        return Task(index, name, train, val, test, tuple(units), tuple(classes))


def _split_tasks(src: _Sources) -> tuple[list[Task], int]:
    """n tasks of C/n consecutive classes; labels original (task, class) or positions (domain)."""
    classes = src.train.num_classes
    per_task = classes // src.n
    outputs = per_task if src.scenario == "domain" else classes
    tasks = []
    for i in range(src.n):
        chosen = torch.arange(i * per_task, (i + 1) * per_task)
        position = torch.full((classes,), -1, dtype=torch.int64)
        position[chosen] = torch.arange(per_task)
        members = chosen.tolist()
        tag = "".join(map(str, members)) if classes <= 10 else f"{members[0]}-{members[-1]}"
        parts = []
        for data in (src.train, src.test):
            sub = data.subset(torch.isin(data.y, chosen))
            y = position[sub.y] if src.scenario == "domain" else sub.y
            parts.append(Data(sub.x, y, outputs, f"{src.base}-{tag}"))
        label = "/".join(map(str, members)) if per_task <= 2 else f"{members[0]}–{members[-1]}"
        units = range(per_task) if src.scenario == "domain" else members
        train = _cap(parts[0], src.max_train, src.generator)
        tasks.append(src.task(i, f"{src.spec.class_word} {label}", train, parts[1], units, members))
    return tasks, outputs


def _permuted_tasks(src: _Sources) -> tuple[list[Task], int]:
    """n copies of the base, task i's features permuted; task i owns units C·i… (task, class)."""
    classes = src.train.num_classes
    outputs = classes if src.scenario == "domain" else classes * src.n
    features = int(torch.tensor(src.train.input_shape).prod())
    tasks = []
    for i, perm in enumerate(permutations(src.n, features, src.seed)):
        shift = 0 if src.scenario == "domain" else classes * i
        parts = []
        for data in (_cap(src.train, src.max_train, src.generator), src.test):
            x = data.x.reshape(len(data), -1)[:, perm].reshape(data.x.shape).contiguous()
            parts.append(Data(x, data.y + shift, outputs, f"{src.base}-perm{i}"))
        units = range(shift, shift + classes)
        tasks.append(src.task(i, f"permutation {i + 1}", parts[0], parts[1], units, range(classes)))
    return tasks, outputs


def _dataset_tasks(src: _Sources) -> tuple[list[Task], int]:
    """The base, then the spec's second data set, its labels shifted past the base's."""
    sources = [(src.base, src.train, src.test)]
    if src.n > 1:
        second = src.second
        sources.append((second, src.load(second, "train"), src.load(second, "test")))
    outputs = sum(train.num_classes for _, train, _ in sources)
    tasks, shift = [], 0
    for i, (name, train, test) in enumerate(sources):
        if train.input_shape != src.train.input_shape:
            raise WeightgeoError(f"{name} inputs {train.input_shape} differ from {src.base}'s")
        capped = _cap(train, src.max_train, src.generator)
        parts = [Data(d.x, d.y + shift, outputs, name) for d in (capped, test)]
        units = range(shift, shift + train.num_classes)
        tasks.append(src.task(i, name, parts[0], parts[1], units, range(train.num_classes)))
        shift += train.num_classes
    return tasks, outputs


_BUILDERS: dict[str, Callable[[_Sources], tuple[list[Task], int]]] = {
    "split": _split_tasks,
    "permuted": _permuted_tasks,
    "datasets": _dataset_tasks,
}


def make_task_sequence(
    name: str,
    scenario: str | None = None,
    n_tasks: int | None = None,
    base: str | None = None,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    max_train: int | None = None,
    second: str | None = None,
) -> TaskSequence:
    """Build the task sequence ``name`` under ``scenario`` from the data set ``base``.

    Args:
        name: one of TASK_NAMES (see the module's table for each one's defaults).
        scenario: "task", "domain" or "class" (not every sequence has every scenario);
            None: the sequence's default.
        n_tasks: number of tasks; None: the sequence's default. A split sequence needs a
            divisor of its base's number of classes (at least 2 classes per task).
        base: the data set the tasks are cut from; None: the sequence's own (mnist5k for the
            MNIST sequences; the CIFAR sequences accept only their own).
        seed: draws the permutations and the train/validation split.
        root, download: where torchvision data sets are (mnist, fashion-mnist, cifar10, cifar100).
        val_fraction: share of each task's training set held out for validation (tuning).
        max_train: keep at most this many training examples per task (before the split).
        second: the data set of a two-data-set sequence's second task (mnist-fashion:
            fashion-mnist by default).

    Raises:
        WeightgeoError: an unknown name, scenario or base, a combination the sequence does not
            allow, or a number of tasks it cannot make (one line naming the choices).
    """
    spec = sequence_spec(name)
    scenario = spec.scenario if scenario is None else scenario
    n = check_task_options(name, scenario, n_tasks, base)
    base = resolve_base(name, base)
    if not 0 <= val_fraction < 1:
        raise WeightgeoError(f"val_fraction must be in [0, 1), got {val_fraction}")

    def load(data_set: str, split: str) -> Data:
        return load_dataset(data_set, split, root=root, download=download)

    sources = _Sources(
        spec, scenario, n, base, load(base, "train"), load(base, "test"), int(seed),
        torch.Generator().manual_seed(int(seed) * 104729 + 3), val_fraction, max_train, load,
        spec.second if second is None else second,
    )
    tasks, outputs = _BUILDERS[spec.construction](sources)
    return TaskSequence(name, scenario, tasks, outputs, base, int(seed))
