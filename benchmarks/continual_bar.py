"""The issue's bar for continual learning: permuted-mnist (domain) and split-mnist (task, class).

Runs ``weightgeo continual`` for the three set-ups (mnist5k, default MLP, all methods, --tune,
3 seeds) into ``ROOT/<tasks>-<scenario>`` and prints one combined markdown table; with
``--report`` it only reads run directories that already exist (partial runs included: the
table says how many seeds each method finished).

    .venv/bin/python benchmarks/continual_bar.py --root /tmp/clbench            # run, then table
    .venv/bin/python benchmarks/continual_bar.py --root /tmp/clbench --report   # table only
    .venv/bin/python benchmarks/continual_bar.py --root /tmp/clbench --resume   # continue killed runs

``--report`` reads any run directory under ROOT named ``<tasks>-<scenario>``; the runs of
``--tune-lr`` (see BENCHMARKS.md) are read the same way, their lr column the tuned rate.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

from weightgeo.applications.continual import run_experiment
from weightgeo.applications.continual.runner import choose_strength

SETUPS = [("permuted-mnist", "domain"), ("split-mnist", "task"), ("split-mnist", "class")]


def _unit_rows(run: Path, kind: str) -> list[dict]:
    """The rows of the finished units of ``kind`` ("result" or "tuning"), partial runs included."""
    lines = (run / "units.jsonl").read_text().splitlines()
    return [row for line in lines if line.strip() for row in json.loads(line)["rows"] if row.get("kind") == kind]


def table(run: Path) -> str:
    rows = _unit_rows(run, "result")
    trials: dict[str, list[dict]] = {}
    for row in _unit_rows(run, "tuning"):
        trials.setdefault(row["method"], []).append(row)
    chosen = {method: choose_strength(mine) for method, mine in trials.items()}
    out = ["| method | strength | lr | seeds | ACC | BWT | forgetting | plasticity | grad evals / task | s / seed |",
           "|---|---|---|---|---|---|---|---|---|---|"]
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
        lr = mine[0].get("lr")  # what the runs used (tuned with --tune-lr)
        out.append(f"| {method} | {chosen.get(method) or '—'} | {'—' if lr is None else format(lr, 'g')} | {len(mine)} | {cell('avg_accuracy')} | {cell('bwt')} | "
                   f"{cell('forgetting')} | {cell('plasticity')} | {per_task} | {seconds:.0f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--report", action="store_true", help="only print the table of existing runs")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--resume", action="store_true", help="continue interrupted runs instead of replacing them")
    args = parser.parse_args()
    root = Path(args.root)
    for tasks, scenario in SETUPS:
        run = root / f"{tasks}-{scenario}"
        if not args.report:
            run_experiment(run, tasks=tasks, scenario=scenario, seeds=args.seeds, tune=True,
                           overwrite=not args.resume, resume=args.resume and (run / "config.json").exists())
        if (run / "units.jsonl").exists():
            print(f"\n### {tasks}, {scenario}-incremental\n")
            print(table(run))


if __name__ == "__main__":
    main()
