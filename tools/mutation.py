#!/usr/bin/env python
"""Mutation testing for weightgeo: put one small bug at a time into a private copy, run the tests.

A mutant is a copy of one module with one small change a reviewer's hand would make (a sign, an
operator, a constant, a dropped factor or keyword argument; see OPERATORS and TESTING.md). It is
*killed* when the tests relevant to that module fail on it, *survives* when they pass, and counts
as a *timeout* (killed, reported apart) when its run takes more than ``--timeout-factor`` times the
clean run. Two kinds of mutants:

- generated from the source with :mod:`ast` over a set of module globs (``--modules``), every
  mutant (``--all``) or a deterministic sample per module (``--per-module N --seed S``);
- hand-written, named mutations from a data file (``tools/mutations.toml``: file, exact old text,
  new text, description); one whose old text no longer exists is reported as *stale*.

Nothing is ever written to the repository's own files: each worker runs in its own copy of the
tree (the tracked and untracked-but-not-ignored files, or ``--source head`` for the last commit)
under a temporary directory, and pytest runs from inside that copy, which therefore imports the
copy's ``weightgeo`` (checked once per copy before anything runs). The result is a per-module
table, the survivors with their lines (so that a developer can write the missing test), and the
same in JSON (``--out``, default runs/mutation/result.json). The exit status is 0: it is a report.

Usage (from the repository root; see ``--help``)::

    OMP_NUM_THREADS=1 .venv/bin/python tools/mutation.py --per-module 8
    OMP_NUM_THREADS=1 .venv/bin/python tools/mutation.py --modules 'weightgeo/metrics/*.py' --all
    .venv/bin/python tools/mutation.py --list --per-module 3      # show the sample, run nothing
"""

from __future__ import annotations

import argparse
import ast
import bisect
import datetime as _dt
import fnmatch
import glob
import io
import json
import os
import platform
import queue
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tokenize
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    try:
        import tomli as tomllib  # type: ignore[no-redef]
    except ModuleNotFoundError:
        tomllib = None  # type: ignore[assignment]

TOOLS = Path(__file__).resolve().parent
DEFAULT_CONFIG = TOOLS / "mutation_config.toml"
DEFAULT_HAND = TOOLS / "mutations.toml"

OPERATORS: dict[str, str] = {
    "arith-swap": "+ ↔ −, * ↔ /, // → /, ** → *, @ → * (also +=, −=, *=, /=)",
    "bitwise-swap": "& ↔ | (mask logic; also &=, |=)",
    "drop-term": "a + b → a, a + b → b, a − b → a",
    "drop-factor": "a * b → a, a * b → b, a / b → a (a lost scale such as 1/B)",
    "drop-unary": "−x → x, not x → x, ~x → x",
    "negate": "an assigned or returned arithmetic expression e → −(e)",
    "compare-flip": "< → >, > → <, <= → >, >= → <, == ↔ !=, is ↔ is not, in ↔ not in",
    "constant": "0 → 1, 1 → 0, 1 → 2, c → 2c, c → −c (numbers only)",
    "bool-flip": "True ↔ False",
    "boolop-swap": "and ↔ or",
    "swap-args": "f(a, b) → f(b, a) for a call with two positional arguments",
    "drop-keyword": "f(…, k=v) → f(…): an explicit option left to its default",
}
"""The generated mutation operators and what each does."""

DEFAULT_MARKERS = ("logging", "pragma: no mutate")
SKIP_FUNCTIONS = frozenset({"__repr__", "__str__", "extra_repr"})
# Calls whose arguments are not swapped: symmetric, or a swap only gives a type error.
NO_SWAP_CALLS = frozenset({
    "isinstance", "issubclass", "getattr", "setattr", "hasattr", "max", "min", "print", "super",
    "maximum", "minimum", "format", "get", "setdefault", "pop", "allclose", "isclose", "equal",
    "add", "mul", "logical_and", "logical_or", "manual_seed", "filterwarnings", "join",
})
# Keyword arguments neither dropped nor changed: seeds, devices, switches that do not change the
# numbers (a mutant of them would be equivalent) and input/output details.
NO_DROP_KEYWORDS = frozenset({
    "seed", "device", "strict", "progress", "desc", "file", "flush", "stacklevel", "exist_ok",
    "parents", "indent", "map_location", "weights_only", "non_blocking", "sorted", "set_to_none",
    "enabled",
})
SEED_CALLS = frozenset({"manual_seed", "seed"})

_ARITH_SWAP = {ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.FloorDiv: "/",
               ast.Pow: "*", ast.MatMult: "*"}
_BIT_SWAP = {ast.BitAnd: "|", ast.BitOr: "&"}
_AUG_SWAP = {ast.Add: "-=", ast.Sub: "+=", ast.Mult: "/=", ast.Div: "*=", ast.BitAnd: "|=",
             ast.BitOr: "&="}
_COMPARE_FLIP = {ast.Lt: ">", ast.Gt: "<", ast.LtE: ">", ast.GtE: "<", ast.Eq: "!=",
                 ast.NotEq: "==", ast.Is: "is not", ast.IsNot: "is", ast.In: "not in",
                 ast.NotIn: "in"}
_ARITHMETIC = (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Pow, ast.MatMult)
_SIMPLE = re.compile(r"^[\w.]+$")
_BUILTIN_TYPES = frozenset({"int", "float", "str", "bool", "bytes", "complex", "list", "dict",
                            "tuple", "set", "frozenset", "type", "object"})


# -- mutants ------------------------------------------------------------------------------------
@dataclass
class Mutant:
    """One change to one file: ``edits`` are (start, end, text) character spans of its source."""

    file: str
    line: int
    operator: str
    edits: list[tuple[int, int, str]]
    original_line: str = ""
    mutated_line: str = ""
    ident: str = ""
    name: str = ""
    description: str = ""
    tests: list[str] | None = None

    def apply(self, source: str) -> str:
        for start, end, text in sorted(self.edits, key=lambda e: (e[0], e[1]), reverse=True):
            source = source[:start] + text + source[end:]
        return source


def _line_of(source: str, offset: int) -> int:
    return source.count("\n", 0, offset) + 1


def _lines_text(source: str, first: int, last: int) -> str:
    lines = source.split("\n")
    return "\n".join(line.rstrip() for line in lines[first - 1 : last])


def _describe(source: str, mutant: Mutant) -> None:
    """Fill in the mutant's line and the original and mutated text of the lines it touches."""
    starts = [s for s, _, _ in mutant.edits]
    ends = [e for _, e, _ in mutant.edits]
    first, last = _line_of(source, min(starts)), _line_of(source, max(ends))
    mutated = mutant.apply(source)
    growth = mutated.count("\n") - source.count("\n")
    mutant.line = first
    mutant.original_line = _lines_text(source, first, last)
    mutant.mutated_line = _lines_text(mutated, first, last + growth)


class _Source:
    """A module's text with ast positions (UTF-8 byte columns) and tokens as character offsets."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.line_starts = [0] + [i + 1 for i, c in enumerate(text) if c == "\n"]
        self.lines = text.split("\n")
        self.tokens = []  # significant tokens: (start, end, type, string)
        self.comments: list[tuple[int, str, bool]] = []  # (line, text, trailing a code line)
        code_lines: set[int] = set()
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                self.comments.append((tok.start[0], tok.string, tok.start[0] in code_lines))
                continue
            if tok.type in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                            tokenize.ENDMARKER):
                continue
            code_lines.add(tok.start[0])
            self.tokens.append((self.offset_chars(*tok.start), self.offset_chars(*tok.end),
                                tok.type, tok.string))
        self.token_starts = [t[0] for t in self.tokens]

    def offset_chars(self, line: int, col: int) -> int:
        return self.line_starts[line - 1] + col

    def offset(self, line: int, col_bytes: int) -> int:
        text = self.lines[line - 1]
        return self.line_starts[line - 1] + len(text.encode()[:col_bytes].decode(errors="ignore"))

    def span(self, node: ast.AST) -> tuple[int, int]:
        return (self.offset(node.lineno, node.col_offset),
                self.offset(node.end_lineno, node.end_col_offset))

    def segment(self, node: ast.AST) -> str:
        start, end = self.span(node)
        return self.text[start:end]

    def tokens_between(self, start: int, end: int) -> list[tuple[int, int, int, str]]:
        """Significant tokens in [start, end), brackets of parenthesised operands left out."""
        i = bisect.bisect_left(self.token_starts, start)
        out = []
        while i < len(self.tokens) and self.tokens[i][0] < end:
            if self.tokens[i][3] not in ("(", ")"):
                out.append(self.tokens[i])
            i += 1
        return out

    def next_token(self, offset: int):
        i = bisect.bisect_left(self.token_starts, offset)
        return self.tokens[i] if i < len(self.tokens) else None

    def previous_token(self, offset: int):
        i = bisect.bisect_left(self.token_starts, offset) - 1
        return self.tokens[i] if i >= 0 else None


def _marked_lines(src: _Source, tree: ast.AST, markers: tuple[str, ...]) -> set[int]:
    """Lines not to mutate: a statement with a marked trailing comment on one of its lines, or
    the statement that follows a marked comment line."""
    wanted = [m.lower() for m in markers]
    marked_lines, lead_lines = set(), set()
    for line, text, trailing in src.comments:
        if any(m in text.lower() for m in wanted):
            (marked_lines if trailing else lead_lines).add(line)
    if not marked_lines and not lead_lines:
        return set()
    statements = [n for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    skip = set(marked_lines)
    for line in lead_lines:  # the first statement starting after the comment
        following = [s for s in statements if s.lineno > line]
        if following:
            first = min(s.lineno for s in following)
            marked_lines.add(first)
            skip.add(first)
    for stmt in statements:
        body = getattr(stmt, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.stmt):
            header = range(stmt.lineno, body[0].lineno)  # a compound statement: its header only
        else:
            header = range(stmt.lineno, stmt.end_lineno + 1)
        if any(line in marked_lines for line in header):
            skip.update(header)
    return skip


def _call_name(call: ast.Call) -> str:
    func = call.func
    if isinstance(func, ast.Attribute):
        return func.attr
    if isinstance(func, ast.Name):
        return func.id
    return ""


def _is_str(node: ast.AST) -> bool:
    return isinstance(node, ast.JoinedStr) or (
        isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
    )


def _is_type(node: ast.AST) -> bool:
    """A type in a union such as ``int | float`` or ``Tensor | None`` (not a mask)."""
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.BinOp):
        return _is_type(node.left) or _is_type(node.right)
    if isinstance(node, ast.Name):
        name = node.id
    elif isinstance(node, ast.Attribute):
        name = node.attr
    else:
        return False
    return name in _BUILTIN_TYPES or name[:1].isupper()


def _paren(text: str) -> str:
    return text if _SIMPLE.match(text) else f"({text})"


def _number_text(value) -> str:
    return repr(value)


class _Generator:
    """Walks one module's tree, skipping what is not mathematics, and yields candidate mutants."""

    def __init__(self, src: _Source, tree: ast.Module, skip_lines: set[int]) -> None:
        self.src = src
        self.tree = tree
        self.skip_lines = skip_lines
        self.found: list[tuple[str, list[tuple[int, int, str]]]] = []

    # -- the walk ---------------------------------------------------------------------------
    def run(self) -> list[tuple[str, list[tuple[int, int, str]]]]:
        for stmt in self.tree.body:
            if isinstance(stmt, ast.If) and "__name__" in ast.dump(stmt.test):
                continue  # the script entry point
            if isinstance(stmt, ast.Assign | ast.AnnAssign) and self._is_setting(stmt):
                continue
            self.visit(stmt, None)
        return self.found

    @staticmethod
    def _is_setting(stmt: ast.stmt) -> bool:
        """A module-level UPPER_CASE constant: a tuned setting, not mathematics."""
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        return all(isinstance(t, ast.Name) and t.id.isupper() for t in targets)

    def visit(self, node: ast.AST, parent: ast.AST | None) -> None:
        if isinstance(node, ast.Raise | ast.Assert | ast.JoinedStr | ast.Import | ast.ImportFrom):
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name not in SKIP_FUNCTIONS:  # body only: no defaults, annotations, decorators
                for stmt in node.body:
                    self.visit(stmt, node)
            return
        if isinstance(node, ast.Lambda):
            self.visit(node.body, node)
            return
        if isinstance(node, ast.ClassDef):
            for stmt in node.body:  # annotated class attributes are fields with default settings
                if not isinstance(stmt, ast.AnnAssign):
                    self.visit(stmt, node)
            return
        if isinstance(node, ast.AnnAssign):
            if node.value is not None:
                self.visit(node.value, node)
                self._negate(node.value)
            return
        if isinstance(node, ast.Call) and _call_name(node) in SEED_CALLS:
            return  # seed arithmetic is arbitrary
        self.mutate(node, parent)
        for name, value in ast.iter_fields(node):
            if isinstance(node, ast.Call) and name == "keywords":
                for kw in value:  # seeds and switches that do not change the numbers: left alone
                    if kw.arg not in SEED_CALLS and kw.arg not in NO_DROP_KEYWORDS:
                        self.visit(kw.value, kw)
                continue
            if isinstance(value, list):
                for item in value:
                    if isinstance(item, ast.AST):
                        self.visit(item, node)
            elif isinstance(value, ast.AST):
                self.visit(value, node)

    # -- recording --------------------------------------------------------------------------
    def add(self, operator: str, edits: list[tuple[int, int, str]]) -> None:
        if not edits:
            return
        first = _line_of(self.src.text, min(e[0] for e in edits))
        last = _line_of(self.src.text, max(e[1] for e in edits))
        if any(line in self.skip_lines for line in range(first, last + 1)):
            return
        self.found.append((operator, edits))

    def _op_edit(self, start: int, end: int, text: str) -> list[tuple[int, int, str]]:
        tokens = self.src.tokens_between(start, end)
        if not tokens:
            return []
        return [(tokens[0][0], tokens[-1][1], text)]

    # -- the operators ------------------------------------------------------------------------
    def mutate(self, node: ast.AST, parent: ast.AST | None) -> None:
        src = self.src
        if isinstance(node, ast.BinOp):
            if _is_str(node.left) or _is_str(node.right) or isinstance(node.op, ast.Mod):
                return
            (start, end), left, right = src.span(node), src.span(node.left), src.span(node.right)
            kind = type(node.op)
            if kind in _ARITH_SWAP:
                self.add("arith-swap", self._op_edit(left[1], right[0], _ARITH_SWAP[kind]))
            if kind in _BIT_SWAP and not (_is_type(node.left) or _is_type(node.right)):
                self.add("bitwise-swap", self._op_edit(left[1], right[0], _BIT_SWAP[kind]))
            keep_left = [(start, end, _paren(src.segment(node.left)))]
            keep_right = [(start, end, _paren(src.segment(node.right)))]
            if kind is ast.Add:
                self.add("drop-term", keep_left)
                self.add("drop-term", keep_right)
            elif kind is ast.Sub:
                self.add("drop-term", keep_left)
            elif kind is ast.Mult:
                self.add("drop-factor", keep_left)
                self.add("drop-factor", keep_right)
            elif kind is ast.Div:
                self.add("drop-factor", keep_left)
        elif isinstance(node, ast.UnaryOp):
            if isinstance(node.op, ast.USub | ast.Not | ast.Invert):
                start, _ = src.span(node)
                operand, _ = src.span(node.operand)
                tokens = src.tokens_between(start, operand)
                if tokens:
                    end = tokens[0][1]
                    while isinstance(node.op, ast.Not) and src.text[end : end + 1] == " ":
                        end += 1  # "not x" → "x"
                    self.add("drop-unary", [(tokens[0][0], end, "")])
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op, a, b in zip(node.ops, operands, operands[1:], strict=False):
                if _is_str(a) or _is_str(b):
                    if not isinstance(op, ast.Eq | ast.NotEq | ast.In | ast.NotIn):
                        continue
                self.add("compare-flip", self._op_edit(src.span(a)[1], src.span(b)[0],
                                                       _COMPARE_FLIP[type(op)]))
        elif isinstance(node, ast.BoolOp):
            new = "or" if isinstance(node.op, ast.And) else "and"
            edits = []
            for a, b in zip(node.values, node.values[1:], strict=False):
                edits += self._op_edit(src.span(a)[1], src.span(b)[0], new)
            self.add("boolop-swap", edits)
        elif isinstance(node, ast.AugAssign):
            kind = type(node.op)
            if kind in _AUG_SWAP and not _is_str(node.value):
                operator = "bitwise-swap" if kind in (ast.BitAnd, ast.BitOr) else "arith-swap"
                self.add(operator, self._op_edit(src.span(node.target)[1], src.span(node.value)[0],
                                                 _AUG_SWAP[kind]))
            self._negate(node.value)
        elif isinstance(node, ast.Assign | ast.Return):
            if node.value is not None:
                self._negate(node.value)
        elif isinstance(node, ast.Constant):
            self._constant(node, parent)
        elif isinstance(node, ast.Call):
            self._call(node)

    def _negate(self, value: ast.AST) -> None:
        if isinstance(value, ast.BinOp) and isinstance(value.op, _ARITHMETIC):
            if _is_str(value.left) or _is_str(value.right):
                return
            start, end = self.src.span(value)
            self.add("negate", [(start, start, "-("), (end, end, ")")])

    def _constant(self, node: ast.Constant, parent: ast.AST | None) -> None:
        value = node.value
        start, end = self.src.span(node)
        if isinstance(value, bool):
            self.add("bool-flip", [(start, end, "False" if value else "True")])
            return
        if not isinstance(value, int | float) or isinstance(value, complex):
            return
        negated_already = isinstance(parent, ast.UnaryOp) and isinstance(parent.op, ast.USub)
        tight = isinstance(parent, ast.Attribute | ast.Subscript) or (
            isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Pow)
            and parent.left is node)
        if value == 0:
            replacements = [1 if isinstance(value, int) else 1.0]
        elif value == 1:
            replacements = [0 if isinstance(value, int) else 0.0, 2 * value]
        else:
            replacements = [2 * value] + ([] if negated_already else [-value])
        for new in replacements:
            text = _number_text(new)
            if text.startswith("-") and tight:
                text = f"({text})"
            self.add("constant", [(start, end, text)])

    def _call(self, node: ast.Call) -> None:
        src = self.src
        name = _call_name(node)
        args = node.args
        if (len(args) == 2 and name not in NO_SWAP_CALLS
                and not any(isinstance(a, ast.Starred) or _is_str(a) for a in args)):
            a, b = src.segment(args[0]), src.segment(args[1])
            if a != b:
                (a0, a1), (b0, b1) = src.span(args[0]), src.span(args[1])
                self.add("swap-args", [(a0, a1, _paren(b)), (b0, b1, _paren(a))])
        for kw in node.keywords:
            if kw.arg is None or kw.arg in NO_DROP_KEYWORDS:
                continue
            start, end = src.span(kw)
            after = src.next_token(end)
            if after is not None and after[3] == ",":
                cut = after[1]
                while src.text[cut : cut + 1] == " ":
                    cut += 1
                self.add("drop-keyword", [(start, cut, "")])
                continue
            before = src.previous_token(start)
            if before is not None and before[3] == ",":
                self.add("drop-keyword", [(before[0], end, "")])
            else:
                self.add("drop-keyword", [(start, end, "")])


def generate_mutants(source: str, file: str = "<string>",
                     markers: tuple[str, ...] = DEFAULT_MARKERS) -> list[Mutant]:
    """Every mutant of one module's source, in source order (invalid and duplicate ones dropped).

    Args:
        source: the module's text.
        file: its path (relative to the repository root), recorded in each mutant.
        markers: comment texts (case-insensitive) that exempt a statement from mutation.

    Returns:
        The mutants, each with its operator, line, original and mutated line(s).
    """
    tree = ast.parse(source)
    src = _Source(source)
    skip = _marked_lines(src, tree, markers)
    seen = {source}
    mutants: list[Mutant] = []
    counter: dict[tuple[int, str], int] = {}
    for operator, edits in _Generator(src, tree, skip).run():
        mutant = Mutant(file, 0, operator, edits)
        mutated = mutant.apply(source)
        if mutated in seen:
            continue
        try:
            compile(mutated, file, "exec", dont_inherit=True)
        except (SyntaxError, ValueError):
            continue
        seen.add(mutated)
        _describe(source, mutant)
        k = counter.get((mutant.line, operator), 0)
        counter[(mutant.line, operator)] = k + 1
        mutant.ident = f"{file}:{mutant.line}:{operator}:{k}"
        mutants.append(mutant)
    mutants.sort(key=lambda m: (m.line, min(e[0] for e in m.edits)))
    return mutants


def sample_mutants(mutants: list[Mutant], count: int | None, seed: int, key: str) -> list[Mutant]:
    """``count`` mutants of one module, spread over the operators (deterministic in seed, key).

    Each operator's mutants are shuffled, then taken in turn from the operators (in a shuffled
    order) until ``count`` are chosen; None takes all. The result is in source order.
    """
    if count is None or count >= len(mutants):
        return list(mutants)
    rng = random.Random(f"{seed}:{key}")
    groups: dict[str, list[Mutant]] = {}
    for m in mutants:
        groups.setdefault(m.operator, []).append(m)
    order = sorted(groups)
    rng.shuffle(order)
    for name in order:
        rng.shuffle(groups[name])
    chosen: list[Mutant] = []
    while len(chosen) < count:
        for name in order:
            if groups[name] and len(chosen) < count:
                chosen.append(groups[name].pop())
    position = {id(m): i for i, m in enumerate(mutants)}
    return sorted(chosen, key=lambda m: position[id(m)])


# -- hand-written mutations ----------------------------------------------------------------------
@dataclass
class HandMutation:
    name: str
    file: str
    old: str
    new: str
    description: str = ""
    tests: list[str] | None = None
    status: str = "ready"  # ready | stale | ambiguous | invalid
    mutant: Mutant | None = None


def load_toml(path: Path) -> dict:
    if tomllib is None:
        raise SystemExit("mutation.py needs Python ≥ 3.11 (tomllib) or the tomli package")
    with open(path, "rb") as handle:
        return tomllib.load(handle)


def resolve_hand_mutations(entries: list[dict], root: Path) -> list[HandMutation]:
    """Check each named mutation against the files under ``root``.

    Status: "ready" (the old text occurs exactly once: a mutant), "stale" (the file or the old
    text is gone: the code moved), "ambiguous" (the old text occurs more than once) or
    "invalid" (the mutated file does not compile).
    """
    out = []
    for entry in entries:
        hand = HandMutation(entry["name"], entry["file"], entry["old"], entry["new"],
                            entry.get("description", ""), entry.get("tests"))
        path = root / hand.file
        source = path.read_text(encoding="utf-8") if path.is_file() else None
        count = 0 if source is None else source.count(hand.old)
        if count == 0:
            hand.status = "stale"
        elif count > 1:
            hand.status = "ambiguous"
        else:
            start = source.index(hand.old)
            mutant = Mutant(hand.file, 0, "hand", [(start, start + len(hand.old), hand.new)],
                            name=hand.name, description=hand.description, tests=hand.tests)
            try:
                compile(mutant.apply(source), hand.file, "exec", dont_inherit=True)
            except (SyntaxError, ValueError):
                hand.status = "invalid"
            else:
                _describe(source, mutant)
                mutant.ident = f"hand:{hand.name}"
                hand.mutant = mutant
        out.append(hand)
    return out


# -- which tests run against a module --------------------------------------------------------------
@dataclass
class TestMap:
    """Module glob → test globs; the first matching entry wins; no match: the whole suite."""

    entries: list[tuple[list[str], list[str]]]
    fallback: list[str] = field(default_factory=lambda: ["tests"])

    def patterns(self, module: str) -> list[str] | None:
        for modules, tests in self.entries:
            if any(fnmatch.fnmatch(module, pattern) for pattern in modules):
                return tests
        return None

    def tests_for(self, module: str, root: Path, override: list[str] | None = None) -> list[str]:
        """The test files (relative to ``root``) for a mutant of ``module``."""
        patterns = override if override is not None else self.patterns(module)
        if not patterns:
            return list(self.fallback)
        found: list[str] = []
        for pattern in patterns:
            for path in sorted(glob.glob(str(root / pattern))):
                rel = Path(path).relative_to(root).as_posix()
                if rel not in found:
                    found.append(rel)
        return found or list(self.fallback)


def parse_tests_for(values: list[str]) -> list[tuple[list[str], list[str]]]:
    """``GLOB=TEST[,TEST…]`` options as map entries."""
    entries = []
    for value in values:
        if "=" not in value:
            raise SystemExit(f"--tests-for needs MODULE_GLOB=TEST[,TEST…], got {value!r}")
        module, tests = value.split("=", 1)
        entries.append(([module], [t for t in tests.split(",") if t]))
    return entries


# -- private copies and runs ----------------------------------------------------------------------
def repository_files(root: Path, source: str) -> list[str] | None:
    """The files a copy gets: tracked + untracked-but-not-ignored ("worktree"), or None for HEAD."""
    if source == "head":
        return None
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, capture_output=True, check=True).stdout.decode()
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def make_copy(root: Path, files: list[str] | None, target: Path) -> None:
    target.mkdir(parents=True)
    if files is None:
        archive = subprocess.run(["git", "archive", "--format=tar", "HEAD"], cwd=root,
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
        return
    for rel in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, dest, follow_symlinks=False)


@dataclass
class RunResult:
    status: str  # killed | survived | timeout | error
    seconds: float
    returncode: int | None
    killed_by: str = ""
    output_tail: str = ""


class Runner:
    """Runs pytest inside private copies of the repository, one copy per worker."""

    def __init__(self, root: Path, python: str, workers: int, workdir: Path | None, source: str,
                 keep: bool = False, pytest_args: list[str] | None = None) -> None:
        self.root = root
        self.python = python
        self.keep = keep
        self.base = Path(tempfile.mkdtemp(prefix="weightgeo-mutation-", dir=workdir))
        self.copies: queue.Queue[Path] = queue.Queue()
        self.copy_list: list[Path] = []
        first = self.base / "w0"
        try:
            make_copy(root, repository_files(root, source), first)
            for k in range(workers):  # every copy from the first: one consistent snapshot
                copy = first if k == 0 else self.base / f"w{k}"
                if k:
                    shutil.copytree(first, copy, symlinks=True)
                self.copies.put(copy)
                self.copy_list.append(copy)
        except BaseException:
            shutil.rmtree(self.base, ignore_errors=True)
            raise
        self.snapshot = first
        self.pytest_args = pytest_args or []
        self._processes: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    def env(self, copy: Path) -> dict[str, str]:
        env = dict(os.environ)
        env.update({
            "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
            # no bytecode caches: a mutant written within the same second as the original, with
            # the same size, would otherwise run from the stale .pyc of the other
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONPATH": os.pathsep.join([str(copy), *filter(None, [env.get("PYTHONPATH")])]),
        })
        return env

    def check_imports(self, package: str) -> list[str]:
        """Problems (none expected): each copy must import its own ``package``."""
        problems = []
        for copy in self.copy_list:
            out = subprocess.run(
                [self.python, "-c", f"import {package}, sys; sys.stdout.write({package}.__file__)"],
                cwd=copy, env=self.env(copy), capture_output=True, text=True)
            path = out.stdout.strip()
            if out.returncode != 0 or not Path(path).resolve().is_relative_to(copy.resolve()):
                where = path or out.stderr.strip()[-300:]
                problems.append(f"{copy}: imports {package} from {where}")
        return problems

    def run(self, tests: list[str], mutant: Mutant | None, timeout: float | None) -> RunResult:
        copy = self.copies.get()
        target = original = None
        try:
            if mutant is not None:
                target = copy / mutant.file
                original = target.read_text(encoding="utf-8")
                target.write_text(mutant.apply(original), encoding="utf-8")
            return self._pytest(copy, tests, timeout)
        finally:
            if target is not None:
                target.write_text(original, encoding="utf-8")
            self.copies.put(copy)

    def _pytest(self, copy: Path, tests: list[str], timeout: float | None) -> RunResult:
        command = [self.python, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", "--tb=no",
                   "-rfE", *self.pytest_args, *tests]
        started = time.perf_counter()
        proc = subprocess.Popen(command, cwd=copy, env=self.env(copy), stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        with self._lock:
            self._processes.add(proc)
        try:
            output, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._kill(proc)
            output, _ = proc.communicate()
            return RunResult("timeout", time.perf_counter() - started, None, "timeout",
                             (output or "")[-2000:])
        finally:
            with self._lock:
                self._processes.discard(proc)
        seconds = time.perf_counter() - started
        rc = proc.returncode
        if rc == 0:
            status = "survived"
        elif rc in (1, 2, 3):  # failed, collection error / interrupted, internal error
            status = "killed"
        else:  # 4: usage error, 5: no tests collected — the tool's problem, not a kill
            status = "error"
        return RunResult(status, seconds, rc, _first_failure(output) if status == "killed" else "",
                         output[-2000:])

    @staticmethod
    def _kill(proc: subprocess.Popen) -> None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # the pytest process group this runner started
        except ProcessLookupError:
            pass

    def stop_all(self) -> None:
        with self._lock:
            for proc in list(self._processes):
                self._kill(proc)

    def cleanup(self) -> None:
        if not self.keep:
            shutil.rmtree(self.base, ignore_errors=True)


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0][:200]
    for line in output.splitlines():
        if "Error" in line:
            return line.strip()[:200]
    return ""


# -- the report -----------------------------------------------------------------------------------
COUNTED = ("killed", "survived", "timeout")


def _rate(killed: int, total: int) -> str:
    return f"{100 * killed / total:.1f}%" if total else "–"


def summarise(records: list[dict], generated: dict[str, int]) -> tuple[dict[str, dict], dict]:
    """Per module and overall: mutants run, killed, survived, timeouts, not run, kill rate.

    The kill rate is (killed + timeouts) / mutants run; mutants not run are left out of it.
    """
    keys = ("generated", "mutants", "killed", "survived", "timeouts", "not_run")
    modules = {m: dict.fromkeys(keys, 0) | {"generated": n} for m, n in generated.items() if n}
    for r in records:
        row = modules.setdefault(r["file"], dict.fromkeys(keys, 0))
        status = r["status"]
        if status in COUNTED:
            row["mutants"] += 1
            row["timeouts" if status == "timeout" else status] += 1
        else:
            row["not_run"] += 1
    total = {k: sum(m[k] for m in modules.values()) for k in keys}
    for row in [*modules.values(), total]:
        done = row["killed"] + row["timeouts"]
        row["kill_rate"] = done / row["mutants"] if row["mutants"] else None
    return modules, total


def _table(modules: dict[str, dict], overall: dict) -> list[str]:
    width = max([len(m) for m in modules] + [24])
    header = (f"{'module':<{width}}  {'mutants':>7}  {'of':>5}  {'killed':>6}  {'survived':>8}  "
              f"{'timeouts':>8}  {'kill rate':>9}")

    def row(name: str, r: dict) -> str:
        rate = _rate(r["killed"] + r["timeouts"], r["mutants"])
        extra = f"  ({r['not_run']} not run)" if r["not_run"] else ""
        return (f"{name:<{width}}  {r['mutants']:>7}  {r['generated']:>5}  {r['killed']:>6}  "
                f"{r['survived']:>8}  {r['timeouts']:>8}  {rate:>9}{extra}")

    lines = [header, "-" * len(header)]
    lines += [row(name, r) for name, r in sorted(modules.items())]
    lines += ["-" * len(header), row("all generated", overall)]
    return lines


def _hand_lines(hand: list[dict]) -> list[str]:
    statuses = (*COUNTED, "stale", "ambiguous", "invalid", "not run")
    n = {s: sum(1 for h in hand if h["status"] == s) for s in statuses}
    ran = n["killed"] + n["survived"] + n["timeout"]
    killed = n["killed"] + n["timeout"]
    lines = [f"hand-written mutations: {killed} killed of {ran} run ({_rate(killed, ran)}; "
             f"{n['timeout']} of them by timeout); stale {n['stale']}, ambiguous {n['ambiguous']}, "
             f"invalid {n['invalid']}, not run {n['not run']}"]
    for h in hand:
        by = f"  [{h['killed_by']}]" if h.get("killed_by") else ""
        lines.append(f"  {h['status']:<9} {h['name']}: {h['description']}{by}")
    return lines


def format_report(result: dict) -> str:
    """The text report: run details, the per-module table, hand mutations, survivors."""
    info = result["run"]
    lines = [
        f"Mutation testing — {info['date']} on {info['machine']}",
        f"load average (1, 5, 15 min): {info['load_start']} at the start, "
        f"{info['load_end']} at the end",
        f"command: {info['command']}",
        f"source: {info['source']} ({info['git']}); {info['workers']} worker(s); "
        f"{info['seconds']:.0f} s",
    ]
    for tests, v in result["baselines"].items():
        if not v["passed"]:
            tail = " | ".join(v["output_tail"].strip().splitlines()[-3:])
            lines.append(f"CLEAN RUN FAILED, its mutants not run: {tests}: {tail}")
    if result["modules"]:
        lines += ["", *_table(result["modules"], result["overall"])]
    if result["hand"]:
        lines += ["", *_hand_lines(result["hand"])]
    records = result["mutants"]
    survivors = [r for r in records if r["status"] == "survived"]
    if survivors:
        lines += ["", "Survivors (each needs a test that fails on it):"]
        for r in survivors:
            lines.append(f"  {r['file']}:{r['line']}  {r['name'] or r['operator']}")
            lines += [f"      - {text.strip()}" for text in r["original"].split("\n")]
            lines += [f"      + {text.strip()}" for text in r["mutated"].split("\n")]
    timeouts = [r for r in records if r["status"] == "timeout"]
    if timeouts:
        lines += ["", "Timeouts (counted as killed):"]
        lines += [f"  {r['file']}:{r['line']}  {r['name'] or r['operator']}  ({r['seconds']:.0f} s)"
                  for r in timeouts]
    others = [r for r in records if r["status"] not in COUNTED]
    if others:
        lines += ["", "Not run or errors (left out of the rates):"]
        lines += [f"  {r['file']}:{r['line']}  {r['name'] or r['operator']}: {r['status']}, "
                  f"{r['detail']}" for r in others]
    return "\n".join(lines)


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def _git(root: Path) -> str:
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty"], cwd=root, text=True,
                              capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _machine() -> str:
    return (f"{platform.node()} ({os.cpu_count()} CPUs, {platform.system()} {platform.release()}, "
            f"Python {platform.python_version()})")


# -- the command ----------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Mutation testing: one small bug at a time in a private copy of the "
                    "repository, the module's tests run against it.",
        epilog="operators: " + "; ".join(f"{k}: {v}" for k, v in OPERATORS.items()),
    )
    add = p.add_argument
    add("--root", type=Path, default=TOOLS.parent, help="repository root (default: this tool's)")
    add("--config", type=Path, default=DEFAULT_CONFIG,
        help="modules, exclusions, module → tests map (default: tools/mutation_config.toml)")
    add("--modules", nargs="+", metavar="GLOB", help="modules to mutate (default: the config's)")
    add("--exclude", nargs="+", metavar="GLOB", help="modules left out (default: the config's)")
    add("--tests-for", action="append", default=[], metavar="GLOB=TESTS",
        help="the tests (comma-separated globs) for modules matching GLOB; before the config's map")
    sample = p.add_mutually_exclusive_group()
    sample.add_argument("--per-module", type=int, default=5, metavar="N",
                        help="generated mutants sampled per module (default 5)")
    sample.add_argument("--all", action="store_true", help="every generated mutant")
    add("--seed", type=int, default=0, help="sampling seed (default 0)")
    add("--operators", nargs="+", choices=sorted(OPERATORS), help="only these operators")
    add("--hand", type=Path, default=DEFAULT_HAND,
        help="hand-written mutations (default: tools/mutations.toml)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--no-hand", action="store_true", help="skip the hand-written mutations")
    which.add_argument("--hand-only", action="store_true", help="only the hand-written mutations")
    add("--only-hand", nargs="+", metavar="NAME", help="only these hand-written mutations")
    add("--workers", type=int, default=2, help="parallel pytest runs, one copy each (default 2)")
    add("--timeout-factor", type=float, default=3.0,
        help="a mutant's run may take this times its clean run (default 3)…")
    add("--timeout-extra", type=float, default=20.0,
        help="…and at least the clean run plus this many seconds (default 20)")
    add("--max-minutes", type=float, default=0.0,
        help="start no mutant after this many minutes; the rest is 'not run' (0: no limit)")
    add("--source", choices=("worktree", "head"), default="worktree",
        help="copy the working tree (tracked + untracked, not ignored; default) or the last commit")
    add("--python", default=sys.executable, help="the interpreter that runs pytest")
    add("--package", default="weightgeo",
        help="the package each copy must import from itself (checked before the runs)")
    add("--workdir", type=Path, default=None, help="where the copies go (default: $TMPDIR)")
    add("--keep", action="store_true", help="keep the private copies")
    add("--out", type=Path, default=None,
        help="result directory (default: <root>/runs/mutation): result.json, report.txt")
    add("--marker", nargs="+", default=list(DEFAULT_MARKERS),
        help="comment texts that exempt a statement (default: 'logging', 'pragma: no mutate')")
    add("--list", action="store_true", help="list the chosen mutants and their tests; run nothing")
    add("--pytest-arg", action="append", default=[], help="an extra pytest argument")
    return p


def select_modules(root: Path, include: list[str], exclude: list[str]) -> list[str]:
    """The .py files under ``root`` matching ``include`` and none of ``exclude`` (relative)."""
    found: list[str] = []
    for pattern in include:
        for path in sorted(glob.glob(str(root / pattern))):
            rel = Path(path).relative_to(root).as_posix()
            excluded = any(fnmatch.fnmatch(rel, x) for x in exclude)
            if rel.endswith(".py") and rel not in found and not excluded:
                found.append(rel)
    return found


Job = tuple[Mutant, list[str]]


def plan(root: Path, args: argparse.Namespace, include: list[str], exclude: list[str],
         test_map: TestMap) -> tuple[list[Job], dict[str, int], list[HandMutation]]:
    """The mutants to run with their tests, the generated count per module, the hand mutations."""
    count = None if args.all else args.per_module
    jobs: list[Job] = []
    generated: dict[str, int] = {}
    if not args.hand_only:
        for module in select_modules(root, include, exclude):
            source = (root / module).read_text(encoding="utf-8")
            try:
                mutants = generate_mutants(source, module, tuple(args.marker))
            except SyntaxError as error:  # e.g. a file being edited: say so, go on
                print(f"skipped {module}: it does not parse ({error})", flush=True)
                continue
            if args.operators:
                mutants = [m for m in mutants if m.operator in args.operators]
            generated[module] = len(mutants)
            tests = test_map.tests_for(module, root)
            jobs += [(m, tests) for m in sample_mutants(mutants, count, args.seed, module)]
    hands: list[HandMutation] = []
    if not args.no_hand and args.hand.is_file():
        entries = load_toml(args.hand).get("mutation", [])
        if args.only_hand:
            entries = [e for e in entries if e["name"] in args.only_hand]
        hands = resolve_hand_mutations(entries, root)
        jobs += [(h.mutant, test_map.tests_for(h.file, root, h.tests)) for h in hands if h.mutant]
    return jobs, generated, hands


def _print_plan(jobs: list[Job], generated: dict[str, int], hands: list[HandMutation]) -> None:
    for mutant, tests in jobs:
        print(f"{mutant.file}:{mutant.line}  {mutant.name or mutant.operator}  [{' '.join(tests)}]")
        print(f"    - {mutant.original_line.strip()}\n    + {mutant.mutated_line.strip()}")
    for h in hands:
        if h.mutant is None:
            print(f"hand {h.name}: {h.status} ({h.file})")
    print(f"{len(jobs)} mutants; generated per module: {json.dumps(generated, indent=1)}")


def _record(mutant: Mutant, tests: list[str]) -> dict:
    return {"id": mutant.ident, "file": mutant.file, "line": mutant.line,
            "operator": mutant.operator, "name": mutant.name, "description": mutant.description,
            "original": mutant.original_line, "mutated": mutant.mutated_line, "tests": tests,
            "status": "not run", "detail": "", "seconds": 0.0, "killed_by": ""}


def run_jobs(runner: Runner, jobs: list[Job], args: argparse.Namespace, t0: float,
             records: list[dict], baselines: dict[str, dict]) -> None:
    """The clean run of every test set, then every mutant; fills ``records`` and ``baselines``."""
    workers = max(1, args.workers)
    testsets = sorted({tuple(tests) for _, tests in jobs})
    runs = _parallel(workers, lambda tests: runner.run(list(tests), None, None), testsets)
    clean = dict(zip(testsets, runs, strict=True))
    for tests, r in clean.items():
        passed = r.status == "survived"
        baselines[" ".join(tests)] = {"seconds": round(r.seconds, 2), "passed": passed,
                                      "returncode": r.returncode,
                                      "output_tail": "" if passed else r.output_tail}
        print(f"clean run {'passed' if passed else 'FAILED'} in {r.seconds:.1f} s: "
              f"{' '.join(tests)}", flush=True)
    deadline = t0 + 60 * args.max_minutes if args.max_minutes > 0 else None
    lock = threading.Lock()

    def one(job: Job) -> dict:
        mutant, tests = job
        record = _record(mutant, tests)
        base = clean[tuple(tests)]
        if base.status != "survived":
            record["detail"] = "its clean run failed"
        elif deadline is not None and time.perf_counter() > deadline:
            record["detail"] = "time limit"
        else:
            timeout = max(args.timeout_factor * base.seconds, base.seconds + args.timeout_extra)
            r = runner.run(tests, mutant, timeout)
            record.update(status=r.status, seconds=round(r.seconds, 2), killed_by=r.killed_by,
                          detail=f"pytest exit {r.returncode}" if r.status == "error" else "")
        with lock:
            records.append(record)
            print(f"[{len(records)}/{len(jobs)}] {record['status']:<8} {mutant.file}:{mutant.line} "
                  f"{mutant.name or mutant.operator} ({record['seconds']:.1f} s)", flush=True)
        return record

    _parallel(workers, one, jobs)


def _parallel(workers: int, fn, items: list) -> list:
    """``[fn(x) for x in items]`` on ``workers`` threads; on an interrupt, nothing more starts."""
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return list(pool.map(fn, items))
    finally:
        pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    root = args.root.resolve()
    config = load_toml(args.config) if args.config.is_file() else {}
    include = args.modules or config.get("modules", [])
    exclude = args.exclude if args.exclude is not None else config.get("exclude", [])
    entries = [(e["modules"], e["tests"]) for e in config.get("tests", [])]
    test_map = TestMap(parse_tests_for(args.tests_for) + entries)
    if args.list:
        _print_plan(*plan(root, args, include, exclude, test_map))
        return 0

    started_at = _dt.datetime.now().astimezone()
    load_start = _load()
    t0 = time.perf_counter()
    runner = Runner(root, args.python, max(1, args.workers), args.workdir, args.source, args.keep,
                    args.pytest_arg)
    records: list[dict] = []
    baselines: dict[str, dict] = {}
    jobs: list[Job] = []
    generated: dict[str, int] = {}
    hands: list[HandMutation] = []
    try:
        # the mutants are made from the copies' snapshot, not from files that may change meanwhile
        jobs, generated, hands = plan(runner.snapshot, args, include, exclude, test_map)
        n_hand = sum(1 for m, _ in jobs if m.name)
        print(f"{len(jobs)} mutants ({len(jobs) - n_hand} generated, {n_hand} hand-written), "
              f"{args.workers} worker(s); load average {load_start}", flush=True)
        problems = runner.check_imports(args.package)
        if problems:
            print(f"the copies do not import their own {args.package}:\n" + "\n".join(problems))
            return 0
        run_jobs(runner, jobs, args, t0, records, baselines)
    except KeyboardInterrupt:
        runner.stop_all()
        print("interrupted: the report covers the mutants run so far", flush=True)
    finally:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second ^C: still clean up
        try:
            runner.stop_all()
            runner.cleanup()
        finally:
            signal.signal(signal.SIGINT, previous)

    order = {m.ident: k for k, (m, _) in enumerate(jobs)}
    records.sort(key=lambda r: order.get(r["id"], len(order)))
    modules, overall = summarise([r for r in records if not r["name"]], generated)
    ran = {r["name"]: r for r in records if r["name"]}
    hand_rows = []
    for h in hands:
        r = ran.get(h.name)
        status = h.status if h.mutant is None else ("not run" if r is None else r["status"])
        hand_rows.append({"name": h.name, "file": h.file, "description": h.description,
                          "status": status, "killed_by": r["killed_by"] if r else "",
                          "line": h.mutant.line if h.mutant else None})
    command = argv if argv is not None else sys.argv[1:]
    result = {
        "run": {"command": " ".join(["tools/mutation.py", *command]),
                "date": started_at.isoformat(timespec="seconds"), "machine": _machine(),
                "load_start": load_start, "load_end": _load(),
                "seconds": round(time.perf_counter() - t0, 1), "workers": args.workers,
                "source": args.source, "git": _git(root), "seed": args.seed,
                "per_module": None if args.all else args.per_module, "operators": OPERATORS},
        "baselines": baselines,
        "modules": modules,
        "overall": overall,
        "hand": hand_rows,
        "mutants": records,
    }
    report = format_report(result)
    print("\n" + report)
    out_dir = (args.out or root / "runs" / "mutation").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    text = json.dumps(result, indent=2, ensure_ascii=False)
    (out_dir / "result.json").write_text(text + "\n", encoding="utf-8")
    (out_dir / "report.txt").write_text(report + "\n", encoding="utf-8")
    print(f"\nwritten: {out_dir / 'result.json'}, {out_dir / 'report.txt'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
