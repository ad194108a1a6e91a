"""Sparsification benchmark: every method × level × budget × seed on the mnist5k MLP.

Usage (one process per seed, then the report)::

    for s in 0 1 2; do weightgeo train --model mlp --dataset mnist5k --seed $s --out runs/mlp_s$s; done
    python benchmarks/sparsify_sweep.py run runs/mlp_s0 --out runs/sweep --seed 0   # likewise 1, 2
    python benchmarks/sparsify_sweep.py report --out runs/sweep

``run`` appends one JSON line per (method, level, budget) to ``OUT/rows_seed<S>.jsonl`` as
it finishes and skips the ones already there, so an interrupted sweep resumes. ``report``
writes ``OUT/table.md`` (mean ± std over seeds), ``OUT/front.md`` (issue 14's check: the label-free
geodesic ahead of every label-free baseline by more than the larger seed std, cell by cell) and
``OUT/accuracy_vs_budget_s<level>.png``.

Choices are made on a validation split, never on the test digits: ``train-val`` trains the MLP on
the training digits minus ``--validation`` held-out ones (a fixed permutation), and ``run
--validation K`` gives the methods only the other training digits and scores on the held-out
ones. ``--set name=value`` overrides a setting of :class:`SparsifySettings` and ``--tag`` names
the variant in the rows (e.g. ``--methods geodesic --set cg_iters=20 --tag geodesic-cg20``).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from weightgeo.applications.sparsify import LABEL_FREE, METHODS, SparsifySettings, SparsifyTask
from weightgeo.applications.sparsify.report import accuracy_vs_budget, mean_std
from weightgeo.data import load_dataset
from weightgeo.evaluation import evaluate
from weightgeo.functional import FunctionalModel
from weightgeo.models import build_model, config_for_data
from weightgeo.models.checkpoint import save_checkpoint
from weightgeo.objectives.sparsity import measured_sparsity
from weightgeo.rundir import dumps
from weightgeo.training import train
from weightgeo.workflows import load_with_data

LEVELS = (0.9, 0.95, 0.98)
BUDGETS = (200, 500, 1000, 2000, 4000)
CHECK_LEVELS = (0.95, 0.98)
CHECK_BUDGETS = (30, 60, 100, 200, 500, 1000)
SPLIT_SEED = 12345


def split(data, validation: int):
    """(the training part, the held-out part): the last ``validation`` digits of a fixed permutation."""
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(SPLIT_SEED)).to(data.x.device)
    return data.subset(order[:len(data) - validation]), data.subset(order[len(data) - validation:])


def train_val(out: Path, seed: int, validation: int) -> None:
    """The default MLP trained as ``weightgeo train`` trains it, on the training part only."""
    torch.set_num_threads(1)
    data, held = split(load_dataset("mnist5k", "train"), validation)
    config = config_for_data("mlp", data, None)
    torch.manual_seed(seed)
    fmodel = FunctionalModel(build_model("mlp", **config))
    result = train(fmodel, fmodel.theta(), data, epochs=20, lr=0.05, batch_size=64, seed=seed)
    accuracy = evaluate(fmodel, result.theta, held)["accuracy"]
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out / "model.pt", fmodel.to_module(result.theta), "mlp", config, "mnist5k", None,
                    extra={"seed": seed, "validation": validation, "validation_accuracy": accuracy})
    print(f"seed {seed}: validation accuracy {100 * accuracy:.2f}% on {validation} held-out digits")


def settings_from(pairs: list[str], seed: int) -> SparsifySettings:
    """SparsifySettings(seed=seed) with ``name=value`` overrides (values parsed as JSON when they can be)."""
    overrides = {}
    for pair in pairs:
        name, _, value = pair.partition("=")
        try:
            overrides[name] = json.loads(value)
        except json.JSONDecodeError:
            overrides[name] = value
    return SparsifySettings(seed=seed, **overrides)


def run(checkpoint: str, out: Path, seed: int, budgets, methods, levels, validation: int = 0,
        overrides: list[str] = (), tag: str | None = None) -> None:
    torch.set_num_threads(1)
    out.mkdir(parents=True, exist_ok=True)
    rows_file = out / f"rows_seed{seed}.jsonl"
    done = set()
    if rows_file.exists():
        for line in rows_file.read_text().splitlines():
            r = json.loads(line)
            done.add((r["method"], r["budget"]))
    loaded = load_with_data(checkpoint, device="cpu")
    train_data, scored = loaded.train, loaded.test
    if validation:
        held = loaded.checkpoint.extra.get("validation")
        if held != validation:
            raise SystemExit(f"{checkpoint} was trained with {held} held-out digits, not {validation} (train-val)")
        train_data, scored = split(loaded.train, validation)
    dense = evaluate(loaded.fmodel, loaded.theta, scored)
    (out / f"dense_seed{seed}.json").write_text(json.dumps(dense))
    eligible = loaded.fmodel.weight_mask()
    settings = settings_from(list(overrides), seed)
    for method in methods:
        name = tag or method
        task = SparsifyTask(loaded.fmodel, loaded.theta, train_data, settings)  # shared by the budgets
        for budget in budgets:
            if (name, budget) in done or (method == "magnitude" and budget != budgets[0]):
                continue
            started = time.perf_counter()
            results = METHODS[method](task, list(levels), budget)
            wall = time.perf_counter() - started
            rows = []
            for r in results:
                scores = evaluate(loaded.fmodel, r.theta, scored, buffers=r.buffers)
                rows.append({"seed": seed, "method": name, "sparsity": r.sparsity, "budget": budget,
                             "measured_sparsity": measured_sparsity(r.theta, eligible),
                             "test_accuracy": scores["accuracy"], "test_loss": scores["loss"],
                             "grad_evals": r.grad_evals, "seconds": r.seconds, "method_wall": wall,
                             "labels": METHODS[method].labels, "scored_on": "validation" if validation else "test",
                             "stop_reason": r.stop_reason, "stop_message": r.message})
            with open(rows_file, "a") as handle:
                handle.write("".join(dumps(row) + "\n" for row in rows))
            print(f"seed {seed} {name} budget {budget}: "
                  + " ".join(f"{100 * row['sparsity']:g}%→{100 * row['test_accuracy']:.1f}" for row in rows)
                  + f" ({wall:.0f} s)" + "".join(f"; {r.message}" for r in results if r.diverged), flush=True)


def aggregate(rows: list[dict]) -> list[dict]:
    """Mean ± std over seeds per (method, level, budget)."""
    budgets = sorted({r["budget"] for r in rows})
    # magnitude costs nothing: the same numbers at every budget
    rows = rows + [{**r, "budget": b} for r in rows if r["method"] == "magnitude" for b in budgets
                   if b != r["budget"]]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["method"], r["sparsity"], r["budget"]), []).append(r)
    agg = []
    for (method, level, budget), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][2], kv[0][0])):
        m, s = mean_std([r["test_accuracy"] for r in rs])
        agg.append({"method": method, "sparsity": level, "budget": budget, "test_accuracy": m,
                    "test_accuracy_std": s, "seeds": len(rs), "labels": rs[0].get("labels"),
                    "grad_evals": max(r["grad_evals"] for r in rs),
                    "measured_sparsity": min(r["measured_sparsity"] for r in rs),
                    "seconds": sum(r["seconds"] for r in rs) / len(rs)})
    return agg


def label_free(method: str, labels) -> bool:
    if labels is not None:
        return not labels
    return method in LABEL_FREE


def check(agg: list[dict], levels=CHECK_LEVELS, budgets=CHECK_BUDGETS, champion: str = "geodesic") -> str:
    """Issue 14's check: ``champion`` ahead of every other label-free method by more than the
    larger of the two seed stds, at every level and budget that both have."""
    def get(m, level, b):
        return next((a for a in agg if a["method"] == m and a["sparsity"] == level and a["budget"] == b), None)

    rivals = sorted({a["method"] for a in agg if label_free(a["method"], a["labels"])
                     and a["method"] != champion and a["method"] not in ("magnitude",)
                     and not a["method"].startswith(champion)})
    lines = ["| level | budget | " + champion + " | " + " | ".join(rivals) + " | met |",
             "|---|---|---|" + "---|" * len(rivals) + "---|"]
    met_all, cells = True, 0
    for level in levels:
        for b in budgets:
            g = get(champion, level, b)
            if g is None:
                continue
            cells += 1
            row, met = [], True
            for m in rivals:
                r = get(m, level, b)
                if r is None:
                    row.append("")
                    continue
                margin = g["test_accuracy"] - r["test_accuracy"]
                bar = max(g["test_accuracy_std"], r["test_accuracy_std"])
                ok = margin > bar
                met &= ok
                row.append(f"{100 * r['test_accuracy']:.2f} ± {100 * r['test_accuracy_std']:.2f} "
                           f"({100 * margin:+.2f} vs {100 * bar:.2f}{'' if ok else ' ✗'})")
            met_all &= met
            lines.append(f"| {100 * level:g}% | {b} | {100 * g['test_accuracy']:.2f} ± "
                         f"{100 * g['test_accuracy_std']:.2f} | " + " | ".join(row) + f" | {'yes' if met else 'no'} |")
    verdict = f"{champion} ahead of every label-free rival by more than the larger seed std in every cell: " \
              f"{'met' if met_all and cells else 'missed'} ({cells} cells)."
    return "\n".join(lines) + "\n\n" + verdict + "\n"


def report(out: Path, champion: str = "geodesic") -> None:
    rows = [json.loads(line) for f in sorted(out.glob("rows_seed*.jsonl")) for line in f.read_text().splitlines()]
    dense = [json.loads(f.read_text())["accuracy"] for f in sorted(out.glob("dense_seed*.json"))]
    dense_mean, dense_std = mean_std(dense)
    budgets = sorted({r["budget"] for r in rows})
    agg = aggregate(rows)
    levels = sorted({a["sparsity"] for a in agg})
    methods = list(dict.fromkeys([m for m in METHODS if any(a["method"] == m for a in agg)]
                                 + sorted({a["method"] for a in agg})))
    scored = "validation" if rows and rows[0].get("scored_on") == "validation" else "test"
    lines = [f"Dense: {100 * dense_mean:.2f} ± {100 * dense_std:.2f}% over {len(dense)} seeds ({scored} digits).", ""]
    for level in levels:
        lines += [f"**{100 * level:g}% sparsity** ({scored} accuracy %, mean ± std over seeds; max grad evals)", "",
                  "| method | " + " | ".join(f"budget {b}" for b in budgets) + " |",
                  "|---|" + "---|" * len(budgets)]
        for m in methods:
            cells = []
            for b in budgets:
                a = next((a for a in agg if a["method"] == m and a["sparsity"] == level and a["budget"] == b), None)
                cells.append("" if a is None else
                             f"{100 * a['test_accuracy']:.2f} ± {100 * a['test_accuracy_std']:.2f} ({a['grad_evals']})")
            if any(cells):
                lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")
        accuracy_vs_budget(out / f"accuracy_vs_budget_s{100 * level:g}.png", agg, dense_mean, level)
    (out / "table.md").write_text("\n".join(lines))
    (out / "front.md").write_text(check(agg, champion=champion))
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
    r.add_argument("--validation", type=int, default=0, help="score on this many held-out training digits")
    r.add_argument("--set", action="append", default=[], help="a setting, name=value (repeatable)")
    r.add_argument("--tag", help="the variant's name in the rows (one method)")
    t = sub.add_parser("train-val")
    t.add_argument("--out", required=True, type=Path)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--validation", type=int, default=1000)
    p = sub.add_parser("report")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--champion", default="geodesic")
    args = parser.parse_args()
    if args.command == "run":
        methods = args.methods.split(",")
        if args.tag and len(methods) != 1:
            parser.error("--tag names one method's variant")
        run(args.checkpoint, args.out, args.seed, [int(b) for b in args.budgets.split(",")], methods,
            [float(v) for v in args.levels.split(",")], args.validation, args.set, args.tag)
    elif args.command == "train-val":
        train_val(args.out, args.seed, args.validation)
    else:
        report(args.out, args.champion)


if __name__ == "__main__":
    main()
