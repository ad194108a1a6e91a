"""The demo: the main job on the embedded mnist5k data, ending in a summary.md with plots.

The demo is a list of sections run in order into one run directory. Each section is a
function ``section(ctx: DemoContext) -> str`` returning its markdown (plots are linked
by their file names); applications add theirs to :data:`SECTIONS`. The first section
trains the two demo MLPs that later sections reuse through the context.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from weightgeo.applications.connect.demo import section_connect
from weightgeo.applications.continual.demo import section_continual
from weightgeo.applications.sparsify.demo import section_sparsify
from weightgeo.data import Data, load_dataset
from weightgeo.functional import FunctionalModel
from weightgeo.manifolds import WeightSpace
from weightgeo.metrics import Euclidean, OutputMetric
from weightgeo.objectives import TargetPoint
from weightgeo.paths import traverse
from weightgeo.plotting import line_plot
from weightgeo.rundir import RunDirectory, write_text
from weightgeo.training import evaluate
from weightgeo.workflows import train_model


@dataclass
class DemoContext:
    """What demo sections share: the run directory, the data, the two trained MLPs."""

    out: Path
    device: torch.device
    seed: int
    train: Data
    test: Data
    quick: bool = False
    models: dict[str, dict] = field(default_factory=dict)
    log: Callable[[str], None] = print


def section_train(ctx: DemoContext) -> str:
    """Train the default MLP (784-300-100-10) on mnist5k from two seeds."""
    lines = ["## Two MLPs trained on mnist5k", ""]
    epochs = 4 if ctx.quick else 20
    for name, seed in (("a", ctx.seed), ("b", ctx.seed + 1)):
        ctx.log(f"training MLP {name} (seed {seed}, {epochs} epochs)")
        result = train_model(
            "mlp", "mnist5k", ctx.out / f"mlp_{name}", epochs=epochs, seed=seed,
            device=ctx.device, overwrite=True,
        )
        ctx.models[name] = result
        lines.append(
            f"- MLP {name} (seed {seed}): test accuracy {100 * result['test_accuracy']:.2f}% "
            f"after {epochs} epochs ({result['seconds']:.1f} s); checkpoint `mlp_{name}/model.pt`, "
            f"curves ![](mlp_{name}/training_curves.png)"
        )
    return "\n".join(lines) + "\n"


def section_target(ctx: DemoContext) -> str:
    """Traverse from MLP a toward MLP b under the output metric and under the Euclidean one."""
    a, b = ctx.models["a"], ctx.models["b"]
    fmodel = FunctionalModel(a["model"])
    theta_a, theta_b = a["theta"], b["theta"]
    test = ctx.test
    generator = torch.Generator(device="cpu").manual_seed(ctx.seed)
    batches = [ctx.train.x[torch.randperm(len(ctx.train), generator=generator)[:256]] for _ in range(50)]
    distance = float(torch.linalg.vector_norm(theta_b - theta_a))
    step = distance / (40 if ctx.quick else 120)
    series_acc, rows = {}, []
    for label, metric in (("output metric", OutputMetric(fmodel, batches[0])), ("Euclidean", Euclidean())):
        ctx.log(f"traversing toward MLP b under the {label}")
        space = WeightSpace(fmodel, metric, damping=1e-3, cg_maxiter=10)
        started = time.perf_counter()
        path = traverse(
            space, TargetPoint(theta_b, tol=1e-3 * distance), step_size=step,
            max_steps=300 if ctx.quick else 600, start=theta_a,
            metric_inputs=batches if isinstance(metric, OutputMetric) else None,
            evaluate=lambda t: {"test_accuracy": evaluate(fmodel, t, test)["accuracy"]},
            evaluate_every=5, directory=ctx.out / f"path_{label.split()[0].lower()}", save_every=50,
        )
        seconds = time.perf_counter() - started
        points = [r for r in path.records if r.get("test_accuracy") is not None]
        remaining = [float(torch.linalg.vector_norm(theta_b - path.waypoint(0)))]
        xs = [r["point"] * step / distance for r in points]
        series_acc[label] = (xs, [100 * r["test_accuracy"] for r in points])
        rows.append(
            f"| {label} | {100 * min(r['test_accuracy'] for r in points):.2f}% | "
            f"{path.euclidean_length:.2f} | {path.metric_length:.3g} | {path.grad_evals} | "
            f"{path.stop_reason} | {seconds:.1f} s |"
        )
        del remaining
    line_plot(
        ctx.out / "target_accuracy.png", series_acc, "Euclidean distance travelled / ||θ_b − θ_a||",
        "test accuracy (%)", "From MLP a toward MLP b",
    )
    return (
        "## Traversing toward a second network\n\n"
        "`traverse` from MLP a with the objective ½||θ − θ_b||², under the output metric "
        "(JᵀJ on the logits, re-estimated on a fresh batch of 256 digits per step) and under "
        "the Euclidean metric (the straight line).\n\n"
        "| metric | worst test accuracy | Euclidean length | metric length | grad evals | stop | time |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "![test accuracy along both paths](target_accuracy.png)\n"
    )


SECTIONS: list[Callable[[DemoContext], str]] = [section_train, section_target, section_continual, section_connect, section_sparsify]
"""The demo's sections, in order; applications append theirs."""


def run_demo(
    out: str | os.PathLike,
    seed: int = 0,
    device: str | torch.device = "cpu",
    quick: bool = False,
    overwrite: bool = False,
    log: Callable[[str], None] = print,
    sections: list[Callable[[DemoContext], str]] | None = None,
) -> Path:
    """Run the demo into ``out`` and return the path of its summary.md."""
    from weightgeo.workflows import resolve_device

    dev = resolve_device(device)
    run = RunDirectory.open(out, overwrite=overwrite,
                            config={"command": "demo", "seed": seed, "quick": quick, "device": str(dev)}).path
    ctx = DemoContext(
        out=run, device=dev, seed=seed, quick=quick, log=log,
        train=load_dataset("mnist5k", "train").to(dev), test=load_dataset("mnist5k", "test").to(dev),
    )
    started = time.perf_counter()
    parts = ["# weightgeo demo\n", f"Data: mnist5k (4,000 train / 1,000 test real MNIST digits), seed {seed}.\n"]
    summary = run / "summary.md"
    for section in sections or SECTIONS:
        parts.append(section(ctx))
        write_text(summary, "\n".join(parts))  # a failure later keeps the sections done so far
    parts.append(f"\nTotal time: {time.perf_counter() - started:.0f} s.\n")
    write_text(summary, "\n".join(parts))
    return summary
