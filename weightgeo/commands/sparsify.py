"""``weightgeo sparsify``: sparsify a checkpoint with the geodesic and the pruning baselines."""

from __future__ import annotations

import click

from weightgeo.applications.sparsify import METHODS, SparsifySettings
from weightgeo.applications.sparsify.methods import STEPS
from weightgeo.applications.sparsify.run import check_methods, run_sparsify
from weightgeo.commands.options import data_options, parse_choices, parse_list, path_options
from weightgeo.errors import WeightgeoError
from weightgeo.objectives.sparsity import RANKINGS, check_sparsity


def _budget(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError(text)
    return value


@click.command()
@click.argument("checkpoint", type=click.Path(exists=True))
@click.option("--sparsity", "sparsity", default="0.5,0.8,0.9,0.95,0.98", show_default=True,
              help="Target sparsities in [0, 1): fractions of the weights set to zero, comma-separated.")
@click.option("--method", "method", default=",".join(METHODS), show_default=True,
              help="Comma-separated methods: " + ", ".join(METHODS) + ".")
@click.option("--budget", default="1000", show_default=True,
              help="Gradient evaluations per method and level (a metric-vector product counts as one); "
                   "several, comma-separated, give an accuracy-budget sweep.")
@click.option("--dataset", default=None, help="Data set (default: the checkpoint's).")
@click.option("--step", type=click.Choice(STEPS), default="projection", show_default=True,
              help="Geodesic step: the least-metric-length projection onto each stage's hyperplane, "
                   "or the papers' natural-gradient traverse.")
@click.option("--stage-ratio", default=2.2, show_default=True, type=float,
              help="Gradual schedule: each stage keeps at least 1/ratio of the previous stage's weights.")
@click.option("--one-path/--per-level", default=False, show_default=True,
              help="Read every level of the geodesic off one path (cumulative evaluations), or trace "
                   "one path per level with the full budget.")
@click.option("--ranking", type=click.Choice(RANKINGS), default="global", show_default=True,
              help="Magnitude ranking over all weights or within each layer.")
@click.option("--include-biases", is_flag=True, help="Prune biases and normalisation parameters too.")
@click.option("--rerank-every", default=0, show_default=True, type=click.IntRange(min=0),
              help="natural-gradient step: re-rank the mask every k steps (0: fixed per stage).")
@click.option("--lr-finetune", default=0.01, show_default=True, type=float, help="SGD rate of labelled fine-tuning.")
@click.option("--lr-distill", default=0.003, show_default=True, type=float, help="SGD rate of label-free distillation.")
@click.option("--imp-rounds", default=4, show_default=True, type=click.IntRange(min=1), help="Rounds of imp.")
@click.option("--checkpoints/--no-checkpoints", default=True, show_default=True,
              help="Write every sparse network as a checkpoint (with its mask).")
@data_options
@path_options(step_size=0.5, max_steps=100000, damping=0.1)
def sparsify(checkpoint, sparsity, method, budget, dataset, step, stage_ratio, one_path, ranking, include_biases,
             rerank_every, lr_finetune, lr_distill, imp_rounds, checkpoints, data_root, download, step_size,
             max_steps, damping, metric, cg_iters, metric_batch, seed, device, out, overwrite):
    """Sparsify CHECKPOINT (a file or run directory) with every method, level and budget.

    Writes results.csv/.md, sparse checkpoints, accuracy-vs-sparsity (and -budget) plots and
    the geodesic's path plot to --out.
    """
    levels = [check_sparsity(s) for s in parse_list(sparsity, str, "sparsity")]
    methods = check_methods(parse_choices(method, tuple(METHODS), "method"))
    budgets = parse_list(budget, _budget, "budget (a whole number ≥ 0)")
    if lr_finetune <= 0 or lr_distill <= 0:
        raise WeightgeoError("learning rates must be positive")
    settings = SparsifySettings(
        metric=metric, metric_batch=metric_batch, obd_batch=metric_batch, damping=damping, cg_iters=cg_iters, step=step,
        stage_ratio=stage_ratio, step_size=step_size, max_steps=max_steps, ranking=ranking,
        include_biases=include_biases, rerank_every=rerank_every, one_path=one_path,
        lr_finetune=lr_finetune, lr_distill=lr_distill, imp_rounds=imp_rounds, seed=seed,
    )
    rows = run_sparsify(
        checkpoint, out, levels=levels, methods=methods, budgets=budgets, settings=settings, dataset=dataset,
        data_root=data_root, download=download, device=device, overwrite=overwrite,
        save_checkpoints=checkpoints, progress=True,
    )
    best = max(rows, key=lambda r: (r["sparsity"], r["test_accuracy"]))
    click.echo(f"{len(rows)} results in {out}/results.md; at {100 * best['sparsity']:g}% sparsity the best is "
               f"{best['method']} with {100 * best['test_accuracy']:.2f}% test accuracy")
