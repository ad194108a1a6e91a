"""The issue's bar for continual learning: permuted-mnist (domain) and split-mnist (task, class).

Runs ``weightgeo continual`` for the three set-ups (mnist5k, default MLP, all methods, --tune,
3 seeds) into ``ROOT/<tasks>-<scenario>`` and prints one combined markdown table; with
``--report`` it only reads run directories that already exist (partial runs included: the
table says how many seeds each method finished).

    .venv/bin/python benchmarks/continual_bar.py --root /tmp/clbench            # run, then table
    .venv/bin/python benchmarks/continual_bar.py --root /tmp/clbench --report   # table only
"""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

from weightgeo.applications.continual import ContinualConfig, run_experiment

SETUPS = [("permuted-mnist", "domain"), ("split-mnist", "task"), ("split-mnist", "class")]


def table(run: Path) -> str:
    rows = [json.loads(line) for line in (run / "results.jsonl").read_text().splitlines() if line.strip()]
    chosen = {}
    if (run / "tuning.csv").exists():
        for r in csv.DictReader(open(run / "tuning.csv")):
            if r["chosen"] == "True":
                chosen[r["method"]] = r["strength"]
    out = ["| method | strength | seeds | ACC | BWT | forgetting | plasticity | grad evals / task | s / seed |",
           "|---|---|---|---|---|---|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]

        def cell(key, mine=mine):
            values = [r[key] for r in mine if r[key] is not None and not math.isnan(r[key])]
            if not values:
                return "—"
            mean = sum(values) / len(values)
            std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
            return f"{mean:.2f} ± {std:.2f}"

        per_task = "total " + str(mine[0]["grad_evals"]) if method == "joint" else str(mine[0]["grad_evals_per_task"])
        seconds = sum(r["seconds"] for r in mine) / len(mine)
        out.append(f"| {method} | {chosen.get(method, '—')} | {len(mine)} | {cell('avg_accuracy')} | {cell('bwt')} | "
                   f"{cell('forgetting')} | {cell('plasticity')} | {per_task} | {seconds:.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--report", action="store_true", help="only print the table of existing runs")
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    root = Path(args.root)
    for tasks, scenario in SETUPS:
        run = root / f"{tasks}-{scenario}"
        if not args.report:
            run_experiment(run, tasks=tasks, scenario=scenario, seeds=list(range(args.seeds)),
                           config=ContinualConfig(), tune=True, overwrite=True)
        if (run / "results.jsonl").exists():
            print(f"\n### {tasks}, {scenario}-incremental\n")
            print(table(run))


if __name__ == "__main__":
    main()
