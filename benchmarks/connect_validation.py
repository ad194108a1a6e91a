"""Connection variants chosen on a validation split: worst held-out accuracy along each path.

The three MLPs come from ``sparsify_sweep.py train-val`` (trained on 3,000 of mnist5k's 4,000
training digits; the other 1,000, a fixed permutation's last, are held out). ``run`` connects a pair
on the 3,000 with the given methods and ``--set name=value`` overrides of :class:`ConnectSettings`,
scores every evaluated point on the 1,000 held-out digits (never the test digits), and appends one
JSON line per method to ``OUT/rows.jsonl``; ``report`` prints, per variant, the worst held-out
accuracy on each pair against the aligned straight line's (rebasin) and the worse endpoint's::

    for s in 100 101 102; do python benchmarks/sparsify_sweep.py train-val --out runs/val_s$s --seed $s; done
    python benchmarks/connect_validation.py run runs/val_s100 runs/val_s101 --out runs/cval \\
        --methods rebasin,aligned-relax --set relax_damping=0.1 --tag damping0.1
    python benchmarks/connect_validation.py report --out runs/cval
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sparsify_sweep import split  # noqa: E402

from weightgeo.applications.connect import connect_networks  # noqa: E402
from weightgeo.applications.connect.settings import ConnectSettings  # noqa: E402
from weightgeo.models.checkpoint import load_checkpoint  # noqa: E402
from weightgeo.workflows import load_with_data  # noqa: E402


def run(a: str, b: str, out: Path, methods: str, overrides: list[str], tag: str) -> None:
    torch.set_num_threads(1)
    loaded = load_with_data(a, device="cpu")
    held = loaded.checkpoint.extra.get("validation")
    if not held:
        raise SystemExit(f"{a} holds out no validation digits: train it with sparsify_sweep.py train-val")
    train, validation = split(loaded.train, held)
    theta_b = loaded.fmodel.flatten(load_checkpoint(b).model)
    settings: dict = {"plane_grid": 0, "train_eval": True, "seed": 0}
    for pair in overrides:  # ConnectSettings overrides, parsed as the sparsify sweep parses its own
        name, _, value = pair.partition("=")
        try:
            settings[name] = json.loads(value)
        except json.JSONDecodeError:
            settings[name] = value
    settings["method"] = tuple(methods.split(","))
    ConnectSettings(**settings)  # refuse a bad setting before the run
    start = time.time()
    connection = connect_networks(loaded.fmodel, loaded.theta, theta_b, train, validation, name="mlp", **settings)
    out.mkdir(parents=True, exist_ok=True)
    pair_name = f"{Path(a).name}-{Path(b).name}"
    with open(out / "rows.jsonl", "a") as rows:
        for row in connection.rows:
            points = connection.evaluations[row["method"]]
            worst = min(p["test_accuracy"] for p in points)
            ends = (points[0]["test_accuracy"], points[-1]["test_accuracy"])
            rows.write(json.dumps({"pair": pair_name, "variant": tag, "method": row["method"],
                                   "worst_val": 100 * worst, "ends_val": [100 * e for e in ends],
                                   "max_train_loss": max(p.get("train_loss", float("nan")) for p in points),
                                   "grad_evals": row["grad_evals"], "stop_reason": row.get("stop_reason"),
                                   "settings": overrides}) + "\n")
    print(f"{pair_name} {tag}: {len(connection.rows)} methods in {time.time() - start:.0f} s")


def report(out: Path) -> None:
    rows = [json.loads(line) for line in (out / "rows.jsonl").read_text().splitlines()]
    line = {r["pair"]: r["worst_val"] for r in rows if r["method"] == "rebasin"}
    pairs = sorted({r["pair"] for r in rows})
    print("| variant | method | " + " | ".join(pairs) + " | every pair ≥ rebasin and within 0.2 of the worse end |")
    print("|---|---|" + "---|" * len(pairs) + "---|")
    keys = sorted({(r["variant"], r["method"]) for r in rows})
    for variant, method in keys:
        cells, ok = [], True
        for pair in pairs:
            found = [r for r in rows if (r["pair"], r["variant"], r["method"]) == (pair, variant, method)]
            if not found:
                cells.append("—")
                ok = False
                continue
            r = found[-1]
            worse = min(r["ends_val"])
            meets = r["worst_val"] >= line.get(pair, 101) - 1e-9 and r["worst_val"] >= worse - 0.2 - 1e-9
            ok = ok and meets
            cells.append(f"{r['worst_val']:.1f} (end {worse:.1f}, line {line.get(pair, float('nan')):.1f})")
        print(f"| {variant} | {method} | " + " | ".join(cells) + f" | {'yes' if ok else 'no'} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run")
    r.add_argument("a")
    r.add_argument("b")
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--methods", default="rebasin,aligned-relax")
    r.add_argument("--set", action="append", default=[], dest="overrides", metavar="NAME=VALUE")
    r.add_argument("--tag", default="default")
    p = sub.add_parser("report")
    p.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    if args.command == "run":
        run(args.a, args.b, args.out, args.methods, args.overrides, args.tag)
    else:
        report(args.out)


if __name__ == "__main__":
    main()
