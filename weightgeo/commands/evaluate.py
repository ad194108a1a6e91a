"""``weightgeo evaluate``: test loss and accuracy of a checkpoint on its data set."""

from __future__ import annotations

import json

import click

from weightgeo.commands.options import data_options
from weightgeo.training import evaluate as evaluate_theta
from weightgeo.workflows import load_with_data


@click.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--dataset", default=None, help="Evaluate on this data set instead of the checkpoint's.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "test"]), help="Which split to evaluate on.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@data_options
def evaluate(checkpoint, dataset, split, device, data_root, download):
    """Print the loss and accuracy of CHECKPOINT (a model.pt or its run directory) as JSON."""
    loaded = load_with_data(checkpoint, dataset, data_root, download, device)
    data = loaded.test if split == "test" else loaded.train
    scores = evaluate_theta(loaded.fmodel, loaded.theta, data)
    click.echo(json.dumps({"checkpoint": str(loaded.checkpoint.path), "dataset": data.name,
                           "split": split, **scores}))
