"""``weightgeo train``: train a model on a data set and write its checkpoint."""

from __future__ import annotations

import click

from weightgeo.commands.options import common_options, data_options, out_options, parse_list
from weightgeo.models import MODEL_NAMES
from weightgeo.workflows import train_model


@click.command()
@click.option("--model", "model_name", default="mlp", show_default=True, type=click.Choice(MODEL_NAMES), help="Architecture.")
@click.option("--dataset", default="mnist5k", show_default=True, help="mnist5k (embedded), mnist, fashion-mnist, cifar10 or cifar100; a --model that does not fit its inputs is refused, naming those that do.")
@click.option("--hidden", default=None, help="MLP hidden sizes, e.g. 300,100.")
@click.option("--no-batch-norm", is_flag=True, help="VGG without batch norm.")
@click.option("--epochs", default=20, show_default=True, type=click.IntRange(min=1), help="Passes over the training set.")
@click.option("--lr", default=0.05, show_default=True, type=float, help="SGD learning rate (cosine decay).")
@click.option("--batch-size", default=64, show_default=True, type=click.IntRange(min=1), help="Minibatch size.")
@click.option("--weight-decay", default=0.0, show_default=True, type=float, help="L2 weight decay.")
@click.option("--augment/--no-augment", default=None, help="Random crop + flip (default: on for CIFAR).")
@data_options
@common_options
@out_options
def train(model_name, dataset, hidden, no_batch_norm, epochs, lr, batch_size, weight_decay, augment,
          data_root, download, seed, device, out, overwrite):
    """Train a model and write model.pt, config.json, metrics.jsonl and training_curves.png to --out."""
    config = {}
    if hidden is not None:
        config["hidden"] = parse_list(hidden, int, "hidden size")
    if no_batch_norm:
        config["batch_norm"] = False
    result = train_model(
        model_name, dataset, out, config=config, epochs=epochs, lr=lr, batch_size=batch_size,
        weight_decay=weight_decay, augment=augment, data_root=data_root, download=download,
        seed=seed, device=device, overwrite=overwrite, progress=True,
    )
    click.echo(f"test accuracy {100 * result['test_accuracy']:.2f}% after {epochs} epochs "
               f"({result['seconds']:.1f} s); checkpoint {result['checkpoint']}")
