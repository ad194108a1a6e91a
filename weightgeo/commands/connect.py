"""``weightgeo connect``: join two trained networks by paths of high accuracy and compare methods."""

from __future__ import annotations

import click

from weightgeo.applications.connect import METHODS, connect
from weightgeo.commands.options import data_options, parse_choices, path_options, positive_float


@click.command("connect")
@click.argument("checkpoint_a", type=click.Path(exists=True))
@click.argument("checkpoint_b", type=click.Path(exists=True))
@click.option("--method", "methods", default=",".join(METHODS), show_default=True,
              help="Comma-separated methods: " + ", ".join(METHODS) + ".")
@click.option("--nodes", default=16, show_default=True, type=click.IntRange(min=1),
              help="Interior nodes of the relaxed path.")
@click.option("--budget", default=3000, show_default=True, type=click.IntRange(min=1),
              help="Gradient evaluations for each method that trains (traverse, relax, bezier, polychain).")
@click.option("--points", default=61, show_default=True, type=click.IntRange(min=3),
              help="Points evaluated along each path, evenly spaced by arc length.")
@click.option("--batch-size", default=128, show_default=True, type=click.IntRange(min=1),
              help="Training minibatch of every method that trains.")
@click.option("--task-weight", default=20.0, show_default=True, type=float,
              help="relax: weight of the task loss at the nodes against the energy divided by the straight line's (0: energy only).")
@click.option("--traverse-weight", default=100.0, show_default=True, type=float,
              help="traverse: weight of the task loss beside ½||θ − θ_b||² (0: the target alone).")
@click.option("--train-eval/--no-train-eval", default=True, show_default=True,
              help="Also evaluate the training loss and accuracy at every point.")
@click.option("--relax-lr", default=1e-3, show_default=True, type=float, callback=positive_float,
              help="Adam learning rate of relax.")
@click.option("--curve-lr", default=0.05, show_default=True, type=float, callback=positive_float,
              help="SGD learning rate of the Bezier and polygonal-chain bends (Garipov: 0.015 for VGG16).")
@click.option("--weight-decay", default=5e-4, show_default=True, type=float,
              help="Weight decay on the curve's point w(t) (Bezier, polychain).")
@click.option("--tol", default=0.02, show_default=True, type=float, callback=positive_float,
              help="traverse: distance to θ_b (fraction of ||θ_b − θ_a||) at which the final straight segment starts.")
@click.option("--plane-grid", default=21, show_default=True, type=click.IntRange(min=0),
              help="Grid points per side of the loss plane picture (0: no picture).")
@click.option("--no-bn-recompute", is_flag=True,
              help="Do not recompute batch-norm statistics at each evaluated point.")
@click.option("--dataset", default=None, help="Override the checkpoints' data set.")
@data_options
@path_options(metrics=("output", "fisher", "euclidean"), default_metric="output", step_size=0.25,
              max_steps=0)
def connect_command(checkpoint_a, checkpoint_b, methods, nodes, budget, points, batch_size, task_weight,
                    traverse_weight, train_eval,
                    relax_lr, curve_lr, weight_decay, tol, plane_grid, no_bn_recompute, dataset, data_root,
                    download, step_size, max_steps, damping, metric, cg_iters, metric_batch, seed, device,
                    out, overwrite):
    """Connect two checkpoints (same architecture) by each method; write results.csv, results.md,
    evaluation.csv, along_paths.png, plane.png and the paths to --out.

    traverse steps have Euclidean length --step-size (its steps follow from --budget; --max-steps
    is unused). The command runs on the checkpoints' data set (mnist5k, cifar10, ...).
    """
    chosen = parse_choices(methods, METHODS, "method")
    result = connect(
        checkpoint_a, checkpoint_b, out, dataset=dataset, data_root=data_root, download=download,
        device=device, methods=chosen, points=points, recompute_bn=not no_bn_recompute,
        plane_grid=plane_grid, overwrite=overwrite, metric=metric, nodes=nodes, budget=budget,
        batch_size=batch_size, metric_batch=metric_batch, task_weight=task_weight,
        traverse_weight=traverse_weight, with_train=train_eval, relax_lr=relax_lr,
        step_size=step_size, damping=damping, cg_iters=cg_iters, tol=tol, curve_lr=curve_lr,
        weight_decay=weight_decay, seed=seed, progress=True,
        log=lambda msg: click.echo(msg, err=True),
    )
    for row in result["rows"]:
        click.echo(f"{row['method']:>10}: worst test accuracy {row['min_test_accuracy']:.2f}% "
                   f"(drop {row['max_accuracy_drop']:.2f}), loss barrier {row['loss_barrier']:.4f}, "
                   f"length {row['euclidean_length']:.2f}, {row['grad_evals']} grad evals, "
                   f"{row['seconds']:.1f} s")
    click.echo(f"Results: {out}/results.md")
