"""What was tried for the geodesic method: solvers, metrics, damping, memory, re-estimation.

One seed of permuted-mnist (5 tasks from mnist5k, domain-incremental, default MLP), the same
budget of gradient evaluations per task as every method of ``weightgeo continual``. Prints one
line per variant and appends it to ``--out`` (JSON lines).

    .venv/bin/python benchmarks/continual_variants.py --out /tmp/cl_variants.jsonl
"""

from __future__ import annotations

import argparse
import json

import torch

from weightgeo.applications.continual import ContinualSettings, run_method
from weightgeo.data.tasks import make_task_sequence

VARIANTS = {
    # name: (method, ContinualSettings fields)
    "finetune lr 0.01": ("finetune", {}),
    "geodesic kfac output μ=0.1": ("geodesic", {"strength": {"geodesic": 0.1}}),
    "geodesic kfac output μ=0.01": ("geodesic", {"strength": {"geodesic": 0.01}}),
    "geodesic kfac output μ=1": ("geodesic", {"strength": {"geodesic": 1.0}}),
    "geodesic kfac fisher μ=0.1": ("geodesic", {"metric": "fisher", "strength": {"geodesic": 0.1}}),
    "geodesic kfac output μ=0.1 memory 300": ("geodesic", {"memory": 300, "strength": {"geodesic": 0.1}}),
    "geodesic kfac output μ=0.1 memory 20": ("geodesic", {"memory": 20, "strength": {"geodesic": 0.1}}),
    "geodesic kfac output μ=0.1 refresh 50": ("geodesic", {"refresh": 50, "strength": {"geodesic": 0.1}}),
    "geodesic kfac output μ=0.1 lr 0.05": ("geodesic", {"lr": 0.05, "strength": {"geodesic": 0.1}}),
    "geodesic nystrom rank 40 μ=0.1": ("geodesic", {"solver": "nystrom", "strength": {"geodesic": 0.1}}),
    "geodesic nystrom rank 150 μ=0.01": ("geodesic", {"solver": "nystrom", "rank": 150, "strength": {"geodesic": 0.01}}),
    "geodesic diag-fisher μ=1e-4": ("geodesic", {"metric": "diag-fisher", "strength": {"geodesic": 1e-4}}),
    "geodesic cg 3 iters μ=0.1": ("geodesic", {"solver": "cg", "cg_iters": 3, "strength": {"geodesic": 0.1}}),
    "geodesic traverse (papers' step) ε=0.05": ("geodesic", {"solver": "traverse", "cg_iters": 10,
                                                              "strength": {"geodesic": 1e-3}}),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", default=None, help="comma-separated variant names")
    args = parser.parse_args()
    seq = make_task_sequence("permuted-mnist", "domain", 5, seed=args.seed)
    names = args.only.split(",") if args.only else list(VARIANTS)
    for name in names:
        method, overrides = VARIANTS[name]
        settings = ContinualSettings(**overrides)
        result = run_method(method, seq, "mlp", settings, seed=args.seed)
        row = {"variant": name, **{k: round(100 * v, 2) for k, v in result.scores.items()},
               "grad_evals_per_task": max(result.grad_evals), "seconds": round(result.seconds, 1),
               "threads": torch.get_num_threads()}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as handle:
            handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
