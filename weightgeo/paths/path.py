"""Path: the waypoints of a traversal and what was measured at each point.

Point k of a path is θ_k; its record holds the metric length √(dθᵀ G dθ) and the
Euclidean length ||dθ|| of the segment θ_{k−1} → θ_k (0 at k = 0), the objective at
θ_k, the cumulative number of gradient evaluations spent to reach θ_k, and any
evaluations the caller asked for (e.g. test accuracy every few points).

Lifecycle. A path is *open* while tracers append to it and *finished* once :meth:`finish`
records why it ended; nothing can be appended to a finished path. One path may be built in
*stages* (e.g. one sparsity level after another, or a traced part and a final straight
segment): :meth:`begin_stage` names the points that follow, :meth:`end_stage` records how the
stage ended, and every tracer given ``path=`` (and ``finish=False``) continues the open path.

With a directory, a Path is streamed to disk as it grows — ``metrics.jsonl`` (one JSON
object per point, appended), ``waypoints/point_XXXXXXX.pt`` every ``save_every`` points and
at the end, ``path.json`` (the summary, kept current at every flush); a waypoint file also holds the
tracer's state at that point — and keeps in memory only its start and its
current end, so a long path of a large network costs two copies of θ. Without a directory the
saved waypoints stay in memory instead. An interrupted run keeps everything up to its last
saved waypoint: :meth:`Path.resume` reopens it there, with the tracer's state, and a tracer
continues from it to the same numbers.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path as FilePath
from typing import Any

from torch import Tensor

from weightgeo import distributed
from weightgeo.errors import WeightgeoError
from weightgeo.rundir import append_lines, dumps, load_tensors, save_tensors, write_text
from weightgeo.stopping import Stop, StopReason

_WAYPOINTS = "waypoints"
_RECORDS = "metrics.jsonl"
_SUMMARY = "path.json"


def _waypoint_file(directory: FilePath, k: int) -> FilePath:
    return directory / _WAYPOINTS / f"point_{k:07d}.pt"


def _read_waypoint(directory: FilePath, k: int) -> Tensor:
    """θ_k from its file; weights_only, so a file from elsewhere never runs code."""
    return load_tensors(_waypoint_file(directory, k))["theta"]


def _to_python(value: Any) -> Any:
    if isinstance(value, Tensor):  # logging: a path's host sync, once per flush, never per step
        value = value.item() if value.numel() == 1 else value.tolist()  # logging (see above)
    if isinstance(value, float) and not math.isfinite(value):
        return None  # strict JSON; the stop record says why
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
        if not isinstance(save_every, int) or save_every < 1:
            raise WeightgeoError(f"save_every must be a whole number ≥ 1, got {save_every!r}")
        self.start = start.detach().clone()
        self.end = self.start
        self.directory = None if directory is None else FilePath(directory)
        self.save_every = save_every
        self.meta = dict(meta or {})
        self.records: list[dict] = []
        self.stages: list[dict] = []
        self.stop: Stop | None = None
        self.last_stop: Stop | None = None
        self._pending: list[dict] = []
        self._memory_waypoints: dict[int, Tensor] = {}
        self._saved_points: list[int] = []
        self._stage: str | None = None
        if self.directory is not None and distributed.is_writer():
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

    @property
    def finished(self) -> bool:
        return self.stop is not None

    def append(self, theta: Tensor, *, state: dict | None = None, **record: Any) -> int:
        """Add point θ_k with its record (tensors stay on the device until the next flush).

        ``state`` (a tracer's state at θ_k) is stored in θ_k's waypoint file when θ_k is saved,
        so a waypoint and the state to resume from it are written together, atomically.

        Raises:
            WeightgeoError: the path is finished.
        """
        if self.finished:
            raise WeightgeoError("the path is finished: nothing can be appended to it (continue an open path)")
        k = len(self)
        self.end = theta.detach()
        if self._stage is not None:
            record = {"stage": self._stage, **record}
        self._pending.append({"point": k, **record})
        if k % self.save_every == 0:
            self.flush()  # records first: a waypoint never exists without its record
            self.save_waypoint(k, self.end, state)
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

    def will_save(self, k: int) -> bool:
        """Whether point k, when appended, is saved as a waypoint (every ``save_every``-th)."""
        return k % self.save_every == 0

    @property
    def stage_open(self) -> bool:
        return self._stage is not None

    def is_saved(self, k: int) -> bool:
        """Whether θ_k has been saved as a waypoint."""
        return k in self._saved_points

    def save_waypoint(self, k: int, theta: Tensor, state: dict | None = None) -> None:
        """Save θ_k (and a tracer's state there, for :meth:`resume`) in one atomic file."""
        if k in self._saved_points:
            return
        if self.directory is None or not distributed.is_writer():  # ranks > 0 keep theirs in memory
            self._memory_waypoints[k] = theta.detach().clone()
        else:
            content = {"theta": theta.detach().cpu()}
            if state is not None:
                content["state"] = state
            save_tensors(_waypoint_file(self.directory, k), content)
        self._saved_points.append(k)

    def load_state(self) -> dict | None:
        """The tracer state saved with the last waypoint, if that waypoint is the path's end."""
        if self.directory is None or not self._saved_points or self._saved_points[-1] != len(self) - 1:
            return None
        return load_tensors(_waypoint_file(self.directory, len(self) - 1)).get("state")

    def flush(self) -> None:
        """Move pending records to host memory, append them to ``metrics.jsonl`` and refresh
        ``path.json``. The one host sync of a traversal, every ``save_every`` points (logging)."""
        if not self._pending:
            return
        rows = [{key: _to_python(value) for key, value in row.items()} for row in self._pending]
        self._pending = []
        self.records.extend(rows)
        if self.directory is not None:
            append_lines(self.directory / _RECORDS, [dumps(row) for row in rows])
            self._write_summary()

    def _rewrite_records(self) -> None:
        if self.directory is not None:
            write_text(self.directory / _RECORDS, "".join(dumps(r) + "\n" for r in self.records))

    def _write_summary(self) -> None:
        if self.directory is not None:
            write_text(self.directory / _SUMMARY, dumps(self.summary(), indent=2))

    # -- stages and the end ----------------------------------------------------------------
    def begin_stage(self, name: str, **meta: Any) -> None:
        """The points that follow belong to stage ``name`` (recorded in their records)."""
        if self.finished:
            raise WeightgeoError("the path is finished: no stage can begin")
        self._stage = name
        self.stages.append({"name": name, "first_point": len(self), **meta})

    def end_stage(self, stop: Stop | str) -> None:
        """Record how the current stage ended."""
        if not self.stages:
            raise WeightgeoError("no stage has begun")
        self.stages[-1].update(_stop(stop).as_dict(), last_point=len(self) - 1)
        self._stage = None

    def finish(self, stop: Stop | str) -> Path:
        """Record why the path ended, save the end point and the summary; returns self."""
        if self.finished:
            raise WeightgeoError("the path is finished already")
        self.flush()
        if len(self):
            self.save_waypoint(len(self) - 1, self.end)
        self.stop = _stop(stop, max(0, len(self) - 1))
        self._write_summary()
        return self

    @property
    def stop_reason(self) -> str | None:
        """Why tracing ended ("done", "max-steps", "budget", "non-finite", "callback", …)."""
        return None if self.stop is None else self.stop.reason.value

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
        if k in self._memory_waypoints:
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
            **(self.stop.as_dict() if self.stop is not None else {"stop_reason": None}),
            "save_every": self.save_every,
            "saved_points": self.saved_points,
            "stages": self.stages,
            "meta": self.meta,
        }

    # -- persistence ----------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | os.PathLike) -> Path:
        """Read back a path written to ``directory``, up to its last saved waypoint.

        A finished path comes back finished; an interrupted one comes back open (see
        :meth:`resume`), with the records past its last saved waypoint dropped (they are redone).
        """
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
        saved = sorted(int(p.stem.split("_")[1]) for p in (directory / _WAYPOINTS).glob("point_*.pt"))
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
        path.stages = summary.get("stages", [])
        path.records = [r for r in records if r.get("point", 0) <= last]
        complete = len(path.records) == last + 1 and summary.get("stop_reason") is not None
        path.stop = Stop(StopReason(summary["stop_reason"]) if summary["stop_reason"] in _REASONS else
                         StopReason.DONE, int(summary.get("stop_step") or 0), summary.get("stop_cause")
                         ) if complete else None
        path._pending = []
        path._memory_waypoints = {}
        path._saved_points = saved
        path._stage = None
        path.last_stop = None
        if path.stop is None and path.stages and "stop_reason" not in path.stages[-1]:
            path._stage = path.stages[-1]["name"]
        if len(path.records) != len(records):
            path._rewrite_records()  # drop records past the last waypoint: they will be redone
        return path

    @classmethod
    def resume(cls, directory: str | os.PathLike) -> Path:
        """Reopen an interrupted path at its last saved waypoint (a finished one is refused)."""
        path = cls.load(directory)
        if path.finished:
            raise WeightgeoError(f"the path in {directory} is finished ({path.stop_reason}); nothing to resume")
        return path

    def __repr__(self) -> str:
        return (
            f"Path(points={len(self)}, metric_length={self.metric_length:.4g}, "
            f"euclidean_length={self.euclidean_length:.4g}, grad_evals={self.grad_evals}, "
            f"stop_reason={self.stop_reason!r})"
        )


_REASONS = {reason.value for reason in StopReason}


def _stop(stop: Stop | str, step: int = 0) -> Stop:
    """A Stop from a Stop or a reason's name."""
    if isinstance(stop, Stop):
        return stop
    if stop not in _REASONS:
        raise WeightgeoError(f"unknown stop reason {stop!r}; one of {', '.join(sorted(_REASONS))}")
    return Stop(StopReason(stop), step)
