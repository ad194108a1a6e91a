"""A small progress bar for long work (click's, on stderr), silent when disabled."""

from __future__ import annotations

import sys

import click


class Progress:
    """``with Progress(total, label) as bar: bar.update(1, "acc 94.1%")``.

    Shows a bar on stderr when ``enabled`` and stderr is a terminal; otherwise it
    prints nothing, so library calls stay quiet by default and logs stay clean.
    """

    def __init__(self, total: int, label: str = "", enabled: bool = True) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.total = total
        self.label = label
        self._bar = None

    def __enter__(self) -> Progress:
        if self.enabled:
            self._bar = click.progressbar(
                length=self.total, label=self.label, file=sys.stderr, show_pos=True,
                item_show_func=lambda text: text,
            )
            self._bar.__enter__()
        return self

    def update(self, n: int = 1, status: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(n, status)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)
