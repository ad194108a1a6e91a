"""Registries: names → things (metrics, models, methods, applications), one lookup and one error.

A :class:`Registry` maps names to objects, refuses an unknown name in one line that lists the
choices, and is open: users register their own entries (``@registry.register("name")``) and
they work wherever a built-in one does. :func:`import_object` resolves ``package.module:Name``
import paths, the other way a user's class reaches a command line option.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Generic, TypeVar

from weightgeo.errors import WeightgeoError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Named entries of one kind (``kind`` names them in errors: "metric", "method", …)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._help: dict[str, str] = {}

    def register(self, name: str, entry: T | None = None, *, help: str = "",
                 replace: bool = False) -> Callable[[T], T] | T:
        """Add ``entry`` under ``name`` (or decorate: ``@registry.register("name")``)."""

        def add(obj: T) -> T:
            if not isinstance(name, str) or not name or "," in name or " " in name:
                raise WeightgeoError(f"a {self.kind} name must be a word without commas, got {name!r}")
            if name in self._entries and not replace:
                raise WeightgeoError(f"a {self.kind} named {name!r} is already registered")
            self._entries[name] = obj
            doc = help or (getattr(obj, "__doc__", None) or "").strip().splitlines()[:1]
            self._help[name] = doc if isinstance(doc, str) else (doc[0] if doc else "")
            return obj

        return add if entry is None else add(entry)

    def __getitem__(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise WeightgeoError(
                f"unknown {self.kind} {name!r}; choose one of {', '.join(self._entries)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str, default: T | None = None) -> T | None:
        return self._entries.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def help(self, name: str) -> str:
        """The entry's one-line description."""
        return self._help.get(name, "")

    def check(self, names: Iterable[str]) -> list[str]:
        """``names`` as a list, each known; an unknown or empty choice is one line."""
        chosen = list(names)
        if not chosen:
            raise WeightgeoError(f"no {self.kind} given; choose from {', '.join(self._entries)}")
        for name in chosen:
            self[name]
        return chosen

    def __repr__(self) -> str:
        return f"Registry({self.kind}: {', '.join(self._entries)})"


def import_object(path: str, what: str = "object") -> object:
    """The object named by ``package.module:Name`` (the working directory is importable).

    Raises:
        WeightgeoError: a malformed path, a module that does not import, or a missing name.
    """
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise WeightgeoError(f"{what} {path!r} is neither a known name nor an import path package.module:Name")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise WeightgeoError(f"cannot import {module_name!r} for {what} {path!r}: {err}") from None
    target: object = module
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError:
            raise WeightgeoError(f"module {module_name!r} has no {attribute!r} (from {what} {path!r})") from None
    return target
