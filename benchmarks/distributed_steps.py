"""Benchmark: time per traversal step with 1 and 2 processes (gloo, CPU), and the share spent communicating.

The default MLP (784-300-100-10) on mnist5k, OutputMetric on a batch of ``--batch`` digits, the papers'
step (``traverse`` toward a second network, damping 1e-3) with ``--cg`` conjugate-gradient products
per step. Each configuration runs ``--steps`` steps after one warm-up step; the time inside
``torch.distributed.all_reduce`` is measured on every rank (the communication share). On a 2-core
machine compare 1 process × 2 threads with 2 processes × 1 thread (the same cores). Prints a markdown
table and writes benchmarks/results/distributed_steps.json.

    python benchmarks/distributed_steps.py [--steps 30] [--batch 256] [--cg 10]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _run(rank: int, world: int, threads: int, args: argparse.Namespace, init: str, out: str) -> None:
    torch.set_num_threads(threads)
    if world > 1:
        dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world)
    from weightgeo import FunctionalModel, OutputMetric, TargetPoint, WeightSpace, traverse
    from weightgeo.data import load_dataset
    from weightgeo.models import build_model

    spent = {"seconds": 0.0, "calls": 0}
    if world > 1:  # time every all-reduce of the library
        original = dist.all_reduce

        def timed(*a, **k):
            start = time.perf_counter()
            result = original(*a, **k)
            spent["seconds"] += time.perf_counter() - start
            spent["calls"] += 1
            return result

        dist.all_reduce = timed
    torch.manual_seed(0)
    x = load_dataset("mnist5k", "train").x[: args.batch]
    model = build_model("mlp")
    fm = FunctionalModel(model)
    theta = fm.theta()
    target = theta + 0.5 * torch.randn(fm.n, generator=torch.Generator().manual_seed(1))
    space = WeightSpace(fm, OutputMetric(fm, x), damping=1e-3, cg_maxiter=args.cg, cg_tol=0.0)
    traverse(space, TargetPoint(target), step_size=1e-3, max_steps=1, start=theta)  # warm-up
    spent["seconds"], spent["calls"] = 0.0, 0
    start = time.perf_counter()
    traverse(space, TargetPoint(target), step_size=1e-3, max_steps=args.steps, start=theta)
    seconds = time.perf_counter() - start
    if rank == 0:
        Path(out).write_text(json.dumps({"seconds_per_step": seconds / args.steps,
                                         "communication_share": spent["seconds"] / seconds,
                                         "all_reduce_per_step": spent["calls"] / args.steps}))
    if world > 1:
        dist.destroy_process_group()


def measure(world: int, threads: int, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        init, out = os.path.join(folder, "init"), os.path.join(folder, "out.json")
        if world == 1:
            _run(0, 1, threads, args, init, out)
        else:
            mp.spawn(_run, args=(world, threads, args, init, out), nprocs=world, join=True)
        return {"processes": world, "threads_each": threads, **json.loads(Path(out).read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--cg", type=int, default=10)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "distributed_steps.json"))
    args = parser.parse_args()
    rows = [measure(1, 2, args), measure(1, 1, args), measure(2, 1, args)]
    result = {"date": date.today().isoformat(), "torch": torch.__version__, "cpu": platform.machine(),
              "cores": os.cpu_count(), "load_average": os.getloadavg(), "steps": args.steps,
              "batch": args.batch, "cg_iterations": args.cg, "rows": rows}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"default MLP, OutputMetric on {args.batch} digits, {args.cg} CG products per step, "
          f"{args.steps} steps; load average {os.getloadavg()[0]:.2f}")
    print("| processes × threads | ms per step | all-reduces per step | share in all-reduce |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['processes']} × {r['threads_each']} | {1e3 * r['seconds_per_step']:.1f} | "
              f"{r['all_reduce_per_step']:.0f} | {100 * r['communication_share']:.1f}% |")


if __name__ == "__main__":
    main()
