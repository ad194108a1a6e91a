"""Settings: dataclasses whose every field is checked when the object is built.

An application's (or any component's) knobs are a dataclass that subclasses :class:`Settings`;
each field is declared with :func:`setting` (its default, a one-line help, and bounds or choices).
Building the object checks every field against its type hint and bounds — an unknown value of a
``Literal`` or of a registry is one line naming the choices, a number out of range one line naming
the range — so a bad option fails where it is built, from Python or from the command line.

Supported field types: ``bool``, ``int``, ``float``, ``str``, ``Literal[...]``, ``X | None``,
``tuple[X, ...]`` (comma-separated on the command line) and ``dict[str, float]``
(``key=value,…``). :func:`parse_value` turns command-line text into such a value; the CLI builds
its options from the same fields (:mod:`weightgeo.commands.generated`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal, Union, get_args, get_origin

from weightgeo.errors import WeightgeoError

_MISSING = dataclasses.MISSING


def setting(
    default: Any = _MISSING,
    help: str = "",
    *,
    min: float | None = None,
    max: float | None = None,
    above: float | None = None,
    choices: Any = None,
    check: Any = None,
    cli: bool = True,
    default_factory: Any = _MISSING,
) -> Any:
    """A settings field: ``default``, a one-line ``help``, and checks.

    Args:
        min, max: inclusive bounds of a number (of every item of a tuple).
        above: an exclusive lower bound (``above=0``: strictly positive).
        choices: the allowed values of a string (or of a tuple's items): a tuple or a
            :class:`~weightgeo.registry.Registry` (read when the settings are built, so names
            registered later are allowed).
        check: a callable that raises a one-line WeightgeoError for a bad value (e.g. a metric
            given by name or import path, resolved when the settings are built).
        cli: whether the command line gets an option for it.
    """
    metadata = {"help": help, "min": min, "max": max, "above": above, "choices": choices, "check": check,
                "cli": cli}
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if isinstance(default, list | dict | set):
        frozen = default
        return dataclasses.field(default_factory=lambda: type(frozen)(frozen), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class Settings:
    """Base of the settings dataclasses (decorate the subclass with ``@dataclass``)."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            checked = check_value(f.name, value, hints[f.name], f.metadata)
            object.__setattr__(self, f.name, checked)
        self.check()

    def check(self) -> None:
        """Checks between fields (override); single fields are checked already."""

    def replace(self, **changes: Any) -> Settings:
        """A copy with some fields changed (and checked)."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)  # type: ignore[call-overload]


def _option(name: str) -> str:
    return "--" + name.replace("_", "-")


def _choices(spec: Any) -> list | None:
    if spec is None:
        return None
    return list(spec)


def _optional(hint: Any) -> tuple[Any, bool]:
    """(the hint without None, whether None is allowed)."""
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(args) < len(get_args(hint)):
            return args[0], True
    return hint, False


def check_value(name: str, value: Any, hint: Any, metadata: Mapping[str, Any]) -> Any:
    """``value`` checked (and normalised: lists → tuples, ints → floats) against the field's hint
    and its ``check``."""
    value = _check_type(name, value, hint, metadata)
    if value is not None and metadata.get("check") is not None:
        metadata["check"](value)
    return value


def _check_type(name: str, value: Any, hint: Any, metadata: Mapping[str, Any]) -> Any:
    hint, optional = _optional(hint)
    label = _option(name)
    if value is None:
        if optional:
            return None
        raise WeightgeoError(f"{label} needs a value")
    origin = get_origin(hint)
    if origin is Literal:
        allowed = get_args(hint)
        if value not in allowed:
            raise WeightgeoError(f"{label}: unknown value {value!r}; choose one of {', '.join(map(str, allowed))}")
        return value
    if origin is tuple:
        (item,) = [a for a in get_args(hint) if a is not Ellipsis][:1] or [Any]
        if isinstance(value, str | bytes) or not hasattr(value, "__iter__"):
            value = (value,)
        items = tuple(check_value(name, v, item, metadata) for v in value)
        if not items:
            raise WeightgeoError(f"{label} needs at least one value")
        return items
    if origin is dict:
        if not isinstance(value, Mapping):
            raise WeightgeoError(f"{label} must be a mapping of name=value pairs, got {value!r}")
        _, item = get_args(hint)
        return {str(k): check_value(f"{name}[{k}]", v, item, {**metadata, "choices": None})
                for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise WeightgeoError(f"{label} must be true or false, got {value!r}")
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise WeightgeoError(f"{label} must be a number, got {value!r}")
        if hint is int and not float(value).is_integer():
            raise WeightgeoError(f"{label} must be a whole number, got {value!r}")
        value = hint(value)
        if not math.isfinite(value):
            raise WeightgeoError(f"{label} must be a finite number, got {value!r}")
        _check_bounds(label, value, metadata)
        return value
    if hint is str:
        if not isinstance(value, str):
            raise WeightgeoError(f"{label} must be text, got {value!r}")
        allowed = _choices(metadata.get("choices"))
        if allowed is not None and value not in allowed:
            raise WeightgeoError(f"{label}: unknown value {value!r}; choose one of {', '.join(allowed)}")
        return value
    return value


def _check_bounds(label: str, value: float, metadata: Mapping[str, Any]) -> None:
    low, high, above = metadata.get("min"), metadata.get("max"), metadata.get("above")
    if above is not None and not value > above:
        raise WeightgeoError(f"{label} must be > {above:g}, got {value:g}")
    if low is not None and value < low:
        raise WeightgeoError(f"{label} must be ≥ {low:g}, got {value:g}")
    if high is not None and value > high:
        raise WeightgeoError(f"{label} must be ≤ {high:g}, got {value:g}")


def parse_value(name: str, text: str, hint: Any) -> Any:
    """Command-line text → a value of the field's type (checked later by the dataclass)."""
    hint, optional = _optional(hint)
    label = _option(name)
    text = text.strip()
    if optional and text.lower() in ("none", ""):
        return None
    origin = get_origin(hint)
    if origin is tuple:
        (item,) = [a for a in get_args(hint) if a is not Ellipsis][:1]
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise WeightgeoError(f"{label} expects a comma-separated list, got {text!r}")
        return tuple(parse_value(name, p, item) for p in parts)
    if origin is dict:
        _, item = get_args(hint)
        out = {}
        for part in (p.strip() for p in text.split(",") if p.strip()):
            key, sep, raw = part.partition("=")
            if not sep or not key.strip():
                raise WeightgeoError(f"{label} expects name=value pairs (e.g. ewc=100), got {part!r}")
            out[key.strip()] = parse_value(name, raw, item)
        return out
    if hint is bool:
        lowered = text.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise WeightgeoError(f"{label} expects true or false, got {text!r}")
    if hint in (int, float):
        try:
            number = float(text)
        except ValueError:
            raise WeightgeoError(f"{label} expects a number, got {text!r}") from None
        return int(number) if hint is int and number.is_integer() else number
    return text


def fields_of(settings_type: type) -> list[tuple[dataclasses.Field, Any]]:
    """(field, resolved type hint) for every field of a settings dataclass."""
    hints = typing.get_type_hints(settings_type)
    return [(f, hints[f.name]) for f in dataclasses.fields(settings_type)]
