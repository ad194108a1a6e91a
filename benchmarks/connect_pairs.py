"""Aggregate ``weightgeo connect`` runs over seed pairs into the BENCHMARKS.md table.

Usage (after one ``weightgeo connect`` run per pair, see BENCHMARKS.md):

    .venv/bin/python benchmarks/connect_pairs.py RUN_DIR [RUN_DIR ...]

Prints one markdown row per method and pair, then the mean over pairs.
"""

from __future__ import annotations

import csv
import sys
from collections import defaultdict
from pathlib import Path

COLUMNS = ["min_test_accuracy", "max_accuracy_drop", "loss_barrier", "error_barrier", "euclidean_length",
           "metric_length", "grad_evals", "seconds"]


def main(runs: list[str]) -> None:
    per_method: dict[str, list[dict]] = defaultdict(list)
    print("| pair | method | start/end acc | " + " | ".join(COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 3))
    for run in runs:
        for row in csv.DictReader((Path(run) / "results.csv").open()):
            per_method[row["method"]].append(row)
            values = " | ".join(f"{float(row[c]):.4g}" for c in COLUMNS)
            ends = f"{float(row['start_test_accuracy']):.1f}/{float(row['end_test_accuracy']):.1f}"
            print(f"| {Path(run).name} | {row['method']} | {ends} | {values} |")
    print()
    print("| method | " + " | ".join(f"mean {c}" for c in COLUMNS) + " |")
    print("|" + "---|" * (len(COLUMNS) + 1))
    for method, rows in per_method.items():
        means = [sum(float(r[c]) for r in rows) / len(rows) for c in COLUMNS]
        print(f"| {method} | " + " | ".join(f"{m:.4g}" for m in means) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
