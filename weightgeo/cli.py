"""The ``weightgeo`` command line: thin wrappers that parse, call the library, write a run directory.

No mathematics lives here: every command calls a function of the library and writes
what it returns. Errors on bad input are one line (``Error: …``) and a non-zero exit.
"""

from __future__ import annotations

import sys

import click

from weightgeo import __version__
from weightgeo.commands.connect import connect_command
from weightgeo.commands.continual import continual
from weightgeo.commands.demo import demo
from weightgeo.commands.evaluate import evaluate
from weightgeo.commands.sparsify import sparsify
from weightgeo.commands.train import train
from weightgeo.errors import WeightgeoError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightgeo")
def cli() -> None:
    """Move neural networks along geodesics of a task metric on their weight space.

    A trained network's weight space carries a metric under which moving costs what the
    network's function changes. weightgeo traces paths that reach a second goal
    (sparsity, a new task, another network) while keeping the first.
    """


cli.add_command(train)
cli.add_command(demo)
cli.add_command(evaluate)
cli.add_command(continual)
cli.add_command(sparsify)
cli.add_command(connect_command)


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every input error into one line on stderr."""
    try:
        cli.main(args=argv, prog_name="weightgeo", standalone_mode=False)
    except WeightgeoError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"Error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted: what was written so far is kept.", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
