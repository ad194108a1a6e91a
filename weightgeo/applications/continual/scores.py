"""Continual-learning scores from the accuracy matrix R (R[i][j]: accuracy on task j after
training tasks 0…i).

Conventions (T tasks, accuracies as fractions; reports multiply by 100, "points"):

- ACC (average accuracy) = (1/T) Σ_j R[T−1][j], the last row's mean.
- BWT (backward transfer, Lopez-Paz & Ranzato 2017) = (1/(T−1)) Σ_{j<T−1} (R[T−1][j] − R[j][j]);
  negative means forgetting.
- forgetting (Chaudhry et al. 2018) = (1/(T−1)) Σ_{j<T−1} (max_{j≤l<T−1} R[l][j] − R[T−1][j]);
  negative only when tasks end above their best earlier accuracy. It equals −BWT when no
  task's accuracy ever rises above its first value.
- plasticity = (1/T) Σ_j R[j][j], the accuracy on each task right after learning it.

Entries above the diagonal (tasks not yet learned) are not used. With one task BWT and
forgetting are NaN.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def _matrix(r: Sequence[Sequence[float]]) -> list[list[float]]:
    rows = [list(map(float, row)) for row in r]
    if not rows or any(len(row) != len(rows) for row in rows):
        raise ValueError("the accuracy matrix must be square and non-empty")
    return rows


def average_accuracy(r: Sequence[Sequence[float]]) -> float:
    """ACC: the mean of the last row."""
    rows = _matrix(r)
    return sum(rows[-1]) / len(rows)


def backward_transfer(r: Sequence[Sequence[float]]) -> float:
    """BWT = mean over j < T−1 of R[T−1][j] − R[j][j] (Lopez-Paz & Ranzato 2017)."""
    rows = _matrix(r)
    t = len(rows)
    if t < 2:
        return math.nan
    return sum(rows[-1][j] - rows[j][j] for j in range(t - 1)) / (t - 1)


def forgetting(r: Sequence[Sequence[float]]) -> float:
    """Mean over j < T−1 of max_{j ≤ l < T−1} R[l][j] − R[T−1][j] (Chaudhry et al. 2018)."""
    rows = _matrix(r)
    t = len(rows)
    if t < 2:
        return math.nan
    return sum(max(rows[k][j] for k in range(j, t - 1)) - rows[-1][j] for j in range(t - 1)) / (t - 1)


def plasticity(r: Sequence[Sequence[float]]) -> float:
    """Mean of the diagonal: each task's accuracy right after it was learned."""
    rows = _matrix(r)
    return sum(rows[j][j] for j in range(len(rows))) / len(rows)


def scores(r: Sequence[Sequence[float]]) -> dict[str, float]:
    """All four scores, as fractions."""
    return {
        "avg_accuracy": average_accuracy(r),
        "bwt": backward_transfer(r),
        "forgetting": forgetting(r),
        "plasticity": plasticity(r),
    }
