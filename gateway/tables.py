"""One config table's reads, with every problem worded one way and all reported at once.

::

    f.toml: server.port: expected a port number from 1 to 65535, got 0
    f.toml: server.prot: unknown key; expected one of host, port, ...   (sorted)

A value is shown as given when it is a scalar; a table or an array, or a row marked
``secret`` (an MCP server's ``url``, ``env``, ``headers``), is shown by its kind only
("got a table"), so a credential inside it never reaches the terminal or the log.

Tables that are plain rows use ``Key``: ``Table.check(rows)`` checks every value present
against its row, and ``Key.applies`` says which variants (an MCP server's transport) take it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.errors import Problems

MISSING: Any = object()

_KINDS: tuple[tuple[type, str], ...] = (
    (bool, "a boolean"),
    (int, "an integer"),
    (float, "a number"),
    (str, "a string"),
    (dict, "a table"),
    (list, "an array"),
)


def kind(value: Any) -> str:
    """A value's TOML kind ("an integer"), and what a table or an array holds."""
    if value == "":
        return "an empty string"
    word = next((word for type_, word in _KINDS if isinstance(value, type_)), type(value).__name__)
    items = list(value.values()) if isinstance(value, dict) else value if isinstance(value, list) else None
    if items is None:
        return word
    if not items:
        return f"an empty {word.split()[-1]}"
    held = list(dict.fromkeys(_plural(item) for item in items))
    return f"{word} of {', '.join(held[:-1])} and {held[-1]}" if len(held) > 1 else f"{word} of {held[0]}"


def _plural(value: Any) -> str:
    if isinstance(value, (dict, list)):
        return "tables" if isinstance(value, dict) else "arrays"
    return kind(value).split(" ", 1)[1] + "s"


def shown(value: Any, *, secret: bool = False) -> str:
    """How a bad value appears in its problem line: a scalar as given, else its kind."""
    return kind(value) if secret or isinstance(value, (dict, list, tuple)) else repr(value)


@dataclass(frozen=True)
class Key:
    """One row of a table's keys: what a value must pass, what the problem line expects."""

    check: Callable[[Any], bool]
    expect: str
    applies: frozenset[str] = frozenset()  # the variants that take this key; empty: every one
    secret: bool = False  # never show the value itself


class Table:
    """Reads from one TOML table at ``key``; each problem is one line in ``problems``."""

    def __init__(self, table: Mapping[str, Any], key: str, problems: Problems) -> None:
        self.table, self.key, self.problems = table, key, problems
        self.ok = True

    def problem(self, name: str, what: str) -> None:
        self.ok = False
        self.problems.add(f"{self.key}.{name}", what)

    def expected(self, name: str, expect: str, value: Any, *, secret: bool = False) -> None:
        """``expected X, got V``; a missing value is ``required; expected X``."""
        if value is MISSING:
            self.problem(name, f"required; expected {expect}")
        else:
            self.problem(name, f"expected {expect}, got {shown(value, secret=secret)}")

    def unknown(self, known: Iterable[str], name: str | None = None) -> None:
        """Each key of the table not in ``known`` (or just ``name``) is a problem."""
        names = sorted(set(known))
        for item in self.table if name is None else (name,):
            if item not in names:
                self.problem(item, f"unknown key; expected one of {', '.join(names)}")

    def check(self, rows: Mapping[str, Key], variant: str | None = None) -> None:
        """Unknown keys, values failing their row, and keys the ``variant`` does not take
        (``None``: the variant is unknown, say nothing about applicability)."""
        for name, value in self.table.items():
            row = rows.get(name)
            if row is None:
                self.unknown(rows, name)
                continue
            if not row.check(value):
                self.expected(name, row.expect, value, secret=row.secret)
            elif variant is not None and row.applies and variant not in row.applies:
                self.problem(name, f"only applies to {' or '.join(sorted(row.applies))} servers")
