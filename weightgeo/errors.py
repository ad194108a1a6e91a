"""User-facing errors: one clear line, no traceback, at the CLI."""

from __future__ import annotations


class WeightgeoError(Exception):
    """An error caused by the user's input (a bad name, a missing file, a wrong shape).

    The CLI prints its message as a single line and exits with status 2; library
    users catch it like any exception. The message must stand on its own.
    """
