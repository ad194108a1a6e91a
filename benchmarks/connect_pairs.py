"""Aggregate ``weightgeo connect`` runs over seed pairs into the BENCHMARKS.md table.

Usage (after one ``weightgeo connect`` run per pair, see BENCHMARKS.md):

    .venv/bin/python benchmarks/connect_pairs.py RUN_DIR [RUN_DIR ...]

Prints one markdown row per method and pair, then the mean over pairs. A value a run could not
measure (a method that diverged: an empty cell of results.csv) prints as n/a and is left out of
the mean; ``eval_seconds`` (the evaluation's wall-clock time) is shown beside ``seconds``. Last, per
pair and method, the worst test accuracy against the worse endpoint's and against rebasin's (when
the run has rebasin): the margins issue 14 checks (≥ −0.2 against the endpoint for the geodesic,
≥ −0.5 for traverse; ≥ 0 against rebasin).
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ["min_test_accuracy", "max_accuracy_drop", "loss_barrier", "error_barrier", "euclidean_length",
           "metric_length", "grad_evals", "seconds", "eval_seconds"]


def _number(row: dict, column: str) -> float | None:
    text = row.get(column) or ""
    return float(text) if text else None


def _cell(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4g}"


def margins(runs: list[str]) -> None:
    """Per pair and method: worst accuracy − worse endpoint's, and − rebasin's worst accuracy."""
    print()
    print("| pair | method | worst acc | worse endpoint | vs worse endpoint | rebasin worst | vs rebasin |")
    print("|---|---|---|---|---|---|---|")
    for run in runs:
        rows = list(csv.DictReader((Path(run) / "results.csv").open()))
        rebasin = next((_number(r, "min_test_accuracy") for r in rows if r["method"] == "rebasin"), None)
        for row in rows:
            worst = _number(row, "min_test_accuracy")
            ends = [_number(row, c) for c in ("start_test_accuracy", "end_test_accuracy")]
            endpoint = None if None in ends else min(ends)
            cells = [worst, endpoint, None if None in (worst, endpoint) else worst - endpoint, rebasin,
                     None if None in (worst, rebasin) else worst - rebasin]
            print(f"| {Path(run).name} | {row['method']} | " + " | ".join(_cell(c) for c in cells) + " |")


def main(runs: list[str]) -> None:
    per_method: dict[str, list[dict]] = defaultdict(list)
    print("| pair | method | start/end acc | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for run in runs:
        for row in csv.DictReader((Path(run) / "results.csv").open()):
            per_method[row["method"]].append(row)
            values = " | ".join(_cell(_number(row, c)) for c in COLUMNS)
            ends = f"{_cell(_number(row, 'start_test_accuracy'))}/{_cell(_number(row, 'end_test_accuracy'))}"
            print(f"| {Path(run).name} | {row['method']} | {ends} | {values} |")
    print()
    print("| method | " + " | ".join(f"mean {c}" for c in COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    for method, rows in per_method.items():
        columns = [[v for v in (_number(r, c) for r in rows) if v is not None] for c in COLUMNS]
        means = [sum(values) / len(values) if values else None for values in columns]
        print(f"| {method} | " + " | ".join(_cell(m) for m in means) + " |")
    margins(runs)


if __name__ == "__main__":
    main(sys.argv[1:])
