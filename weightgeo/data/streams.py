"""Endless, seeded, resumable streams of minibatches: the one place batches are drawn.

Every loop that needs data draws it from a stream: the optimisation loop (training, fine-tuning,
distillation, continual methods, curves), the tracers' stochastic metrics and objectives, and
``relax``. Streams are reproducible from their seed and resumable: ``state_dict()`` captures the
generator and the position inside the current epoch, ``load_state_dict`` continues exactly there.

- :class:`Minibatches`: one random permutation per epoch, consecutive slices of it (the last, smaller
  batch included unless ``drop_last``): an epoch visits every example once.
- :class:`RandomSubsets`: every draw a fresh random subset of ``size`` examples without replacement
  (e.g. a new batch of unlabelled inputs on which to re-estimate a metric).
- :class:`Fixed`: the same batch forever (a deterministic objective or metric).
- :func:`stream`: turns what a user passed (a stream, a tensor, a tuple, an iterable) into one.

Random numbers are drawn on the CPU from ``torch.Generator``; indices move to the data's device.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError


def _columns(source: Any) -> tuple[tuple[Tensor, ...], bool]:
    """The tensors a stream indexes together, and whether a batch is one tensor (not a tuple)."""
    if isinstance(source, Tensor):
        return (source,), True
    if hasattr(source, "x") and hasattr(source, "y"):  # a labelled Data set
        return (source.x, source.y), False
    if isinstance(source, tuple | list) and all(isinstance(t, Tensor) for t in source):
        return tuple(source), False
    raise WeightgeoError(
        f"cannot draw batches from a {type(source).__name__}: give a tensor, a (x, y) pair or a data set"
    )


class Stream:
    """Base of the endless batch streams: iterate, or call :meth:`next`."""

    def __iter__(self) -> Iterator:
        return self

    def __next__(self) -> Any:
        return self.next()

    def next(self) -> Any:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Minibatches(Stream):
    """Shuffled minibatches, epoch after epoch (each epoch one permutation from ``seed``).

    Args:
        source: a data set with ``x`` and ``y`` (batches are ``(x, y)``), a tensor (batches are
            tensors) or a tuple of tensors indexed together.
        batch_size: examples per batch.
        seed: seeds the permutations (``torch.Generator().manual_seed(seed)``).
        drop_last: leave out an epoch's last batch when it is smaller than ``batch_size``.
    """

    def __init__(self, source: Any, batch_size: int, seed: int = 0, *, drop_last: bool = False) -> None:
        self.columns, self.single = _columns(source)
        self.n = int(self.columns[0].shape[0])
        if self.n == 0:
            raise WeightgeoError("cannot draw minibatches from an empty data set")
        if not isinstance(batch_size, int) or batch_size < 1:
            raise WeightgeoError(f"batch_size must be a positive whole number, got {batch_size!r}")
        self.batch_size = batch_size
        self.drop_last = drop_last and self.n >= batch_size
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))
        self.epoch = 0
        self.position = 0
        self.order: Tensor | None = None

    @property
    def per_epoch(self) -> int:
        """Batches per epoch."""
        full, rest = divmod(self.n, self.batch_size)
        return full if (self.drop_last or rest == 0) else full + 1

    def next(self) -> Any:
        if self.order is None:
            self.order = torch.randperm(self.n, generator=self.generator)
            self.position = 0
        stop = min(self.position + self.batch_size, self.n)
        index = self.order[self.position : stop].to(self.columns[0].device)
        self.position = stop
        if self.position >= self.n or (self.drop_last and self.n - self.position < self.batch_size):
            self.order = None
            self.epoch += 1
        batch = tuple(column[index] for column in self.columns)
        return batch[0] if self.single else batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state(), "epoch": self.epoch, "position": self.position,
                "order": self.order}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.epoch, self.position, self.order = state["epoch"], state["position"], state["order"]


class RandomSubsets(Stream):
    """Every draw ``size`` distinct examples chosen at random (a fresh subset each time)."""

    def __init__(self, source: Any, size: int, seed: int = 0) -> None:
        self.columns, self.single = _columns(source)
        self.n = int(self.columns[0].shape[0])
        if self.n == 0:
            raise WeightgeoError("cannot draw subsets from an empty data set")
        if not isinstance(size, int) or size < 1:
            raise WeightgeoError(f"the subset size must be a positive whole number, got {size!r}")
        self.size = min(size, self.n)
        self.generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def next(self) -> Any:
        index = torch.randperm(self.n, generator=self.generator)[: self.size].to(self.columns[0].device)
        batch = tuple(column[index] for column in self.columns)
        return batch[0] if self.single else batch

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


class Fixed(Stream):
    """The same batch at every draw."""

    def __init__(self, batch: Any) -> None:
        self.batch = batch

    def next(self) -> Any:
        return self.batch


class Cycle(Stream):
    """The batches of a finite iterable, restarted whenever it is exhausted (not resumable)."""

    def __init__(self, batches: Iterable) -> None:
        self.batches = batches
        self._iterator: Iterator | None = None

    def next(self) -> Any:
        if self._iterator is None:
            self._iterator = iter(self.batches)
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.batches)
            try:
                return next(self._iterator)
            except StopIteration:
                raise WeightgeoError("a batch iterable yielded no batch") from None


def stream(source: Any) -> Stream:
    """A stream from what a user passed: a Stream as it is; a tensor or an ``(x, y)`` tuple as a
    fixed batch; any other iterable (a list of batches, a generator) cycled."""
    if isinstance(source, Stream):
        return source
    if isinstance(source, Tensor) or (isinstance(source, tuple) and all(isinstance(t, Tensor) for t in source)):
        return Fixed(source)
    if isinstance(source, Iterator):
        return _Endless(source)
    if isinstance(source, Iterable):
        return Cycle(source)
    raise WeightgeoError(f"cannot draw batches from a {type(source).__name__}")


class _Endless(Stream):
    """A user's iterator, drawn from as it is (it must not run out)."""

    def __init__(self, iterator: Iterator) -> None:
        self.iterator = iterator

    def next(self) -> Any:
        try:
            return next(self.iterator)
        except StopIteration:
            raise WeightgeoError("the batch iterator ran out; pass a list or a stream to cycle it") from None
