"""The demo's sparsification section: the demo MLP to 90% by the geodesic and by magnitude-finetune."""

from __future__ import annotations

import time

from weightgeo.applications.sparsify.geodesic import geodesic_path
from weightgeo.applications.sparsify.methods import METHODS
from weightgeo.applications.sparsify.settings import SparsifySettings
from weightgeo.applications.sparsify.task import SparsifyTask
from weightgeo.evaluation import evaluate
from weightgeo.functional import FunctionalModel
from weightgeo.objectives.sparsity import measured_sparsity
from weightgeo.plotting import plt, save_figure


def section_sparsify(ctx) -> str:
    """Sparsify MLP a through 50%, 80%, 90% along one geodesic path (no labels) and by magnitude
    pruning + labelled fine-tuning, at the same budget of gradient evaluations; plot both."""
    model = ctx.models["a"]
    fmodel = FunctionalModel(model["model"])
    theta = model["theta"].to(ctx.device)
    levels, budget = [0.5, 0.8, 0.9], (60 if ctx.quick else 200)
    settings = SparsifySettings(seed=ctx.seed, one_path=True, metric_batch=128 if ctx.quick else 256)
    dense = evaluate(fmodel, theta, ctx.test)["accuracy"]
    eligible = fmodel.weight_mask(device=theta.device)
    ctx.log(f"sparsifying MLP a to 90% (geodesic and magnitude-finetune, budget {budget})")

    def along(t, target):  # logging: test accuracy at the evaluated points of the path
        return {"test_accuracy": evaluate(fmodel, t, ctx.test)["accuracy"],
                "sparsity": measured_sparsity(t, eligible), "target_sparsity": target}

    started = time.perf_counter()
    path, geo = geodesic_path(SparsifyTask(fmodel, theta, ctx.train, settings), levels, budget,
                              directory=ctx.out / "sparsify_path", evaluate=along)
    geo_seconds = time.perf_counter() - started
    started = time.perf_counter()
    mft = METHODS["magnitude-finetune"](SparsifyTask(fmodel, theta, ctx.train, settings), levels, budget)
    mft_seconds = time.perf_counter() - started
    acc = {"geodesic (one path, no labels)": [evaluate(fmodel, r.theta, ctx.test)["accuracy"] for r in geo],
           "magnitude-finetune (labels)": [evaluate(fmodel, r.theta, ctx.test)["accuracy"] for r in mft]}

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for label, ys in acc.items():
        left.plot([100 * s for s in levels], [100 * y for y in ys], marker="o", label=label)
    left.axhline(100 * dense, color="gray", linestyle="--", linewidth=1, label=f"dense {100 * dense:.2f}%")
    left.set_xlabel("sparsity (%)")
    left.set_ylabel("test accuracy (%)")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    points = [r for r in path.records if r.get("test_accuracy") is not None]
    right.plot([r["grad_evals"] for r in points], [100 * r["test_accuracy"] for r in points], marker="o",
               markersize=3, label="geodesic: test accuracy")
    twin = right.twinx()
    twin.step([r["grad_evals"] for r in points], [100 * r["sparsity"] for r in points], where="post",
              color="C3", label="exact zeros (%)")
    twin.set_ylabel("sparsity (%)", color="C3")
    right.set_xlabel("gradient evaluations along the geodesic")
    right.set_ylabel("test accuracy (%)")
    right.grid(alpha=0.3)
    fig.suptitle(f"MLP a sparsified to 90% with {budget} gradient evaluations per level")
    save_figure(fig, ctx.out / "sparsify.png")

    rows = "\n".join(
        f"| {100 * s:g}% | {100 * g:.2f}% ({rg.grad_evals}) | {100 * m:.2f}% ({rm.grad_evals}) |"
        for s, g, m, rg, rm in zip(levels, acc["geodesic (one path, no labels)"],
                                   acc["magnitude-finetune (labels)"], geo, mft, strict=True)
    )
    return (
        "## Sparsification\n\n"
        f"MLP a (dense {100 * dense:.2f}%) taken to 50%, 80% and 90% zero weights. The geodesic is one "
        "path without labels: at each stage the least-output-change step onto the sparse hyperplane "
        "(output metric, CG), then distillation toward the dense outputs inside the mask; levels are "
        "read off the path at the evaluations spent so far. Magnitude-finetune prunes once and "
        f"fine-tunes with labels, {budget} gradient evaluations per level.\n\n"
        "| sparsity | geodesic (grad evals) | magnitude-finetune (grad evals) |\n|---|---|---|\n"
        f"{rows}\n\n"
        f"Time: geodesic {geo_seconds:.1f} s, magnitude-finetune {mft_seconds:.1f} s.\n\n"
        "![geodesic and magnitude-finetune side by side](sparsify.png)\n"
    )
