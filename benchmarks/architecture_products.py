"""Benchmark: metric products on attention models relative to a forward+backward pass (CPU).

Models: a 4-layer ``nn.TransformerEncoder`` with token embeddings (sequence 128, width 256, 4
heads, feed-forward 1024, 10 classes) and a small torchvision ``VisionTransformer`` (32×32
images, 4×4 patches, 4 layers, width 128, MLP 256). For each it times, as medians of repeats:

- the plain forward+backward of the mean cross-entropy on the fused kernels (what training
  runs) and the same pass inside ``higher_derivatives`` (math attention, elementary layer norm):
  the price of the attention route for one ordinary pass;
- the output metric's products: from scratch (``mvp``: one dual-number forward and one
  backward), from a bound operator (``at(θ) @ v``, the linearisation amortised), the
  linearisation with 10 products (one CG solve) per product, and the geodesic force;
- the Fisher metric's product from scratch, K-FAC's build at θ, the diagonal Fisher's build.

The measurements are interleaved (each round times every one once), so a change of load hits
them alike. Ratios are to the fused forward+backward. Writes benchmarks/results/architecture_products.json
and prints markdown tables and the load average before and after.

    python benchmarks/architecture_products.py [--repeats 5] [--threads 2] [--batch 8] [--clock cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import warnings
from datetime import date
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).parent))
import metric_products  # noqa: E402
from metric_products import CLOCKS  # noqa: E402

CLOCK = "wall"

from weightgeo import DiagonalFisher, FisherMetric, FunctionalModel, OutputMetric  # noqa: E402
from weightgeo.kernels import higher_derivatives  # noqa: E402
from weightgeo.metrics import KFACMetric  # noqa: E402


class TextTransformer(nn.Module):
    """Token and position embeddings → 4 encoder layers → mean over tokens → 10 classes."""

    def __init__(self, vocabulary: int = 1000, width: int = 256, length: int = 128) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocabulary, width)
        self.position = nn.Parameter(0.02 * torch.randn(1, length, width))
        layer = nn.TransformerEncoderLayer(width, 4, 4 * width, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 4)
        self.head = nn.Linear(width, 10)

    def forward(self, tokens):
        return self.head(self.encoder(self.embed(tokens) + self.position).mean(1))


def cases(batch: int):
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    text = TextTransformer()
    vit = VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=4, hidden_dim=128,
                            mlp_dim=256, num_classes=10)
    return {
        "transformer encoder (4 layers, seq 128, width 256)": (text, torch.randint(0, 1000, (batch, 128))),
        "ViT (32×32, patch 4, 4 layers, width 128)": (vit, torch.randn(2 * batch, 3, 32, 32)),
    }


def interleaved_medians(measurements: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in turn round after round (after one warm-up
    round), so that a change in the machine's load hits every measurement alike."""
    clock = CLOCKS[CLOCK]
    samples: dict[str, list[float]] = {key: [] for key in measurements}
    for round_ in range(repeats + 1):
        for key, fn in measurements.items():
            start = clock()
            fn()
            if round_:
                samples[key].append(clock() - start)
    return {key: statistics.median(values) for key, values in samples.items()}


def measure(model: nn.Module, x: torch.Tensor, repeats: int) -> dict:
    fmodel = FunctionalModel(model)
    theta = fmodel.theta()
    y = torch.randint(0, 10, (x.shape[0],))
    v = torch.randn_like(theta)

    def forward_backward():
        t = theta.detach().requires_grad_(True)
        nn.functional.cross_entropy(fmodel(t, x), y).backward()

    def routed_forward_backward():
        with higher_derivatives(fmodel.module):
            forward_backward()

    output, fisher = OutputMetric(fmodel, x), FisherMetric(fmodel, x)
    operator = output.at(theta)

    def solve_like():  # one linearisation and 10 products, as in a CG solve
        op = output.at(theta)
        for _ in range(10):
            op @ v

    measurements = {
        "fb_fused": forward_backward,
        "fb_math_route": routed_forward_backward,
        "output_mvp": lambda: output.mvp(theta, v),
        "output_warm_product": lambda: operator @ v,
        "output_linearise_plus_10": solve_like,
        "output_geodesic_force": lambda: operator.geodesic_force(0.01 * v),
        "fisher_mvp": lambda: fisher.mvp(theta, v),
        "kfac_build": lambda: KFACMetric(fmodel, x).at(theta),
        "diag_fisher_build": lambda: DiagonalFisher(fmodel, x, chunk_size=2).at(theta),
    }
    times = interleaved_medians(measurements, repeats)
    times["output_linearise_plus_10_per_product"] = times.pop("output_linearise_plus_10") / 10
    base = times["fb_fused"]
    return {"parameters": theta.numel(), "batch": x.shape[0], "ms": {k: 1e3 * t for k, t in times.items()},
            "ratio_to_fb": {k: t / base for k, t in times.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8, help="sequences (the ViT gets twice as many images)")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time, or process CPU time (steadier when other jobs share the cores)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "architecture_products.json"))
    args = parser.parse_args()
    global CLOCK
    CLOCK = metric_products.CLOCK = args.clock
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    load_before = os.getloadavg()
    results = {name: measure(model, x, args.repeats) for name, (model, x) in cases(args.batch).items()}
    load_after = os.getloadavg()
    record = {"date": date.today().isoformat(), "torch": torch.__version__, "threads": args.threads,
              "clock": args.clock, "repeats": args.repeats,
              "cpu": platform.processor() or platform.machine(), "python": platform.python_version(),
              "load_before": load_before, "load_after": load_after, "results": results}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"load average before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}; {args.threads} threads, "
          f"{args.clock} clock, medians of {args.repeats} interleaved rounds")
    for name, r in results.items():
        print(f"\n{name}: {r['parameters']:,} weights, batch {r['batch']}, fused forward+backward "
              f"{r['ms']['fb_fused']:.0f} ms")
        print("| measurement | ms | / fused forward+backward |\n|---|---|---|")
        for key, ms in r["ms"].items():
            print(f"| {key} | {ms:.0f} | {r['ratio_to_fb'][key]:.2f} |")


if __name__ == "__main__":
    main()
