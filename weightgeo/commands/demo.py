"""``weightgeo demo``: the main job on the embedded mnist5k data set."""

from __future__ import annotations

import re

import click

from weightgeo.commands.options import common_options, out_options
from weightgeo.demo import run_demo


@click.command()
@click.option("--quick", is_flag=True, help="Fewer epochs and steps (a smoke test).")
@common_options
@out_options
def demo(quick, seed, device, out, overwrite):
    """Train two MLPs on mnist5k and run every application on them; write summary.md with plots."""
    summary = run_demo(out, seed=seed, device=device, quick=quick, overwrite=overwrite,
                       log=lambda msg: click.echo(f"[demo] {msg}", err=True))
    click.echo(f"Done. Summary: {summary}")
    for line in summary.read_text().splitlines():
        # Image links become the plots' paths, so the terminal summary links them too.
        click.echo(re.sub(r"!\[[^\]]*\]\(([^)]+)\)", lambda m: f"[plot: {summary.parent / m.group(1)}]", line))
    click.echo(f"Plots: {', '.join(str(p) for p in sorted(summary.parent.rglob('*.png')))}")
