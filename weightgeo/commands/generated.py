"""Command-line commands built from applications: one option per settings field, no hand-written CLI.

:func:`application_command` turns an :class:`~weightgeo.applications.base.Application` class into a
click command: its ``arguments`` become positional arguments, every field of its ``Settings``
an option (``--field-name``; a ``Literal`` a choice, a ``bool`` a ``--x/--no-x`` flag, a tuple a
comma-separated list), plus the options every run has (``--out``, ``--overwrite``, ``--resume``,
``--device``, ``--data-root``, ``--download``). The command parses, builds the settings (which
check themselves), runs :func:`~weightgeo.applications.base.run_application` and prints the
summary; methods that diverged end the command with :class:`~weightgeo.applications.base.Diverged`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Literal, get_args, get_origin

import click

from weightgeo.applications.base import Application, Diverged, RunOptions, run_application
from weightgeo.settings import _optional, fields_of, parse_value


def _default_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "none"
    return "none" if value is None else str(value)


def _field_option(f: dataclasses.Field, hint: Any) -> click.Option:
    name = "--" + f.name.replace("_", "-")
    bare, _ = _optional(hint)
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    text = f.metadata.get("help", "")
    choices = f.metadata.get("choices")
    if choices is not None:
        text += f" Choices: {', '.join(choices)}."
    if bare is bool:
        return click.Option([f"{name}/--no-{name[2:]}"], default=None, help=text + f"  [default: {default}]")
    if get_origin(bare) is Literal:
        return click.Option([name], type=click.Choice([str(a) for a in get_args(bare)]), default=None,
                            help=text + f"  [default: {default}]")
    return click.Option([name], type=str, default=None, help=text + f"  [default: {_default_text(default)}]")


def build_settings(settings_type: type, values: dict[str, Any]) -> Any:
    """The settings from command-line values (None: the field's default); checked when built."""
    kwargs = {}
    for f, hint in fields_of(settings_type):
        raw = values.get(f.name)
        if raw is None:
            continue
        kwargs[f.name] = parse_value(f.name, raw, hint) if isinstance(raw, str) else raw
    return settings_type(**kwargs)


def application_command(app: type[Application], name: str | None = None) -> click.Command:
    """The click command that runs ``app``."""
    params: list[click.Parameter] = [click.Argument([arg], type=click.Path(exists=True)) for arg in app.arguments]
    settings_fields = [(f, hint) for f, hint in fields_of(app.Settings) if f.metadata.get("cli", True)]
    params += [_field_option(f, hint) for f, hint in settings_fields]
    params += [
        click.Option(["--out"], required=True, type=click.Path(file_okay=False), help="Run directory to write."),
        click.Option(["--overwrite"], is_flag=True, help="Replace the run in a non-empty --out (its files are removed first)."),
        click.Option(["--resume"], is_flag=True, help="Continue the interrupted run in --out (same options)."),
        click.Option(["--device"], default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.Option(["--data-root"], default=None, type=click.Path(file_okay=False),
                     help="Where torchvision data sets live (default ./data)."),
        click.Option(["--download"], is_flag=True, help="Download a torchvision data set that is missing."),
    ]

    def callback(**values: Any) -> None:
        settings = build_settings(app.Settings, {f.name: values.get(f.name) for f, _ in settings_fields})
        log = lambda message: click.echo(message, err=True)  # noqa: E731
        options = RunOptions(device=values["device"], data_root=values["data_root"],
                             download=values["download"], progress=True, log=log)
        inputs = [values[arg] for arg in app.arguments]
        application = app(settings, *inputs, options=options)
        outcome = run_application(application, values["out"], overwrite=values["overwrite"],
                                  resume=values["resume"])
        for line in application.headline(outcome.rows):
            click.echo(line)
        click.echo(f"Results: {outcome.summary}")
        if outcome.diverged:
            raise Diverged(outcome.diverged)

    doc = (app.__doc__ or "").strip()
    return click.Command(name or app.name, params=params, callback=callback, help=doc,
                         short_help=re.split(r"(?<=\.)\s", doc, maxsplit=1)[0] if doc else None)
