"""Run directories: config.json, results, checkpoints, plots, summary.md — written so nothing is lost.

Files are written atomically (a temporary file beside the target, then ``os.replace``) with the
user's umask, so a run that fails or is killed leaves what it had already written intact and never
a half-written file. JSON is strict: a non-finite number is written as ``null`` (:func:`json_safe`),
never as the bare ``NaN`` that strict readers refuse.

:class:`RunDirectory` is what an application writes into: opening it refuses a non-empty directory
unless ``overwrite`` (which first removes the previous run's outputs, so no stale file survives) or
``resume`` (which keeps them and checks that the settings are the same). Each finished unit of work
(a method at a level, a seed, …) is appended to ``units.jsonl``; a resumed run skips the units found
there. Long units save their state with :meth:`RunDirectory.save_state` and reload it with
:meth:`RunDirectory.load_state` (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from weightgeo import distributed
from weightgeo.errors import WeightgeoError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()


def _atomic_write(path: Path, data: bytes) -> Path:
    if not distributed.is_writer():  # under torchrun only rank 0 writes; every rank reads
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files: give the user's usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    return _atomic_write(Path(path), text.encode())


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    return _atomic_write(Path(path), data)


def save_tensors(path: str | os.PathLike, obj: Any) -> Path:
    """``torch.save`` atomically and byte-reproducibly (the archive never holds a temporary name)."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return _atomic_write(Path(path), buffer.getvalue())


def load_tensors(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """Read a file written by :func:`save_tensors` (weights only: a file never runs code)."""
    return torch.load(path, map_location=map_location, weights_only=True)


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON text of ``obj`` (non-finite numbers as null; other objects as their str)."""
    return json.dumps(json_safe(obj), indent=indent, default=str, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, dumps(obj, indent=2) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON object as a line (a cut-off last line is skipped by readers)."""
    append_lines(path, [dumps(row)])


def append_lines(path: str | os.PathLike, lines: list[str]) -> None:
    """Append text lines to a file, flushed to disk (rank 0 only under torchrun)."""
    if not distributed.is_writer():
        return
    path = Path(path)
    new = not path.exists()
    with open(path, "a") as handle:
        handle.write("".join(line + "\n" for line in lines))
        handle.flush()
        os.fsync(handle.fileno())
    if new:
        os.chmod(path, _FILE_MODE)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A CSV table (columns: the given ones first, then any others in order of appearance)."""
    import csv

    names = list(columns or [])
    for row in rows:
        names.extend(k for k in row if k not in names)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _fmt(row.get(k)) for k in names})
    return write_text(path, buffer.getvalue())


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    """A GitHub-flavoured markdown table of ``rows`` restricted to ``columns``."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(_fmt(row.get(c))) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else value


def _check_writable(out: Path) -> None:
    """One line for a location that cannot hold a run (long names, read-only places)."""
    for part in out.parts:
        if len(part.encode()) > 255:
            raise WeightgeoError(f"output path {out}: the folder name {part[:40]}… is longer than 255 bytes")


def prepare_run_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out``; refuse an existing non-empty directory unless ``overwrite`` (which empties it)."""
    return RunDirectory.open(out, overwrite=overwrite).path


class RunDirectory:
    """The directory of one run (see the module docstring). Build it with :meth:`open`."""

    CONFIG = "config.json"
    UNITS = "units.jsonl"
    STATE = "state"

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def open(
        cls,
        out: str | os.PathLike,
        *,
        overwrite: bool = False,
        resume: bool = False,
        config: dict | None = None,
    ) -> RunDirectory:
        """Create or reopen ``out`` for a run with ``config`` (written as config.json).

        Raises:
            WeightgeoError: ``out`` is a file; it holds files and neither ``overwrite`` nor
            ``resume`` is given; ``resume`` finds another run's settings or no run at all.
        """
        out = Path(out)
        _check_writable(out)
        problem, run = None, cls(out)
        if distributed.is_writer():
            try:
                run = cls._open_as_writer(out, overwrite, resume, config)
            except WeightgeoError as err:
                problem = str(err)
        problem = distributed.share(problem)  # the other ranks use rank 0's directory once it is ready
        if problem is not None:
            raise WeightgeoError(problem)
        return run

    @classmethod
    def _open_as_writer(cls, out: Path, overwrite: bool, resume: bool, config: dict | None) -> RunDirectory:
        if overwrite and resume:
            raise WeightgeoError("--overwrite and --resume contradict each other: choose one")
        if out.exists() and not out.is_dir():
            raise WeightgeoError(f"output path {out} exists and is not a directory")
        occupied = out.exists() and any(out.iterdir())
        run = cls(out)
        if resume:
            if not occupied or not (out / cls.CONFIG).exists():
                raise WeightgeoError(f"--resume: {out} holds no run to continue (no {cls.CONFIG})")
            if config is not None:
                run._check_same_config(config)
            return run
        if occupied and not overwrite:
            raise WeightgeoError(
                f"output directory {out} exists and is not empty; pass --overwrite to replace it, "
                "--resume to continue it, or choose another"
            )
        if occupied:
            if not (out / cls.CONFIG).exists():
                raise WeightgeoError(
                    f"--overwrite: {out} holds files but no weightgeo run ({cls.CONFIG} is missing); "
                    "refusing to delete them: choose an empty or new directory"
                )
            run.clear()
        out.mkdir(parents=True, exist_ok=True)
        if config is not None:
            write_json(out / cls.CONFIG, config)
        return run

    def _check_same_config(self, config: dict) -> None:
        stored = json.loads((self.path / self.CONFIG).read_text())
        fresh = json.loads(dumps(config))
        changed = sorted(k for k in set(stored) | set(fresh) if stored.get(k) != fresh.get(k))
        if changed:
            key = changed[0]
            raise WeightgeoError(
                f"--resume: {self.path} was run with other settings ({key}: {stored.get(key)!r} there, "
                f"{fresh.get(key)!r} now); rerun with the same options or use --overwrite"
            )

    def clear(self) -> None:
        """Remove everything inside the directory (the previous run's outputs)."""
        if not distributed.is_writer():
            return
        for child in self.path.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()

    # -- units of work ------------------------------------------------------------------------
    def completed(self) -> dict[str, list[dict]]:
        """The units finished so far: their key → their result rows."""
        return {entry["unit"]: entry["rows"] for entry in read_jsonl(self.path / self.UNITS)}

    def record(self, key: str, rows: Iterable[dict]) -> None:
        """Mark unit ``key`` finished with its result rows (appended atomically, line by line)."""
        append_jsonl(self.path / self.UNITS, {"unit": key, "rows": list(rows)})

    # -- state of long units ---------------------------------------------------------------------
    def _state_file(self, key: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        return self.path / self.STATE / f"{safe}.pt"

    def save_state(self, key: str, state: Any) -> None:
        """Save the progress of unit ``key`` (tensors and plain types) atomically."""
        save_tensors(self._state_file(key), state)

    def load_state(self, key: str) -> Any | None:
        """The progress saved for unit ``key``, or None."""
        file = self._state_file(key)
        return load_tensors(file) if file.exists() else None

    def drop_state(self, key: str) -> None:
        """Forget unit ``key``'s progress (it finished); the state folder goes when empty."""
        if distributed.is_writer():
            file = self._state_file(key)
            file.unlink(missing_ok=True)
            if file.parent.exists() and not any(file.parent.iterdir()):
                file.parent.rmdir()

    # -- files ---------------------------------------------------------------------------------------
    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __fspath__(self) -> str:
        return str(self.path)

    def __repr__(self) -> str:
        return f"RunDirectory({str(self.path)!r})"
