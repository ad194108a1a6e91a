"""Aggregate ``weightgeo connect`` runs over seed pairs into the BENCHMARKS.md table.

Usage (after one ``weightgeo connect`` run per pair, see BENCHMARKS.md):

    .venv/bin/python benchmarks/connect_pairs.py RUN_DIR [RUN_DIR ...]

Prints one markdown row per method and pair, then the mean over pairs. A value a run could not
measure (a method that diverged: an empty cell of results.csv) prints as n/a and is left out of
the mean; ``eval_seconds`` (the evaluation's wall-clock time) is shown beside ``seconds``.
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


if __name__ == "__main__":
    main(sys.argv[1:])
