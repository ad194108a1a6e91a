"""Sparsification benchmark: every method × level × budget × seed on the mnist5k MLP.

Usage (one process per seed, then the report)::

    for s in 0 1 2; do weightgeo train --model mlp --dataset mnist5k --seed $s --out runs/mlp_s$s; done
    python benchmarks/sparsify_sweep.py run runs/mlp_s0 --out runs/sweep --seed 0   # likewise 1, 2
    python benchmarks/sparsify_sweep.py report --out runs/sweep

``run`` appends one JSON line per (method, level, budget) to ``OUT/rows_seed<S>.jsonl`` as
it finishes and skips the ones already there, so an interrupted sweep resumes. ``report``
writes ``OUT/table.md`` (mean ± std over seeds), ``OUT/front.md`` (the targets of the
issue checked row by row) and ``OUT/accuracy_vs_budget_s<level>.png``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from weightgeo.applications.sparsify import METHODS, SparsifySettings, SparsifyTask
from weightgeo.applications.sparsify.report import accuracy_vs_budget, mean_std
from weightgeo.evaluation import evaluate
from weightgeo.objectives.sparsity import measured_sparsity
from weightgeo.rundir import dumps
from weightgeo.workflows import load_with_data

LEVELS = (0.9, 0.95, 0.98)
BUDGETS = (200, 500, 1000, 2000, 4000)


def run(checkpoint: str, out: Path, seed: int, budgets, methods, levels) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / f"rows_seed{seed}.jsonl"
    done = set()
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["budget"]))
    loaded = load_with_data(checkpoint, device="cpu")
    dense = evaluate(loaded.fmodel, loaded.theta, loaded.test)
    (out / f"dense_seed{seed}.json").write_text(json.dumps(dense))
    eligible = loaded.fmodel.weight_mask()
    for budget in budgets:
        for method in methods:
            if (method, budget) in done or (method == "magnitude" and budget != budgets[0]):
                continue
            task = SparsifyTask(loaded.fmodel, loaded.theta, loaded.train, SparsifySettings(seed=seed))
            started = time.perf_counter()
            results = METHODS[method](task, list(levels), budget)
            wall = time.perf_counter() - started
            rows = []
            for r in results:
                scores = evaluate(loaded.fmodel, r.theta, loaded.test, buffers=r.buffers)
                rows.append({"seed": seed, "method": method, "sparsity": r.sparsity, "budget": budget,
                             "measured_sparsity": measured_sparsity(r.theta, eligible),
                             "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
                             "grad_evals": r.grad_evals, "seconds": r.seconds, "method_wall": wall,
                             "stop_reason": r.stop_reason, "stop_message": r.message})
            with open(rows_file, "a") as handle:
                handle.write("".join(dumps(row) + "\n" for row in rows))
            print(f"seed {seed} {method} budget {budget}: "
                  + " ".join(f"{100 * row['sparsity']:g}%→{100 * row['test_accuracy']:.1f}" for row in rows)
                  + f" ({wall:.0f} s)" + "".join(f"; {r.message}" for r in results if r.diverged), flush=True)


def report(out: Path) -> None:
    rows = [json.loads(line) for f in sorted(out.glob("rows_seed*.jsonl")) for line in f.read_text().splitlines()]
    dense = [json.loads(f.read_text())["accuracy"] for f in sorted(out.glob("dense_seed*.json"))]
    dense_mean, dense_std = mean_std(dense)
    budgets = sorted({r["budget"] for r in rows})
    # magnitude costs nothing: the same numbers at every budget
    rows += [{**r, "budget": b} for r in rows if r["method"] == "magnitude" for b in budgets if b != r["budget"]]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["sparsity"], r["budget"]), []).append(r)
    agg = []
    for (method, level, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        m, s = mean_std([r["test_accuracy"] for r in rs])
        agg.append({"method": method, "sparsity": level, "budget": budget, "test_accuracy": m,
                    "test_accuracy_std": s, "seeds": len(rs),
                    "grad_evals": max(r["grad_evals"] for r in rs),
                    "measured_sparsity": min(r["measured_sparsity"] for r in rs),
                    "seconds": sum(r["seconds"] for r in rs) / len(rs)})
    levels = sorted({a["sparsity"] for a in agg})
    methods = [m for m in METHODS if any(a["method"] == m for a in agg)]
    lines = [f"Dense: {100 * dense_mean:.2f} ± {100 * dense_std:.2f}% over {len(dense)} seeds.", ""]
    for level in levels:
        lines += [f"**{100 * level:g}% sparsity** (test accuracy %, mean ± std over seeds; max grad evals)", "",
                  "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = []
            for b in budgets:
                a = next((a for a in agg if a["method"] == m and a["sparsity"] == level and a["budget"] == b), None)
                cells.append("" if a is None else
                             f"{100 * a['test_accuracy']:.2f} ± {100 * a['test_accuracy_std']:.2f} ({a['grad_evals']})")
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        accuracy_vs_budget(out / f"accuracy_vs_budget_s{100 * level:g}.png", agg, dense_mean, level)
    (out / "table.md").write_text("\n".join(lines))
    # the targets, checked
    checks = []

    def get(m, level, b):
        return next((a for a in agg if a["method"] == m and a["sparsity"] == level and a["budget"] == b), None)

    for level in levels:
        for b in budgets:
            g = get("geodesic", level, b)
            if g is None:
                continue
            best_geo = max((a for a in (g, get("geodesic-finetune", level, b)) if a), key=lambda a: a["test_accuracy"])
            spread = max(best_geo["test_accuracy_std"], 1e-9)
            rivals = [a for a in agg if a["sparsity"] == level and a["budget"] == b
                      and not a["method"].startswith("geodesic")]
            above = [f"{a['method']} +{100 * (a['test_accuracy'] - best_geo['test_accuracy']):.2f}"
                     for a in rivals if a["test_accuracy"] - best_geo["test_accuracy"] > spread]
            label_free = [f"{a['method']} {100 * a['test_accuracy']:.2f}" for a in rivals
                          if a["method"] in ("magnitude-distill", "fip") and a["test_accuracy"] >= g["test_accuracy"]]
            checks.append(f"| {100 * level:g}% | {b} | {100 * g['test_accuracy']:.2f} | "
                          f"{best_geo['method']} {100 * best_geo['test_accuracy']:.2f} ± {100 * spread:.2f} | "
                          f"{', '.join(above) or 'none'} | {', '.join(label_free) or 'ahead of both'} |")
    (out / "front.md").write_text(
        "| level | budget | geodesic | best geodesic variant | baselines above it by more than its std "
        "| label-free rivals ≥ geodesic |\n|---|---|---|---|---|---|\n" + "\n".join(checks) + "\n")
    print("\n".join(lines))
    print((out / "front.md").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("checkpoint")
    r.add_argument("--out", required=True, type=Path)
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    r.add_argument("--methods", default=",".join(METHODS))
    r.add_argument("--levels", default=",".join(map(str, LEVELS)))
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, type=Path)
    args = parser.parse_args()
    if args.command == "run":
        run(args.checkpoint, args.out, args.seed, [int(b) for b in args.budgets.split(",")],
            args.methods.split(","), [float(v) for v in args.levels.split(",")])
    else:
        report(args.out)


if __name__ == "__main__":
    main()
