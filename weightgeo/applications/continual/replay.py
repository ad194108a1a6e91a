"""Replay and joint training: the baselines that see old examples with their labels.

- ``replay``: each step trains on a new-task minibatch plus as many examples drawn (with
  replacement) from the same memory the geodesic method uses, with their labels; in the task
  scenario every stored example is scored on its own task's output units. One step costs one
  gradient evaluation (one forward and backward pass over the mixed batch).
- ``joint``: all tasks at once, each example on its own units, with the sequential methods' total
  budget (the ceiling); it gets one row of the accuracy matrix, after the last task.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from weightgeo.applications.continual.learner import Learner, Memory
from weightgeo.data.streams import Minibatches, Stream
from weightgeo.data.tasks import TaskSequence


def units_table(seq: TaskSequence, seen: int | None = None) -> Tensor:
    """Row k: the output units task k is scored on once tasks 0…``seen`` are learned (all units
    in the domain scenario)."""
    seen = len(seq) - 1 if seen is None else seen
    rows = [seq.allowed(k, max(k, seen)) for k in range(len(seq))]
    return torch.stack([torch.ones(seq.num_outputs, dtype=torch.bool) if row is None else row for row in rows])


def stored_columns(memory: Memory, seq: TaskSequence, task: int) -> tuple[Tensor, ...]:
    """The stored examples as a stream's columns while learning ``task``: ``(x, y)``, or ``(x, y,
    units)`` in the task scenario (each example's own task's output units)."""
    x, y = memory.inputs(), memory.labels()
    if seq.scenario != "task":
        return x, y
    return x, y, units_table(seq, task)[memory.task_ids()].to(x.device)


class ReplayBatches(Stream):
    """A task's minibatches, each followed by as many stored examples drawn with replacement.

    Batches are ``(x, y)``, or ``(x, y, units)`` in the task scenario (each example's own task's
    output units). The stored examples are drawn from ``generator`` (default: the source's, so the
    draws interleave with its permutations and its state carries them).
    """

    def __init__(self, source: Stream, memory: Memory, seq: TaskSequence, task: int,
                 generator: torch.Generator | None = None) -> None:
        self.source, self.task = source, task
        self.generator = generator if generator is not None else source.generator
        self.own_generator = generator is not None
        self.x, self.y = memory.inputs(), memory.labels()
        self.ids = memory.task_ids()
        self.table = units_table(seq, task) if seq.scenario == "task" else None

    def next(self) -> Any:
        x, y = self.source.next()
        index = torch.randint(len(self.y), (len(y),), generator=self.generator)
        stored = index.to(self.x.device)
        batch = (torch.cat([x, self.x[stored]]), torch.cat([y, self.y[stored]]))
        if self.table is None:
            return batch
        ids = torch.cat([torch.full((len(y),), self.task), self.ids[index]])
        return (*batch, self.table[ids].to(x.device))

    def state_dict(self) -> dict:
        own = {"generator": self.generator.get_state()} if self.own_generator else {}
        return {"source": self.source.state_dict(), **own}

    def load_state_dict(self, state: dict) -> None:
        self.source.load_state_dict(state["source"])
        if self.own_generator:
            self.generator.set_state(state["generator"])


class Replay(Learner):
    """Each step on a new-task minibatch plus as many stored examples with their labels."""

    name = "replay"

    def batches(self, t):
        source = super().batches(t)
        return source if len(self.memory) == 0 else ReplayBatches(source, self.memory, self.seq, t)


class Joint(Learner):
    """All tasks at once (per-example output units), with ``tasks × budget`` minibatch steps."""

    name = "joint"

    def stages(self, n):
        return [n - 1]

    def task_budget(self, t):
        return self.settings.budget * (t + 1)

    def batches(self, t):
        tasks = self.seq.tasks[: t + 1]
        ids = torch.cat([torch.full((len(task.train),), k) for k, task in enumerate(tasks)])
        units = units_table(self.seq, t)[ids].to(tasks[0].train.x.device)
        columns = (torch.cat([task.train.x for task in tasks]), torch.cat([task.train.y for task in tasks]), units)
        return Minibatches(columns, self.settings.batch_size, self.seed * 1000 + 999)

    def after_task(self, t, theta):
        return None
