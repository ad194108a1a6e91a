"""Learning-rate schedules as multiplicative factors of the base rate (for ``LambdaLR``).

- ``cosine``: ½(1 + cos(π t / T)) at step t of T (from 1 down towards 0);
- ``constant``: 1;
- ``garipov``: 1 for the first half of the run, then linear down to 0.01 at the end (the curve
  training of Garipov et al. 2018).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

from weightgeo.errors import WeightgeoError

ScheduleName = Literal["cosine", "constant", "garipov"]
SCHEDULES: tuple[str, ...] = ("cosine", "constant", "garipov")


def schedule_factor(name: str, total: int) -> Callable[[int], float]:
    """The factor of the base learning rate at step t (0-based) of a run of ``total`` steps."""
    if name not in SCHEDULES:
        raise WeightgeoError(f"unknown schedule {name!r}; choose one of {', '.join(SCHEDULES)}")
    total = max(1, int(total))
    if name == "cosine":
        return lambda t: 0.5 * (1.0 + math.cos(math.pi * t / total))
    if name == "garipov":
        return lambda t: 1.0 if t / total < 0.5 else 1.0 - 0.99 * (t / total - 0.5) / 0.5
    return lambda t: 1.0
