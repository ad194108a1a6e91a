"""The registry of sparsification methods (filled by :mod:`weightgeo.applications.sparsify.methods`).

A method is ``method(task, levels, budget) -> list[SparseResult]`` (one result per sparsity
level, ascending) with a flag saying whether it reads labels; users register their own with
``METHODS.register("name", SparsifyMethod(fn, labels=...))`` and it runs wherever a built-in does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from weightgeo.registry import Registry

if TYPE_CHECKING:
    from weightgeo.applications.sparsify.task import SparseResult, SparsifyTask


@dataclass(frozen=True)
class SparsifyMethod:
    """A sparsification method: the function, and whether it reads labels."""

    run: Callable[[SparsifyTask, list[float], int], list[SparseResult]]
    labels: bool

    def __call__(self, task: SparsifyTask, levels: list[float], budget: int) -> list[SparseResult]:
        return self.run(task, levels, budget)


METHODS: Registry[SparsifyMethod] = Registry("method")
"""The methods by their ``--method`` names."""
