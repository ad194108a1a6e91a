"""tools/mutation.py: its operators, what it leaves alone, sampling, hand mutations, one tiny run.

The runner's end-to-end case runs pytest on a three-function package in a temporary git
repository (not on this project's suite), so it takes a few seconds.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "mutation.py"


@pytest.fixture(scope="module")
def mt():
    spec = importlib.util.spec_from_file_location("weightgeo_mutation_tool", TOOL)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def _mutants(mt, source: str):
    return mt.generate_mutants(textwrap.dedent(source), "pkg/mod.py")


def _pairs(mutants) -> set[tuple[str, str]]:
    return {(m.operator, m.mutated_line.strip()) for m in mutants}


OPERATOR_CASES = [
    # (operator, source line, one mutated line it must yield)
    ("arith-swap", "x = a + b", "x = a - b"),
    ("arith-swap", "x = a - b", "x = a + b"),
    ("arith-swap", "x = a * b", "x = a / b"),
    ("arith-swap", "x = a / b", "x = a * b"),
    ("arith-swap", "x = a ** b", "x = a * b"),
    ("arith-swap", "x += a", "x -= a"),
    ("bitwise-swap", "keep = k & j", "keep = k | j"),
    ("drop-term", "x = a + b", "x = a"),
    ("drop-term", "x = a + b", "x = b"),
    ("drop-term", "x = a - b", "x = a"),
    ("drop-factor", "x = a * b", "x = b"),
    ("drop-factor", "x = a / b", "x = a"),
    ("drop-factor", "x = (a + b) / c", "x = (a + b)"),
    ("drop-unary", "x = -a", "x = a"),
    ("drop-unary", "x = not a", "x = a"),
    ("drop-unary", "x = ~a", "x = a"),
    ("negate", "x = a * b", "x = -(a * b)"),
    ("negate", "return a - b", "return -(a - b)"),
    ("compare-flip", "x = a < b", "x = a > b"),
    ("compare-flip", "x = a <= b", "x = a > b"),
    ("compare-flip", "x = a >= b", "x = a < b"),
    ("compare-flip", "x = a == b", "x = a != b"),
    ("compare-flip", "x = a is None", "x = a is not None"),
    ("compare-flip", "x = a not in b", "x = a in b"),
    ("constant", "x = 0", "x = 1"),
    ("constant", "x = 1", "x = 0"),
    ("constant", "x = 0.5 * a", "x = 1.0 * a"),
    ("constant", "x = 0.5 * a", "x = -0.5 * a"),
    ("constant", "x = a[-1]", "x = a[-2]"),
    ("bool-flip", "x = True", "x = False"),
    ("boolop-swap", "x = a and b", "x = a or b"),
    ("boolop-swap", "x = a or b or c", "x = a and b and c"),
    ("swap-args", "x = f(a, b)", "x = f(b, a)"),
    ("swap-args", "x = f(a + 1, b, k=c)", "x = f(b, (a + 1), k=c)"),
    ("drop-keyword", "x = f(a, k=c)", "x = f(a)"),
    ("drop-keyword", "x = f(a, k=c, m=d)", "x = f(a, m=d)"),
    ("drop-keyword", "x = f(a, m=d, k=c)", "x = f(a, m=d)"),
]


@pytest.mark.parametrize("operator, line, expected", OPERATOR_CASES)
def test_each_operator_yields_its_mutant(mt, operator, line, expected):
    source = f"def f(a, b, c, d, k, j):\n    {line}\n"
    mutants = mt.generate_mutants(source, "pkg/mod.py")
    assert (operator, expected) in _pairs(mutants)
    for m in mutants:  # every mutant compiles and differs from the original
        mutated = m.apply(source)
        assert mutated != source
        compile(mutated, "pkg/mod.py", "exec")


def test_the_operator_table_documents_every_operator_the_generator_uses(mt):
    used = {case[0] for case in OPERATOR_CASES}
    assert used == set(mt.OPERATORS)


def test_a_line_with_characters_of_several_bytes_is_mutated_at_the_right_place(mt):
    # ast columns count UTF-8 bytes; θ is two bytes
    mutants = _mutants(mt, "def f(θ, μ):\n    return θ + μ * θ\n")
    assert ("arith-swap", "return θ - μ * θ") in _pairs(mutants)
    assert ("arith-swap", "return θ + μ / θ") in _pairs(mutants)


def test_what_is_not_mathematics_is_left_alone(mt):
    source = '''\
        """Module docstring with 1 + 2."""
        import torch
        SCALE = 2.5
        from dataclasses import dataclass


        @dataclass
        class Settings:
            damping: float = 0.1

            def __repr__(self) -> str:
                return f"Settings({self.damping * 2})"


        def g(x: int = 3, *, flag: bool = True) -> float:
            """Docstring: 2 * x."""
            name = "a" + "b"
            label = f"{x + 1} items"
            if x < 0:
                raise ValueError(f"x must be ≥ 0, got {x - 1}", x * 2)
            assert x >= 0, "never"
            total = x * 4  # logging
            print(x - 1)  # pragma: no mutate
            # logging: the next statement is a report
            shown = x / 7
            generator = torch.Generator().manual_seed(x * 1000 + 7)
            ok = isinstance(x, int | float)
            return x + 5
        '''
    mutants = _mutants(mt, source)
    lines = {m.line for m in mutants}
    text = textwrap.dedent(source).split("\n")
    assert lines, "the return line is mathematics"
    # only the guard `if x < 0` and the return are mutated
    assert {text[n - 1].strip() for n in lines} == {"if x < 0:", "return x + 5"}


def test_a_marked_multi_line_statement_is_skipped_on_all_its_lines(mt):
    source = "def f(a, b):\n    x = g(a + 1,\n          b * 2)  # logging\n    return a - b\n"
    lines = {m.line for m in mt.generate_mutants(source, "m.py")}
    assert lines == {4}


def test_sampling_is_deterministic_spread_over_operators_and_in_source_order(mt):
    source = "def f(a, b, c):\n" + "".join(
        f"    x{i} = f(a + {i}, b * c) if a < b and c else -a\n" for i in range(1, 6)
    )
    mutants = mt.generate_mutants(source, "m.py")
    first = mt.sample_mutants(mutants, 6, seed=0, key="m.py")
    again = mt.sample_mutants(mutants, 6, seed=0, key="m.py")
    other = mt.sample_mutants(mutants, 6, seed=1, key="m.py")
    assert [m.ident for m in first] == [m.ident for m in again]
    assert [m.ident for m in first] != [m.ident for m in other]
    assert len(first) == 6 and len({m.operator for m in first}) == 6
    order = [mutants.index(m) for m in first]
    assert order == sorted(order)
    assert mt.sample_mutants(mutants, None, 0, "m.py") == mutants
    assert len({m.ident for m in mutants}) == len(mutants)


def test_hand_mutations_are_ready_stale_ambiguous_or_invalid(mt, tmp_path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "mod.py").write_text("def f(x):\n    y = x + 1\n    return y + 1\n")
    entries = [
        {"name": "ready", "file": "pkg/mod.py", "old": "y = x + 1", "new": "y = x - 1"},
        {"name": "moved", "file": "pkg/mod.py", "old": "z = x * 2", "new": "z = x"},
        {"name": "gone", "file": "pkg/old.py", "old": "x", "new": "y"},
        {"name": "twice", "file": "pkg/mod.py", "old": "+ 1", "new": "- 1"},
        {"name": "broken", "file": "pkg/mod.py", "old": "return y + 1", "new": "return y +"},
    ]
    hands = {h.name: h for h in mt.resolve_hand_mutations(entries, tmp_path)}
    assert {n: h.status for n, h in hands.items()} == {
        "ready": "ready", "moved": "stale", "gone": "stale", "twice": "ambiguous",
        "broken": "invalid",
    }
    ready = hands["ready"].mutant
    assert ready.line == 2 and ready.mutated_line.strip() == "y = x - 1"
    assert all(hands[n].mutant is None for n in ("moved", "gone", "twice", "broken"))


def test_the_test_map_takes_the_first_match_and_falls_back_to_the_suite(mt, tmp_path):
    (tmp_path / "tests").mkdir()
    for name in ("test_a.py", "test_a_more.py", "test_b.py"):
        (tmp_path / "tests" / name).write_text("")
    test_map = mt.TestMap([
        (["pkg/special.py"], ["tests/test_b.py"]),
        (["pkg/*.py"], ["tests/test_a*.py", "tests/test_b.py"]),
        (["other/*.py"], ["tests/test_missing*.py"]),
    ])
    assert test_map.tests_for("pkg/special.py", tmp_path) == ["tests/test_b.py"]
    assert test_map.tests_for("pkg/mod.py", tmp_path) == [
        "tests/test_a.py", "tests/test_a_more.py", "tests/test_b.py"]
    assert test_map.tests_for("other/x.py", tmp_path) == ["tests"]
    assert test_map.tests_for("elsewhere.py", tmp_path) == ["tests"]
    assert mt.parse_tests_for(["pkg/*.py=tests/test_a.py,tests/test_b.py"]) == [
        (["pkg/*.py"], ["tests/test_a.py", "tests/test_b.py"])]


TINY_MODULE = """\
def double(x):
    return 2 * x


def countdown(n):
    while n > 0:
        n -= 1
    return n


def half(x):
    return x / 2
"""

TINY_TESTS = """\
from pkg.calc import countdown, double


def test_double():
    assert double(3) == 6


def test_countdown():
    assert countdown(3) == 0
"""

TINY_HAND = '''\
[[mutation]]
name = "double-triples"
file = "pkg/calc.py"
old = "return 2 * x"
new = "return 3 * x"
description = "double triples"

[[mutation]]
name = "moved-away"
file = "pkg/calc.py"
old = "return x // 2"
new = "return x"
description = "code that is no longer there"
'''


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_tiny_run_kills_survives_times_out_and_never_touches_the_repository(mt, tmp_path, capsys):
    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "pkg" / "__init__.py").write_text("")
    (repo / "pkg" / "calc.py").write_text(TINY_MODULE)
    (repo / "tests" / "test_calc.py").write_text(TINY_TESTS)
    (repo / "mutation.toml").write_text(
        'modules = ["pkg/*.py"]\nexclude = ["*/__init__.py"]\n'
        '[[tests]]\nmodules = ["pkg/*.py"]\ntests = ["tests/test_*.py"]\n'
    )
    (repo / "hand.toml").write_text(TINY_HAND)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    before = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    out = tmp_path / "out"

    status = mt.main([
        "--root", str(repo), "--config", str(repo / "mutation.toml"),
        "--hand", str(repo / "hand.toml"),
        "--package", "pkg", "--all", "--operators", "arith-swap", "--workers", "2",
        "--timeout-extra", "2", "--out", str(out), "--workdir", str(tmp_path),
    ])

    assert status == 0
    after = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file() and ".git" not in p.parts}
    assert after == before  # mutants live in private copies only
    assert not list(tmp_path.glob("weightgeo-mutation-*"))  # and the copies are removed
    result = json.loads((out / "result.json").read_text())
    by_line = {(m["line"], m["name"]): m["status"] for m in result["mutants"]}
    assert by_line == {
        (2, ""): "killed",  # 2 / x
        (7, ""): "timeout",  # n += 1 never ends
        (12, ""): "survived",  # x * 2: half has no test
        (2, "double-triples"): "killed",
    }
    module = result["modules"]["pkg/calc.py"]
    counts = (module["mutants"], module["killed"], module["survived"], module["timeouts"])
    assert counts == (3, 1, 1, 1)
    assert module["kill_rate"] == pytest.approx(2 / 3)
    assert {h["name"]: h["status"] for h in result["hand"]} == {
        "double-triples": "killed", "moved-away": "stale"}
    killed = next(m for m in result["mutants"] if m["name"] == "double-triples")
    assert killed["killed_by"].startswith("FAILED tests/test_calc.py::test_double")
    report = (out / "report.txt").read_text()
    assert "pkg/calc.py:12  arith-swap" in report and "+ return x * 2" in report
    assert "stale" in report and "moved-away" in report
    assert "66.7%" in capsys.readouterr().out
