"""ResampledMetric: a data-dependent metric re-estimated on the next batch of a stream at every point.

A metric averaged over a batch of inputs (the output or Fisher metric of stored examples) is an
estimate; ``ResampledMetric(G, batches)`` binds a fresh estimate each time it is bound to a point:
``at(θ)`` draws the next batch from ``batches`` and returns ``G.with_inputs(batch).at(θ)``. An
optimiser on a WeightSpace under it (``fit(space=...)``) solves every step's damped system under a
new estimate — stochastic natural-gradient descent with the metric resampled per step — and the
products of each solve are charged as the inner metric's (``WeightSpace.products_spent``).

``mvp(θ, v)`` is a product under the current estimate (the last batch drawn, or the metric's own
inputs before any draw); it draws nothing, so only binding to a point advances the stream.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from weightgeo.data.streams import Stream, stream
from weightgeo.metrics.base import Metric, MetricOperator


def _inputs_of(batch: Any) -> Tensor:
    """The inputs of a batch: the batch itself, or the first element of an ``(x, …)`` tuple."""
    return batch[0] if isinstance(batch, tuple | list) else batch


class ResampledMetric(Metric):
    """The metric ``metric`` re-estimated on the next batch of ``batches`` at every ``at(θ)``.

    Args:
        metric: a data-dependent metric (with ``with_inputs``).
        batches: a :class:`~weightgeo.data.streams.Stream` of input batches (or anything
            :func:`~weightgeo.data.streams.stream` accepts); its state is :meth:`state_dict`'s.
    """

    def __init__(self, metric: Metric, batches: Any) -> None:
        self.metric = metric
        self.batches: Stream = stream(batches)
        self.current = metric

    @property
    def product_cost(self) -> int:  # type: ignore[override]
        return self.metric.product_cost

    @property
    def inputs(self) -> Tensor | None:  # type: ignore[override]
        return self.current.inputs

    def higher_derivatives(self):
        return self.metric.higher_derivatives()

    def at(self, theta: Tensor) -> MetricOperator:
        """The metric on the next batch, bound to θ."""
        self.current = self.metric.with_inputs(_inputs_of(self.batches.next()))
        return self.current.at(theta)

    def mvp(self, theta: Tensor, v: Tensor) -> Tensor:
        return self.current.mvp(theta, v)

    def with_inputs(self, inputs: Tensor) -> Metric:
        """The metric on one given batch: the inner metric on it (nothing left to resample)."""
        return self.metric.with_inputs(inputs)

    def state_dict(self) -> dict:
        """The stream's position (to resume to the same batches)."""
        return {"batches": self.batches.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.batches.load_state_dict(state["batches"])

    def __repr__(self) -> str:
        return f"Resampled({self.metric!r})"
