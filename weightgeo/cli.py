"""The ``weightgeo`` command line: thin wrappers that parse, call the library, write a run directory.

No mathematics lives here: every command calls a function of the library and writes what it
returns. Applications get their commands generated from their settings
(:mod:`weightgeo.commands.generated`); ``weightgeo package.module:Name …`` runs a user's
application that is not registered.

Under ``torchrun --nproc-per-node N -m weightgeo COMMAND …`` every command runs data-parallel
(:mod:`weightgeo.distributed`: NCCL on GPUs, gloo on CPUs; only rank 0 writes).

Exit status: 0 success; 1 an unexpected error (one line; ``--debug`` shows the traceback);
2 bad input (one line: ``Error: …``); 3 a method stopped on a non-finite value (one line per
such method; the other methods' results are written as usual); 130 interrupted (what was
written so far is kept; ``--resume`` continues).
"""

from __future__ import annotations

import errno
import os
import sys

import click
import torch

import weightgeo.applications.connect  # noqa: F401 - registers the connect application
import weightgeo.applications.continual  # noqa: F401 - registers the continual application
import weightgeo.applications.sparsify  # noqa: F401 - registers the sparsify application
from weightgeo import __version__, distributed
from weightgeo.applications import APPLICATIONS, find_application
from weightgeo.applications.base import Diverged
from weightgeo.commands.demo import demo
from weightgeo.commands.evaluate import evaluate
from weightgeo.commands.generated import application_command
from weightgeo.errors import WeightgeoError


class WeightgeoGroup(click.Group):
    """The command group: the built-in commands, every registered application, and import paths."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(APPLICATIONS))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        if name in APPLICATIONS or ":" in name:
            return application_command(find_application(name), name)
        return None


@click.group(cls=WeightgeoGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="weightgeo")
@click.option("--debug", is_flag=True, help="Show the full traceback of an unexpected error.")
def cli(debug: bool) -> None:
    """Move neural networks along geodesics of a task metric on their weight space.

    A trained network's weight space carries a metric under which moving costs what the
    network's function changes. weightgeo traces paths that reach a second goal
    (sparsity, a new task, another network) while keeping the first.
    """


cli.add_command(demo)
cli.add_command(evaluate)


def _os_error(err: OSError) -> str:
    """One line for a file-system error (permissions, read-only, name too long, disk full)."""
    where = f" {err.filename}" if err.filename else ""
    reasons = {errno.EACCES: "permission denied", errno.EROFS: "read-only file system",
               errno.ENAMETOOLONG: "file name too long", errno.ENOSPC: "no space left on the device",
               errno.EDQUOT: "disk quota exceeded", errno.ENOENT: "no such file or directory"}
    reason = reasons.get(err.errno, err.strerror or type(err).__name__)
    return f"cannot write or read{where}: {reason}"


def _device_kind(args: list[str]) -> str:
    """cuda or cpu: what ``--device`` asks for (auto: cuda where there is one), for the process group."""
    device = "auto"
    for i, arg in enumerate(args):
        if arg == "--device" and i + 1 < len(args):
            device = args[i + 1]
        elif arg.startswith("--device="):
            device = arg.split("=", 1)[1]
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return "cuda" if device.startswith("cuda") else "cpu"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the CLI, turning every error into one line on stderr (see the exit codes)."""
    args = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in args
    try:
        with distributed.process_group(_device_kind(args)):
            cli.main(args=args, prog_name="weightgeo", standalone_mode=False)
    except Diverged as err:
        for line in err.lines:
            click.echo(f"Error: {line}", err=True)
        sys.exit(Diverged.exit_code)
    except WeightgeoError as err:
        click.echo(f"Error: {err}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("Interrupted: what was written so far is kept; rerun with --resume to continue.", err=True)
        sys.exit(130)
    except click.ClickException as err:
        click.echo(f"Error: {err.format_message()}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        click.echo("Interrupted: what was written so far is kept; rerun with --resume to continue.", err=True)
        sys.exit(130)
    except OSError as err:
        if debug:
            raise
        click.echo(f"Error: {_os_error(err)}", err=True)
        sys.exit(2)
    except Exception as err:  # noqa: BLE001 - the last line of defence: one line, not a traceback
        if debug or os.environ.get("WEIGHTGEO_DEBUG"):
            raise
        peer = distributed.peer_failure(err)
        if peer is not None:
            click.echo(f"Error: {peer}", err=True)
            sys.exit(1)
        message = " ".join(str(err).split()) or type(err).__name__
        click.echo(f"Error: unexpected {type(err).__name__}: {message[:300]} (rerun with --debug for the "
                   "traceback)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
