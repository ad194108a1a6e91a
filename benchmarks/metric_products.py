"""Benchmark: cost of metric-vector products relative to one forward+backward pass.

On the default MLP (784-300-100-10, 266,610 parameters) with a batch of 256 mnist5k digits:
- warm: a product from ``metric.at(θ)`` (the operator CG uses), with the linearisation
  amortised over 10 products (one CG solve) and without it;
- cold: ``metric.mvp(θ, v)`` from scratch;
- curvlinops' ``GGNLinearOperator`` (cross-entropy, the same GGN as our FisherMetric) on the
  same model and batch, if installed (``make bench`` installs it; never a dependency).
Times are medians over repeats; ratios are to the median forward+backward of the mean
cross-entropy on the same batch. Writes benchmarks/results/metric_products.json and prints
a markdown table.

    python benchmarks/metric_products.py [--repeats 30] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import torch
from torch import nn

from weightgeo import FisherMetric, FunctionalModel, OutputMetric
from weightgeo.data import load_dataset
from weightgeo.models import build_model

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = "wall"


def median_time(fn, repeats: int) -> float:
    """Median seconds of ``fn()`` on the chosen clock (process CPU time resists other load)."""
    clock = CLOCKS[CLOCK]
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = clock()
        fn()
        times.append(clock() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (steadier when other jobs share the cores)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "metric_products.json"))
    args = parser.parse_args()
    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    data = load_dataset("mnist5k", "train")
    x, y = data.x[: args.batch], data.y[: args.batch]
    model = build_model("mlp")
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    v = torch.randn_like(theta)
    n = theta.numel()

    def forward_backward():
        t = theta.detach().requires_grad_(True)
        nn.functional.cross_entropy(fmodel(t, x), y).backward()

    t_fb = median_time(forward_backward, args.repeats)
    rows = []
    for name, metric in (("output", OutputMetric(model, x)), ("fisher", FisherMetric(model, x))):
        op = metric.at(theta)
        t_warm = median_time(lambda op=op: op @ v, args.repeats)

        def solve_like(metric=metric):  # one linearisation + 10 products, as in a CG solve
            operator = metric.at(theta)
            for _ in range(10):
                operator @ v

        t_cg10 = median_time(solve_like, max(5, args.repeats // 3)) / 10
        t_cold = median_time(lambda metric=metric: metric.mvp(theta, v), args.repeats)
        rows.append({
            "metric": name, "warm_ratio": t_warm / t_fb, "amortised_ratio_10": t_cg10 / t_fb,
            "cold_ratio": t_cold / t_fb, "warm_ms": 1e3 * t_warm, "cold_ms": 1e3 * t_cold,
        })

    peer = None
    try:
        from curvlinops import GGNLinearOperator

        params = [p for p in model.parameters() if p.requires_grad]
        ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
        ours = FisherMetric(model, x).mvp(theta, v)
        theirs = ggn @ v
        agreement = float(torch.linalg.vector_norm(ours - theirs) / torch.linalg.vector_norm(theirs))
        t_peer = median_time(lambda: ggn @ v, args.repeats)
        cold_fisher = next(r for r in rows if r["metric"] == "fisher")["cold_ms"] / 1e3
        from importlib.metadata import version

        peer = {
            "name": f"curvlinops {version('curvlinops-for-pytorch')} GGNLinearOperator (cross-entropy)",
            "ratio": t_peer / t_fb, "ms": 1e3 * t_peer, "relative_difference_to_fisher": agreement,
            "our_cold_over_peer": cold_fisher / t_peer,
        }
    except ImportError:
        pass

    result = {
        "date": date.today().isoformat(), "torch": torch.__version__, "threads": args.threads,
        "python": platform.python_version(), "clock": args.clock, "cpu": platform.processor() or platform.machine(),
        "model": "mlp 784-300-100-10", "parameters": n, "batch": args.batch,
        "forward_backward_ms": 1e3 * t_fb, "metrics": rows, "peer": peer,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")

    print(f"forward+backward: {1e3 * t_fb:.2f} ms {args.clock} time (batch {args.batch}, "
          f"{n:,} parameters, {args.threads} threads)")
    print("| metric | warm product / fb | with linearisation, per product of 10 / fb | cold mvp / fb |")
    print("|---|---|---|---|")
    for r in rows:
        print(f"| {r['metric']} | {r['warm_ratio']:.2f} | {r['amortised_ratio_10']:.2f} | {r['cold_ratio']:.2f} |")
    if peer:
        print(f"| {peer['name']} | | | {peer['ratio']:.2f} |")
        print(f"our cold Fisher product / curvlinops product: {peer['our_cold_over_peer']:.2f} "
              f"(products agree to {peer['relative_difference_to_fisher']:.1e})")
    else:
        print("curvlinops not installed: run `make bench` to compare with it")


if __name__ == "__main__":
    main()
