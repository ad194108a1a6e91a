"""relax: one iteration with all K nodes in one vmapped pass vs a Python loop over the nodes.

One iteration = the forward pass of the K + 2 nodes on a batch (``FunctionalModel.stacked()``:
vmapped, or its ``loop`` reference), the discrete output energy (the output metric's
``output_distances``) plus the task loss at the nodes, and its backward pass (what relax does per
step). The default MLP
(784-300-100-10) on mnist5k inputs, float32. Usage:

    .venv/bin/python benchmarks/relax_batched.py [--nodes 16] [--batch 128] [--repeats 20]

Prints one JSON line per variant and the ratio; results go to BENCHMARKS.md by hand.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

from weightgeo.data import load_dataset
from weightgeo.functional import FunctionalModel
from weightgeo.metrics import OutputMetric
from weightgeo.models import build_model


def iteration(metric, call, stack_a, z, stack_b, x, y):
    full = torch.cat([stack_a, z, stack_b])
    out = call(full, x)
    energy = (len(full) - 1) * metric.output_distances(out).sum()
    nodes = out[1:-1]
    loss = energy + F.cross_entropy(nodes.reshape(-1, nodes.shape[-1]), y.repeat(len(nodes)))
    (grad,) = torch.autograd.grad(loss, z)
    return grad


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nodes", type=int, default=16)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    fm = FunctionalModel(build_model("mlp").to(device))
    data = load_dataset("mnist5k", "train")
    x, y = data.x[: args.batch].to(device), data.y[: args.batch].to(device)
    theta_a = fm.theta()
    theta_b = theta_a + 0.1 * torch.randn_like(theta_a)
    t = torch.linspace(0, 1, args.nodes + 2, device=device)[1:-1, None]
    z = (theta_a + t * (theta_b - theta_a)).requires_grad_(True)
    fn = fm.stacked()
    metric = OutputMetric(fm, x)
    results = {}
    grads = {}
    for name, call in (("vmap", fn.__call__), ("loop", fn.loop)):
        for _ in range(3):  # warm-up
            grads[name] = iteration(metric, call, theta_a[None], z, theta_b[None], x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            iteration(metric, call, theta_a[None], z, theta_b[None], x, y)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - started)
        times.sort()
        results[name] = times[len(times) // 2]
        print(json.dumps({"variant": name, "nodes": args.nodes, "batch": args.batch,
                          "median_seconds": round(results[name], 5)}))
    relative = float((grads["vmap"] - grads["loop"]).norm() / grads["loop"].norm())
    print(json.dumps({
        "speedup_vmap_over_loop": round(results["loop"] / results["vmap"], 2), "gradient_relative_difference": relative,
        "device": str(device), "threads": torch.get_num_threads(), "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
    }))


if __name__ == "__main__":
    main()
