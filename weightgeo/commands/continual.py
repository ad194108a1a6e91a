"""``weightgeo continual``: learn a task sequence with the geodesic method and the baselines."""

from __future__ import annotations

import click

from weightgeo.applications.continual.methods import METHODS, METRICS, SOLVERS, ContinualConfig
from weightgeo.applications.continual.report import run_experiment
from weightgeo.commands.options import (
    common_options,
    data_options,
    out_options,
    parse_choices,
    parse_list,
    positive_float,
)
from weightgeo.data.datasets import DATASET_NAMES
from weightgeo.data.tasks import defaults_help, n_tasks_help, sequences_help
from weightgeo.errors import WeightgeoError
from weightgeo.models import MODEL_NAMES
from weightgeo.workflows import resolve_device


def _strengths(text: str | None) -> dict[str, float]:
    if not text:
        return {}
    out = {}
    for item in parse_list(text, str, "method=value pair"):
        method, sep, value = item.partition("=")
        if not sep or method not in METHODS:
            raise WeightgeoError(f"--strength expects method=value pairs (e.g. ewc=1000), got {item!r}")
        try:
            out[method] = float(value)
        except ValueError:
            raise WeightgeoError(f"--strength {item!r}: {value!r} is not a number") from None
        if not out[method] > 0:
            raise WeightgeoError(f"--strength {item!r}: the strength must be positive")
    return out


@click.command()
@click.option("--tasks", default="permuted-mnist", show_default=True,
              help=f"Task sequence: {sequences_help()}.")
@click.option("--n-tasks", default=None, type=int,
              help=f"Number of tasks, default (allowed): {n_tasks_help()}. A split needs a divisor of "
                   "its base's classes, at least 2 classes per task.")
@click.option("--scenario", default=None,
              help=f"task, domain or class (default: {defaults_help('scenario')}).")
@click.option("--method", "methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated methods.")
@click.option("--metric", default="output", show_default=True, type=click.Choice(METRICS),
              help="The geodesic method's metric of the earlier tasks.")
@click.option("--solver", default="kfac", show_default=True, type=click.Choice(SOLVERS),
              help="How the geodesic step solves (G + μI)^-1 ∇L (see README).")
@click.option("--damping", default=None, type=float,
              help="μ of the geodesic method (default 0.1; tuned with --tune).")
@click.option("--anchor", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Geodesic only: weight of a Bhattacharyya pull of the memory's outputs back to the task's start (0: off).")
@click.option("--strength", default=None,
              help="Penalty strengths, e.g. ewc=1000,si=1 (default: the tuned defaults).")
@click.option("--tune", is_flag=True, help="Tune each penalised method's strength (and μ) on a validation split.")
@click.option("--seeds", default=1, show_default=True, type=click.IntRange(min=1),
              help="Run the seeds S … S+N−1 from --seed S.")
@click.option("--base", default="mnist5k", show_default=True, type=click.Choice(DATASET_NAMES),
              help="The data set the MNIST sequences are built from (the CIFAR ones use their own).")
@click.option("--model", "model_name", default=None, type=click.Choice(MODEL_NAMES),
              help=f"Network (default: {defaults_help('model')}).")
@click.option("--budget", default=315, show_default=True, type=click.IntRange(min=1),
              help="Gradient evaluations per task for every sequential method (joint: × tasks).")
@click.option("--lr", default=0.01, show_default=True, type=float, help="SGD learning rate (cosine per task).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Training minibatch size.")
@click.option("--memory", default=100, show_default=True, type=click.IntRange(min=1),
              help="Stored inputs per earlier task (geodesic, fip, replay).")
@click.option("--rank", default=40, show_default=True, type=click.IntRange(min=1), help="Nyström rank (solver nystrom).")
@click.option("--refresh", default=0, show_default=True, type=click.IntRange(min=0),
              help="Re-estimate the geodesic metric every this many steps (0: once per task).")
@click.option("--cg-iters", default=3, show_default=True, type=click.IntRange(min=1), help="CG products per step (solvers cg, traverse).")
@click.option("--step-size", default=0.05, show_default=True, type=float, callback=positive_float,
              help="Step length (solver traverse).")
@click.option("--target-accuracy", default=None, type=click.FloatRange(0, 1),
              help="Stop a task early once the minibatch training accuracy reaches this (fraction).")
@click.option("--max-train", default=None, type=click.IntRange(min=1), help="At most this many training examples per task.")
@data_options
@common_options
@out_options
def continual(tasks, n_tasks, scenario, methods, metric, solver, damping, anchor, strength, tune, seeds, base,
              model_name, budget, lr, batch_size, memory, rank, refresh, cg_iters, step_size, target_accuracy, max_train,
              data_root, download, seed, device, out, overwrite):
    """Learn a sequence of tasks one after the other; write results.csv, summary.md, heat maps, plots."""
    chosen = parse_choices(methods, METHODS, "method")
    strengths = _strengths(strength)
    if damping is not None:
        if not damping > 0:
            raise WeightgeoError(f"--damping must be positive, got {damping}")
        strengths["geodesic"] = damping
    if not lr > 0:
        raise WeightgeoError(f"--lr must be positive, got {lr}")
    config = ContinualConfig(
        budget=budget, batch_size=batch_size, lr=lr, memory_per_task=memory, metric=metric, solver=solver,
        rank=rank, refresh=refresh, cg_iters=cg_iters, step_size=step_size,
        anchor=anchor, target_accuracy=target_accuracy, strengths=strengths,
    )
    result = run_experiment(
        out, tasks=tasks, n_tasks=n_tasks, scenario=scenario, methods=chosen,
        seeds=list(range(seed, seed + seeds)), base=base, model=model_name, config=config, tune=tune,
        device=resolve_device(device), data_root=data_root, download=download, max_train=max_train,
        overwrite=overwrite, log=lambda msg: click.echo(msg, err=True),
    )
    click.echo(result["summary_path"].read_text())
