"""Benchmark: cost of metric-vector products relative to one forward+backward pass.

Models from weightgeo's registry: ``mlp`` (784-300-100-10, 266,610 parameters) on mnist5k digits,
``vgg11``, ``vgg16`` and ``resnet18`` on CIFAR-shaped random images (3×32×32, 10 classes). For the
output and Fisher metrics it times:

- warm: a product from ``metric.at(θ)`` (the operator CG uses), the linearisation excluded;
- per product of a 10-product CG solve, the linearisation included;
- cold: ``metric.mvp(θ, v)`` from scratch;
- curvlinops' ``GGNLinearOperator`` (cross-entropy, the same GGN as our FisherMetric) on the same
  model and batch, if installed (``make bench`` installs it; never a library dependency).

Two baselines, both the mean cross-entropy on the same batch: (a) forward+backward through the
flat θ (``functional_call``, eval mode, as the metrics run the network) and (b) the plain module's
``loss = cross_entropy(model(x), y); loss.backward()`` in train mode, the cost of a user's training
step; every ratio is given to both. The measurements are interleaved (each round times every one
once, after a warm-up round), so a change of load hits them alike; medians over rounds. Prints
the machine, its load average before and after, the threads and a markdown table, and writes
benchmarks/results/metric_products[_<model>_<device>].json.

    python benchmarks/metric_products.py [--model mlp] [--device cpu] [--batch 256] [--repeats 40]
        [--threads 2] [--clock wall|cpu] [--no-solves] [--jvp-route double-vjp|dual] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch
from torch import nn

from weightgeo import FisherMetric, FunctionalModel, OutputMetric
from weightgeo.models import build_model

CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
CLOCK = "wall"
MODELS = ("mlp", "vgg11", "vgg16", "resnet18")


def interleaved_medians(measurements: dict[str, Callable[[], object]], repeats: int,
                        synchronise: Callable[[], None] = lambda: None) -> dict[str, float]:
    """Median seconds of each callable on the chosen clock, timed in turn round after round (after
    one warm-up round); ``synchronise`` waits for the device before each clock reading."""
    clock = CLOCKS[CLOCK]
    samples: dict[str, list[float]] = {key: [] for key in measurements}
    for round_ in range(repeats + 1):
        for key, fn in measurements.items():
            synchronise()
            start = clock()
            fn()
            synchronise()
            if round_:
                samples[key].append(clock() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def median_time(fn: Callable[[], object], repeats: int) -> float:
    """Median seconds of ``fn()`` alone (after one warm-up call)."""
    return interleaved_medians({"fn": fn}, repeats)["fn"]


def batch_for(model_name: str, batch: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """mnist5k digits for the MLP, CIFAR-shaped random images and labels for the CNNs."""
    if model_name == "mlp":
        from weightgeo.data import load_dataset

        data = load_dataset("mnist5k", "train")
        x, y = data.x[:batch], data.y[:batch]
    else:
        x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    return x.to(device), y.to(device)


def machine(device: torch.device) -> str:
    """The processor (and GPU) in words."""
    cpu = platform.processor() or platform.machine()
    cores = os.cpu_count()
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({cpu}, {cores} CPU cores)"
    return f"{cpu}, {cores} cores"


def curvlinops_peer(model: nn.Module, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor):
    """curvlinops' GGN product ``ggn @ v`` and its name, or None when it is not installed."""
    try:
        from importlib.metadata import version

        from curvlinops import GGNLinearOperator
    except ImportError:
        return None
    params = [p for p in model.parameters() if p.requires_grad]
    ggn = GGNLinearOperator(model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False)
    name = f"curvlinops {version('curvlinops-for-pytorch')} GGNLinearOperator (cross-entropy)"
    return name, (lambda: ggn @ v)


def measure(args: argparse.Namespace, device: torch.device) -> dict:
    torch.manual_seed(0)
    model = build_model(args.model).to(device)
    x, y = batch_for(args.model, args.batch, device)
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    v = torch.randn_like(theta)
    trained = model.train()  # the user's module: a training step (batch statistics, dropout)
    evaluated = fmodel.to_module(theta)  # eval mode, as the metrics run it (curvlinops' copy)

    def flat_forward_backward():
        t = theta.detach().requires_grad_(True)
        nn.functional.cross_entropy(fmodel(t, x), y).backward()

    def module_forward_backward():
        trained.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(trained(x), y).backward()

    measurements: dict[str, Callable[[], object]] = {
        "fb_flat": flat_forward_backward, "fb_module": module_forward_backward}
    metrics = {"output": OutputMetric(fmodel, x), "fisher": FisherMetric(fmodel, x)}
    for name, metric in metrics.items():
        metric.jvp_route = args.jvp_route  # None: the metric chooses (dual where the network convolves)
        operator = metric.at(theta)

        def solve_like(metric=metric):  # one linearisation and 10 products, as in a CG solve
            op = metric.at(theta)
            for _ in range(10):
                op @ v

        measurements[f"{name}_warm"] = lambda operator=operator: operator @ v
        if args.solves:
            measurements[f"{name}_cg10"] = solve_like
        measurements[f"{name}_cold"] = lambda metric=metric: metric.mvp(theta, v)

    peer = curvlinops_peer(evaluated, x, y, v)
    agreement = None
    if peer is not None:
        measurements["curvlinops"] = peer[1]
        ours, theirs = metrics["fisher"].mvp(theta, v), peer[1]()
        agreement = float(torch.linalg.vector_norm(ours - theirs) / torch.linalg.vector_norm(theirs))

    synchronise = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = interleaved_medians(measurements, args.repeats, synchronise)
    for name in metrics:
        if args.solves:
            times[f"{name}_cg10"] /= 10  # per product
    return {"parameters": theta.numel(), "ms": {k: 1e3 * t for k, t in times.items()},
            "over_flat": {k: t / times["fb_flat"] for k, t in times.items()},
            "over_module": {k: t / times["fb_module"] for k, t in times.items()},
            "peer": None if peer is None else peer[0], "peer_relative_difference": agreement}


def report(record: dict) -> None:
    r = record["result"]
    ms, flat, module = r["ms"], r["over_flat"], r["over_module"]
    print(f"{record['model']} ({r['parameters']:,} parameters), batch {record['batch']}, "
          f"{record['device']} on {record['machine']}, {record['threads']} threads, torch "
          f"{record['torch']}, {record['clock']} clock, medians of {record['repeats']} interleaved rounds; "
          f"load average {record['load_before'][0]:.2f} before, {record['load_after'][0]:.2f} after")
    print(f"forward+backward: plain module {ms['fb_module']:.2f} ms (train mode), "
          f"flat θ {ms['fb_flat']:.2f} ms (eval mode)")
    rows = [("output", "OutputMetric"), ("fisher", "FisherMetric")]
    print("| product | ms | / module fb | / flat-θ fb |")
    print("|---|---|---|---|")
    for key, label in rows:
        for kind, words in (("warm", "warm, `at(θ) @ v`"), ("cg10", "per product of 10, linearisation incl."),
                            ("cold", "cold, `mvp(θ, v)`")):
            k = f"{key}_{kind}"
            if k not in ms:
                continue
            print(f"| {label} {words} | {ms[k]:.2f} | {module[k]:.2f} | {flat[k]:.2f} |")
    if r["peer"]:
        print(f"| {r['peer']} | {ms['curvlinops']:.2f} | {module['curvlinops']:.2f} | "
              f"{flat['curvlinops']:.2f} |")
        print(f"cold Fisher / curvlinops: {ms['fisher_cold'] / ms['curvlinops']:.2f}; cold output / "
              f"curvlinops: {ms['output_cold'] / ms['curvlinops']:.2f} (products agree to "
              f"{r['peer_relative_difference']:.1e})")
    else:
        print("curvlinops not installed: skipped (`make bench` installs it)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=MODELS, default="mlp")
    parser.add_argument("--device", choices=("cpu", "cuda"),
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--solves", action=argparse.BooleanOptionalAction, default=True,
                        help="also time the linearisation with 10 products (one CG solve)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (steadier when other jobs share the cores; CPU only)")
    parser.add_argument("--jvp-route", choices=("double-vjp", "dual"), default=None,
                        help="force how warm products get J v (default: the metric's own choice)")
    parser.add_argument("--out", default=None, help="the JSON record (default: benchmarks/results/...)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device here")
    if args.device == "cuda" and args.clock == "cpu":
        parser.error("--clock cpu measures this process's CPU time, not the GPU's: use wall on cuda")
    global CLOCK
    CLOCK = args.clock
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    result = measure(args, device)
    record = {"date": date.today().isoformat(), "model": args.model, "batch": args.batch,
              "device": args.device, "machine": machine(device), "threads": args.threads,
              "torch": torch.__version__, "python": platform.python_version(), "clock": args.clock,
              "repeats": args.repeats, "jvp_route": args.jvp_route, "load_before": load_before,
              "load_after": os.getloadavg(),
              "result": result}
    results = Path(__file__).parent / "results"
    default = (results / "metric_products.json" if (args.model, args.device) == ("mlp", "cpu")
               else results / f"metric_products_{args.model}_{args.device}.json")
    out = Path(args.out) if args.out else default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    report(record)


if __name__ == "__main__":
    main()
