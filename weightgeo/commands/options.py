"""Options shared by the CLI's commands, and small parsers for list-valued options."""

from __future__ import annotations

import functools
from collections.abc import Callable

import click

from weightgeo.errors import WeightgeoError
from weightgeo.metrics.registry import METRIC_HELP, metric_builder


def positive_float(ctx, param, value):
    if value is None:
        return value
    if not value > 0 or value != value or value == float("inf"):
        raise click.BadParameter(f"must be a positive number, got {value}")
    return value


def nonnegative_float(ctx, param, value):
    if value is None:
        return value
    if not value >= 0:
        raise click.BadParameter(f"must be ≥ 0, got {value}")
    return value


def metric_name(ctx, param, value):
    """--metric: a registered metric name or an import path package.module:Name (resolved now,
    so that a wrong one is one line before any work)."""
    if value is None:
        return value
    try:
        metric_builder(value)
    except WeightgeoError as err:
        raise click.BadParameter(str(err)) from None
    return value


def parse_list(text: str, convert: Callable = str, what: str = "value") -> list:
    """``"a,b,c"`` → [convert(a), …]; one clear error for an item that does not convert."""
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise WeightgeoError(f"expected a comma-separated list of {what}s, got {text!r}")
    out = []
    for item in items:
        try:
            out.append(convert(item))
        except (TypeError, ValueError):
            raise WeightgeoError(f"{item!r} is not a valid {what}") from None
    return out


def parse_choices(text: str, choices: tuple[str, ...], what: str) -> list[str]:
    """A comma-separated subset of ``choices``; an unknown item is refused in one line."""
    values = parse_list(text, str, what)
    unknown = [v for v in values if v not in choices]
    if unknown:
        raise WeightgeoError(f"unknown {what} {unknown[0]!r}; choose from {', '.join(choices)}")
    return values


def out_options(func):
    """--out and --overwrite."""

    @click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory to write.")
    @click.option("--overwrite", is_flag=True, help="Allow writing into a non-empty --out directory.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def common_options(func):
    """--seed and --device."""

    @click.option("--seed", default=0, show_default=True, type=int, help="Random seed (reruns give the same numbers).")
    @click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def data_options(func):
    """--data-root and --download for torchvision data sets."""

    @click.option("--data-root", default=None, type=click.Path(file_okay=False), help="Where torchvision data sets live (default ./data).")
    @click.option("--download", is_flag=True, help="Download a torchvision data set that is missing.")
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def path_options(func=None, *, default_metric: str = "output",
                 step_size: float = 0.1, max_steps: int = 300, damping: float = 1e-3):
    """Options of every command that traces a path: --step-size, --max-steps, --damping,
    --metric, --cg-iters, --metric-batch, plus --seed, --device, --out, --overwrite."""

    def decorate(f):
        @click.option("--step-size", default=step_size, show_default=True, type=float, callback=positive_float,
                      help="ε: the Euclidean length of each step of the path.")
        @click.option("--max-steps", default=max_steps, show_default=True, type=click.IntRange(min=0),
                      help="The most steps a path may take.")
        @click.option("--damping", default=damping, show_default=True, type=float, callback=nonnegative_float,
                      help="μ in the damped natural-gradient step (G + μI)^-1 ∇O.")
        @click.option("--metric", default=default_metric, show_default=True, callback=metric_name,
                      help=METRIC_HELP)
        @click.option("--cg-iters", default=10, show_default=True, type=click.IntRange(min=1),
                      help="Conjugate-gradient iterations per step.")
        @click.option("--metric-batch", default=256, show_default=True, type=click.IntRange(min=1),
                      help="Inputs over which the metric is averaged at each step.")
        @common_options
        @out_options
        @functools.wraps(f)
        def wrapper(*args, **kwargs):
            return f(*args, **kwargs)

        return wrapper

    return decorate(func) if func is not None else decorate
