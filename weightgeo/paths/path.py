"""Path: the waypoints of a traversal and what was measured at each point.

Point k of a path is θ_k; its record holds the metric length √(dθᵀ G dθ) and the
Euclidean length ||dθ|| of the segment θ_{k−1} → θ_k (0 at k = 0), the objective at
θ_k, the cumulative number of gradient evaluations spent to reach θ_k, and any
evaluations the caller asked for (e.g. test accuracy every few points).

With a directory, a Path is streamed to disk as it grows — ``metrics.jsonl``
(one JSON object per point, appended), ``waypoints/point_XXXXXXX.pt`` every
``save_every`` points and at the end, ``path.json`` (the summary) — and keeps in memory
only its start and its current end, so a long path of a large network costs two
copies of θ. Without a directory the saved waypoints stay in memory instead. An
interrupted run keeps everything up to its last saved waypoint: ``Path.resume``
reopens it there and a tracer continues from it.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

import torch
from torch import Tensor

from weightgeo.errors import WeightgeoError

_WAYPOINTS = "waypoints"
_RECORDS = "metrics.jsonl"
_SUMMARY = "path.json"


def _atomic_torch_save(obj: Any, target: FilePath) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _atomic_write_text(text: str, target: FilePath) -> None:
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, target)


def _read_waypoint(directory: FilePath, k: int) -> Tensor:
    """θ_k from its file; weights_only, so a file from elsewhere never runs code."""
    file = directory / _WAYPOINTS / f"point_{k:07d}.pt"
    return torch.load(file, map_location="cpu", weights_only=True)["theta"]


def _to_python(value: Any) -> Any:
    # Logging: the host sync of a path happens here, once per flush, never per step.
    if isinstance(value, Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class Path:
    """A traced path in weight space: waypoints plus one record per point.

    Args:
        start: θ_0.
        directory: where to stream the path (created if missing); None keeps it in memory.
        save_every: save θ_k every this many points (always the first and the last).
        meta: free-form JSON-serialisable description (tracer, metric, settings).
    """

    def __init__(
        self,
        start: Tensor,
        directory: str | os.PathLike | None = None,
        save_every: int = 10,
        meta: dict | None = None,
    ) -> None:
        if save_every < 1:
            raise WeightgeoError(f"save_every must be ≥ 1, got {save_every}")
        self.start = start.detach().clone()
        self.end = self.start
        self.directory = None if directory is None else FilePath(directory)
        self.save_every = save_every
        self.meta = dict(meta or {})
        self.records: list[dict] = []
        self.stop_reason: str | None = None
        self._pending: list[dict] = []
        self._memory_waypoints: dict[int, Tensor] = {}
        self._saved_points: list[int] = []
        if self.directory is not None:
            # A new path replaces one left in the same directory (continuing one is
            # Path.resume's job): its files are removed, never appended to.
            for stale in [self.directory / _RECORDS, self.directory / _SUMMARY,
                          *(self.directory / _WAYPOINTS).glob("point_*.pt")]:
                stale.unlink(missing_ok=True)
            (self.directory / _WAYPOINTS).mkdir(parents=True, exist_ok=True)

    # -- growing ---------------------------------------------------------------------
    def __len__(self) -> int:
        """Number of points (waypoints recorded), start included."""
        return len(self.records) + len(self._pending)

    def append(self, theta: Tensor, **record: Any) -> int:
        """Add point θ_k with its record (tensors stay on the device until the next flush)."""
        k = len(self)
        self.end = theta.detach()
        self._pending.append({"point": k, **record})
        if k % self.save_every == 0:
            self.flush()  # records first: a waypoint never exists without its record
            self.save_waypoint(k, self.end)
        return k

    def update_last(self, **values: Any) -> None:
        """Add values (e.g. an evaluation) to the record of the latest point."""
        if self._pending:
            self._pending[-1].update(values)
        elif self.records:
            self.records[-1].update({k: _to_python(v) for k, v in values.items()})
            self._rewrite_records()
        else:
            raise WeightgeoError("the path has no point yet")

    def save_waypoint(self, k: int, theta: Tensor) -> None:
        if k in self._saved_points:
            return
        if self.directory is None:
            self._memory_waypoints[k] = theta.detach().clone()
        else:
            _atomic_torch_save(
                {"theta": theta.detach().cpu()}, self.directory / _WAYPOINTS / f"point_{k:07d}.pt"
            )
        self._saved_points.append(k)

    def flush(self) -> None:
        """Move pending records to host memory and append them to ``metrics.jsonl``.

        The one host sync of a traversal, every ``save_every`` points (logging).
        """
        if not self._pending:
            return
        rows = [{key: _to_python(value) for key, value in row.items()} for row in self._pending]
        self._pending = []
        self.records.extend(rows)
        if self.directory is not None:
            with open(self.directory / _RECORDS, "a") as handle:
                for row in rows:
                    handle.write(json.dumps(row) + "\n")

    def _rewrite_records(self) -> None:
        if self.directory is not None:
            _atomic_write_text(
                "".join(json.dumps(r) + "\n" for r in self.records), self.directory / _RECORDS
            )

    def finish(self, reason: str) -> Path:
        """Record why tracing stopped, save the end point and the summary."""
        self.stop_reason = reason
        self.flush()
        if len(self):
            self.save_waypoint(len(self) - 1, self.end)
        if self.directory is not None:
            _atomic_write_text(json.dumps(self.summary(), indent=2), self.directory / _SUMMARY)
        return self

    # -- reading -----------------------------------------------------------------------
    def column(self, name: str) -> list:
        """One value per point (None where a point has no such value)."""
        self.flush()
        return [r.get(name) for r in self.records]

    def _sum(self, name: str) -> float:
        values = [v for v in self.column(name) if v is not None]
        return float(sum(values)) if values else math.nan

    @property
    def metric_length(self) -> float:
        """Σ_k √(dθ_kᵀ G(θ_k) dθ_k) over the segments (NaN if the tracer measured none)."""
        return self._sum("metric_length")

    @property
    def euclidean_length(self) -> float:
        """Σ_k ||θ_k − θ_{k−1}||."""
        return self._sum("euclidean_length")

    @property
    def grad_evals(self) -> int:
        """Gradient evaluations spent in total (a metric-vector product counts as one)."""
        values = [v for v in self.column("grad_evals") if v is not None]
        return int(values[-1]) if values else 0

    @property
    def saved_points(self) -> list[int]:
        return sorted(self._saved_points)

    def waypoint(self, k: int) -> Tensor:
        """θ_k for a saved point k (see :attr:`saved_points`)."""
        if k < 0:
            k = len(self) + k
        if k == 0:
            return self.start
        if k == len(self) - 1:
            return self.end
        if k not in self._saved_points:
            raise WeightgeoError(f"point {k} was not saved (saved every {self.save_every} points)")
        if self.directory is None:
            return self._memory_waypoints[k]
        return _read_waypoint(self.directory, k).to(self.start.device)

    def waypoints(self) -> Iterator[tuple[int, Tensor]]:
        """The saved points (k, θ_k), in order, loaded one at a time."""
        for k in self.saved_points:
            yield k, self.waypoint(k)

    def summary(self) -> dict:
        return {
            "points": len(self),
            "metric_length": self.metric_length,
            "euclidean_length": self.euclidean_length,
            "grad_evals": self.grad_evals,
            "stop_reason": self.stop_reason,
            "save_every": self.save_every,
            "saved_points": self.saved_points,
            "meta": self.meta,
        }

    # -- persistence ----------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike) -> Path:
        """Read back a path written to ``directory``, up to its last saved waypoint."""
        directory = FilePath(directory)
        records_file = directory / _RECORDS
        if not records_file.exists():
            raise WeightgeoError(f"{directory} holds no path ({_RECORDS} is missing)")
        records = []
        for line in records_file.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a line cut short by an interruption: the records end here
        saved = sorted(
            int(p.stem.split("_")[1]) for p in (directory / _WAYPOINTS).glob("point_*.pt")
        )
        if not saved:
            raise WeightgeoError(f"{directory} holds no saved waypoint")
        summary_file = directory / _SUMMARY
        summary = json.loads(summary_file.read_text()) if summary_file.exists() else {}
        last = saved[-1]

        path = cls.__new__(cls)
        path.start = _read_waypoint(directory, saved[0])
        path.end = _read_waypoint(directory, last)
        path.directory = directory
        path.save_every = int(summary.get("save_every", 10))
        path.meta = summary.get("meta", {})
        path.records = [r for r in records if r.get("point", 0) <= last]
        path.stop_reason = summary.get("stop_reason") if len(path.records) == last + 1 else None
        path._pending = []
        path._memory_waypoints = {}
        path._saved_points = saved
        if len(path.records) != len(records):
            path._rewrite_records()  # drop records past the last waypoint: they will be redone
        return path

    resume = load

    def __repr__(self) -> str:
        return (
            f"Path(points={len(self)}, metric_length={self.metric_length:.4g}, "
            f"euclidean_length={self.euclidean_length:.4g}, grad_evals={self.grad_evals}, "
            f"stop_reason={self.stop_reason!r})"
        )
