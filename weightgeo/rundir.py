"""Run directories: config.json, metrics.jsonl, checkpoints, plots, summary.md.

Files are written atomically (a temporary file, then ``os.replace``), so a run that
fails leaves what it had already written intact and never a half-written file.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from weightgeo.errors import WeightgeoError


def prepare_run_dir(out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Create ``out``; refuse an existing non-empty directory unless ``overwrite``."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise WeightgeoError(f"output path {out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise WeightgeoError(
            f"output directory {out} exists and is not empty; pass --overwrite or choose another"
        )
    out.mkdir(parents=True, exist_ok=True)
    return out


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=str) + "\n")


def append_jsonl(path: str | os.PathLike, row: dict) -> None:
    """Append one JSON object as a line (a cut-off last line is skipped by readers)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(row, default=str) + "\n")
        handle.flush()


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    rows = []
    for line in Path(path).read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def write_csv(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> Path:
    """A CSV table (columns: the given ones first, then any others in order of appearance)."""
    import csv
    import io

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
