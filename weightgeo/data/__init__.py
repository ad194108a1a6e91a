"""Data sets as in-memory tensors: ``load_dataset(name, split)`` → :class:`Data`.

Names: ``mnist5k`` (embedded, no download), ``mnist``, ``fashion-mnist``, ``cifar10``,
``cifar100`` (torchvision, from ``./data`` by default). ``make_task_sequence`` cuts them into
continual-learning task sequences (split, permuted, one data set after another; ``SEQUENCES``
holds each named sequence's defaults). ``augment_batch`` is the CIFAR training augmentation on
tensors. ``weightgeo.data.testing`` writes tiny fake data sets in
the real file formats for tests.
"""

from weightgeo.data.augment import augment_batch
from weightgeo.data.core import Data
from weightgeo.data.datasets import DATASET_NAMES, DEFAULT_ROOT, SPLITS, load_dataset
from weightgeo.data.tasks import (
    SCENARIOS,
    SEQUENCES,
    TASK_NAMES,
    SequenceSpec,
    Task,
    TaskSequence,
    check_task_options,
    make_task_sequence,
)

__all__ = ["DATASET_NAMES", "DEFAULT_ROOT", "SPLITS", "Data", "augment_batch", "load_dataset"]
__all__ += ["SCENARIOS", "SEQUENCES", "TASK_NAMES", "SequenceSpec", "Task", "TaskSequence"]
__all__ += ["check_task_options", "make_task_sequence"]
