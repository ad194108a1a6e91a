"""The continual-learning section of ``weightgeo demo``: two permuted-digit tasks, geodesic vs fine-tuning."""

from __future__ import annotations

from weightgeo.applications.continual.report import heatmap
from weightgeo.applications.continual.runner import run_method
from weightgeo.applications.continual.settings import ContinualSettings
from weightgeo.data.tasks import make_task_sequence


def section_continual(ctx) -> str:
    """Learn mnist5k digits, then the same digits with permuted pixels, with both methods."""
    seq = make_task_sequence("permuted-mnist", "domain", 2, seed=ctx.seed,
                             max_train=600 if ctx.quick else None)
    settings = ContinualSettings(n_tasks=2, budget=30 if ctx.quick else 315)
    rows = []
    for method in ("finetune", "geodesic"):
        ctx.log(f"continual learning: two permuted tasks with {method}")
        result = run_method(method, seq, "mlp", settings, seed=ctx.seed, device=ctx.device)
        heatmap(ctx.out / f"continual_{method}.png", result.matrix, f"{method}, 2 permuted tasks")
        r = result.matrix
        rows.append(
            f"| {method} | {100 * r[0][0]:.2f}% | {100 * r[1][0]:.2f}% | {100 * r[1][1]:.2f}% | "
            f"{100 * result.scores['avg_accuracy']:.2f}% | {sum(result.grad_evals)} | {result.seconds:.1f} s |"
        )
    return (
        "## Continual learning: a second task without forgetting the first\n\n"
        "Task 1: mnist5k digits; task 2: the same digits with a fixed pixel permutation, one shared "
        "10-unit head (domain-incremental). `geodesic` learns task 2 by damped natural-gradient SGD "
        "(Riemannian SGD) under the output metric of task 1, estimated on 100 stored task-1 inputs "
        "(labels unused) and Kronecker-factored; `finetune` is plain SGD. Same budget of gradient "
        "evaluations.\n\n"
        "| method | task 1 after task 1 | task 1 after task 2 | task 2 | average | grad evals | time |\n"
        "|---|---|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
        "![finetune](continual_finetune.png) ![geodesic](continual_geodesic.png)\n"
    )
