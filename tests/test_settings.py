"""Settings check every field where they are built; registries refuse unknown names in one line."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import pytest

from weightgeo.errors import WeightgeoError
from weightgeo.registry import Registry, import_object
from weightgeo.settings import Settings, parse_value, setting

KINDS = Registry("kind")
KINDS.register("a", object())
KINDS.register("b", object())


@dataclass
class Toy(Settings):
    mode: Literal["fast", "exact"] = setting("fast", "the mode")
    count: int = setting(3, "how many", min=1)
    rate: float = setting(0.1, "a rate", above=0)
    kinds: tuple[str, ...] = setting(("a",), "kinds", choices=KINDS)
    limit: int | None = setting(None, "optional", min=0)
    strengths: dict[str, float] = setting({}, "pairs")
    flag: bool = setting(False, "a flag")


def test_defaults_build_and_values_are_normalised():
    toy = Toy(kinds=["a", "b"], rate=1)
    assert toy.kinds == ("a", "b") and isinstance(toy.rate, float) and toy.limit is None


@pytest.mark.parametrize("changes, needle", [
    ({"mode": "slow"}, "choose one of fast, exact"),
    ({"count": 0}, "--count must be ≥ 1"),
    ({"count": 2.5}, "whole number"),
    ({"rate": 0.0}, "--rate must be > 0"),
    ({"rate": float("nan")}, "finite"),
    ({"kinds": ("a", "c")}, "choose one of a, b"),
    ({"limit": -1}, "≥ 0"),
    ({"flag": "yes"}, "true or false"),
    ({"count": True}, "number"),
])
def test_every_bad_field_is_one_line_naming_the_choices_or_range(changes, needle):
    with pytest.raises(WeightgeoError, match=needle):
        Toy(**changes)


def test_command_line_text_parses_to_the_field_type():
    assert parse_value("kinds", "a, b", tuple[str, ...]) == ("a", "b")
    assert parse_value("limit", "none", int | None) is None
    assert parse_value("count", "4", int) == 4
    assert parse_value("strengths", "ewc=100,si=1e-2", dict[str, float]) == {"ewc": 100.0, "si": 0.01}
    assert parse_value("flag", "off", bool) is False
    with pytest.raises(WeightgeoError, match="expects a number"):
        parse_value("rate", "fast", float)
    with pytest.raises(WeightgeoError, match="name=value"):
        parse_value("strengths", "ewc", dict[str, float])


def test_registry_lookup_registration_and_import_paths():
    assert "a" in KINDS and "z" not in KINDS and list(KINDS) == ["a", "b"]
    with pytest.raises(WeightgeoError, match="unknown kind 'z'; choose one of a, b"):
        KINDS["z"]
    with pytest.raises(WeightgeoError, match="already registered"):
        KINDS.register("a", object())
    assert import_object("weightgeo.registry:Registry") is Registry
    with pytest.raises(WeightgeoError, match="cannot import"):
        import_object("no_such_module_xyz:Thing")
    with pytest.raises(WeightgeoError, match="has no"):
        import_object("weightgeo.registry:Nope")
